"""The acceptance of issue 14, from the CLI alone: Hugging Face task models saved with
``save_pretrained`` plus a CSV of texts or a folder of images compress with the default
policy; every candidate's ONNX passes parity and its Hugging Face directory reloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compresskit.cli.main import cli
from compresskit.export.verify import ort_session

transformers = pytest.importorskip("transformers")

from compresskit.testing.hf import (  # noqa: E402
    save_tiny_text_model,
    save_tiny_vit,
    write_image_folder,
    write_text_csv,
)

REPO = Path(__file__).resolve().parents[2]


def _check_run(run: Path, head: type, inputs: dict[str, np.ndarray], labels: list[str]) -> None:
    report = json.loads((run / "report.json").read_text())
    assert report["labels"] == labels  # the label-name mapping is kept
    assert [c["name"] for c in report["candidates"]] == ["pruned-int8", "int8"]
    assert not report["failed"]
    for candidate in report["candidates"]:
        assert candidate["parity"]["ok"], candidate["parity"]
        assert candidate["latency"], "measured on cpu-ort"
        directory = run / candidate["files"]["hf"]
        reloaded = head.from_pretrained(directory).eval()
        session = ort_session(run / candidate["files"]["onnx"])
        expected = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})[0]
        import torch

        with torch.no_grad():
            got = reloaded(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
        # The directory holds the weights as int8 rounds them; ORT also rounds activations.
        scale = float(np.abs(expected).max())
        assert np.abs(got - expected).max() <= 0.25 * scale + 1e-3, candidate["name"]
    pruned = json.loads((run / "pruned-int8" / "hf" / "config.json").read_text())
    assert pruned != json.loads((run / "int8" / "hf" / "config.json").read_text())


def test_distilbert_and_a_csv_from_a_fresh_process(tmp_path: Path) -> None:
    model = save_tiny_text_model("distilbert", tmp_path / "distilbert")
    data = write_text_csv(tmp_path / "reviews.csv", count=80)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMPRESSKIT_QUIET": "1"}
    command = [sys.executable, "-m", "compresskit", "compress", str(model), "--data", str(data)]
    command += ["--out", str(tmp_path / "run"), "--latency-seconds", "0.05"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 3), done.stderr[-2000:]  # 3: a budget missed, not a failure
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    encoded = tokenizer(
        ["a great film", "the plot was dull and boring"], padding=True, return_tensors="np"
    )
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    _check_run(
        tmp_path / "run",
        transformers.AutoModelForSequenceClassification,
        inputs,
        ["bad", "fine", "good"],
    )
    assert json.loads((tmp_path / "run/pruned-int8/hf/config.json").read_text())["hidden_dim"] == 32


def test_vit_and_an_image_folder(tmp_path: Path) -> None:
    model = save_tiny_vit(tmp_path / "vit")
    folder = write_image_folder(tmp_path / "images", per_class=12)
    result = CliRunner().invoke(
        cli,
        [
            "compress",
            str(model),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "run"),
            "--latency-seconds",
            "0.05",
        ],
    )
    assert result.exit_code in (0, 3), result.output
    from PIL import Image

    processor = transformers.AutoImageProcessor.from_pretrained(model)
    images = [Image.open(folder / name / "0.png").convert("RGB") for name in ("circle", "square")]
    pixels = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
    _check_run(
        tmp_path / "run",
        transformers.AutoModelForImageClassification,
        {"pixel_values": pixels},
        ["circle", "square", "stripes"],
    )


def test_gpt2_and_a_csv_with_named_columns(tmp_path: Path) -> None:
    model = save_tiny_text_model("gpt2", tmp_path / "gpt2")
    data = write_text_csv(tmp_path / "reviews.csv", count=80)
    result = CliRunner().invoke(
        cli,
        [
            "compress",
            str(model),
            "--data",
            str(data),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--out",
            str(tmp_path / "run"),
            "--latency-seconds",
            "0.05",
        ],
    )
    assert result.exit_code in (0, 3), result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    # 24 positions: text is timed at 24 tokens, not the target's 128, so every model is measured.
    assert all(c["latency"] for c in report["candidates"])
    ids = np.array([[2, 14, 15, 8, 3], [2, 20, 9, 3, 3]], dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": (ids != 3).astype(np.int64)}
    inputs["attention_mask"][:, 3] = 1  # the [SEP] that ends the first text is real
    _check_run(
        tmp_path / "run",
        transformers.AutoModelForSequenceClassification,
        inputs,
        ["bad", "fine", "good"],
    )
