"""The neuron ⇄ cortex contract: the JSON of each neuron lifecycle route, as typed values.

Answers: the neuron builds these values and renders them with `to_json`; cortex reads every
answer with `parse(Type, json)` and gets the same values back, or one `ContractError` naming the
first field that is off the contract (cortex then counts that neuron as unreachable). Request
bodies go the other way: cortex renders a `LoadRequest`, `PlanRequest` or `UnloadRequest`, the
neuron parses it, and a `ContractError` there is the caller's 400 naming the field. A request
value also checks its own bounds when it is made (`n_ctx` ≥ 16, `parallel` ≤ `MAX_PARALLEL`…), so
the neuron's config (`default_models`) and its HTTP API accept exactly the same models. Field
names are the JSON keys; sizes are MiB, times UNIX seconds, durations seconds.

| route | body | answer |
|---|---|---|
| `GET /discovery` | | `Discovery` |
| `GET /health` | | `Health` |
| `GET /models` | | a list of `ModelInfo` |
| `POST /models/plan` | `PlanRequest` | `PlanAnswer` |
| `POST /models/load` | `LoadRequest` | `ModelInfo` of the loaded model |
| `POST /models/unload` | `UnloadRequest` | `Unloaded` |
| `POST /tokenize` | an OpenAI chat or completion body | `TokenCount` |

Parsing rules (`parse`): a field without a default must be present; `None` is accepted only
where the type allows it; an enum field takes one of its values; an `int` is accepted where a
`float` is expected, a `bool` never where a number is; keys the type does not know are ignored,
so a newer neuron may add fields without breaking an older gateway; a field's default stands for
an older neuron that does not send it. Values are frozen and compare by value.

Pure: no I/O; standard library only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = [
    "MAX_PARALLEL",
    "ContractError",
    "DeviceInfo",
    "DeviceStatus",
    "Discovery",
    "Health",
    "LoadRequest",
    "MemoryEstimate",
    "ModelHealth",
    "ModelInfo",
    "ModelState",
    "PlanAnswer",
    "PlanRequest",
    "Split",
    "TokenCount",
    "UnloadRequest",
    "Unloaded",
    "parse",
    "to_json",
]

T = TypeVar("T")


class ContractError(ValueError):
    """An answer that does not follow the contract; `path` names the field (`models[2].state`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'answer'}: {problem}")
        self.path = path
        self.problem = problem


class ModelState(StrEnum):
    """A model id's life on a neuron: `loading` → `ready` → `unloading` → gone, or `loading` →
    `failed` (listed with its error for a while, then forgotten). Only `ready` serves."""

    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


# -- /discovery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU as the neuron found it at start."""

    index: int
    name: str
    vram_total_mb: float
    compute_capability: str | None = None


@dataclass(frozen=True)
class Discovery:
    """What a neuron is: host, version, GPUs, and whether llama.cpp offloads to them."""

    hostname: str
    backend: str  # "cuda" or "cpu"
    devices: tuple[DeviceInfo, ...] = ()
    version: str | None = None
    gpu_probe: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    cuda_unavailable_reason: str | None = None


# -- /health ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceStatus:
    """One GPU now: memory in MiB, utilization in percent, temperature in °C."""

    index: int
    vram_total_mb: float
    vram_used_mb: float
    vram_free_mb: float
    utilization_pct: float | None = None
    temp_c: float | None = None


@dataclass(frozen=True)
class ModelHealth:
    """One resident model's live figures: admission (in flight, queued, limits) and engine."""

    id: str
    state: ModelState
    in_flight: int = 0
    queue_depth: int = 0
    max_in_flight: int = 1
    max_queue_depth: int = 0
    rejected: int = 0
    last_used_at: float | None = None
    tok_s_decode: float | None = None
    slots_busy: int | None = None
    slots_total: int | None = None
    kv_cells_used: int | None = None
    kv_cells_total: int | None = None
    cache_sequences: int | None = None
    parked_prefixes: int | None = None  # cached prefixes parked in host RAM
    parked_bytes: int | None = None


@dataclass(frozen=True)
class Health:
    """A neuron now: up for `uptime_s`, draining or not, its GPUs and its models."""

    uptime_s: float
    status: str = "ok"  # ok or draining
    draining: bool = False
    devices: tuple[DeviceStatus, ...] = ()
    models: tuple[ModelHealth, ...] = ()


