"""Resolve ``module:attribute`` references, where the module may be a path to a .py file."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from compresskit.errors import CompressKitError


def import_object(spec: str, *, what: str) -> Any:
    """Import ``module:attr`` (``pkg.mod:factory`` or ``path/to/file.py:factory``)."""
    module_ref, sep, attr = spec.rpartition(":")
    if not sep or not module_ref or not attr:
        raise CompressKitError(f"{what} {spec!r}: expected MODULE:NAME, e.g. mypkg.models:build")
    if module_ref.endswith(".py"):
        path = Path(module_ref)
        if not path.is_file():
            raise CompressKitError(f"{what} {spec!r}: no such file {path}")
        name = f"_compresskit_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_ref)
        except ImportError as error:
            raise CompressKitError(
                f"{what} {spec!r}: cannot import {module_ref} ({error}); "
                "give an importable module or a path to a .py file"
            ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise CompressKitError(f"{what} {spec!r}: {module_ref} has no attribute {attr!r}") from None
