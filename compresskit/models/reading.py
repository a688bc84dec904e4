"""Reading checkpoint files without running code: torch files through the weights-only
unpickler, pickles looked into (never executed) to name the code a full load would
import, state dicts matched to an architecture by name, shape and dtype, and weights
checked for NaN and infinity."""

from __future__ import annotations

import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from compresskit.errors import CompressKitError, first_line


def check_finite(model: nn.Module, where: str) -> None:
    """Refuse weights that hold NaN or infinity (buffers: NaN; masks may hold -inf):
    calibration, pruning scores and parity would all compute garbage from them."""
    tensors: list[tuple[str, torch.Tensor, bool]] = [
        (n, t, True) for n, t in model.named_parameters()
    ]
    tensors += [(n, t, False) for n, t in model.named_buffers()]
    for name, tensor, parameter in tensors:
        if not tensor.is_floating_point() or tensor.is_meta:
            continue
        bad = ~torch.isfinite(tensor) if parameter else torch.isnan(tensor)
        if bool(bad.any()):
            raise CompressKitError(
                f"{where}: {name} holds {int(bad.sum())} NaN or infinite values; "
                "fix or retrain the model before compressing it"
            )


def read_checkpoint(path: Path, *, trust_pickle: bool) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own untyped errors
            raise CompressKitError(
                f"checkpoint {path}: not a readable safetensors file ({first_line(error)})"
            ) from None
    if not _looks_like_torch_file(path):
        raise CompressKitError(
            f"checkpoint {path}: not a readable torch file (neither torch.save's zip format "
            "nor a pickle)"
        )
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we judge below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        found = None if trust_pickle else pickled_globals(path)
        if found is not None:
            raise CompressKitError(pickle_refusal(path, found)) from None
        raise CompressKitError(
            f"checkpoint {path}: not a readable torch file ({first_line(error)})"
        ) from None
    except (Exception, SystemExit) as error:  # truncated zips, bad storages, pickled code
        raise CompressKitError(
            f"checkpoint {path}: not a readable torch file ({first_line(error)})"
        ) from None


PICKLE_FIX = (
    "pass --trust-pickle only if you trust its source, or save the weights as a state dict "
    "or safetensors"
)


def pickle_refusal(path: Path, found: list[str], fix: str = PICKLE_FIX) -> str:
    """The one line that refuses a pickle holding Python objects."""
    named = f" ({', '.join(found[:2])})" if found else ""
    return (
        f"checkpoint {path} contains pickled Python objects{named}; loading it runs code "
        f"from the file: {fix}"
    )


def pickled_globals(path: Path) -> list[str] | None:
    """The Python names a pickle (or torch.save zip) imports, read without running it;
    None when the file is not a well-formed pickle. Torch's own tensor rebuilding is left
    out: what remains is the code a full load would import."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(member)
        else:
            data = path.read_bytes()
        names: list[str] = []
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # anything unreadable is simply not a pickle
        return None
    ours = ("torch.", "collections.OrderedDict", "builtins.set")
    return list(dict.fromkeys(n for n in names if not n.startswith(ours)))


def _looks_like_torch_file(path: Path) -> bool:
    with path.open("rb") as f:
        first = f.read(1)
    return zipfile.is_zipfile(path) or first == b"\x80"  # zip, or a pickle's PROTO opcode


def state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return inner
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CompressKitError(
        f"checkpoint {path}: holds a {type(obj).__name__}, not a state dict or model; save "
        "it with torch.save(model.state_dict(), path)"
    )


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    # A float weight given as integers or bools (cast silently by load_state_dict) makes
    # a model of huge integer weights, nothing like the one that was saved.
    kinds = [
        k
        for k in expected
        if k in state and expected[k].is_floating_point() and not state[k].is_floating_point()
    ]
    problems = []
    if kinds:
        k = kinds[0]
        problems.append(f"{k} is {state[k].dtype} in the file but {expected[k].dtype} in the model")
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{k} is {tuple(state[k].shape)} in the file but {tuple(expected[k].shape)} in the "
            f"architecture" + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
        )
    if problems:
        raise CompressKitError(
            f"checkpoint {path} does not match --arch {arch}: {'; '.join(problems)}; "
            "check that the factory builds the same architecture the weights were saved from"
        )
    model.load_state_dict(state, strict=True)


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
