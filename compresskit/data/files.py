"""Texts and labels from a file: ``.csv`` / ``.tsv``, ``.jsonl`` (or a ``.json`` list of
records) and ``.parquet``, tokenized with the model's own tokenizer.

The text column is ``--text-column`` (default: the first of text, sentence, review,
content), the label column ``--label-column`` (default: label, labels, sentiment, category, class,
target). Label names become ids: the model's own names when it has them (its
``label2id``, matched case-insensitively), else sorted; integer labels stay as they are.
A ``split`` column, when present, puts rows marked test / eval / validation into the
held-out evaluation split (a fixed test set); otherwise 20% of the rows are held out.

Example::

    bundle = load_table(Path("reviews.csv"), preprocessing=pre)
    bundle.labels
    # -> ('negative', 'positive')
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from compresskit.data.bundle import DataBundle, split
from compresskit.data.preprocessing import Preprocessing
from compresskit.errors import CompressKitError, MissingDependencyError, first_line

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "sentiment", "category", "class", "target")
EVAL_SPLITS = frozenset({"test", "eval", "evaluation", "validation", "valid", "dev"})


@dataclass(frozen=True)
class Columns:
    """Which columns of a table hold the text and the label (None: the usual names)."""

    text: str | None = None
    label: str | None = None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The records of a table file, as dicts (every row, every column)."""
    if not path.is_file():
        raise CompressKitError(f"--data {path}: no such file")
    try:
        if path.suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise CompressKitError(f"--data {path}: a .json file must hold a list of records")
            return rows
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise CompressKitError(f"--data {path}: not readable ({first_line(error)})") from None
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("pyarrow", "data", "reading .parquet files") from None
    try:
        return pq.read_table(str(path)).to_pylist()  # type: ignore[no-any-return]
    except Exception as error:  # pyarrow raises its own untyped errors
        raise CompressKitError(f"--data {path}: not readable ({first_line(error)})") from None


def _column(
    rows: list[dict[str, Any]],
    given: str | None,
    usual: Sequence[str],
    *,
    what: str,
    option: str,
    path: Path,
) -> str:
    names = list(rows[0]) if rows else []
    if given is not None:
        if given not in names:
            raise CompressKitError(
                f"--data {path}: no column {given!r} for {option} (columns: {', '.join(names)})"
            )
        return given
    lowered = {name.lower(): name for name in names}
    found = next((lowered[name] for name in usual if name in lowered), None)
    if found is None:
        raise CompressKitError(
            f"--data {path}: no {what} column among {', '.join(names) or 'no columns'}; name "
            f"it with {option}"
        )
    return found


def label_ids(
    values: Sequence[Any], model_labels: dict[str, int], *, where: str
) -> tuple[torch.Tensor, tuple[str, ...] | None]:
    """Label ids for ``values`` and the class names by id (None: the labels were ids)."""
    if any(v is None or (isinstance(v, str) and not v.strip()) for v in values):
        row = next(i for i, v in enumerate(values) if v is None or not str(v).strip())
        raise CompressKitError(f"{where}: row {row + 1} has no label; fill it in or drop the row")
    texts = [str(v).strip() for v in values]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values) or all(
        t.lstrip("-").isdigit() for t in texts
    ):
        ids = torch.tensor([int(t) for t in texts], dtype=torch.long)
        if int(ids.min()) < 0:
            raise CompressKitError(f"{where}: label {int(ids.min())} is negative; ids start at 0")
        return ids, None
    known = {name.lower(): index for name, index in model_labels.items()}
    if known:
        unknown = sorted({t for t in texts if t.lower() not in known})
        if unknown:
            raise CompressKitError(
                f"{where}: label(s) {', '.join(unknown[:3])} are not among the model's classes "
                f"({', '.join(model_labels)}); rename them or give ids"
            )
        names = [""] * (max(known.values()) + 1)
        for name, index in model_labels.items():
            names[index] = name
        return torch.tensor([known[t.lower()] for t in texts], dtype=torch.long), tuple(names)
    classes = sorted(set(texts))
    number = {name: i for i, name in enumerate(classes)}
    return torch.tensor([number[t] for t in texts], dtype=torch.long), tuple(classes)


def tokenize(
    preprocessing: Preprocessing, texts: list[str], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and masks of ``texts``, padded to the longest (at most ``length`` tokens)."""
    encoded = preprocessing.tokenizer(
        texts, padding="longest", truncation=True, max_length=length, return_tensors="pt"
    )
    return encoded["input_ids"].long(), encoded["attention_mask"].long()


def load_table(
    path: Path,
    *,
    preprocessing: Preprocessing | None,
    columns: Columns | None = None,
    seed: int = 0,
    calibration_size: int = 256,
    sequence_length: int | None = None,
) -> DataBundle:
    """A text classification bundle from a table file (see the module docstring)."""
    if preprocessing is None or preprocessing.tokenizer is None:
        raise CompressKitError(
            f"--data {path}: text needs the model's tokenizer; give a Hugging Face model "
            "directory that holds one (tokenizer.save_pretrained), or a .npz of token ids"
        )
    columns = columns or Columns()
    rows = read_rows(path)
    if not rows:
        raise CompressKitError(f"--data {path}: the file holds no rows")
    text = _column(rows, columns.text, TEXT_COLUMNS, what="text", option="--text-column", path=path)
    label = _column(
        rows, columns.label, LABEL_COLUMNS, what="label", option="--label-column", path=path
    )
    texts = [str(row.get(text) or "") for row in rows]
    y, names = label_ids(
        [row.get(label) for row in rows], preprocessing.label2id, where=f"--data {path}"
    )
    length = preprocessing.text_length(sequence_length)
    ids, mask = tokenize(preprocessing, texts, length)
    held = torch.tensor([str(row.get("split", "")).lower() in EVAL_SPLITS for row in rows])
    keyword: dict[str, Any] = {}
    if bool(held.any()) and not bool(held.all()):
        keyword = {"x_eval": (ids[held], mask[held]), "y_eval": y[held]}
        ids, mask, y = ids[~held], mask[~held], y[~held]
    bundle = split(
        (ids, mask), y, name=path.stem, seed=seed, calibration_size=calibration_size, **keyword
    )
    return replace(bundle, dynamic_sequence=True, labels=names)
