"""Text for causal language models: documents tokenized with the model's own tokenizer,
split by document, packed into fixed-length windows.

Documents come from a ``.txt`` file (documents separated by blank lines), a ``.jsonl``
file (one document per line, in a text field), or a folder of ``.txt`` files (one
document per file). Each document goes whole to one split, so no evaluation text is ever
trained on: documents are ranked by a hash of their text (or, for a corpus with a fixed
hold-out, the named documents are the evaluation split) and the first go to eval, the
next to val, the rest to train. Within a split, documents are joined with the tokenizer's
end-of-sequence token and cut into windows of ``seq_len`` tokens (the remainder dropped).

Batches are ``(input_ids, labels)`` with ``labels`` the window's own token ids: the task
shifts them (position ``t`` predicts token ``t + 1``), so a window needs no padding and the
same tensor serves the model's input, next-token losses and perplexity.

Example::

    bundle = load_text("corpus.txt", tokenizer, seq_len=256)
    ids, labels = next(iter(bundle.loader("eval", batch_size=4)))
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset, TensorDataset

from compresskit.data.bundle import DataBundle
from compresskit.errors import CompressKitError

TEXT_SUFFIXES = (".txt", ".jsonl")
MIN_DOCUMENTS = 3  # one each for eval, val and train


@dataclass(frozen=True)
class Document:
    """One document: ``key`` names it (a title, a file, a line) and picks its split."""

    key: str
    text: str


def read_documents(path: str | Path, *, text_field: str = "text") -> list[Document]:
    """The documents of a ``.txt`` file, a ``.jsonl`` file or a folder of ``.txt`` files."""
    path = Path(path)
    if not path.exists():
        raise CompressKitError(f"--data {path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CompressKitError(
                f"--data {path}: the folder holds no .txt files; give one .txt file per "
                "document, a .txt file or a .jsonl file"
            )
        return [Document(str(f.relative_to(path)), _read(f)) for f in files]
    if path.suffix == ".txt":
        blocks = [b.strip() for b in _read(path).replace("\r\n", "\n").split("\n\n")]
        return [Document(f"{path.name}#{i}", b) for i, b in enumerate(blocks) if b]
    if path.suffix == ".jsonl":
        return _jsonl(path, text_field)
    raise CompressKitError(
        f"--data {path}: {path.suffix or 'no suffix'} is not a text format; give a .txt "
        "file, a .jsonl file with a text field, or a folder of .txt files"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CompressKitError(
            f"--data {path}: not UTF-8 text (byte {error.start}); convert it to UTF-8"
        ) from None


def _jsonl(path: Path, field: str) -> list[Document]:
    documents = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CompressKitError(
                f"--data {path}:{number}: not a JSON object ({error.msg}); give one JSON "
                "object per line"
            ) from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else "none"
            raise CompressKitError(
                f"--data {path}:{number}: no text field {field!r} (keys: {keys}); name the "
                "field that holds the text"
            )
        if text.strip():
            documents.append(Document(f"{path.name}:{number}", text))
    return documents


def _rank(document: Document) -> str:
    return hashlib.sha1(document.text.encode("utf-8")).hexdigest()


def assign_splits(
    documents: Sequence[Document],
    *,
    eval_fraction: float = 0.1,
    val_fraction: float = 0.05,
    eval_keys: Collection[str] | None = None,
    name: str = "text",
) -> dict[str, list[Document]]:
    """Documents per split (eval, val, train), each in corpus order. Deterministic: the
    same documents land in the same split on every run, whatever the seed."""
    if len(documents) < MIN_DOCUMENTS:
        raise CompressKitError(
            f"data {name}: {len(documents)} document(s), but splitting by document needs at "
            f"least {MIN_DOCUMENTS}; separate documents with a blank line (.txt), one per "
            "line (.jsonl) or one per file (folder)"
        )
    if eval_keys is not None:
        wanted = set(eval_keys)
        present = {d.key for d in documents}
        missing = sorted(wanted - present)
        if missing:
            raise CompressKitError(
                f"data {name}: {len(missing)} held-out document(s) are not in the corpus "
                f"(e.g. {missing[0]!r}); the corpus differs from the one the list was made "
                "for: install the version it names"
            )
        held = [d for d in documents if d.key in wanted]
        rest = [d for d in documents if d.key not in wanted]
        n_val = max(1, round(len(rest) * val_fraction))
        ranked = sorted(rest, key=_rank)
        val_keys = {d.key for d in ranked[:n_val]}
        chosen = {"eval": {d.key for d in held}, "val": val_keys}
    else:
        ranked = sorted(documents, key=_rank)
        n_eval = max(1, round(len(documents) * eval_fraction))
        n_val = max(1, round(len(documents) * val_fraction))
        n_eval = min(n_eval, len(documents) - 2)
        n_val = min(n_val, len(documents) - n_eval - 1)
        chosen = {
            "eval": {d.key for d in ranked[:n_eval]},
            "val": {d.key for d in ranked[n_eval : n_eval + n_val]},
        }
    splits: dict[str, list[Document]] = {"eval": [], "val": [], "train": []}
    for document in documents:
        split = next((s for s, keys in chosen.items() if document.key in keys), "train")
        splits[split].append(document)
    return splits


def pack_windows(
    token_lists: Sequence[Sequence[int]], *, seq_len: int, separator: int | None
) -> torch.Tensor:
    """Documents' tokens joined (``separator`` after each) and cut into ``seq_len`` windows."""
    stream: list[int] = []
    for tokens in token_lists:
        stream.extend(tokens)
        if separator is not None:
            stream.append(separator)
    count = len(stream) // seq_len
    return torch.tensor(stream[: count * seq_len], dtype=torch.long).view(count, seq_len)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (documents are joined by EOS)."""
    if tokenizer is None:
        raise CompressKitError(
            "text data needs the model's tokenizer and there is none; give a model directory "
            "with its tokenizer files (tokenizer.json or tokenizer_config.json) or a .gguf"
        )
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(ids) for ids in encoded]


def text_bundle(
    documents: Sequence[str | Document],
    tokenizer: Any,
    *,
    seq_len: int,
    name: str = "text",
    seed: int = 0,
    eval_fraction: float = 0.1,
    val_fraction: float = 0.05,
    calibration_windows: int = 64,
    eval_keys: Collection[str] | None = None,
    max_train_windows: int | None = None,
    max_val_windows: int | None = None,
    max_eval_windows: int | None = None,
) -> DataBundle:
    """A causal-LM :class:`DataBundle` of ``documents`` (see the module docstring).

    ``eval_keys`` names the held-out documents (a fixed evaluation set); the seed picks
    only the calibration windows and the training order. ``max_*_windows`` keep the first
    windows of a split (a slice of a large corpus; validation runs at every check)."""
    if seq_len < 2:
        raise CompressKitError(f"sequence length {seq_len}: give at least 2 tokens per window")
    docs = [
        d if isinstance(d, Document) else Document(f"{name}#{i}", d)
        for i, d in enumerate(documents)
    ]
    splits = assign_splits(
        docs,
        eval_fraction=eval_fraction,
        val_fraction=val_fraction,
        eval_keys=eval_keys,
        name=name,
    )
    separator = getattr(tokenizer, "eos_token_id", None)
    windows: dict[str, torch.Tensor] = {}
    for split, members in splits.items():
        tokens = tokenize(tokenizer, [d.text for d in members])
        packed = pack_windows(tokens, seq_len=seq_len, separator=separator)
        if len(packed) == 0:
            total = sum(len(t) for t in tokens)
            raise CompressKitError(
                f"data {name}: the {split} split ({len(members)} documents) has {total} "
                f"tokens, fewer than one window of {seq_len}; give more text or a shorter "
                "sequence length"
            )
        windows[split] = packed
    limits = {"train": max_train_windows, "val": max_val_windows, "eval": max_eval_windows}
    for split, limit in limits.items():
        if limit is not None:
            windows[split] = windows[split][:limit]
    train = _dataset(windows["train"])
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    calibration = Subset(train, order[: min(calibration_windows, len(train))].tolist())
    return DataBundle(
        name=name,
        num_classes=len(tokenizer),
        input_shape=(seq_len,),
        train=train,
        val=_dataset(windows["val"]),
        calibration=calibration,
        eval=_dataset(windows["eval"]),
        seed=seed,
        task="causal-lm",
    )


def _dataset(ids: torch.Tensor) -> TensorDataset:
    return TensorDataset(ids, ids)  # labels are the ids: the task shifts them


def load_text(
    path: str | Path,
    tokenizer: Any,
    *,
    seq_len: int,
    seed: int = 0,
    text_field: str = "text",
    calibration_windows: int = 64,
) -> DataBundle:
    """A ``.txt``/``.jsonl`` file or a folder of ``.txt`` files as a causal-LM bundle."""
    documents = read_documents(path, text_field=text_field)
    return text_bundle(
        documents,
        tokenizer,
        seq_len=seq_len,
        name=Path(path).name,
        seed=seed,
        calibration_windows=calibration_windows,
    )
