"""neuron.toml → a frozen `NeuronConfig`.

A missing file means defaults (a development host); a present file is read strictly: unknown
keys and bad values stop startup with the file, key and line named. Environment overrides are
applied here and nowhere else: `NEURON_TOKEN` (admin bearer token), `HF_HUB_CACHE` / `HF_HOME`
(cache precedence is `hf_cache` > `HF_HUB_CACHE` > `HF_HOME/hub` > huggingface-hub's default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from synapse.contract import MAX_PARALLEL, ContractError, LoadRequest
from synapse.tomlconf import (
    ConfigError,
    TomlTable,
    listen_address,
    non_negative,
    parse_listen,
    positive,
)

DEFAULT_CONFIG_PATH = Path("/etc/neuron/neuron.toml")
DEFAULT_LISTEN = "0.0.0.0:13131"
DEFAULT_N_CTX = 4096


DEFAULT_PARALLEL = 4
# Half of llama-server's --cache-ram default: a neuron serves several models from one host's RAM.
DEFAULT_CACHE_RAM_MB = 4096
FLASH_ATTN_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Admission:
    """Per-model limits. `max_in_flight` None means: as many as the model decodes at once."""

    max_in_flight: int | None = None
    max_queue_depth: int = 16
    max_wait_s: float = 120.0


@dataclass(frozen=True)
class NeuronConfig:
    """Everything a neuron runs with, from neuron.toml (defaults when the default file is absent)
    and the environment.

    Sizes are MiB (`vram_headroom_mb` is kept free on every GPU) and durations seconds; `parallel`
    is how many sequences a model decodes together unless its spec says; `flash_attn` is llama.cpp's
    flash-attention mode for every model of this host (`auto` lets llama.cpp decide per backend);
    `cache_ram_mb` is the host RAM each loaded model may fill with prefixes parked out of its KV
    pool (0: none); `n_threads` None lets the engine choose; with no `auth_token` every route is
    open. `default_models` load at startup.
    """

    listen: str = DEFAULT_LISTEN
    model_dirs: tuple[Path, ...] = ()
    hf_cache: Path | None = None
    vram_headroom_mb: int = 512
    default_n_ctx: int = DEFAULT_N_CTX
    n_threads: int | None = None
    default_models: tuple[LoadRequest, ...] = ()
    admission: Admission = field(default_factory=Admission)
    parallel: int = DEFAULT_PARALLEL
    flash_attn: str = "auto"
    cache_ram_mb: int = DEFAULT_CACHE_RAM_MB
    auth_token: str | None = None
    auth_inference: bool = True  # with a token: required on /v1/* and /tokenize too
    max_body_mb: float = 8.0
    drain_timeout_s: float = 60.0
    source_path: Path | None = None

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    def resolved_hf_cache(self) -> Path | None:
        """The HF hub cache to use; None lets huggingface-hub pick its own default."""
        if self.hf_cache is not None:
            return self.hf_cache
        if os.environ.get("HF_HUB_CACHE"):
            return Path(os.environ["HF_HUB_CACHE"])
        if os.environ.get("HF_HOME"):
            return Path(os.environ["HF_HOME"]) / "hub"
        return None


def default_model_dirs() -> tuple[Path, ...]:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (data_home / "neuron" / "models",)


def load_config(path: Path | None = None) -> NeuronConfig:
    """Read `path` (default /etc/neuron/neuron.toml); a missing default file means defaults."""
    explicit = path is not None
    path = path or DEFAULT_CONFIG_PATH
    if not path.exists():
        if explicit:
            raise ConfigError(path, "", "file not found")
        return _with_env(NeuronConfig(model_dirs=default_model_dirs()))
    root = TomlTable.load(path)
    admission_table = root.table("admission")
    admission = Admission(
        max_in_flight=admission_table.get("max_in_flight", int, None, positive),
        max_queue_depth=admission_table.get("max_queue_depth", int, 16, non_negative),
        max_wait_s=admission_table.get("max_wait_s", float, 120.0, positive),
    )
    admission_table.finish()
    engine_table = root.table("engine")
    parallel = engine_table.get("parallel", int, DEFAULT_PARALLEL, _parallel)
    flash_attn = engine_table.get("flash_attn", str, "auto", _flash_attn)
    cache_ram_mb = engine_table.get("cache_ram_mb", int, DEFAULT_CACHE_RAM_MB, non_negative)
    engine_table.finish()
    auth = root.table("auth")
    token = auth.get("token", str, None) or None
    auth_inference = auth.get("inference", bool, True)
    auth.finish()
    hf_cache = root.get("hf_cache", str, None)
    n_threads = root.get("n_threads", int, 0, non_negative)
    config = NeuronConfig(
        listen=root.get("listen", str, DEFAULT_LISTEN, listen_address),
        model_dirs=tuple(_expand(d) for d in root.strings("model_dirs"))
        if "model_dirs" in root.data
        else default_model_dirs(),
        hf_cache=_expand(hf_cache) if hf_cache else None,
        vram_headroom_mb=root.get("vram_headroom_mb", int, 512, non_negative),
        default_n_ctx=root.get("default_n_ctx", int, DEFAULT_N_CTX, positive),
        n_threads=n_threads or None,
        default_models=tuple(_model_specs(root)),
        admission=admission,
        parallel=parallel,
        flash_attn=flash_attn,
        cache_ram_mb=cache_ram_mb,
        auth_token=token,
        auth_inference=auth_inference,
        max_body_mb=root.get("max_body_mb", float, 8.0, positive),
        drain_timeout_s=root.get("drain_timeout_s", float, 60.0, positive),
        source_path=path,
    )
    root.finish()
    return _with_env(config)


def _model_specs(root: TomlTable) -> list[LoadRequest]:
    """`default_models` entries: a string (id = source) or a table {id, source, n_ctx, ...},
    checked as the contract checks a `/models/load` body."""
    specs = []
    for index, item in enumerate(root.get("default_models", list, [])):
        if isinstance(item, str):
            item = {"id": item}
        if not isinstance(item, dict):
            raise root.error("default_models", "entries must be strings or tables")
        entry = TomlTable(root.path, root.text, item, f"default_models[{index}]")
        model = entry.get("id", str)
        source = entry.get("source", str, None)
        n_ctx = entry.get("n_ctx", int, None)
        n_gpu_layers = entry.get("n_gpu_layers", int, None)
        min_gpu_layers = entry.get("min_gpu_layers", int, None)
        embedding = entry.get("embedding", bool, False)
        parallel = entry.get("parallel", int, None)
        chat_template = entry.get("chat_template", str, None)
        entry.finish()
        try:
            specs.append(
                LoadRequest(
                    model,
                    source,
                    n_ctx,
                    n_gpu_layers,
                    min_gpu_layers,
                    embedding,
                    parallel,
                    chat_template,
                )
            )
        except ContractError as exc:
            raise entry.error("id" if exc.path == "model" else exc.path, exc.problem) from None
    return specs


def _flash_attn(value: str) -> str | None:
    if value not in FLASH_ATTN_MODES:
        return "must be one of " + ", ".join(f'"{mode}"' for mode in FLASH_ATTN_MODES)
    return None


def _parallel(value: int) -> str | None:
    if not 1 <= value <= MAX_PARALLEL:
        return f"must be between 1 and {MAX_PARALLEL}"
    return None


def _expand(value: str) -> Path:
    return Path(os.path.expandvars(value)).expanduser()


def _with_env(config: NeuronConfig) -> NeuronConfig:
    from dataclasses import replace

    token = os.environ.get("NEURON_TOKEN")
    return replace(config, auth_token=token) if token else config
