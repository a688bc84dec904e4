"""Benchmark model files, ours or anyone's (``compresskit bench``): ONNX files and torch
checkpoints on any targets, the first model being the baseline of the speedups.

>>> runs = bench_files([Path("a.onnx"), Path("b.onnx")], ["cpu-ort"], [1, 8])  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compresskit.bench.harness import BenchModel, measure_targets
from compresskit.bench.measurement import BenchDocument, TargetRun
from compresskit.errors import CompressKitError
from compresskit.export.targets import builtin_target_names, load_target


def parse_batches(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise CompressKitError(f"--batch {text!r}: give positive integers like 1,8,32") from None
    return sizes


def _onnx_sample(path: Path, shapes: Sequence[tuple[int, ...]]) -> tuple[list[np.ndarray], bool]:
    """Random inputs for an ONNX file (dtypes from its graph; shapes from ``shapes`` or
    the graph, symbolic axes after the batch being a sequence), and whether it has a
    dynamic sequence axis."""
    import onnx

    from compresskit.export.kernels import sample_feed

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise CompressKitError(f"{path}: not a readable ONNX file ({error})") from None
    feed = list(sample_feed(graph, batch=1).values())
    initializers = {i.name for i in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initializers]
    dynamic_sequence = any(
        len(i.type.tensor_type.shape.dim) > 1 and not i.type.tensor_type.shape.dim[1].dim_value
        for i in inputs
    )
    if shapes:
        if len(shapes) != len(feed):
            raise CompressKitError(
                f"{path} has {len(feed)} inputs but {len(shapes)} --input-shape were given"
            )
        rng = np.random.default_rng(0)
        feed = [
            rng.standard_normal((1, *shape)).astype(x.dtype)
            if np.issubdtype(x.dtype, np.floating)
            else np.ones((1, *shape), dtype=x.dtype)
            for x, shape in zip(feed, shapes, strict=True)
        ]
    return feed, dynamic_sequence


def bench_files(
    paths: Sequence[Path],
    targets: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    seconds: float = 1.0,
    input_shapes: Sequence[tuple[int, ...]] = (),
    data: str | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    threads: int | None = None,
) -> list[TargetRun]:
    """Measure ``paths`` on ``targets`` ("all": every built-in target; those that cannot
    run here come back skipped, with the reason)."""
    if not paths:
        raise CompressKitError("bench needs at least one MODEL (.onnx file or checkpoint)")
    names = builtin_target_names() if list(targets) == ["all"] else list(targets)
    resolved = [load_target(name) for name in names]
    if threads is not None:  # a thread sweep: one run per count, same targets otherwise
        resolved = [t.model_copy(update={"threads": threads}) for t in resolved]
    wants_onnx = any(t.runtime == "onnxruntime" for t in resolved)
    labels = _labels(paths)
    with tempfile.TemporaryDirectory(prefix="compresskit-bench-export-") as tmp:
        models: list[BenchModel] = []
        sample: list[np.ndarray] | None = None
        dynamic_sequence = False
        for path, label in zip(paths, labels, strict=True):
            if path.suffix == ".onnx":
                models.append(BenchModel(label, onnx=path))
                if sample is None and data is None:
                    sample, dynamic_sequence = _onnx_sample(path, input_shapes)
                continue
            model, model_sample, sequence = _torch_model(
                path, arch=arch, trust_pickle=trust_pickle, data=data, shapes=input_shapes
            )
            if sample is None:
                sample, dynamic_sequence = model_sample, sequence
            onnx_path = None
            if wants_onnx:
                from compresskit.export.onnx import export_onnx

                onnx_path = Path(tmp) / f"{len(models)}.onnx"
                export_onnx(
                    model,
                    tuple(_torch_inputs([x[:2] for x in model_sample])),
                    onnx_path,
                    dynamic_sequence=sequence,
                )
            models.append(
                BenchModel(
                    label, onnx=onnx_path, checkpoint=path, arch=arch, trust_pickle=trust_pickle
                )
            )
        if data is not None:
            from compresskit.data import load_data

            bundle = load_data(data)
            sample = [x.numpy() for x in bundle.example_inputs(8)]
            dynamic_sequence = bundle.dynamic_sequence
        assert sample is not None
        return measure_targets(
            resolved,
            models,
            sample,
            batch_sizes=batch_sizes,
            max_seconds=seconds,
            dynamic_sequence=dynamic_sequence,
        )


def _labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the file stem, or the parent/stem when stems collide."""
    stems = [p.stem for p in paths]
    labels = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _torch_inputs(sample: Sequence[np.ndarray]) -> list[Any]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(x)) for x in sample]


def _torch_model(
    path: Path,
    *,
    arch: str | None,
    trust_pickle: bool,
    data: str | None,
    shapes: Sequence[tuple[int, ...]],
) -> tuple[Any, list[np.ndarray], bool]:
    """The loaded module, a real or random input sample, and dynamic_sequence."""
    from compresskit.models.loading import load_model

    loaded = load_model(path, arch=arch, trust_pickle=trust_pickle)
    if shapes:
        rng = np.random.default_rng(0)
        return (
            loaded.model,
            [rng.standard_normal((8, *s)).astype(np.float32) for s in shapes],
            False,
        )
    spec = data or loaded.default_data
    if spec is None:
        raise CompressKitError(
            f"{path}: give the input shape with --input-shape C,H,W (or --data) to bench a "
            "torch checkpoint"
        )
    from compresskit.data import load_data

    bundle = load_data(spec)
    return loaded.model, [x.numpy() for x in bundle.example_inputs(8)], bundle.dynamic_sequence


def runs_json(paths: Sequence[Path], runs: Sequence[TargetRun]) -> dict[str, Any]:
    """The ``--json`` document (:class:`~compresskit.bench.measurement.BenchDocument`):
    every target's run, skipped ones with their reason, in the measurement schema."""
    from compresskit.bench.noise import usable_cores

    document = BenchDocument(
        models=[str(p) for p in paths], cores=usable_cores(), targets=list(runs)
    )
    return document.model_dump(mode="json")
