"""The example configs in conf/ load through the real loaders and document every key they accept.

The packages install them as /etc/cortex/cortex.toml, /etc/cortex/models.toml and
/etc/neuron/neuron.toml, so they are loaded here under those names. "#key = value" lines are
settings switched off; a second pass switches every one of them on and loads the result too. The
set of accepted keys is not written down here: it is recorded from the loaders themselves (every
`TomlTable.get` they make while loading), so a key added to a loader without an example line
fails `test_every_accepted_key_is_in_the_examples`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cortex.config import GatewayConfig, NeuronEndpoint, load_config, load_models
from cortex.fleet.eviction import Strategy
from cortex.fleet.state import CatalogueEntry, Offload
from neuron.config import Admission, NeuronConfig
from neuron.config import load_config as load_neuron_config
from synapse.contract import LoadRequest
from synapse.tomlconf import TomlTable

CONF = Path(__file__).resolve().parents[2] / "conf"
EXAMPLES = ("cortex.example.toml", "models.example.toml", "neuron.example.toml")
# A disabled setting: "#" right before a key, a table header, or a value inside an array.
DISABLED = re.compile(r"^(\s*)#(?=[^\s#])", re.MULTILINE)


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURON_TOKEN", raising=False)


def example(name: str, *, enable_all: bool = False) -> str:
    text = (CONF / name).read_text(encoding="utf-8")
    return DISABLED.sub(r"\1", text) if enable_all else text


def install_gateway(directory: Path, *, enable_all: bool = False) -> Path:
    """cortex.toml and models.toml side by side, as the package installs them in /etc/cortex."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cortex.toml").write_text(example("cortex.example.toml", enable_all=enable_all))
    (directory / "models.toml").write_text(example("models.example.toml", enable_all=enable_all))
    return directory / "cortex.toml"


