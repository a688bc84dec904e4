"""The built-in policy files and reading a policy's text: plain files and YAML, no torch,
so that listing policies is instant."""

from __future__ import annotations

import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

from compresskit.errors import CompressKitError
from compresskit.yaml_text import MAX_BYTES, load_yaml


def builtin_policy_names() -> list[str]:
    """Names of the policies shipped in ``policies/``."""
    root = resources.files("compresskit") / "builtin" / "policies"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def policy_text(name_or_path: str | Path) -> tuple[str, str]:
    """(text, where) of a policy given by built-in name or file path."""
    ref = str(name_or_path)
    if ref in builtin_policy_names():
        entry = resources.files("compresskit") / "builtin" / "policies" / f"{ref}.yaml"
        return entry.read_text(encoding="utf-8"), f"policies/{ref}.yaml"
    path = Path(ref)
    if not path.is_file():
        kind = (
            "a directory"
            if path.is_dir()
            else ("not a regular file" if path.exists() else "no such file")
        )
        raise CompressKitError(
            f"policy {ref!r}: {kind}, and not a built-in policy "
            f"({', '.join(builtin_policy_names())}); see `compresskit policies list`"
        )
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CompressKitError(
                f"policy {path}: larger than {MAX_BYTES // 1000} kB; a policy is a short YAML file"
            )
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise CompressKitError(f"policy {path}: not UTF-8 text (a binary file?)") from None
    except OSError as error:
        raise CompressKitError(f"policy {path}: cannot read it ({error.strerror})") from None


def policy_summary(name: str, *, width: int = 58) -> str:
    """A built-in policy's description, its first sentence cut to ``width`` characters,
    read from its YAML (not validated)."""
    text, where = policy_text(name)
    raw: Any = load_yaml(text, where=f"policy {where}")
    description = raw.get("description", "") if isinstance(raw, dict) else ""
    first = " ".join(str(description).split()).split(". ")[0].rstrip(".")
    return textwrap.shorten(first, width, placeholder=" ...")
