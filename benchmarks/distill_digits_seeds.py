"""The digits acceptance test of tests/passes/test_distill_digits.py, over seeds 0, 1, 2.

Prints agreement with the (deliberately imperfect) teacher for a 70%-pruned DigitsCNN
student fine-tuned on labels vs distilled with logit KD at T=1
(``compresskit.testing.experiments.digits_kd_vs_labels``). About 20 s on 2 quiet cores:
    python benchmarks/distill_digits_seeds.py
"""

from __future__ import annotations

import torch

from compresskit.testing.experiments import digits_kd_vs_labels


def main() -> None:
    torch.set_num_threads(1)
    for seed in (0, 1, 2):
        results = digits_kd_vs_labels(seed)
        print(seed, {k: round(v, 4) for k, v in results.items()}, flush=True)


if __name__ == "__main__":
    main()
