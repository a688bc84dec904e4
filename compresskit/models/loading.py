"""Loading models: built-in examples, state dicts with an architecture factory, full
pickles on explicit opt-in, Hugging Face directories, and compresskit's own saved models.

Loading runs no code the user did not name: a pickle only with ``trust_pickle``; the
architecture factory a compresskit file records only when the user names it (``arch``) or
allows it (``trust_factory``), unless it is a module class of compresskit itself; a Hugging
Face directory never with ``trust_remote_code``, and a ``pytorch_model.bin`` holding pickled
objects not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from compresskit.data.preprocessing import Preprocessing
from compresskit.errors import CompressKitError, MissingDependencyError, first_line
from compresskit.imports import call_factory
from compresskit.models.checkpoint import RestoreError, is_saved_model, restore_model
from compresskit.models.examples import EXAMPLES, load_example
from compresskit.models.reading import (
    check_finite,
    load_strict,
    pickle_refusal,
    pickled_globals,
    read_checkpoint,
    state_dict_of,
)
from compresskit.paths import regular_file

DEFAULT_CHECKPOINT = "example:digits-cnn"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class LoadedModel:
    """A model in eval mode, where it came from (to rebuild it), and its usual data."""

    model: nn.Module
    source: dict[str, Any]
    default_data: str | None = None
    notes: list[str] = field(default_factory=list)
    # How raw text or images become its inputs (a Hugging Face tokenizer or processor).
    preprocessing: Preprocessing | None = None

    @classmethod
    def of(cls, model: LoadedModel | nn.Module | str | Path | None) -> LoadedModel:
        """``model`` as given to the Python API: loaded already, a module built in code,
        or a checkpoint reference for :func:`load_model`."""
        if isinstance(model, LoadedModel):
            return model
        if isinstance(model, nn.Module):
            check_finite(model, "the model")
            return cls(model.eval(), {"kind": "python"})
        return load_model(model)

    @property
    def path(self) -> Path | None:
        """The checkpoint file or directory it was read from, if any."""
        path = self.source.get("path")
        return Path(path) if path else None

    def describe(self) -> str:
        """Where it came from, for reports: ``example:NAME``, a path, or a factory."""
        kind = self.source.get("kind")
        if kind == "example":
            return f"example:{self.source['name']}"
        return str(self.source.get("path") or self.source.get("factory") or kind)


def load_model(
    checkpoint: str | Path | None = None,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    trust_factory: bool = False,
    task: str | None = None,
) -> LoadedModel:
    """Load ``checkpoint``; see the module docstring for the accepted forms and for what
    ``trust_pickle`` and ``trust_factory`` allow.

    Example::

        load_model("example:digits-cnn").model
        load_model("weights.pt", arch="mypkg.nets:resnet18")
    """
    loaded = _load(
        checkpoint, arch=arch, trust_pickle=trust_pickle, trust_factory=trust_factory, task=task
    )
    check_finite(loaded.model, f"checkpoint {loaded.describe()}")
    return loaded


def _load(
    checkpoint: str | Path | None,
    *,
    arch: str | None,
    trust_pickle: bool,
    trust_factory: bool,
    task: str | None,
) -> LoadedModel:
    ref = str(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if ref.startswith("example:"):
        name = ref.removeprefix("example:")
        model = load_example(name)
        return LoadedModel(model, {"kind": "example", "name": name}, EXAMPLES[name].data)
    path = Path(ref)
    if not path.exists():
        raise CompressKitError(
            f"checkpoint {ref}: no such file or directory "
            f"(built-in examples: {', '.join('example:' + n for n in EXAMPLES)})"
        )
    if path.is_dir():
        return _load_hf(path, task, trust_pickle=trust_pickle)
    regular_file(path, what="checkpoint")
    if path.suffix == ".gguf":
        if task not in (None, "causal-lm"):
            raise CompressKitError(
                f"checkpoint {path}: a .gguf file holds a causal language model; leave out "
                f"--task {task} (or give --task causal-lm)"
            )
        return _load_causal_lm(path)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise CompressKitError(
            f"checkpoint {path}: unknown file type {path.suffix!r}; expected one of "
            f"{', '.join(STATE_DICT_SUFFIXES)}, .gguf or a Hugging Face model directory"
        )
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval(), {"kind": "pickle", "path": str(path)})
    if isinstance(obj, dict) and is_saved_model(obj):
        return _restore(obj, path, arch=arch, trust_factory=trust_factory)
    state = state_dict_of(obj, path)
    if arch is None:
        raise CompressKitError(
            f"checkpoint {path} is a state dict: give its architecture with "
            "--arch MODULE:FACTORY (a function returning the nn.Module)"
        )
    model = build_arch(arch)
    load_strict(model, state, path, arch)
    return LoadedModel(model.eval(), {"kind": "arch", "factory": arch})


def build_arch(spec: str) -> nn.Module:
    """Call the ``module:factory`` architecture and check it returns a module."""
    model = call_factory(spec, what="--arch")
    if not isinstance(model, nn.Module):
        raise CompressKitError(
            f"--arch {spec}: returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _restore(
    payload: dict[str, Any], path: Path, *, arch: str | None, trust_factory: bool
) -> LoadedModel:
    raw = payload.get("source")
    source: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = source.get("kind")
    build: Callable[[], nn.Module]
    if kind == "example" and source.get("name") in EXAMPLES:
        build = EXAMPLES[source["name"]].build
    elif kind == "arch":
        factory = _consented_factory(source, path, arch=arch, trust_factory=trust_factory)

        def build() -> nn.Module:
            return build_arch(factory)
    elif kind == "hf" and isinstance(source.get("config"), dict):
        build = _hf_builder(source)
    elif kind in ("pickle", "python"):
        raise CompressKitError(
            f"checkpoint {path}: saved from a {kind} model, which cannot be rebuilt "
            "from data alone; load the .onnx file instead"
        )
    else:
        raise CompressKitError(
            f"checkpoint {path}: a compresskit model file whose source is unreadable "
            f"({_short(raw)}); re-save it with compresskit.save_model"
        )
    try:
        model = restore_model(payload, build)
    except RestoreError as error:
        raise CompressKitError(f"checkpoint {path}: cannot restore ({error})") from None
    except CompressKitError:
        raise
    except Exception as error:  # a damaged structure or state dict in the file
        raise CompressKitError(f"checkpoint {path}: cannot restore ({first_line(error)})") from None
    default = EXAMPLES[source["name"]].data if kind == "example" else None
    return LoadedModel(model, source, default)


def _short(value: object) -> str:
    import reprlib

    return reprlib.repr(value)


def _consented_factory(
    source: dict[str, Any], path: Path, *, arch: str | None, trust_factory: bool
) -> str:
    """The factory to rebuild a saved model with: the one the user names, else the one the
    file records when the user allows it (or it is a module class of compresskit)."""
    if arch is not None:
        return arch
    recorded = source.get("factory")
    if not isinstance(recorded, str) or ":" not in recorded:
        raise CompressKitError(
            f"checkpoint {path}: records no usable architecture factory; give it with "
            "--arch MODULE:FACTORY"
        )
    if trust_factory or _compresskit_module_class(recorded):
        return recorded
    raise CompressKitError(
        f"checkpoint {path}: rebuilding it would run {recorded}, the architecture factory "
        f"the file names; if you trust that code pass --arch {recorded} (or --trust-factory)"
    )


def _compresskit_module_class(spec: str) -> bool:
    """An ``nn.Module`` class defined in compresskit itself (the test and example models):
    importing our own package runs nothing foreign."""
    import importlib

    module_ref, _, attr = spec.rpartition(":")
    if not module_ref.startswith("compresskit.") or module_ref.endswith(".py"):
        return False
    try:
        obj = getattr(importlib.import_module(module_ref), attr, None)
    except ImportError:
        return False
    return (
        isinstance(obj, type)
        and issubclass(obj, nn.Module)
        and (obj.__module__ == "compresskit" or obj.__module__.startswith("compresskit."))
    )


def _load_hf(path: Path, task: str | None, *, trust_pickle: bool = False) -> LoadedModel:
    import json

    config_path = path / "config.json"
    if not config_path.is_file():
        raise CompressKitError(
            f"checkpoint {path} is a directory without config.json; give a Hugging Face model "
            "directory (save_pretrained) or a file"
        )
    try:
        config = json.loads(regular_file(config_path, what="checkpoint").read_text("utf-8"))
    except (ValueError, OSError) as error:
        raise CompressKitError(
            f"checkpoint {config_path}: not valid JSON ({first_line(error)}); "
            "re-save the model with save_pretrained"
        ) from None
    if not isinstance(config, dict):
        raise CompressKitError(f"checkpoint {config_path}: expected a JSON object")
    _check_hf_weights(path, trust_pickle=trust_pickle)
    _check_known_model_type(config, config_path)
    if task == "causal-lm" or (task is None and _names_causal_lm(config)):
        return _load_causal_lm(path)
    from compresskit.models.hf import load_hf_directory

    loaded = load_hf_directory(path, task=task)
    return LoadedModel(
        loaded.model, loaded.source, notes=loaded.notes, preprocessing=loaded.preprocessing
    )


def _check_known_model_type(config: dict[str, Any], config_path: Path) -> None:
    """A model type transformers itself implements: a directory's own code (``auto_map``,
    ``modeling_*.py``) never runs, so any other type cannot load."""
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        raise MissingDependencyError("transformers", "hf", "loading a Hugging Face model") from None
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        custom = " (the directory's own code is never run)" if "auto_map" in config else ""
        raise CompressKitError(
            f"checkpoint {config_path}: model type {model_type!r} is not one transformers "
            f"implements{custom}; give a model of a standard transformers architecture"
        )


def _names_causal_lm(config: dict[str, Any]) -> bool:
    """A config whose first architecture is a language-modelling head (``...ForCausalLM``,
    ``GPT2LMHeadModel``): such a directory is compressed as a causal LM."""
    architectures = config.get("architectures") or [None]
    first = architectures[0] if isinstance(architectures, list) else None
    return isinstance(first, str) and first.endswith(CAUSAL_LM_SUFFIXES)


def _load_causal_lm(path: Path) -> LoadedModel:
    """A causal LM (Hugging Face directory or ``.gguf``) with its tokenizer as the way texts
    become token ids; the source says its task, so the run judges it by perplexity."""
    from compresskit.models.causal_lm import load_causal_lm

    loaded = load_causal_lm(path)
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    preprocessing = Preprocessing(
        modality="text",
        tokenizer=loaded.tokenizer,
        max_length=positions if isinstance(positions, int) else None,
        input_names=("input_ids",),
    )
    source = {**loaded.source, "task": "causal-lm"}
    return LoadedModel(loaded.model, source, notes=loaded.notes, preprocessing=preprocessing)


def _check_hf_weights(path: Path, *, trust_pickle: bool) -> None:
    """Weights present, and none that transformers would have to unpickle objects from."""
    if any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not pickles:
        raise CompressKitError(
            f"checkpoint {path}: has config.json but no weights (model.safetensors or "
            "pytorch_model.bin); save the model with save_pretrained"
        )
    for file in pickles:
        found = pickled_globals(file)
        if found is None:
            raise CompressKitError(f"checkpoint {file}: not a readable torch file")
        if found:
            # transformers reads .bin files with weights_only: no flag can make it run the
            # objects, so even --trust-pickle only gets the advice.
            fix = "re-save the model as safetensors (save_pretrained)"
            if trust_pickle:
                fix = "transformers reads these files as weights only; " + fix
            raise CompressKitError(pickle_refusal(file, found, fix))


def _hf_builder(source: dict[str, Any]) -> Callable[[], nn.Module]:
    """A saved Hugging Face model's class from its saved config, failing in one line."""
    from compresskit.models.hf import builder

    build_hf = builder(source)

    def build() -> nn.Module:
        try:
            return build_hf()  # type: ignore[no-any-return]
        except CompressKitError:
            raise
        except (Exception, SystemExit) as error:
            raise CompressKitError(
                f"the saved Hugging Face config cannot be rebuilt ({first_line(error)})"
            ) from None

    return build
