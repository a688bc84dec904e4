"""Does ORT's fused attention kernel make the MiniLM embedder faster? Measured, not assumed.

    python benchmarks/real_minilm_embedding.py --rows "compresskit minilm-embedder-fidelity"
    python benchmarks/minilm_attention_fusion.py            # ~10 min
    python benchmarks/minilm_attention_fusion.py --quick    # 128 snippets, short timings

At 128 tokens the float attention core (the batched MatMuls, the head Transposes, the mask
Add and Softmax) is the largest share of the int8 embedder's time that int8 does not
shrink. ``attention_fusion.fuse_attention`` replaces it, layer by layer, with one
``com.microsoft.MultiHeadAttention`` (the padding mask as its attention bias). Rows: the
fp32 teacher's ONNX file and the embedding-fidelity recipe's ``narrower-int8`` (from the
run of ``real_minilm_embedding.py``), each as exported and fused; scored as that script
scores (cosine to the fp32 torch teacher) and timed on the same input sets, interleaved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import real_minilm_embedding  # noqa: E402
from attention_fusion import fuse_attention  # noqa: E402
from common import Candidate  # noqa: E402

CASE = "minilm_attention_fusion"
# The recipe's int8 narrower model, as real_minilm_embedding.py's run left it.
NARROWER = Path("compresskit-minilm-embedder-fidelity") / "narrower-int8" / "model.onnx"


def _fused(case: Any, src: Path, name: str, kind: common.Kind) -> Candidate:
    import onnx

    model = onnx.load(str(src))
    count = fuse_attention(model)
    if count == 0:
        raise ValueError(f"no attention core of {src} matched the fusion's pattern")
    dst = case.workdir / f"{name.replace(' ', '-')}.onnx"
    onnx.save(model, str(dst))
    return Candidate(name, kind, onnx_path=dst, notes={"fused_attention_layers": count})


def _narrower(case: Any) -> Path:
    path = common.ARTIFACTS / real_minilm_embedding.CASE / NARROWER
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run python benchmarks/real_minilm_embedding.py --rows "
            '"compresskit minilm-embedder-fidelity" first'
        )
    return path


@common.producer("fp32-ort fused attention", "baseline")
def fp32_fused(case: Any) -> Candidate:
    return _fused(case, case.fp32_onnx(), "fp32-ort fused attention", "baseline")


@common.producer("narrower-int8", "compresskit")
def narrower(case: Any) -> Candidate:
    return Candidate("narrower-int8", "compresskit", onnx_path=_narrower(case))


@common.producer("narrower-int8 fused attention", "compresskit")
def narrower_fused(case: Any) -> Candidate:
    return _fused(case, _narrower(case), "narrower-int8 fused attention", "compresskit")


def describe(case: Any, rows: list[common.Row], meta: dict[str, Any]) -> tuple[str, str]:
    table, preface = real_minilm_embedding.describe(case, rows, meta)
    return table, (
        "The attention core of each model as exported, and fused into ORT's "
        f"MultiHeadAttention (`attention_fusion.py`). {preface}"
    )


SCRIPT = common.CaseScript(
    name=CASE,
    doc=__doc__ or "",
    quick_help="128 snippets, short timings",
    load_case=lambda quick: real_minilm_embedding.load_case(quick=quick, name=CASE),
    producers=[
        real_minilm_embedding.minilm_case.fp32_ort,
        fp32_fused,
        narrower,
        narrower_fused,
    ],
    min_repeats=7,
    describe=describe,
)

if __name__ == "__main__":
    common.case_main(SCRIPT)
