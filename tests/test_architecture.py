"""The package's shape: no import cycles, a light ``import compresskit``, and listing
commands that answer without loading torch (click's ``tests/test_imports.py`` idea)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compresskit"
HEAVY = ("torch", "onnxruntime", "onnx", "transformers", "bitsandbytes", "torch_pruning")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every compresskit module -> the compresskit modules it imports anywhere in its code
    (function-level and ``TYPE_CHECKING`` imports included: a cycle there is still one)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _folder(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_another_that_imports_it_back() -> None:
    graph = import_graph()
    # The package facade re-exports the public API lazily; nothing imports it back.
    graph.pop("compresskit")
    assert not cycles(graph)


def test_no_subpackage_imports_another_that_imports_it_back() -> None:
    folders: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        if module == "compresskit":
            continue
        source = _folder(module)
        folders.setdefault(source, set()).update(
            _folder(t) for t in targets if _folder(t) != source and t != "compresskit"
        )
    assert not cycles(folders)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_compresskit_loads_nothing_heavy() -> None:
    loaded = _loaded_after("import compresskit")
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("command", [["policies", "list"], ["policies", "show", "default"]])
def test_listing_commands_do_not_import_torch(command: list[str]) -> None:
    code = (
        "import contextlib, io\nfrom compresskit.cli.main import cli\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    cli.main({command!r}, standalone_mode=False)"
    )
    loaded = _loaded_after(code)
    assert "torch" not in loaded and "onnxruntime" not in loaded


def test_targets_list_does_not_import_torch() -> None:
    code = (
        "import contextlib, io\nfrom compresskit.cli.main import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['targets', 'list'], standalone_mode=False)"
    )
    assert "torch" not in _loaded_after(code)
