"""``compresskit compress MODEL --data corpus.txt --policy causal-lm`` on a tiny Llama
directory: every candidate is a Hugging Face directory that reloads with its pruned config
and a KV-cache ONNX folder onnxruntime-genai runs (MatMulNBits where int4 was asked),
scored by perplexity; bad inputs fail in one line with exit code 2."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from compresskit.cli.main import cli
from compresskit.testing.tiny_lm_export import TINY_TEXT

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime_genai")

# The causal-lm policy's graph with tiny amounts: prune depth and width, distil a few
# steps, int4 at export; beside it the original with int4 weights only.
TINY_POLICY = {
    "version": 1,
    "name": "tiny-causal-lm",
    "nodes": [
        {
            "id": "depth",
            "pass": "prune_decoder_depth",
            "config": {"remove": 1, "protect_first": 0, "protect_last": 0, "criterion": "hidden"},
        },
        {"id": "width", "pass": "prune_decoder_width", "after": "depth", "config": {"mlp": 0.5}},
        {
            "id": "distill",
            "pass": "distill",
            "after": "width",
            "config": {
                "losses": [{"kind": "forward_kl"}],
                "train": {"steps": 2, "batch_size": 4, "warmup_steps": 0},
            },
        },
        {
            "id": "pruned-int4",
            "pass": "quantize_int4",
            "after": "distill",
            "config": {"algorithm": "rtn"},
        },
        {"id": "int4", "pass": "quantize_int4", "config": {"calibration_windows": 4}},
    ],
    "batch_sizes": [1],
    "sequence_length": 16,
}


def _corpus(path: Path, documents: int = 24) -> Path:
    """Documents of the tiny tokenizer's own sentences, separated by blank lines."""
    texts = [
        " ".join(TINY_TEXT[(i + j) % len(TINY_TEXT)] for j in range(3)) for i in range(documents)
    ]
    path.write_text("\n\n".join(texts), encoding="utf-8")
    return path


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-causal-lm.yaml"
    path.write_text(yaml.safe_dump(TINY_POLICY))
    return path


def _has_matmul_nbits(folder: Path) -> bool:
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return any(node.op_type == "MatMulNBits" for node in graph.node)


def test_compress_a_causal_lm_directory_with_a_text_file(tiny_lm_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    args = ["compress", str(tiny_lm_dir), "--data", str(_corpus(tmp_path / "corpus.txt"))]
    args += ["--policy", str(_policy(tmp_path)), "--out", str(run), "--latency-seconds", "0.05"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    assert report["task"] == "causal-lm"
    assert [c["name"] for c in report["candidates"]] == ["pruned-int4", "int4"]
    for entry in [report["baseline"], *report["candidates"]]:
        assert entry["metrics"]["perplexity"] > 1, entry["name"]
        assert entry["parity"]["ok"], entry["parity"]
        assert len(entry["continuations"]) == 5
    assert report["baseline"]["metrics"]["agreement"] == 1.0
    assert report["baseline"]["int8_coverage"] == 0.0
    for name in ("pruned-int4", "int4"):
        candidate = next(c for c in report["candidates"] if c["name"] == name)
        folder = run / candidate["files"]["onnx"]
        assert (folder / "genai_config.json").is_file() and _has_matmul_nbits(folder)
        assert candidate["int8_coverage"] > 0.5  # MACs in MatMulNBits kernels
        assert candidate["onnx_bytes"] < report["baseline"]["onnx_bytes"]
        assert candidate["generation"]["decode_tok_s"]["1"] > 0
    pruned = AutoModelForCausalLM.from_pretrained(run / "pruned-int4" / "hf")
    assert pruned.config.num_hidden_layers == 1 and pruned.config.intermediate_size == 64
    unpruned = AutoModelForCausalLM.from_pretrained(run / "int4" / "hf")
    assert unpruned.config.num_hidden_layers == 2
    markdown = (run / "report.md").read_text()
    assert "Greedy continuations" in markdown and "The capital of France is" in markdown
    page = (run / "report.html").read_text()
    assert "<caption>Greedy continuations" in page and "The capital of France is" in page


def _fails(args: list[str], *expected: str) -> None:
    result = CliRunner().invoke(cli, ["compress", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and all(e in lines[0] for e in expected), result.output


def test_text_too_short_for_one_window(tiny_lm_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "short.txt"
    data.write_text("one\n\ntwo\n\nthree\n\nfour", encoding="utf-8")
    _fails(
        [str(tiny_lm_dir), "--data", str(data), "--out", str(tmp_path / "r")],
        "fewer than one window",
    )


def test_jsonl_without_the_text_field(tiny_lm_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text('{"body": "hello world"}\n', encoding="utf-8")
    _fails([str(tiny_lm_dir), "--data", str(data)], "no text field 'text'", "keys: body")


def test_folder_without_text_files(tiny_lm_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    _fails([str(tiny_lm_dir), "--data", str(tmp_path / "docs")], "holds no .txt files")


def test_directory_without_a_tokenizer(tiny_lm_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_lm_dir / name, model / name)
    _fails([str(model), "--data", str(_corpus(tmp_path / "c.txt"))], "has no tokenizer")


def test_directory_without_a_causal_lm_head(tiny_lm_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "bare"
    shutil.copytree(tiny_lm_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
    args = [str(model), "--task", "causal-lm", "--data", str(_corpus(tmp_path / "c.txt"))]
    _fails(args, "LlamaModel, which has no causal-LM head")


def test_gguf_without_the_gguf_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if it were not installed
    _fails([str(model), "--data", str(_corpus(tmp_path / "c.txt"))], "compresskit[gguf]")


def test_a_causal_lm_directory_loads_with_its_tokenizer(tiny_lm_dir: Path) -> None:
    from compresskit.models.loading import load_model

    loaded = load_model(tiny_lm_dir)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.source["task"] == "causal-lm"
    assert loaded.preprocessing is not None and loaded.preprocessing.tokenizer is not None
    assert loaded.preprocessing.max_length == 256  # the model's positions


def test_without_onnxruntime_genai_the_run_scores_in_torch_and_says_so(
    tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "depth.yaml"
    node = {"id": "depth", "pass": "prune_decoder_depth"}
    node["config"] = {"remove": 1, "protect_first": 0, "protect_last": 0, "criterion": "hidden"}
    policy.write_text(yaml.safe_dump({**TINY_POLICY, "nodes": [node]}))
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # as if it were not installed
    run = tmp_path / "run"
    args = ["compress", str(tiny_lm_dir), "--data", str(_corpus(tmp_path / "c.txt"))]
    args += ["--policy", str(policy), "--out", str(run)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 4, result.output  # nothing could be timed
    report = json.loads((run / "report.json").read_text())
    assert "compresskit[llm]" in report["skipped_targets"]["genai-cpu"]
    (candidate,) = report["candidates"]
    assert candidate["export_skipped"] and "compresskit[llm]" in candidate["export_skipped"]
    assert candidate["metrics"]["perplexity"] > 1 and candidate["files"]["hf"] == "depth/hf"
    assert candidate["continuations"][0]["runtime"] == "torch"
    assert not (run / "depth" / "onnx").exists()


def test_gguf_with_another_task(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    _fails([str(model), "--task", "classification"], "holds a causal language model")


def test_a_causal_lm_without_data(tiny_lm_dir: Path) -> None:
    _fails([str(tiny_lm_dir)], "a causal language model needs --data")
