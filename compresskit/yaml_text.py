"""Reading untrusted YAML (policies, targets): safe types only, bounded in size, nesting and
aliases, duplicate keys refused, and YAML 1.2 floats (``1e-3`` is a number, not a string).

PyYAML's safe loader already refuses ``!!python/...`` tags; what it does not refuse is a
small file that expands into a huge structure through aliases ("billion laughs"), nesting
deep enough to overflow the stack, a multi-megabyte file that takes minutes in pure Python,
or a key given twice (the second silently wins). Each is a one-line error here.

>>> load_yaml("lr: 1e-3", where="policy p.yaml")
{'lr': 0.001}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from compresskit.errors import CompressKitError
from compresskit.paths import regular_file

MAX_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_ALIASES = 100

# YAML 1.2's float: PyYAML (YAML 1.1) reads 1e-3 as a string because it has no dot.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YamlProblem(Exception):
    """Raised by the loader; turned into a CompressKitError with the file's name."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases, limits nesting and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlProblem(f"more than {MAX_ALIASES} aliases (*name); write values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: let the constructor say so
                break
            if duplicate:
                line = key_node.start_mark.line + 1
                raise YamlProblem(f"key {key!r} is given twice (line {line}); keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _depth(node: Any, limit: int) -> int:
    """Nesting depth of a composed node tree (iterative: no recursion to overflow)."""
    deepest, stack = 0, [(node, 1)]
    seen: set[int] = set()
    while stack:
        current, depth = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(current, yaml.MappingNode):
            stack += [(child, depth + 1) for pair in current.value for child in pair]
        elif isinstance(current, yaml.SequenceNode):
            stack += [(child, depth + 1) for child in current.value]
    return deepest


def load_yaml(text: str, *, where: str) -> Any:  # noqa: ANN401
    """Parse ``text`` (from ``where``, for messages) within the limits above."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise CompressKitError(
            f"{where}: larger than {MAX_BYTES // 1000} kB; a policy is a short YAML file"
        )
    if "\x00" in text:
        raise CompressKitError(f"{where}: binary content, not YAML text")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _depth(node, MAX_DEPTH) > MAX_DEPTH:
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels")
        return loader.construct_document(node)
    except YamlProblem as problem:
        raise CompressKitError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        if isinstance(error, yaml.constructor.ConstructorError) and "tag" in str(what):
            what = f"{what} (only plain YAML values are allowed)"
        raise CompressKitError(f"{where}: invalid YAML{at}: {what}") from None
    except RecursionError:
        raise CompressKitError(f"{where}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path, *, what: str) -> str:
    """The text of a YAML file the user names: a regular file, at most :data:`MAX_BYTES`,
    UTF-8; anything else is a one-line error naming ``what`` and the path."""
    regular_file(path, what=what)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CompressKitError(
                f"{what} {path}: larger than {MAX_BYTES // 1000} kB; it should be a short YAML file"
            )
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CompressKitError(f"{what} {path}: not UTF-8 text (a binary file?)") from None
    except OSError as error:
        raise CompressKitError(f"{what} {path}: cannot read it ({error.strerror})") from None
