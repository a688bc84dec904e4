"""Where the time goes: ORT's profiler in the benchmark worker, each node mapped back to
the torch module it came from (float via the dynamo exporter, int8 via TorchScript)."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from compresskit.bench.harness import BenchModel, measure_targets
from compresskit.bench.profile import UNMAPPED, exported_modules, owner_of
from compresskit.context import Context
from compresskit.export.onnx import export_onnx
from compresskit.passes.quantize import Quantize, QuantizeConfig
from compresskit.quantization import residuals
from compresskit.quantization.modules import QuantConv2d
from compresskit.testing import TinyResidualCNN, tiny_data


def _modules(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


def test_profiles_map_every_costly_node_to_a_module_of_the_model(tmp_path: Path) -> None:
    data = tiny_data()
    torch.manual_seed(0)
    float_model = TinyResidualCNN().eval()
    int8_model = Quantize(QuantizeConfig()).apply(
        copy.deepcopy(float_model),
        Context(data=data, teacher=None, example_inputs=data.example_inputs(2)),
    )
    example = data.example_inputs(2)
    paths = {
        name: export_onnx(model, example, tmp_path / f"{name}.onnx").path
        for name, model in (("float", float_model), ("int8", int8_model))
    }
    (run,) = measure_targets(
        ["cpu-ort"],
        [BenchModel(name, onnx=path) for name, path in paths.items()],
        [x.numpy() for x in example],
        batch_sizes=[1, 16],
        max_seconds=0.2,
        profile=True,
    )
    for name, model in (("float", float_model), ("int8", int8_model)):
        measured = run.model(name)
        assert measured is not None and len(measured.profiles) == 2
        for profile in measured.profiles:
            assert profile.runs >= 3 and profile.kernel_ms > 0
            assert profile.unmapped_ms == 0.0, profile
            assert sum(layer.share for layer in profile.layers) > 0.999
            # by kernel type: the same kernel time, split by what ran, costliest first
            assert sum(profile.by_op.values()) == pytest.approx(profile.kernel_ms)
            assert list(profile.by_op.values()) == sorted(profile.by_op.values(), reverse=True)
            assert set(profile.by_op) == {op for layer in profile.layers for op in layer.ops}
            for layer in profile.layers:
                assert layer.module in _modules(model), (name, layer)
                assert "act_in" not in layer.module and "int8_" not in layer.module
    int8_rows = {layer.module: layer.ops for layer in run.model("int8").profiles[1].layers}
    assert "QLinearConv" in int8_rows["conv1"] and "QLinearConv" in int8_rows["conv2"]
    assert "QLinearAdd" in int8_rows[""]  # the add of the model's own forward
    float_rows = {layer.module for layer in run.model("float").profiles[1].layers}
    assert {"conv1", "conv2", "head"} <= float_rows
    assert "QLinearConv" in run.model("int8").profiles[1].by_op
    assert not any(op.startswith("QLinear") for op in run.model("float").profiles[1].by_op)


def test_scopes_of_both_exporters_name_the_module() -> None:
    def node(name: str, op: str, inputs: list[str], scopes: str | None = None) -> onnx.NodeProto:
        made = helper.make_node(op, inputs, [f"{name}_out"], name=name)
        if scopes is not None:
            prop = made.metadata_props.add()
            prop.key, prop.value = "pkg.torch.onnx.name_scopes", scopes
        return made

    weight = helper.make_tensor("layer2.shortcut.0.weight_quantized", TensorProto.INT8, [1], [1])
    shared = helper.make_tensor("embed.norm.bias", TensorProto.FLOAT, [1], [0.0])
    nodes = [
        # an exporter may share one tensor among equal parameters: the scope decides
        node("node_add_5", "Add", ["x", shared.name], "['', 'block.fc', 'add_5']"),
        node("node_add_6", "Add", ["x", shared.name], "['', 'embed.norm', 'add_6']"),
        node("/layer2/shortcut/shortcut.0/act_in/QuantizeLinear", "QuantizeLinear", ["x"]),
        node("/layer2/shortcut/shortcut.0/Conv", "Conv", ["x", weight.name]),
        node("/layer1/relu_1/Relu", "Relu", ["x"]),
        node("/layer1/int8_relu_1/QuantizeLinear", "QuantizeLinear", ["x"]),
        node("node_add_3", "Add", ["x", "x"], "['', 'layer1', 'add_3']"),
        node("node_relu_2", "Relu", ["x"], "['', 'layer1', 'layer1.relu', 'relu_2']"),
        node("/Flatten", "Flatten", ["x"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [],
        [weight, shared],
    )
    found = exported_modules(helper.make_model(graph))
    assert found == {
        "node_add_5": "block.fc",
        "node_add_6": "embed.norm",
        "/layer2/shortcut/shortcut.0/act_in/QuantizeLinear": "layer2.shortcut.0",
        "/layer2/shortcut/shortcut.0/Conv": "layer2.shortcut.0",
        "/layer1/relu_1/Relu": "layer1.relu",
        "/layer1/int8_relu_1/QuantizeLinear": "layer1",
        "node_add_3": "layer1",
        "node_relu_2": "layer1.relu",
        "/Flatten": "",
    }
    assert UNMAPPED not in found.values()


def test_quantizer_scopes_are_the_ones_quantization_names() -> None:
    layer = QuantConv2d.convert_(torch.nn.Conv2d(1, 1, 1))
    children = {name for name, _ in layer.named_children()}
    assert {owner_of(f"block.conv.{child}") for child in children} == {"block.conv"}
    assert owner_of(f"block.{residuals.CONTAINER}.int8_relu_1") == "block"
    assert owner_of("block.int8_add_in0") == "block"


def _profile(batch: int, rows: list[tuple[str, str, float]]) -> dict:
    total = sum(ms for *_, ms in rows)
    return {
        "target": "cpu-ort",
        "batch": batch,
        "runs": 10,
        "kernel_ms": total,
        "layers": [
            {"module": module, "ops": [op], "ms": ms, "share": ms / total, "nodes": 1}
            for module, op, ms in rows
        ],
        "by_op": {op: ms for _, op, ms in sorted(rows, key=lambda row: -row[2])},
    }


def test_profiles_render_as_tables_a_chart_and_a_terminal_line(tmp_path: Path) -> None:
    from rich.console import Console
    from test_report import report_dict

    from compresskit.bench.markdown import render_markdown
    from compresskit.bench.output import write_reports
    from compresskit.bench.report import Report
    from compresskit.cli.tables import print_report

    data = report_dict()
    data["baseline"]["profiles"] = [
        _profile(b, [("conv1", "Conv", 0.4 * b), ("", "Add", 0.1 * b)]) for b in (1, 8)
    ]
    data["candidates"][0]["profiles"] = [
        _profile(
            8, [("conv1", "QLinearConv", 0.3), ("", "QLinearAdd", 0.15), ("head", "QGemm", 0.05)]
        )
    ]
    report = Report.model_validate(data)
    markdown = render_markdown(report)
    assert "**where the time goes on cpu-ort, batch 8 (kernels 0.500 ms per call" in markdown
    assert "| conv1 | QLinearConv | 0.300 | 60% |" in markdown
    assert "| (top level) | QLinearAdd | 0.150 | 30% |" in markdown
    assert "**by kernel type on cpu-ort, batch 8**" in markdown
    assert "| QLinearConv | 0.300 | 60% |" in markdown and "| QGemm | 0.050 | 10% |" in markdown
    write_reports(report, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert 'alt="kernel time per module"' in html and "<h2>Where the time goes</h2>" in html
    assert "<td>conv1</td><td>QLinearConv</td><td>0.300</td><td>60%</td>" in html
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "where the time goes (cpu-ort b8): conv1 60% (QLinearConv)" in text
    assert "baseline: where the time goes (cpu-ort b8): conv1 80% (Conv)" in text
    assert Report.load(tmp_path / "report.json") == report