def install_neuron(directory: Path, *, enable_all: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "neuron.toml"
    path.write_text(example("neuron.example.toml", enable_all=enable_all))
    return path


def test_cortex_example_loads_with_its_models(tmp_path: Path) -> None:
    config = load_config(install_gateway(tmp_path))
    assert config.listen == "0.0.0.0:31313"
    assert config.metrics_listen == "0.0.0.0:31314"
    assert config.api_keys == frozenset() and config.admin_keys == frozenset()
    assert config.strategy is Strategy.LRU
    assert config.neurons == (NeuronEndpoint("local", "http://127.0.0.1:13131", None),)
    assert config.models_path == tmp_path / "models.toml"
    assert [m.id for m in config.models] == ["qwen2.5-coder-7b", "nomic-embed-text"]
    assert config.aliases == {"coder": "qwen2.5-coder-7b", "gpt-4o-mini": "qwen2.5-coder-7b"}


def test_cortex_example_values_are_the_defaults(tmp_path: Path) -> None:
    """Its header says every key shows its default unless its comment says otherwise."""
    config = load_config(install_gateway(tmp_path))
    specific = ("neurons", "models", "aliases", "models_path", "source_path")
    assert dataclasses.replace(config, **{f: getattr(GatewayConfig(), f) for f in specific}) == (
        GatewayConfig()
    )


def test_models_example_loads_on_its_own() -> None:
    models, aliases = load_models(CONF / "models.example.toml")
    coder, embed = models
    assert coder.source == "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M"
    assert (coder.n_ctx, coder.priority, coder.pinned_on, coder.vram_mb) == (16384, 10, (), None)
    assert coder.aliases == ("coder",) and not coder.embedding
    assert embed.embedding and embed.source == "nomic-ai/nomic-embed-text-v1.5-GGUF:Q8_0"
    assert aliases["gpt-4o-mini"] == "qwen2.5-coder-7b"


def test_neuron_example_loads(tmp_path: Path) -> None:
    config = load_neuron_config(install_neuron(tmp_path))
    assert config.listen == "0.0.0.0:13131"
    assert config.model_dirs == (Path("/var/lib/neuron/models"),)
    # Left to the unit's HF_HOME (or an HF_HUB_CACHE drop-in): hf_cache would win over both.
    assert config.hf_cache is None
    assert config.default_models == ()
    assert config.auth_token is None
    # The unit's TimeoutStopSec=120s must outlast the drain.
    assert config.drain_timeout_s < 120
    specific = ("model_dirs", "source_path")
    assert dataclasses.replace(config, **{f: getattr(NeuronConfig(), f) for f in specific}) == (
        NeuronConfig()
    )


def test_disabled_settings_load_when_switched_on(tmp_path: Path) -> None:
    gateway_path = install_gateway(tmp_path / "cortex", enable_all=True)
    (gateway_path.parent / "api-keys").write_text("# one key a line\nsk-from-file\n")
    gateway = load_config(gateway_path)
    assert gateway.api_keys == frozenset({"sk-from-file"})
    assert [n.name for n in gateway.neurons] == ["local", "gpu2"]
    assert gateway.neurons[1].token == "the-token-in-gpu2s-neuron.toml"
    assert gateway.models[0].vram_mb == 6144
    assert (gateway.models[0].offload, gateway.models[0].min_gpu_share) == (Offload.ANY, 0.5)

    neuron = load_neuron_config(install_neuron(tmp_path / "neuron", enable_all=True))
    assert neuron.hf_cache == Path("/var/lib/neuron/hf/hub")
    assert neuron.default_models == (
        LoadRequest(model="Qwen2.5-0.5B-Instruct-Q4_K_M"),
        LoadRequest(
            model="qwen2.5-coder-7b",
            source="bartowski/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M",
            n_ctx=16384,
            n_gpu_layers=-1,
            min_gpu_layers=0,
            embedding=False,
            parallel=4,
            chat_template="{% for m in messages %}…{% endfor %}",
        ),
    )
    assert neuron.parallel == 4 and neuron.admission.max_in_flight == 4


def accepted_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, set[str]]:
    """Every key the loaders ask for, per example file, loading the all-enabled examples."""
    seen: dict[str, set[str]] = {name: set() for name in EXAMPLES}
    original = TomlTable.get

    def recording(self: TomlTable, key: str, *args: object, **kwargs: object) -> object:
        table = re.sub(r"\[\d+\]", "", self.name)
        if table != "aliases":  # [aliases] keys are the operator's own names
            file = {"cortex.toml": EXAMPLES[0], "models.toml": EXAMPLES[1]}.get(
                Path(self.path).name, EXAMPLES[2]
            )
            seen[file].add(f"{table}.{key}" if table else key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(TomlTable, "get", recording)
    gateway_path = install_gateway(tmp_path / "cortex", enable_all=True)
    (gateway_path.parent / "api-keys").write_text("sk-1\n")
    load_config(gateway_path)
    load_neuron_config(install_neuron(tmp_path / "neuron", enable_all=True))
    return seen


def test_every_accepted_key_is_in_the_examples(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = accepted_keys(monkeypatch, tmp_path)
    assert "gateway.api_keys_file" in seen[EXAMPLES[0]]
    assert "default_models.n_gpu_layers" in seen[EXAMPLES[2]]
    for name, keys in seen.items():
        text = example(name)
        for dotted in sorted(keys):
            key = re.escape(dotted.rpartition(".")[2])
            assignment = rf"(^\s*#?\s*|[{{,]\s*){key}\s*="
            header = rf"^\s*#?\[\[?{key}\]\]?\s*$"
            shown = re.search(assignment, text, re.M) or re.search(header, text, re.M)
            assert shown, f"conf/{name} does not show {dotted!r}"


# Dataclass fields that are not config keys, or are keys under another name.
NOT_KEYS = {
    "models_path": "models_config",
    "source_path": None,
    "strategy": "eviction.strategy",
    "neurons": "neurons",
    "models": "models",
    "aliases": "aliases",
    "auth_token": "auth.token",
    "auth_inference": "auth.inference",
    "model": "default_models[].id",  # a LoadRequest is served as its TOML `id`
}


@pytest.mark.parametrize(
    "cls", [GatewayConfig, NeuronEndpoint, CatalogueEntry, NeuronConfig, Admission, LoadRequest]
)
def test_every_config_field_is_read_by_a_loader(
    cls: type, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A second guard: a new dataclass field is either a key the loaders read, or listed above."""
    leaves = {
        key.rpartition(".")[2]
        for keys in accepted_keys(monkeypatch, tmp_path).values()
        for key in keys
    }
    for field in dataclasses.fields(cls):
        if field.name in NOT_KEYS:
            continue
        assert field.name in leaves, f"{cls.__name__}.{field.name} is read by no loader"


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_setting_is_documented(name: str) -> None:
    """The first line that sets a key has a comment of its own: the line above, or at its end."""
    lines = example(name).splitlines()
    first_seen: set[str] = set()
    for number, line in enumerate(lines):
        match = re.match(r"^\s*#?\s*([A-Za-z_][\w-]*)\s*=", line)
        if not match or match.group(1) in first_seen:
            continue
        first_seen.add(match.group(1))
        above = lines[number - 1].strip() if number else ""
        documented = above.startswith("# ") or bool(re.search(r"\s#\s", line.split("=", 1)[1]))
        assert documented, f"conf/{name}:{number + 1}: {match.group(1)} has no comment"
