"""Each distillation loss is 0 when the student equals the teacher, and has finite
gradients otherwise; configs reject unknown losses with a clear message."""

from __future__ import annotations

import pytest
import torch
import yaml

from compresskit.distill import losses as L
from compresskit.errors import CompressKitError
from compresskit.passes.distill import DistillConfig
from compresskit.policies.loader import load_policy


def logits_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 5, generator=generator) * 3
    student = torch.randn(16, 5, generator=generator)
    labels = torch.randint(0, 5, (16,), generator=generator)
    return student, teacher, labels


LOGIT_LOSSES = {
    "kd": lambda s, t, y: L.kd_loss(s, t, 4.0),
    "nkd": lambda s, t, y: L.nkd_loss(s, t, y, temperature=2.0),
    "taid": lambda s, t, y: L.taid_loss(s, t, 0.6),
    "output_cosine": lambda s, t, y: L.output_loss(s, t, "cosine"),
    "output_mse": lambda s, t, y: L.output_loss(s, t, "mse"),
}
FEATURE_LOSSES = {
    "rkd_distance": L.rkd_distance,
    "rkd_angle": L.rkd_angle,
    "hidden_mse": lambda s, t: L.hidden_loss(s, t, metric="mse", channel_dim=1),
    "hidden_cosine": lambda s, t: L.hidden_loss(s, t, metric="cosine", channel_dim=1),
}


@pytest.mark.parametrize("name", sorted(LOGIT_LOSSES))
def test_logit_losses_vanish_at_equality_and_have_finite_gradients(name: str) -> None:
    fn = LOGIT_LOSSES[name]
    student, teacher, labels = logits_pair()
    assert float(fn(teacher.clone(), teacher, labels)) == pytest.approx(0.0, abs=1e-5)
    student.requires_grad_(True)
    loss = fn(student, teacher, labels)
    loss.backward()
    assert float(loss.detach()) > 1e-3
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(FEATURE_LOSSES))
def test_feature_losses_vanish_at_equality_and_have_finite_gradients(name: str) -> None:
    fn = FEATURE_LOSSES[name]
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(8, 6, 3, 3, generator=generator)
    assert float(fn(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-5)
    student = torch.randn(8, 6, 3, 3, generator=generator, requires_grad=True)
    loss = fn(student, teacher)
    loss.backward()
    assert float(loss.detach()) > 1e-4
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_rkd_compares_relations_so_widths_may_differ() -> None:
    teacher = torch.randn(8, 32)
    # The same geometry, rotated: distances and angles are identical.
    rotation, _ = torch.linalg.qr(torch.randn(32, 32))
    student = teacher @ rotation
    assert float(L.rkd_distance(student, teacher)) == pytest.approx(0.0, abs=1e-4)
    assert float(L.rkd_angle(student, teacher)) == pytest.approx(0.0, abs=1e-4)
    narrow = torch.randn(8, 4, requires_grad=True)
    L.rkd_angle(narrow, teacher).backward()
    assert torch.isfinite(narrow.grad).all()


def test_attention_kl_vanishes_at_equality_and_averages_mismatched_heads() -> None:
    teacher = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    assert float(L.attention_kl(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(2, 2, 5, 5, requires_grad=True)
    loss = L.attention_kl(torch.softmax(logits, -1), teacher)  # 2 heads vs 4
    loss.backward()
    assert float(loss) > 0 and torch.isfinite(logits.grad).all()


def test_taid_interpolation_rises_to_its_end() -> None:
    schedule = L.TAIDSchedule(L.TAIDLoss(t_start=0.4, t_end=1.0))
    values = []
    for step in range(1, 101):
        schedule.update(loss=1.0 / step, step=step, total=100)
        values.append(schedule.t)
    assert values == sorted(values) and values[0] >= 0.4 and values[-1] == pytest.approx(1.0)


def test_dts_temperature_is_high_early_low_late_and_higher_with_a_gap() -> None:
    spec = L.DTSLoss(t_min=1.0, t_max=8.0, momentum=0.0)
    schedule = L.DTSSchedule(spec)
    early = schedule.update(gap=0.0)
    schedule.progress = 1.0
    late = schedule.update(gap=0.0)
    late_gap = schedule.update(gap=2.0)
    assert early == pytest.approx(8.0) and late == pytest.approx(1.0)
    assert 1.0 < late_gap <= 8.0


def test_unknown_loss_kind_is_a_one_line_policy_error(tmp_path) -> None:
    policy = {
        "version": 1,
        "name": "bad",
        "nodes": [{"id": "d", "pass": "distill", "config": {"losses": [{"kind": "fitnet"}]}}],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(policy))
    with pytest.raises(CompressKitError) as error:
        load_policy(path)
    message = str(error.value)
    assert "\n" not in message and "losses" in message and "'kd'" in message


def test_short_form_and_losses_do_not_mix() -> None:
    with pytest.raises(ValueError, match="short form"):
        DistillConfig(alpha=0.3, losses=[{"kind": "kd"}])
    specs = DistillConfig(alpha=0.25, temperature=2.0).loss_specs()
    assert [(s.kind, s.weight) for s in specs] == [("task", 0.25), ("kd", 0.75)]
    assert DistillConfig(alpha=0).loss_specs()[0].kind == "kd"  # no labels needed
