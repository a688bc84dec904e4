"""Hugging Face model directories as they are: loaded with their task head, called the way
compresskit calls every model.

A directory written by ``save_pretrained`` loads with the class its ``config.architectures``
names (``DistilBertForSequenceClassification``, ``ViTForImageClassification``, ...; a
bare encoder such as ``BertModel`` is a sentence embedder), or with the head ``--task``
asks for. Only classes that ship with ``transformers`` are used: code from the directory
(``auto_map``, ``trust_remote_code``) is never run.

:class:`HuggingFaceModel` wraps it: ``model(input_ids, attention_mask)`` or
``model(pixel_values)`` returns the task's tensor (class logits, or a mean-pooled
embedding). It builds the additive attention mask itself (causal for decoders) and hands
it to the model as a 4-D mask, which transformers uses as it is: transformers 5's own
mask code exports to a graph ONNX Runtime's quantization pre-processing cannot take.
GPT-2's ``Conv1D`` layers become the ``nn.Linear`` they are transposed, so pruning,
quantization and MAC counting see ordinary Linear layers; :mod:`compresskit.models.hf_save`
turns them back when it writes a Hugging Face directory.

Example::

    loaded = load_hf_directory(Path("./my-distilbert"))
    loaded.model(ids, mask).shape
    # -> torch.Size([2, 4])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compresskit.data.preprocessing import Preprocessing
from compresskit.errors import CompressKitError, MissingDependencyError, first_line
from compresskit.tasks import task_names

# exp(-1e4) is exactly 0 in fp32, and -1e4 survives fp16 / int8 ranges better than -inf.
MASK_NEG = -1.0e4
# Decoder-only model types: their attention is causal.
CAUSAL_TYPES = frozenset(
    {"gpt2", "gpt_neo", "gptj", "gpt_neox", "gpt_bigcode", "opt", "bloom", "llama", "mistral"}
    | {"qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "falcon", "codegen", "ctrl"}
)
# Position tables that start after the padding index (fairseq's convention).
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}
# model type -> (config field of the feed-forward width, name suffixes of its first and
# second layer): the one width channel pruning may change and the config still express.
FFN_LAYERS = {
    "bert": ("intermediate_size", "intermediate.dense", "output.dense"),
    "roberta": ("intermediate_size", "intermediate.dense", "output.dense"),
    "xlm-roberta": ("intermediate_size", "intermediate.dense", "output.dense"),
    "vit": ("intermediate_size", "mlp.fc1", "mlp.fc2"),
    "distilbert": ("hidden_dim", "ffn.lin1", "ffn.lin2"),
    "gpt2": ("n_inner", "mlp.c_fc", "mlp.c_proj"),
}
# Head class name suffix -> the task it computes.
HEAD_TASKS = {
    "ForSequenceClassification": "classification",
    "ForImageClassification": "classification",
}
Modality = Literal["text", "image"]


class _Shared:
    """A value every deep copy of the wrapper shares (a tokenizer: large, never changed)."""

    def __init__(self, value: Any) -> None:  # noqa: ANN401
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


class HuggingFaceModel(nn.Module):
    """A Hugging Face model as compresskit calls it: ``model(*inputs) -> tensor``.

    Text models take ``(input_ids, attention_mask)``, vision models ``(pixel_values,)``.
    ``task`` picks the output: ``embedding`` returns the last hidden state mean-pooled
    over real tokens (sentence-transformers' pooling), any other task ``.logits``.

    Example::

        wrapped = HuggingFaceModel(bert_classifier, task="classification", modality="text",
                                   causal=False)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str,
        modality: Modality,
        causal: bool,
        conv1d: tuple[str, ...] = (),
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.modality = modality
        self.causal = causal
        self.conv1d = conv1d  # modules that were Conv1D (names inside ``model``)
        self._preprocessing = _Shared(preprocessing)
        # A bare encoder judged as a classifier: a linear head on its normalised mean-pooled
        # embedding, fitted on the training split (:mod:`compresskit.models.hf_head`).
        self.head: nn.Linear | None = None

    @property
    def needs_head(self) -> bool:
        """A bare encoder asked to classify, whose head is not fitted yet."""
        return self.task == "classification" and self.head is None and not self._has_logits

    @property
    def _has_logits(self) -> bool:
        return type(self.model).__name__.endswith(tuple(HEAD_TASKS))

    @property
    def preprocessing(self) -> Preprocessing | None:
        return self._preprocessing.value  # type: ignore[no-any-return]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The names of its inputs, as the tokenizer / image processor calls them."""
        return ("pixel_values",) if self.modality == "image" else ("input_ids", "attention_mask")

    @property
    def config(self) -> Any:  # noqa: ANN401
        return self.model.config

    def fixed_widths(self) -> list[str]:
        """Linear layers whose output width the config fixes: every one but the first
        layer of each feed-forward block (all of them for an unknown model type)."""
        ffn = FFN_LAYERS.get(self.config.model_type)
        return [
            name
            for name, module in self.named_modules()
            if isinstance(module, nn.Linear) and not (ffn and name.endswith("." + ffn[1]))
        ]

    def additive_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(batch, 1, 1 or length, length): 0 where a position may be attended, -1e4 where not."""
        additive = (1.0 - mask[:, None, None, :].to(dtype)) * MASK_NEG
        if self.causal:
            position = torch.arange(mask.shape[1], device=mask.device)
            future = (position[None, :] > position[:, None]).to(dtype) * MASK_NEG
            additive = additive + future[None, None]
        return additive

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.modality == "image":
            (pixels,) = inputs
            raw = self.model(pixel_values=pixels)
            mask = None
        else:
            ids, mask = inputs
            dtype = next(self.model.parameters()).dtype
            raw = self.model(input_ids=ids, attention_mask=self.additive_mask(mask, dtype))
        if self._has_logits:  # classification, fidelity: the class logits
            return raw.logits  # type: ignore[no-any-return]
        hidden = raw.last_hidden_state
        if mask is None:
            pooled = hidden.mean(1)
        else:
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.task == "embedding":
            return pooled  # type: ignore[no-any-return]
        if self.head is None:
            raise CompressKitError(
                "a bare encoder classifies through a head fitted on the data; run it through "
                "compresskit compress with --data"
            )
        return self.head(nn.functional.normalize(pooled, dim=-1))  # type: ignore[no-any-return]


@dataclass
class HFLoad:
    """A loaded directory: the wrapped model, the recipe to rebuild it, its inputs' makers."""

    model: HuggingFaceModel
    source: dict[str, Any]
    preprocessing: Preprocessing
    notes: list[str] = field(default_factory=list)


def _transformers() -> Any:  # noqa: ANN401
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "hf", "a Hugging Face model") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def head_class(config: Any, task: str | None, *, where: str) -> tuple[Any, str]:  # noqa: ANN401
    """The transformers class to load and the task it computes: the one ``architectures``
    names, or the head ``task`` asks for; never a class from outside transformers."""
    transformers = _transformers()
    if getattr(config, "auto_map", None):
        raise CompressKitError(
            f"{where}: its config names custom code (auto_map); compresskit never runs code "
            "from a model directory: save it as a model class that ships with transformers"
        )
    if task is not None and task not in task_names():
        raise CompressKitError(f"--task {task!r} is not one of {', '.join(task_names())}")
    architecture = (getattr(config, "architectures", None) or [None])[0]
    if architecture is not None and not hasattr(transformers, architecture):
        raise CompressKitError(
            f"{where}: architecture {architecture} is not a class of transformers "
            f"{transformers.__version__}; upgrade transformers or re-save the model"
        )
    suffix = next((s for s in HEAD_TASKS if architecture and architecture.endswith(s)), None)
    bare = architecture is not None and "For" not in architecture
    if task == "embedding" or (task is None and bare):
        return transformers.AutoModel, "embedding"
    if task == "classification" and bare:
        return transformers.AutoModel, "classification"  # a head is fitted on the data
    if suffix is not None and task in (None, HEAD_TASKS[suffix], "fidelity"):
        return getattr(transformers, architecture), task or HEAD_TASKS[suffix]
    head = architecture or "no architectures in config.json"
    raise CompressKitError(
        f"{where}: {head} has no head compresskit scores "
        f"({'task ' + task if task else 'classification or embedding'}); give --task "
        "embedding to compress its encoder as a sentence embedder, or save a "
        "...ForSequenceClassification / ...ForImageClassification model"
    )


