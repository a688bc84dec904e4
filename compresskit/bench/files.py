"""Benchmark model files, ours or anyone's (``compresskit bench``): ONNX files and torch
checkpoints on any targets, the first model being the baseline of the speedups.

Example::

    runs = bench_files([Path("a.onnx"), Path("b.onnx")], ["cpu-ort"], [1, 8])
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compresskit.bench.harness import BenchModel, measure_targets
from compresskit.bench.measurement import BenchDocument, TargetRun
from compresskit.errors import CompressKitError, first_line
from compresskit.export.standalone import check_elements
from compresskit.export.targets import builtin_target_names, load_target
from compresskit.paths import regular_file

SEQUENCE = 16  # the length of a symbolic axis after the batch, when nothing says otherwise


MAX_BATCH = 4096


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (each 1 .. 4096, duplicates dropped)."""
    try:
        sizes = list(dict.fromkeys(int(b) for b in text.split(",") if b.strip()))
        if not sizes or min(sizes) < 1 or max(sizes) > MAX_BATCH:
            raise ValueError
    except ValueError:
        raise CompressKitError(
            f"--batch {text!r}: give integers from 1 to {MAX_BATCH} like 1,8,32"
        ) from None
    return sizes


@dataclass(frozen=True)
class OnnxInputs:
    """What an ONNX file takes, read from its graph: a random sample of every input (in
    graph order, batch 1 or the fixed batch), the fixed batch if the graph has one, and
    whether an axis after the batch is symbolic (a sequence)."""

    sample: list[np.ndarray]
    fixed_batch: int | None
    dynamic_sequence: bool


def onnx_inputs(path: Path, shapes: Sequence[tuple[int, ...]] = ()) -> OnnxInputs:
    """The inputs of ``path`` from its own signature (names, dtypes, dims); ``shapes``
    (without the batch axis) replace the graph's dims after the batch."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise CompressKitError(f"{path}: not a readable ONNX file ({first_line(error)})") from None
    if not model.ir_version or not model.graph.node:  # protobuf reads b"" as an empty model
        raise CompressKitError(f"{path}: not a readable ONNX file (no graph in it)")
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if shapes and len(shapes) != len(inputs):
        raise CompressKitError(
            f"{path} has {len(inputs)} input(s) ({', '.join(i.name for i in inputs)}) but "
            f"{len(shapes)} --input-shape were given; give one per input"
        )
    rng = np.random.default_rng(0)
    batches, sample, sequence = set(), [], False
    for index, graph_input in enumerate(inputs):
        tensor = graph_input.type.tensor_type
        if not tensor.HasField("shape") or not tensor.shape.dim:
            raise CompressKitError(
                f"{path}: input {graph_input.name!r} has no shape in the graph; give it with "
                "--input-shape"
            )
        dims = [d.dim_value or None for d in tensor.shape.dim]
        sequence = sequence or any(d is None for d in dims[1:])
        if dims[0] is not None:
            batches.add(dims[0])
        rest = list(shapes[index]) if shapes else [d or SEQUENCE for d in dims[1:]]
        check_elements(rest, what=f"{path} input {graph_input.name!r}")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except Exception:
            raise CompressKitError(
                f"{path}: input {graph_input.name!r} has an element type bench cannot "
                "generate; time it through a benchmark script"
            ) from None
        shape = (dims[0] or 1, *rest)
        if dtype.kind == "f":
            sample.append(rng.standard_normal(shape).astype(dtype))
        else:  # token ids, masks, flags: ones are valid for all of them
            sample.append(np.ones(shape, dtype=dtype))
    if len(batches) > 1:
        raise CompressKitError(f"{path}: inputs have different fixed batch sizes {batches}")
    return OnnxInputs(sample, next(iter(batches), None), sequence and not shapes)


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
    trust_factory: bool = False,
    threads: int | None = None,
    profile: bool = False,
) -> list[TargetRun]:
    """Measure ``paths`` on ``targets`` ("all": every built-in target; those that cannot
    run here come back skipped, with the reason). An ONNX file is fed inputs made from its
    own signature (or ``data``); a model that cannot load or run, or a batch it cannot
    take, comes back with the reason rather than stopping the others."""
    if not paths:
        raise CompressKitError("bench needs at least one MODEL (.onnx file or checkpoint)")
    for path in paths:
        if not path.is_dir():
            regular_file(path, what="model")
    names = builtin_target_names() if list(targets) == ["all"] else list(targets)
    resolved = [load_target(name) for name in names]
    if threads is not None:  # a thread sweep: one run per count, same targets otherwise
        resolved = [t.model_copy(update={"threads": threads}) for t in resolved]
    wants_onnx = any(t.runtime == "onnxruntime" for t in resolved)
    labels = _labels(paths)
    with tempfile.TemporaryDirectory(prefix="compresskit-bench-export-") as tmp:
        models: list[BenchModel] = []
        shared: list[np.ndarray] | None = None
        dynamic_sequence = False
        if data is not None:
            from compresskit.data import load_data

            bundle = load_data(data)
            shared = [x.numpy() for x in bundle.example_inputs(8)]
            dynamic_sequence = bundle.dynamic_sequence
        for path, label in zip(paths, labels, strict=True):
            if path.suffix == ".onnx":
                own = None if data is not None else onnx_inputs(path, input_shapes)
                models.append(
                    BenchModel(
                        label,
                        onnx=path,
                        sample=own.sample if own else None,
                        fixed_batch=own.fixed_batch if own else None,
                        dynamic_sequence=own.dynamic_sequence if own else None,
                    )
                )
                continue
            model, model_sample, sequence = _torch_model(
                path,
                arch=arch,
                trust_pickle=trust_pickle,
                trust_factory=trust_factory,
                data=data,
                shapes=input_shapes,
            )
            if shared is None:
                shared, dynamic_sequence = model_sample, sequence
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
                    label,
                    onnx=onnx_path,
                    checkpoint=path,
                    arch=arch,
                    trust_pickle=trust_pickle,
                    trust_factory=trust_factory,
                )
            )
        return measure_targets(
            resolved,
            models,
            shared if shared is not None else [],
            batch_sizes=batch_sizes,
            max_seconds=seconds,
            dynamic_sequence=dynamic_sequence,
            profile=profile,
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
    trust_factory: bool,
    data: str | None,
    shapes: Sequence[tuple[int, ...]],
) -> tuple[Any, list[np.ndarray], bool]:
    """The loaded module, a real or random input sample, and dynamic_sequence."""
    from compresskit.models.loading import load_model

    loaded = load_model(path, arch=arch, trust_pickle=trust_pickle, trust_factory=trust_factory)
    if shapes:
        rng = np.random.default_rng(0)
        return (
            loaded.model,
            [rng.standard_normal((2, *s)).astype(np.float32) for s in shapes],
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