# -- /models, /models/load, /models/plan ----------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """What one load costs, whole MiB rounded up (see `neuron.offload.MemoryEstimate`)."""

    full_offload_mb: float
    weights_mb: float = 0.0
    per_layer_mb: float = 0.0
    kv_mb: float = 0.0
    compute_mb: float = 0.0
    output_mb: float = 0.0
    host_mb: float | None = None
    n_ctx: int | None = None


@dataclass(frozen=True)
class Split:
    """How a load sits: llama.cpp's `n_gpu_layers` (`n_layers + 1` = all), `tensor_split`
    block counts, whether it fits fully, and MiB per device index (keys are strings in JSON)."""

    n_gpu_layers: int
    fits_fully: bool
    tensor_split: tuple[float, ...] | None = None
    device_mb: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """One model id the neuron holds (or is loading, unloading, or failed to load)."""

    id: str
    state: ModelState
    source: str | None = None
    path: str | None = None
    n_gpu_layers: int | None = None
    n_layers: int | None = None
    n_ctx: int | None = None
    vram_used_mb: float = 0.0
    ram_used_mb: float = 0.0
    loaded_at: float | None = None
    load_duration_s: float | None = None
    capabilities: tuple[str, ...] = ()
    embedding: bool = False
    estimate: MemoryEstimate | None = None
    error: Mapping[str, Any] | None = None  # the OpenAI error object of a failed load


@dataclass(frozen=True)
class PlanAnswer:
    """How a model would load on this neuron now, and what the neuron already does with its id.

    `available_mb` is free VRAM minus headroom summed over GPUs; `capacity_mb` the same for
    empty GPUs; host figures are MemTotal/MemAvailable (None when unknown). `state` is the id's
    state on this neuron (None: not resident)."""

    model: str
    estimate: MemoryEstimate
    plan: Split
    available_mb: float
    n_layers: int | None = None
    n_ctx: int | None = None
    state: ModelState | None = None
    capacity_mb: float | None = None
    host_total_mb: float | None = None
    host_available_mb: float | None = None
    parallel: int | None = None
    kv_cells: int | None = None
    resolved: str | None = None
    file_bytes: int | None = None


@dataclass(frozen=True)
class Unloaded:
    """`/models/unload`'s answer."""

    model: str
    state: str = "unloaded"


@dataclass(frozen=True)
class TokenCount:
    """`/tokenize`'s answer: the prompt's length in the model's own tokens."""

    model: str
    count: int


# -- request bodies ----------------------------------------------------------------------------

MAX_PARALLEL = 64  # the engine keeps 2 × parallel KV sequences; llama.cpp allows 256
MIN_N_CTX = 16
MAX_ID_CHARS = 256


def _check_id(model: str) -> None:
    # Ids become metric labels and log fields: control characters and lone surrogates (which
    # no UTF-8 encoder accepts) are refused here rather than failing /metrics later.
    if not model or len(model) > MAX_ID_CHARS or not model.isprintable():
        raise ContractError("model", f"must be printable text of 1 to {MAX_ID_CHARS} characters")


def _check_text(name: str, value: str | None) -> None:
    if value is not None and not value:
        raise ContractError(name, "must be a non-empty string")


def _check_range(name: str, value: int | None, low: int, high: int | None = None) -> None:
    if value is not None and (value < low or (high is not None and value > high)):
        bound = f"from {low} to {high}" if high is not None else f"≥ {low}"
        raise ContractError(name, f"must be an integer {bound}")


@dataclass(frozen=True)
class PlanRequest:
    """`/models/plan`'s body: how would `model` (weights from `source`, else the id) load with
    this context and `parallel` sequences (None: the neuron's defaults)."""

    model: str
    source: str | None = None
    n_ctx: int | None = None
    parallel: int | None = None

    def __post_init__(self) -> None:
        _check_placement(self.model, self.source, self.n_ctx, self.parallel)

    @property
    def source_or_id(self) -> str:
        return self.source or self.model


