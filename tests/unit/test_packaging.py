"""pyproject lists packages explicitly (the quantize tool is mapped from tools/quantize/):
every package directory must be in that list, or an install would silently miss it. CI runs
the README's test command."""

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


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("## Test it", 1)[1].split("```sh\n", 1)[1].split("\n", 1)[0]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.replace("pip install -q ", "pip install ") == command
