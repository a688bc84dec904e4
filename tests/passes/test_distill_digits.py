"""On digits, a heavily pruned student trained with distillation agrees with its teacher
more than the same student fine-tuned on labels alone (fixed seed).

The teacher is deliberately imperfect (trained on 120 labelled digits, ~93% accurate):
agreement with the teacher is then a different goal from accuracy, which is the case
distillation is for. `benchmarks/distill_digits_seeds.py` runs the same experiment
(`compresskit.testing.experiments.digits_kd_vs_labels`) over seeds 0, 1, 2 (359 eval
images each).
"""

from __future__ import annotations

from compresskit.testing.experiments import digits_kd_vs_labels


def test_distillation_beats_label_fine_tuning_on_agreement_with_the_teacher() -> None:
    results = digits_kd_vs_labels(seed=0)
    assert results["distill"] > results["labels"], results