def _check_placement(
    model: str, source: str | None, n_ctx: int | None, parallel: int | None
) -> None:
    """The checks a plan and a load share."""
    _check_id(model)
    _check_text("source", source)
    _check_range("n_ctx", n_ctx, MIN_N_CTX)
    _check_range("parallel", parallel, 1, MAX_PARALLEL)


@dataclass(frozen=True)
class LoadRequest:
    """`/models/load`'s body, and a `default_models` entry of neuron.toml: serve `model` from
    `source` (absent: the id is the source). `n_gpu_layers` overrides the offload plan (-1: all);
    with `min_gpu_layers` the neuron refuses (507) when fewer layers fit its free VRAM;
    `parallel` is how many sequences decode together (None: the neuron's default);
    `chat_template` is Jinja text replacing the GGUF's own."""

    model: str
    source: str | None = None
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    min_gpu_layers: int | None = None
    embedding: bool = False
    parallel: int | None = None
    chat_template: str | None = None

    def __post_init__(self) -> None:
        _check_placement(self.model, self.source, self.n_ctx, self.parallel)
        _check_range("n_gpu_layers", self.n_gpu_layers, -1)
        _check_range("min_gpu_layers", self.min_gpu_layers, 0, 100_000)
        _check_text("chat_template", self.chat_template)

    @property
    def source_or_id(self) -> str:
        return self.source or self.model

    def plan_request(self) -> PlanRequest:
        return PlanRequest(self.model, self.source, self.n_ctx, self.parallel)


@dataclass(frozen=True)
class UnloadRequest:
    """`/models/unload`'s body: `force` fails the model's requests in flight instead of
    refusing (409 `model_busy`) while there are any."""

    model: str
    force: bool = False

    def __post_init__(self) -> None:
        _check_text("model", self.model)


# -- rendering and parsing --------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A contract value as JSON-ready data (tuples become lists, nested values dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    return value


def parse(kind: type[T], data: Any, path: str = "") -> T:
    """`data` (decoded JSON) as a `kind` value; `ContractError` when it is off the contract."""
    return typing.cast(T, _parse(kind, data, path))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _parse(kind: Any, data: Any, path: str) -> Any:
    origin = get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = get_args(kind)
        if data is None:
            if type(None) in options:
                return None
            raise ContractError(path, "must not be null")
        for option in options:
            if option is not type(None):
                return _parse(option, data, path)
    if kind is Any:
        return data
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(data)
        except ValueError:
            allowed = ", ".join(str(member.value) for member in kind)
            raise ContractError(path, f"expected one of {allowed}, got {data!r}") from None
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(data, Mapping):
            raise ContractError(path, f"expected an object, got {_name(data)}")
        values = {}
        hints = _hints(kind)
        for f in dataclasses.fields(kind):
            where = f"{path}.{f.name}" if path else f.name
            if f.name in data:
                values[f.name] = _parse(hints[f.name], data[f.name], where)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ContractError(where, "is missing")
        try:
            return kind(**values)
        except ContractError as exc:  # a request value's own checks
            where = f"{path}.{exc.path}" if path else exc.path
            raise ContractError(where, exc.problem) from None
    if origin is tuple:
        if not isinstance(data, list):
            raise ContractError(path, f"expected a list, got {_name(data)}")
        (item,) = {a for a in get_args(kind) if a is not Ellipsis}
        return tuple(_parse(item, value, f"{path}[{i}]") for i, value in enumerate(data))
    if origin is Mapping or kind is Mapping:
        if not isinstance(data, Mapping):
            raise ContractError(path, f"expected an object, got {_name(data)}")
        args = get_args(kind)
        value_kind = args[1] if args else Any
        return {str(key): _parse(value_kind, value, f"{path}.{key}") for key, value in data.items()}
    if kind is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ContractError(path, f"expected a number, got {_name(data)}")
        return float(data)
    if kind is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ContractError(path, f"expected an integer, got {_name(data)}")
        return data
    if kind is bool or kind is str:
        if not isinstance(data, kind):
            raise ContractError(path, f"expected {kind.__name__}, got {_name(data)}")
        return data
    raise TypeError(f"no contract parser for {kind!r}")  # a bug in this module, not a neuron's


def _name(data: Any) -> str:
    return "null" if data is None else type(data).__name__
