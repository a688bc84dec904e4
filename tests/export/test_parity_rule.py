"""The ORT-vs-torch parity rule cannot be made to pass by the outputs themselves: integer
outputs match exactly, absurd magnitudes do not widen the tolerance without bound, and a
NaN or infinity that only one side has fails."""

from __future__ import annotations

import numpy as np
import pytest

from compresskit.export.verify import (
    MAX_TOLERANCE_SCALE,
    ParityCheck,
    compare,
    parity_tolerance,
)


def _check(reference: np.ndarray, actual: np.ndarray, precision: str = "fp32"):
    check = ParityCheck(precision, decisions=False)  # type: ignore[arg-type]
    check.update(reference, actual)
    return check.result()


def test_ordinary_logits_pass_within_and_fail_beyond_the_tolerance() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((32, 10)).astype(np.float32) * 5
    assert _check(reference, reference + 1e-5).ok
    worse = reference.copy()
    worse[3, 4] += 0.5  # 1e-3 of a max |output| near 15 is 0.015
    result = _check(reference, worse)
    assert not result.ok and result.max_abs_error == pytest.approx(0.5, rel=1e-3)


def test_absurd_magnitudes_do_not_make_a_huge_error_pass() -> None:
    """The issue's case: 2.25e15 max error was "ok" next to outputs of 8.7e18."""
    reference = np.full((4, 3), 8.7e18)
    actual = reference.copy()
    actual[1, 2] -= 2.25e15
    result = _check(reference, actual)
    assert result.tolerance == pytest.approx(1e-3 * MAX_TOLERANCE_SCALE)
    assert not result.ok
    assert parity_tolerance("fp32", reference)[0] == pytest.approx(result.tolerance)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_integer_outputs_must_match_exactly(dtype: type) -> None:
    reference = (np.arange(24).reshape(4, 6) * 10**6).astype(dtype)
    assert _check(reference, reference.copy(), "int8").ok
    actual = reference.copy()
    actual[0, 1] = not actual[0, 1] if dtype is np.bool_ else actual[0, 1] + 1
    result = _check(reference, actual, "int8")
    assert result.tolerance == 0.0 and not result.ok


def test_a_nan_or_infinity_on_one_side_fails() -> None:
    reference = np.ones((4, 5), np.float32)
    actual = reference.copy()
    actual[2, 2] = np.nan
    result = _check(reference, actual)
    assert not result.ok and result.nonfinite == 1
    # the same infinity on both sides is agreement; NaN on both is a broken model
    both = reference.copy()
    both[0, 0] = np.inf
    assert _check(both, both.copy()).ok
    nan = reference.copy()
    nan[0, 0] = np.nan
    assert not _check(nan, nan.copy()).ok
    assert compare(reference, actual, tolerance=1.0, min_agreement=0.0).nonfinite == 1


def test_int8_keeps_its_wider_tolerance_on_ordinary_outputs() -> None:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((16, 10)).astype(np.float32) * 3
    noisy = reference + rng.uniform(-0.05, 0.05, reference.shape).astype(np.float32)
    assert _check(reference, noisy, "int8").ok
    assert not _check(reference, noisy, "fp32").ok


def _int8_check(torch_out: np.ndarray, ort_out: np.ndarray, float_out: np.ndarray):
    check = ParityCheck("int8", decisions=False)
    check.update(torch_out, ort_out, baseline=float_out)
    return check.result()


def test_int8_outputs_that_differ_by_the_quantization_noise_agree() -> None:
    """Two roundings of one int8 model (torch's fake quant, ORT's kernels) drift apart in a
    deep network until they are two draws of its quantization noise: that is no export bug,
    though a value may then miss the 10% tolerance."""
    rng = np.random.default_rng(0)
    float_out = rng.uniform(-1, 1, (64, 384)).astype(np.float32)  # tolerance: 0.1
    torch_out = float_out + rng.normal(0, 0.03, float_out.shape).astype(np.float32)
    ort_out = float_out + rng.normal(0, 0.03, float_out.shape).astype(np.float32)
    result = _int8_check(torch_out, ort_out, float_out)
    assert result.max_abs_error > result.tolerance  # the plain rule alone would fail it
    assert result.quantization_error == pytest.approx(0.03 * np.sqrt(2 / np.pi), rel=0.05)
    assert result.within_noise and result.ok
    # Without the baseline nothing says how large the noise is: the plain rule decides.
    assert not _check(torch_out, ort_out, "int8").ok


def test_errors_beyond_the_quantization_noise_still_fail() -> None:
    rng = np.random.default_rng(1)
    float_out = rng.uniform(-1, 1, (64, 384)).astype(np.float32)
    torch_out = float_out + rng.normal(0, 0.01, float_out.shape).astype(np.float32)
    # A wrong scale in one layer: ORT is off by far more than int8 rounding explains.
    broken = float_out + rng.normal(0, 0.1, float_out.shape).astype(np.float32)
    result = _int8_check(torch_out, broken, float_out)
    assert not result.within_noise and not result.ok
    # One value off by more than three tolerances fails, however small the mean error.
    spike = torch_out.copy()
    spike[5, 7] += 4 * _int8_check(torch_out, torch_out, float_out).tolerance
    result = _int8_check(torch_out, spike, float_out)
    assert result.mean_abs_error < result.quantization_error and not result.ok
    # Float graphs are held to rounding: the noise allowance is for int8 only.
    check = ParityCheck("fp32", decisions=False)
    check.update(torch_out, broken, baseline=float_out)
    assert check.result().quantization_error is None and not check.result().ok
