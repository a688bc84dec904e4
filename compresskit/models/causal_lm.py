"""Causal language models: load a Hugging Face directory or a ``.gguf`` file with its
tokenizer, and save a (pruned) model as a Hugging Face directory that ``from_pretrained``
reloads.

A ``.gguf`` file is dequantized to float by transformers (which needs the ``gguf`` and
``accelerate`` packages). transformers marks such a model as quantized and refuses to
``save_pretrained`` it, so it is rebuilt: a fresh model from the same config (without its
quantization entry) takes the dequantized state dict.

Example::

    loaded = load_causal_lm("SmolLM2-135M-Instruct.Q4_1.gguf")
    save_causal_lm(loaded.model, loaded.tokenizer, "out/teacher")
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.errors import CompressKitError, MissingDependencyError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class LoadedCausalLM:
    """A causal LM in eval mode (float32), its tokenizer, and where it came from."""

    model: Any  # a transformers PreTrainedModel with a causal-LM head
    tokenizer: Any
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def load_causal_lm(path: str | Path, *, dtype: torch.dtype = torch.float32) -> LoadedCausalLM:
    """Load a Hugging Face causal-LM directory or a ``.gguf`` file, with its tokenizer."""
    path = Path(path)
    if not path.exists():
        raise CompressKitError(f"checkpoint {path}: no such file or directory")
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, dtype)
    if not path.is_dir():
        raise CompressKitError(
            f"checkpoint {path}: a causal language model is a Hugging Face directory "
            "(config.json, weights, tokenizer) or a .gguf file"
        )
    if not (path / "config.json").is_file():
        raise CompressKitError(
            f"checkpoint {path} is a directory without config.json; give a Hugging Face "
            "model directory (save_pretrained) or a .gguf file"
        )
    _require("transformers", "hf", "loading a causal language model")
    _quiet_transformers()
    from transformers import AutoModelForCausalLM

    _check_causal_head(path)
    tokenizer = load_tokenizer(path)
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, output_loading_info=True
    )
    model, info = loaded
    missing = [k for k in info.get("missing_keys", ()) if not _tied_head(model, k)]
    if missing:
        raise CompressKitError(
            f"checkpoint {path}: the weights lack {missing[0]} (and {len(missing) - 1} more); "
            "it has no trained causal-LM head: give a decoder LM saved with its head"
        )
    check_vocabulary(model, tokenizer, what=f"checkpoint {path}")
    return LoadedCausalLM(model.eval(), tokenizer, {"kind": "hf-causal-lm", "path": str(path)})


def _load_gguf(path: Path, dtype: torch.dtype) -> LoadedCausalLM:
    _require("gguf", "gguf", "loading a .gguf model")
    _require("accelerate", "gguf", "loading a .gguf model")
    _require("transformers", "gguf", "loading a .gguf model")
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        quantized = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise CompressKitError(
            f"checkpoint {path}: transformers cannot load this GGUF ({first}); give a GGUF "
            "of an architecture transformers supports (llama, qwen2, gpt2, ...)"
        ) from None
    model = serializable_copy(quantized)
    check_vocabulary(model, tokenizer, what=f"checkpoint {path}")
    notes = [f"{path.name}: GGUF weights dequantized to {str(dtype).removeprefix('torch.')}"]
    return LoadedCausalLM(model, tokenizer, {"kind": "gguf", "path": str(path)}, notes)


def serializable_copy(model: Any) -> Any:
    """A plain float model with ``model``'s weights, for models transformers will not save
    (loaded from GGUF: their config carries a ``quantization_config``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)
    config = AutoConfig.for_model(**settings)
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict(), strict=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = model.generation_config
    return fresh.eval()


def _quiet_transformers() -> None:
    """No progress bars or advice from transformers: the run reports what matters."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _require(module: str, extra: str, purpose: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(module, extra, purpose) from None


def _check_causal_head(path: Path) -> None:
    """Refuse a directory whose config names architectures none of which is a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CompressKitError(f"checkpoint {path}: config.json is not JSON ({error})") from None
    architectures = config.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if architectures and not any(
        a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures
    ):
        raise CompressKitError(
            f"checkpoint {path} holds a {architectures[0]}, which has no causal-LM head; the "
            "causal-lm task needs a decoder language model (e.g. LlamaForCausalLM)"
        )


def _tied_head(model: Any, key: str) -> bool:
    """A head weight that is missing only because it is tied to the input embeddings."""
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    return tied and key.endswith("weight") and "head" in key


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved beside a model; a one-line error when there is none."""
    path = Path(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CompressKitError(
            f"checkpoint {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save "
            "it beside the model: tokenizer.save_pretrained(directory)"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def vocabulary_size(model: nn.Module) -> int:
    """Rows of the model's output head: the vocabulary its logits range over."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if head is None:
        raise CompressKitError(
            f"{type(model).__name__} has no output head; the causal-lm task needs a model "
            "with a language-modelling head (AutoModelForCausalLM)"
        )
    return int(head.weight.shape[0])


def check_vocabulary(model: nn.Module, tokenizer: Any, *, what: str) -> None:
    """The tokenizer's ids must all be rows of the model's head."""
    size, tokens = vocabulary_size(model), len(tokenizer)
    if tokens > size:
        raise CompressKitError(
            f"{what}: the tokenizer has {tokens} tokens but the model's head only {size}; "
            "use the tokenizer the model was trained with"
        )


def check_same_vocabulary(student: nn.Module, teacher: nn.Module) -> None:
    """A teacher can only teach next-token distributions over the student's vocabulary."""
    s, t = vocabulary_size(student), vocabulary_size(teacher)
    if s != t:
        raise CompressKitError(
            f"distill: the teacher's vocabulary has {t} tokens but the student's {s}; "
            "distil from a teacher that shares the student's tokenizer"
        )


def save_causal_lm(model: Any, tokenizer: Any, directory: str | Path) -> Path:
    """Write ``model`` (its config carries the pruned sizes), safetensors weights and the
    tokenizer to ``directory``, atomically (a sibling temp dir, then one rename)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _quiet_transformers()
    if getattr(model.config, "quantization_config", None) is not None:
        model = serializable_copy(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save_pretrained(str(staging))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
