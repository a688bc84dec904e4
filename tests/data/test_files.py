"""Data from files a user has: tables of texts and labels, folders of images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from compresskit.data import Columns, Preprocessing, load_data
from compresskit.data.files import label_ids
from compresskit.errors import CompressKitError

pytest.importorskip("transformers")

from compresskit.testing.hf import texts_and_labels, tiny_tokenizer, write_image_folder  # noqa: E402


@pytest.fixture(scope="module")
def text() -> Preprocessing:
    return Preprocessing(modality="text", tokenizer=tiny_tokenizer(), max_length=12)


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_tables_of_texts_and_label_names(suffix: str, tmp_path: Path, text: Preprocessing) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = [{"body": t, "stars": label} for t, label in texts_and_labels(50)]
    path = _write(tmp_path / f"reviews{suffix}", rows)
    bundle = load_data(str(path), preprocessing=text, columns=Columns(text="body", label="stars"))
    assert bundle.labels == ("bad", "fine", "good") and bundle.num_classes == 3
    assert bundle.dynamic_sequence
    ids, mask, y = next(iter(bundle.loader("eval", batch_size=100)))
    assert ids.shape[1] <= 12  # never longer than the model's positions
    assert len(y) == 10  # 20% held out
    # The ids are the tokenizer's: the first eval row, decoded, is one of the texts.
    first = tiny_tokenizer().decode(ids[0][mask[0].bool()], skip_special_tokens=True)
    assert any(first == " ".join(t.split()[: len(first.split())]) for t, _ in texts_and_labels(50))


def test_label_names_follow_the_model_and_ids_stay(text: Preprocessing) -> None:
    ids, names = label_ids(["Positive", "negative"], {"NEGATIVE": 0, "POSITIVE": 1}, where="d")
    assert ids.tolist() == [1, 0] and names == ("NEGATIVE", "POSITIVE")
    ids, names = label_ids([2, 0, "1"], {}, where="d")
    assert ids.tolist() == [2, 0, 1] and names is None
    with pytest.raises(CompressKitError, match="label\\(s\\) meh are not among the model's"):
        label_ids(["meh"], {"NEGATIVE": 0, "POSITIVE": 1}, where="d")
    with pytest.raises(CompressKitError, match="row 2 has no label"):
        label_ids(["a", ""], {}, where="d")


def test_a_split_column_keeps_the_fixed_test_set(tmp_path: Path, text: Preprocessing) -> None:
    rows = [
        {"text": t, "label": label, "split": "test" if i % 4 == 0 else "train"}
        for i, (t, label) in enumerate(texts_and_labels(40))
    ]
    bundle = load_data(str(_write(tmp_path / "r.csv", rows)), preprocessing=text)
    assert len(bundle.eval) == 10 and len(bundle.train) + len(bundle.val) == 30


def test_table_errors_name_the_fix(tmp_path: Path, text: Preprocessing) -> None:
    path = _write(tmp_path / "r.csv", [{"words": "a film", "label": "good"}])
    with pytest.raises(
        CompressKitError, match="no text column among words, label; name it with --text-column"
    ):
        load_data(str(path), preprocessing=text)
    with pytest.raises(CompressKitError, match="no column 'body' for --text-column"):
        load_data(str(path), preprocessing=text, columns=Columns(text="body"))
    with pytest.raises(CompressKitError, match="text needs the model's tokenizer"):
        load_data(str(path), columns=Columns(text="words"))
    with pytest.raises(CompressKitError, match="no such file"):
        load_data(str(tmp_path / "missing.jsonl"), preprocessing=text)


def test_image_folder_without_a_processor(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", per_class=5, size=12)
    bundle = load_data(str(folder))
    x, y = next(iter(bundle.loader("train", batch_size=64)))
    assert tuple(x.shape[1:]) == (3, 12, 12) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert bundle.labels == ("circle", "square", "stripes") and set(y.tolist()) <= {0, 1, 2}
    sized = Preprocessing(modality="image", image_size=(8, 8), channels=1)
    x, _ = next(iter(load_data(str(folder), preprocessing=sized).loader("eval")))
    assert tuple(x.shape[1:]) == (1, 8, 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompressKitError, match="without class folders of images"):
        load_data(str(empty))
    assert torch.equal(bundle.example_inputs(2)[0], load_data(str(folder)).example_inputs(2)[0])
