"""The layer rules, read from the imports of every module (no module is imported to check it).

* Pure decision modules (routing, eviction, fleet state, dialect translation, the TUI view,
  batching and prefix planning, the GBNF checker) import no I/O: no HTTP, no llama.cpp, no
  NVML, no asyncio, no logging, no processes or sockets.
* llama_cpp is imported inside `neuron/engine/` only.
* cortex and neuron are two programs: neither imports the other. What both need is in
  `synapse/`, which imports neither.
* In cortex, httpx, aiohttp and httptools (the HTTP clients towards the neurons) are imported
  in `cortex/nodes/` only, and httpx also by the clients of the gateway and the neuron that live in
  cortex (`HTTPX_CLIENTS`); the relay, the fleet and the app name what `cortex.nodes` exports.

What breaks a rule today is listed in `KNOWN` with the reason; each listed breach must still
exist (so the list shrinks as the shared package lands), and nothing else may break a rule.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PURE = (
    "cortex/fleet/",
    "cortex/dialects/",
    "cortex/top/view.py",
    "cortex/top/panels.py",
    "cortex/top/common.py",
    "cortex/cli_views.py",
    "neuron/engine/batching.py",
    "neuron/engine/prefix.py",
    "neuron/engine/cells.py",
    "neuron/engine/gbnf.py",
    "neuron/engine/text.py",
    "neuron/engine/types.py",
    "neuron/offload.py",
    "neuron/geometry.py",
    "neuron/api/schema.py",
    "synapse/contract.py",
    "synapse/access.py",
)
IO_MODULES = frozenset(
    {
        "sanic",
        "httpx",
        "aiohttp",
        "httptools",
        "llama_cpp",
        "pynvml",
        "asyncio",
        "logging",
        "socket",
        "subprocess",
        "threading",
        "prometheus_client",
        "gguf",
    }
)
# (module, imported top-level package or first-party module) → why it is allowed for now.
KNOWN = {
    ("cortex/local.py", "neuron.config"): "local mode starts a neuron with its defaults",
    ("cortex/local.py", "neuron.sources"): "local mode catalogues the demo models",
}


# cortex modules other than cortex/nodes/ that may import httpx: clients of the gateway or of a
# neuron, not the relay.
HTTPX_CLIENTS = (
    "cortex/cli.py",  # the `cortex` CLI calls the gateway's admin API
    "cortex/local.py",  # local mode waits for its neuron's /health
    "cortex/top/run.py",  # `cortex top` polls the gateway's /admin/fleet
)


FIRST_PARTY = ("cortex", "neuron", "synapse")
FORBIDDEN = {"cortex": {"neuron"}, "neuron": {"cortex"}, "synapse": {"cortex", "neuron"}}


def _imports(path: Path) -> set[str]:
    """Top-level packages imported, and first-party modules by their full dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            found.add(name if parts[0] in FIRST_PARTY else parts[0])
    return found


def _modules() -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for package in FIRST_PARTY
        for path in (ROOT / package).rglob("*.py")
    )


def _breaches() -> set[tuple[str, str]]:
    breaches = set()
    for module in _modules():
        imported = _imports(ROOT / module)
        program = module.split("/")[0]
        breaches |= {
            (module, name) for name in imported if name.split(".")[0] in FORBIDDEN[program]
        }
        if program == "cortex" and not module.startswith("cortex/nodes/"):
            clients = {"httpx"} if module in HTTPX_CLIENTS else set()
            towards_neurons = {"httpx", "aiohttp", "httptools"} - clients
            breaches |= {(module, name) for name in imported & towards_neurons}
        if not module.startswith("neuron/engine/"):
            breaches |= {(module, "llama_cpp")} & {(module, name) for name in imported}
        if module.startswith(PURE):
            breaches |= {(module, name) for name in imported & IO_MODULES}
            breaches |= {
                (module, name)
                for name in imported
                if name.startswith(f"{program}.") and not _pure_target(name)
            }
    return breaches


def _pure_target(name: str) -> bool:
    """A first-party import a pure module may make: another pure module, or the error tree."""
    path = name.replace(".", "/")
    return f"{path}.py".startswith(PURE) or name in ("cortex.errors", "neuron.errors")


def test_no_module_breaks_a_layer_rule_beyond_the_known_ones() -> None:
    unexpected = _breaches() - set(KNOWN)
    assert not unexpected, sorted(unexpected)


@pytest.mark.parametrize(("breach", "reason"), KNOWN.items(), ids=lambda x: str(x))
def test_each_known_breach_still_exists(breach: tuple[str, str], reason: str) -> None:
    """When a listed breach is mended, its line in KNOWN goes too."""
    assert breach in _breaches(), f"{breach} no longer breaks a rule ({reason}): drop it"


def test_the_rules_catch_what_they_are_for(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import httpx\nfrom neuron.engine.llama import LlamaEngine\nimport os.path\n")
    assert _imports(probe) == {"httpx", "neuron.engine.llama", "os"}


def test_mypy_checks_exactly_the_pure_modules_strictly() -> None:
    """pyproject's strict mypy override names the pure modules: a new one is added there too."""
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["overrides"]
    (strict,) = [o for o in overrides if o.get("disallow_untyped_defs")]
    patterns = strict["module"]

    def covered(module: str) -> bool:
        dotted = module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        return any(
            dotted == p or (p.endswith(".*") and f"{dotted}.".startswith(p[:-1])) for p in patterns
        )

    assert {m for m in _modules() if covered(m)} == {m for m in _modules() if m.startswith(PURE)}
