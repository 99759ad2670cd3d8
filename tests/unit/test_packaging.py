"""pyproject lists packages explicitly (the quantize tool is mapped from tools/quantize/):
every package directory must be in that list, or an install would silently miss it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("cortex", "neuron", "synapse")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found | {"cortex_quantize"} == listed
    assert (ROOT / setuptools["package-dir"]["cortex_quantize"] / "__init__.py").exists()
