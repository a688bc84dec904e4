"""The wheel users install holds every subpackage and the built-in policies and targets
(a subpackage missing from a hand-kept list once made `pip install .` crash)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _wheel(tmp_path: Path) -> Path:
    given = os.environ.get("COMPRESSKIT_WHEEL")
    if given:  # CI built it already: check the very file it installed
        return Path(given)
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "compresskit", "policies", "export"):
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(
                origin,
                source / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            shutil.copy2(origin, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("compresskit-*.whl")
    return wheel


def test_the_wheel_holds_every_subpackage_and_the_builtin_yaml(tmp_path: Path) -> None:
    wheel = zipfile.ZipFile(_wheel(tmp_path))
    names = set(wheel.namelist())
    modules = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "compresskit").rglob("*.py")
        if "__pycache__" not in p.parts
    )  # fmt: skip
    assert modules and [m for m in modules if m not in names] == []
    for folder, packaged in (("policies", "policies"), ("export", "targets")):
        wanted = sorted(p.name for p in (REPO / folder).glob("*.yaml"))
        assert wanted, folder
        missing = [n for n in wanted if f"compresskit/builtin/{packaged}/{n}" not in names]
        assert missing == []
    assert "compresskit/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "compresskit = compresskit.cli.main:main" in text


def test_ci_tests_the_installed_package_not_the_checkout() -> None:
    if not os.environ.get("COMPRESSKIT_EXPECT_INSTALLED"):
        pytest.skip("only under .ci/run, which installs the wheel")
    import compresskit

    location = Path(compresskit.__file__).resolve()
    # .ci/run's virtualenv may live in the checkout; the source tree itself must not serve.
    assert location.parent != REPO / "compresskit", location
    assert "site-packages" in location.parts, location
