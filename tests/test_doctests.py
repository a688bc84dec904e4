"""The docstring examples of every compresskit module run and print what they show.

Examples that need files, downloads or training are ``Example::`` literal blocks, not
doctests; so no docstring may hide a broken example behind ``+SKIP``.
"""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

import compresskit

PACKAGE = Path(compresskit.__file__).parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Importing ``python -m compresskit``'s entry module runs the CLI; its source is checked
# for examples below instead.
NOT_IMPORTED = frozenset({"compresskit.__main__"})


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"
    )


def _module_names() -> list[str]:
    """Every module, from the files: pkgutil.walk_packages would silently pass over the
    folders without an ``__init__.py`` (namespace packages such as ``quantization``)."""
    names = {_module_name(path) for path in PACKAGE.rglob("*.py")}
    assert NOT_IMPORTED <= names, f"{sorted(NOT_IMPORTED - names)} no longer exist"
    return sorted(names - NOT_IMPORTED)


MODULES = _module_names()


def _docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, docstring) of the module, its classes and functions (nested ones too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                found.append((getattr(node, "lineno", 1), docstring))
    return found


def test_modules_not_imported_have_no_examples() -> None:
    for name in NOT_IMPORTED:
        path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
        assert all(">>>" not in text for _, text in _docstrings(path)), name


@pytest.mark.parametrize("name", MODULES)
def test_doctests_pass(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, report=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_no_skipped_examples() -> None:
    skipped = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, text in _docstrings(path)
        if "+SKIP" in text
    ]
    assert not skipped, f"docstrings with +SKIP (make them run, or use Example::): {skipped}"


def test_examples_exist() -> None:
    """The suite above checks something: the package does carry runnable examples."""
    finder = doctest.DocTestFinder()
    examples = sum(
        len(test.examples)
        for name in MODULES
        for test in finder.find(importlib.import_module(name))
    )
    assert examples > 0
