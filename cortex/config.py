"""cortex.toml + models.toml → frozen `GatewayConfig`; pins written back with comments kept.

Reading is strict (unknown keys and bad values stop startup naming file, key and line). With no
`--config` and no /etc/cortex/cortex.toml the gateway runs in *local mode*: one neuron child on
loopback and a catalogue of the demo models plus the GGUFs found in the local model dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomlkit

from cortex.fleet.eviction import Strategy
from cortex.fleet.state import CatalogueEntry, Offload
from synapse.contract import ContractError
from synapse.tomlconf import ConfigError, TomlTable, listen_address, non_negative, positive

DEFAULT_CONFIG_PATH = Path("/etc/cortex/cortex.toml")
# The HTTP transports the gateway can talk to neurons over (`[gateway] upstream_transport`; see
# cortex/nodes/transport.py). Lifecycle calls always go through httpx's client API.
UPSTREAM_TRANSPORTS = ("httptools", "aiohttp", "httpx")


@dataclass(frozen=True)
class NeuronEndpoint:
    """One `[[neurons]]` entry: the node's name in the fleet (unique), its base URL (http or https,
    no trailing slash) and the bearer token sent with every call to it, if any."""

    name: str
    endpoint: str
    token: str | None = None


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway runs with, read from cortex.toml and models.toml (or `local_config`).

    Durations are seconds and `max_body_mb` is MiB; 0 turns `idle_unload_after_s` and
    `defrag_after_cycles` off, and `metrics_listen` None serves no metrics port.
    `upstream_transport` is one of `UPSTREAM_TRANSPORTS`. Pins are written back to `models_path`
    when that file exists; otherwise they last until the gateway stops.
    """

    listen: str = "0.0.0.0:31313"
    metrics_listen: str | None = "0.0.0.0:31314"
    api_keys: frozenset[str] = frozenset()
    admin_keys: frozenset[str] = frozenset()
    cold_load_timeout_s: float = 600.0
    keepalive_interval_s: float = 5.0
    poll_interval_s: float = 2.0
    down_after_misses: int = 3
    connect_timeout_s: float = 3.0
    upstream_transport: str = "httptools"
    max_body_mb: float = 8.0
    first_byte_timeout_s: float = 600.0
    idle_timeout_s: float = 120.0
    strategy: Strategy = Strategy.LRU
    idle_unload_after_s: float = 0.0
    defrag_after_cycles: int = 0
    neurons: tuple[NeuronEndpoint, ...] = ()
    models: tuple[CatalogueEntry, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    models_path: Path | None = None
    source_path: Path | None = None


def load_config(path: Path) -> GatewayConfig:
    root = TomlTable.load(path)
    gateway = root.table("gateway")
    api_keys = set(gateway.strings("api_keys"))
    keys_file = gateway.get("api_keys_file", str, None)
    if keys_file:
        api_keys |= _read_keys(path, _relative(path, keys_file))
    metrics_listen = gateway.get("metrics_listen", str, "0.0.0.0:31314", _listen_or_off)
    # Built table by table, in the order the tables are read and finished.
    config = GatewayConfig(
        listen=gateway.get("listen", str, "0.0.0.0:31313", listen_address),
        metrics_listen=metrics_listen or None,
        api_keys=frozenset(api_keys),
        admin_keys=frozenset(gateway.strings("admin_keys")),
        cold_load_timeout_s=gateway.get("cold_load_timeout_s", float, 600.0, positive),
        keepalive_interval_s=gateway.get("keepalive_interval_s", float, 5.0, positive),
        poll_interval_s=gateway.get("poll_interval_s", float, 2.0, positive),
        down_after_misses=gateway.get("down_after_misses", int, 3, positive),
        connect_timeout_s=gateway.get("connect_timeout_s", float, 3.0, positive),
        upstream_transport=gateway.get("upstream_transport", str, "httptools", _transport),
        max_body_mb=gateway.get("max_body_mb", float, 8.0, positive),
        first_byte_timeout_s=gateway.get("first_byte_timeout_s", float, 600.0, positive),
        idle_timeout_s=gateway.get("idle_timeout_s", float, 120.0, positive),
    )
    gateway.finish()
    eviction = root.table("eviction")
    strategy = eviction.get("strategy", str, "lru", _strategy)
    config = replace(
        config,
        strategy=Strategy(strategy),
        idle_unload_after_s=eviction.get("idle_unload_after_s", float, 0.0, non_negative),
        defrag_after_cycles=eviction.get("defrag_after_cycles", int, 0, non_negative),
    )
    eviction.finish()
    neurons = []
    for table in root.tables("neurons"):
        neurons.append(
            NeuronEndpoint(
                name=table.get("name", str),
                endpoint=table.get("endpoint", str, check=_http_url).rstrip("/"),
                token=table.get("token", str, None) or None,
            )
        )
        table.finish()
    names = [n.name for n in neurons]
    if len(set(names)) != len(names):
        raise root.error("neurons", "neuron names must be unique")
    models_path = _relative(path, root.get("models_config", str, "models.toml"))
    root.finish()
    models, aliases = load_models(models_path, required="models_config" in root.data)
    unknown_pins = {node for m in models for node in m.pinned_on} - set(names)
    if unknown_pins:
        raise ConfigError(models_path, "pinned_on", f"unknown neuron(s) {sorted(unknown_pins)}")
    return replace(
        config,
        neurons=tuple(neurons),
        models=tuple(models),
        aliases=aliases,
        models_path=models_path,
        source_path=path,
    )


def load_models(
    path: Path, *, required: bool = True
) -> tuple[list[CatalogueEntry], dict[str, str]]:
    if not path.exists():
        if required:
            raise ConfigError(path, "", "file not found (models_config)")
        return [], {}
    root = TomlTable.load(path)
    models = []
    for table in root.tables("models"):
        entry = CatalogueEntry(
            id=table.get("id", str),
            source=table.get("source", str, None),
            n_ctx=table.get("n_ctx", int, None, positive),
            pinned_on=tuple(table.strings("pinned_on")),
            priority=table.get("priority", int, 0),
            aliases=tuple(table.strings("aliases")),
            vram_mb=table.get("vram_mb", float, None, positive),
            max_output_tokens=table.get("max_output_tokens", int, None, positive),
            temperature=table.get("temperature", float, None, _temperature),
            embedding=table.get("embedding", bool, False),
            offload=Offload(table.get("offload", str, "any", _offload)),
            min_gpu_share=table.get("min_gpu_share", float, 0.0, _share),
        )
        table.finish()
        try:
            entry.load_request()  # what a neuron will be sent must be a valid load body
        except ContractError as exc:
            raise table.error("id" if exc.path == "model" else exc.path, exc.problem) from None
        models.append(entry)
    alias_table = root.table("aliases")
    aliases = {name: alias_table.get(name, str) for name in list(alias_table.data)}
    alias_table.finish()
    root.finish()
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise root.error("models", "model ids must be unique")
    for model in models:
        for alias in model.aliases:
            aliases.setdefault(alias, model.id)
    for alias, target in aliases.items():
        if target not in ids:
            raise ConfigError(path, f"aliases.{alias}", f"points to unknown model {target!r}")
        if alias in ids:
            raise ConfigError(path, f"aliases.{alias}", "an alias cannot shadow a model id")
    return models, aliases


def set_pinned(path: Path, model_id: str, nodes: list[str]) -> None:
    """Rewrite one model's `pinned_on` in models.toml, keeping the operator's comments."""
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    for table in document.get("models", []):
        if table.get("id") == model_id:
            if nodes:
                table["pinned_on"] = nodes
            elif "pinned_on" in table:
                del table["pinned_on"]
            break
    else:
        raise ConfigError(path, "models", f"no model with id {model_id!r}")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(tomlkit.dumps(document), encoding="utf-8")
    os.replace(tmp, path)


def _relative(config_path: Path, value: str) -> Path:
    candidate = Path(os.path.expandvars(value)).expanduser()
    return candidate if candidate.is_absolute() else config_path.parent / candidate


def _read_keys(config_path: Path, keys_path: Path) -> set[str]:
    try:
        lines = keys_path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(config_path, "gateway.api_keys_file", f"cannot read: {exc}") from exc
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _listen_or_off(value: str) -> str | None:
    return None if value == "" else listen_address(value)


def _temperature(value: float) -> str | None:
    return None if 0 <= value <= 2 else "must be between 0 and 2"


def _offload(value: str) -> str | None:
    return None if value in {o.value for o in Offload} else "must be 'full', 'partial' or 'any'"


def _share(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def _strategy(value: str) -> str | None:
    return None if value in {s.value for s in Strategy} else "must be 'lru' or 'priority'"


def _transport(value: str) -> str | None:
    return None if value in UPSTREAM_TRANSPORTS else "must be 'httptools', 'aiohttp' or 'httpx'"


def _http_url(value: str) -> str | None:
    if value.startswith(("http://", "https://")):
        return None
    return "must be an http:// or https:// URL"
