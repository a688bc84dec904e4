"""Resolve ``module:attribute`` references, where the module may be a path to a .py file,
and call the user's factories so that whatever they do wrong is one line, not a traceback.

Only references the user names (``--arch``, ``--data``) come through here: nothing a file
records is imported without consent (see :mod:`compresskit.models.loading`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compresskit.errors import CompressKitError, first_line


def _exec_file(path: Path, *, what: str, spec: str) -> Any:  # noqa: ANN401
    name = f"_compresskit_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CompressKitError(f"{what} {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        sys.modules.pop(name, None)
        raise CompressKitError(
            f"{what} {spec!r}: syntax error in {path} line {error.lineno}: {error.msg}"
        ) from None
    except (Exception, SystemExit) as error:
        sys.modules.pop(name, None)
        raise CompressKitError(
            f"{what} {spec!r}: running {path} failed ({first_line(error)})"
        ) from None
    return module


def _import(module_ref: str, *, what: str, spec: str) -> Any:  # noqa: ANN401
    top = module_ref.split(".")[0]
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as error:
        # `compresskit` is a console script: the working directory is not on sys.path as
        # it is for `python -m`, but `--arch mynets:build` beside mynets.py means that file.
        here = Path.cwd()
        local = (here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()
        if error.name == top and local and str(here) not in sys.path:
            sys.path.insert(0, str(here))
            return _import(module_ref, what=what, spec=spec)
        raise CompressKitError(
            f"{what} {spec!r}: cannot import {module_ref} ({error}); "
            "give an importable module or a path to a .py file"
        ) from None
    except SyntaxError as error:
        raise CompressKitError(
            f"{what} {spec!r}: syntax error in {error.filename} line {error.lineno}: {error.msg}"
        ) from None
    except (Exception, SystemExit) as error:
        raise CompressKitError(
            f"{what} {spec!r}: importing {module_ref} failed ({first_line(error)})"
        ) from None


def import_object(spec: str, *, what: str) -> Any:  # noqa: ANN401
    """Import ``module:attr`` (``pkg.mod:factory`` or ``path/to/file.py:factory``)."""
    module_ref, sep, attr = spec.rpartition(":")
    if not sep or not module_ref or not attr:
        raise CompressKitError(f"{what} {spec!r}: expected MODULE:NAME, e.g. mypkg.models:build")
    if module_ref.endswith(".py"):
        path = Path(module_ref)
        if not path.is_file():
            raise CompressKitError(f"{what} {spec!r}: no such file {path}")
        module = _exec_file(path, what=what, spec=spec)
    else:
        module = _import(module_ref, what=what, spec=spec)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise CompressKitError(f"{what} {spec!r}: {module_ref} has no attribute {attr!r}") from None


def call_factory(spec: str, *, what: str, **kwargs: Any) -> Any:  # noqa: ANN401
    """Import ``spec`` and call it with ``kwargs``: an object that is not callable, a
    signature that does not take them, an exception or a ``sys.exit`` inside it are each a
    one-line :class:`CompressKitError` naming ``what`` (e.g. ``--arch``)."""
    factory: Callable[..., Any] = import_object(spec, what=what)
    if not callable(factory):
        raise CompressKitError(
            f"{what} {spec!r}: is a {type(factory).__name__}, not a function; name a "
            "function or class that builds it"
        )
    try:
        return factory(**kwargs)
    except CompressKitError:
        raise
    except TypeError as error:
        takes = ", ".join(f"{k}=..." for k in kwargs) or "no arguments"
        raise CompressKitError(
            f"{what} {spec!r}: calling it with {takes} failed ({first_line(error)}); the "
            f"factory must accept {takes}"
        ) from None
    except (Exception, SystemExit) as error:
        raise CompressKitError(
            f"{what} {spec!r}: the factory failed ({first_line(error)})"
        ) from None