def _modality(config: Any) -> Modality:  # noqa: ANN401
    image_config = getattr(config, "vision_config", config)
    return (
        "image"
        if hasattr(image_config, "num_channels") and hasattr(image_config, "image_size")
        else "text"
    )


def load_hf_directory(path: Path, *, task: str | None = None) -> HFLoad:
    """Load the model directory ``path`` with its task head (see the module docstring)."""
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        raise CompressKitError(
            f"checkpoint {path}: unreadable config.json ({first_line(error)})"
        ) from None
    cls, chosen = head_class(config, task, where=f"checkpoint {path}")
    try:
        model = cls.from_pretrained(
            str(path), attn_implementation="eager", dtype=torch.float32, trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise CompressKitError(f"checkpoint {path}: cannot load ({first_line(error)})") from None
    notes: list[str] = []
    preprocessing = _preprocessing(path, model.config, notes)
    wrapped = wrap(model, task=chosen, preprocessing=preprocessing)
    source = {
        "kind": "hf",
        "path": str(path),
        "class": type(model).__name__,
        "task": chosen,
        "config": model.config.to_dict(),
    }
    return HFLoad(wrapped.eval(), source, preprocessing, notes)


def wrap(
    model: nn.Module, *, task: str, preprocessing: Preprocessing | None = None
) -> HuggingFaceModel:
    """``model`` (a transformers model) wrapped, its Conv1D layers turned into Linear."""
    config: Any = model.config
    modality = _modality(config)
    causal = config.model_type in CAUSAL_TYPES or bool(getattr(config, "is_decoder", False))
    conv1d = conv1d_to_linear(model)
    # No key/value cache: one forward over the whole sequence (a cache's concatenations
    # are all torch-pruning and the exporters would see of it).
    if hasattr(config, "use_cache"):
        config.use_cache = False
    return HuggingFaceModel(
        model,
        task=task,
        modality=modality,
        causal=causal,
        conv1d=conv1d,
        preprocessing=preprocessing,
    )


def conv1d_to_linear(model: nn.Module) -> tuple[str, ...]:
    """Replace every transformers ``Conv1D`` (a Linear whose weight is stored transposed)
    by the equivalent ``nn.Linear``, in place; returns their names."""
    from transformers.pytorch_utils import Conv1D

    names = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        linear = nn.Linear(module.nx, module.nf, dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            linear.bias.copy_(module.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, linear)
        names.append(name)
    return tuple(names)


def max_positions(config: Any) -> int | None:  # noqa: ANN401
    """How many positions the model's position table holds (None: no table)."""
    value = getattr(config, "max_position_embeddings", None)
    if not isinstance(value, int):
        return None
    return value - POSITION_OFFSET.get(config.model_type, 0)


def _preprocessing(path: Path, config: Any, notes: list[str]) -> Preprocessing:  # noqa: ANN401
    transformers = _transformers()
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    if all(name.startswith("LABEL_") for name in label2id):
        label2id = {}  # transformers' placeholder names mean nothing
    if _modality(config) == "image":
        vision = getattr(config, "vision_config", config)
        size = int(vision.image_size) if isinstance(vision.image_size, int) else None
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(str(path), use_fast=False)
        except (OSError, ValueError, ImportError):
            processor = None
            notes.append(
                "no image processor in the directory: images are resized and scaled to [0, 1]"
            )
        return Preprocessing(
            modality="image",
            image_processor=processor,
            label2id=label2id,
            image_size=(size, size) if size else None,
            channels=int(vision.num_channels),
            input_names=("pixel_values",),
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, TypeError):
        tokenizer = None
        notes.append("no tokenizer in the directory: give pre-tokenized data (.npz of ids)")
    if tokenizer is not None and tokenizer.pad_token is None:
        # GPT-2 has none; its classifier finds the last real token by config.pad_token_id.
        tokenizer.pad_token = tokenizer.eos_token
        notes.append(f"the tokenizer has no padding token: padding with {tokenizer.eos_token!r}")
    if tokenizer is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    limit = max_positions(config)
    model_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_limit, int) and model_limit < 1_000_000:
        limit = min(limit, model_limit) if limit else model_limit
    return Preprocessing(
        modality="text",
        tokenizer=tokenizer,
        max_length=limit,
        label2id=label2id,
        input_names=("input_ids", "attention_mask"),
    )


def builder(source: dict[str, Any]) -> Any:  # noqa: ANN401  (a () -> nn.Module)
    """How :func:`compresskit.models.checkpoint.restore_model` rebuilds a saved Hugging
    Face model: the class from its saved config (weights come from the file)."""
    transformers = _transformers()

    def build() -> nn.Module:
        config = dict(source["config"])
        config_class = type(transformers.AutoConfig.for_model(config.pop("model_type")))
        hf_config = config_class.from_dict(config)
        hf_config._attn_implementation = "eager"
        name = source.get("class")
        if name is None:  # saved before task heads were kept: a bare encoder
            return transformers.AutoModel.from_config(hf_config)  # type: ignore[no-any-return]
        cls = transformers.AutoModel if name == "auto" else getattr(transformers, name)
        model = cls._from_config(hf_config) if hasattr(cls, "_from_config") else cls(hf_config)
        preprocessing = None
        location = Path(source.get("path", ""))
        if source.get("path") and (location / "config.json").is_file():
            preprocessing = _preprocessing(location, model.config, [])
        wrapped = wrap(model.float(), task=source["task"], preprocessing=preprocessing)
        if source.get("head_classes"):
            width = int(model.config.hidden_size)
            wrapped.head = nn.Linear(width, int(source["head_classes"]))
        return wrapped

    return build
