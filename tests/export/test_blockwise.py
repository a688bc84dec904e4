"""Block-wise RTN / GPTQ codes and their MatMulNBits / GatherBlockQuantized layout."""

from __future__ import annotations

import numpy as np
import pytest

from compresskit.export.blockwise import pack_matmul_nbits, quantize_gptq, quantize_rtn


def _weight(rows: int = 24, k: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_error_is_within_half_a_step(bits: int, symmetric: bool) -> None:
    """Symmetric blocks map the largest magnitude to -2**(bits-1) exactly, so values of the
    other sign near it clip by up to one step (ORT's own scheme); the rest round."""
    weight = _weight()
    q = quantize_rtn(weight, bits=bits, block_size=32, symmetric=symmetric)
    assert q.codes.shape == (24, 96) and q.scales.shape == (24, 3)  # K padded to 3 blocks
    assert q.codes.max() <= 2**bits - 1
    step = np.repeat(np.abs(q.scales), 32, axis=1)[:, :80]
    error = np.abs(q.dequantize() - weight)
    rounded = error <= 0.5 * step + 1e-6
    assert np.all(rounded) if not symmetric else rounded.mean() > 0.95
    assert np.all(error <= step + 1e-6)


def test_gptq_with_identity_hessian_is_rtn_and_beats_it_on_correlated_inputs() -> None:
    rng = np.random.default_rng(1)
    weight = _weight()
    rtn = quantize_rtn(weight, bits=4, block_size=32, symmetric=False)
    plain = quantize_gptq(weight, np.eye(80), bits=4, block_size=32, symmetric=False, damp=1e-9)
    np.testing.assert_array_equal(plain.codes, rtn.codes)
    x = rng.standard_normal((1000, 80)) @ rng.standard_normal((80, 80)) * 0.3
    gptq = quantize_gptq(weight, x.T @ x / len(x), bits=4, block_size=32, symmetric=False)
    error = lambda q: np.linalg.norm(x @ (q.dequantize() - weight).T)  # noqa: E731
    assert error(gptq) < 0.9 * error(rtn)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_onnx_runtime_reads_the_packed_codes_as_we_dequantize_them(bits, symmetric) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    weight, k = _weight(), 80
    q = quantize_rtn(weight, bits=bits, block_size=32, symmetric=symmetric)
    codes, scales, zeros = pack_matmul_nbits(q)
    names = ["B", "s"] + (["z"] if zeros is not None else [])
    arrays = [codes, scales] + ([zeros] if zeros is not None else [])
    inits = [numpy_helper.from_array(a, n) for a, n in zip(arrays, names, strict=True)]
    inits.append(numpy_helper.from_array(np.array([24, -1], np.int64), "shape"))
    nodes = [
        helper.make_node(
            "MatMulNBits",
            ["A", *names],
            ["Y"],
            domain="com.microsoft",
            K=k,
            N=24,
            bits=bits,
            block_size=32,
            accuracy_level=0,
        ),
        helper.make_node("Reshape", ["B", "shape"], ["flat"]),
        helper.make_node(
            "GatherBlockQuantized",
            ["flat", "ids", *names[1:]],
            ["E"],
            domain="com.microsoft",
            bits=bits,
            block_size=32,
            gather_axis=0,
            quantize_axis=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("E", TensorProto.FLOAT, None),
        ],
        inits,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=opsets).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    a = np.random.default_rng(2).standard_normal((5, k)).astype(np.float32)
    ids = np.array([0, 7, 23])
    y, rows = session.run(None, {"A": a, "ids": ids})
    dequantized = q.dequantize()
    np.testing.assert_allclose(y, a @ dequantized.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rows[:, :k], dequantized[ids], atol=1e-6)


def test_float_zero_points_reproduce_a_gguf_q4_1_grid_in_matmul_nbits() -> None:
    """Q4_1 blocks are d * q + m; with float zero points the codes and scales recover them
    exactly, and MatMulNBits computes with them (a GGUF teacher's int4 weights are
    representable without loss)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    rows, blocks = 16, 3
    codes = rng.integers(0, 16, (rows, blocks, 32))
    codes[..., 0], codes[..., 1] = 0, 15  # every block spans the whole grid
    d = rng.uniform(0.01, 0.05, (rows, blocks, 1))
    m = rng.uniform(-0.3, 0.1, (rows, blocks, 1))
    weight = (d * codes + m).reshape(rows, -1).astype(np.float32)
    q = quantize_rtn(weight, bits=4, block_size=32, symmetric=False, float_zero=True)
    np.testing.assert_allclose(q.dequantize(), weight, atol=1e-6)
    assert not np.allclose(
        quantize_rtn(weight, bits=4, block_size=32, symmetric=False).dequantize(),
        weight,
        atol=1e-3,
    )  # integer zero points cannot hold an arbitrary minimum
    packed, scales, zeros = pack_matmul_nbits(q)
    assert zeros is not None and zeros.dtype == np.float32
    inits = [numpy_helper.from_array(a, n) for a, n in ((packed, "B"), (scales, "s"), (zeros, "z"))]
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "s", "z"],
        ["Y"],
        domain="com.microsoft",
        K=96,
        N=rows,
        bits=4,
        block_size=32,
        accuracy_level=4,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, 96])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    session = ort.InferenceSession(
        helper.make_model(graph, opset_imports=opsets).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    a = rng.standard_normal((4, 96)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"A": a})[0], a @ weight.T, rtol=1e-2, atol=1e-2)
