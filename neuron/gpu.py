"""GPU discovery and live VRAM numbers behind one `GpuProbe` protocol.

`open_probe(env)` picks the implementation once at startup:

* ``NEURON_FAKE_GPUS`` set (e.g. ``0:24GiB,1:12GiB``) → `FakeProbe`: pretend GPUs for tests and
  demos. Free memory is total minus what loaded models `reserve`, so the fleet sees memory fill.
* else NVML (nvidia-ml-py, module ``pynvml``) initialises and reports at least one GPU →
  `NvmlProbe`, which measures real use; `reserve`/`release` are no-ops there.
* else `NoGpuProbe`: a CPU host, not an error. `devices()` is empty and `backend_reason` says why.

Invariants: device `index` is the CUDA ordinal llama.cpp uses (``CUDA_VISIBLE_DEVICES`` is
honoured, NVML's order is assumed to match CUDA's — true with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and
on hosts of identical GPUs); sizes are MiB; every method is thread-safe; `close` is idempotent.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

log = logging.getLogger(__name__)

FAKE_GPUS_ENV = "NEURON_FAKE_GPUS"
_MIB = 1024 * 1024
# Fake sizes use binary units whatever the spelling: a "24GB" card has 24 GiB of VRAM.
_UNITS = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$", re.IGNORECASE)


@dataclass(frozen=True)
class DeviceInfo:
    """A GPU's fixed description: `index` is the CUDA ordinal, `vram_total_mb` MiB,
    `compute_capability` ``"major.minor"``; `compute_capability` and `uuid` are None when the
    driver does not report them."""

    index: int
    name: str
    vram_total_mb: int
    compute_capability: str | None
    uuid: str | None


@dataclass(frozen=True)
class DeviceStatus:
    """A GPU's memory and load right now: VRAM in MiB, `utilization_pct` in percent and `temp_c` in
    °C (None when the driver does not report them)."""

    index: int
    vram_total_mb: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: int | None
    temp_c: int | None


class GpuProbe(Protocol):
    """What the neuron asks of its GPUs: the devices, their live status, and bookkeeping of the
    memory each model plans to use.

    `kind` names the implementation (``nvml``, ``fake``, ``none``) and `backend_reason` says why
    there is no CUDA (None with GPUs). `reserve` replaces an owner's earlier reservation and is a
    no-op where memory is measured. Every method is thread-safe; `close` is idempotent.
    """

    kind: str  # "nvml" | "fake" | "none"
    backend_reason: str | None  # why there is no CUDA; None when GPUs are present
    driver_version: str | None
    cuda_version: str | None

    def devices(self) -> list[DeviceInfo]: ...

    def status(self) -> list[DeviceStatus]: ...

    def reserve(self, owner: str, mb_by_device: Mapping[int, float]) -> None: ...

    def release(self, owner: str) -> None: ...

    def close(self) -> None: ...


def open_probe(env: Mapping[str, str] | None = None) -> GpuProbe:
    """The probe for this host (see the module docstring); never raises for a missing GPU."""
    env = os.environ if env is None else env
    fake = env.get(FAKE_GPUS_ENV, "").strip()
    if fake:
        return FakeProbe(parse_fake_gpus(fake))
    try:
        import pynvml
    except ImportError:
        return NoGpuProbe("NVML unavailable: nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver / library: a CPU host
        return NoGpuProbe(f"NVML unavailable: {exc}")
    try:
        handles = _visible_handles(pynvml, env.get("CUDA_VISIBLE_DEVICES"))
        if handles:
            return NvmlProbe(pynvml, handles)
        reason = "no NVIDIA GPUs found"
        if (hidden := env.get("CUDA_VISIBLE_DEVICES")) is not None:
            reason += f" (CUDA_VISIBLE_DEVICES={hidden!r})"
    except pynvml.NVMLError as exc:
        reason = f"NVML device enumeration failed: {exc}"
    pynvml.nvmlShutdown()
    return NoGpuProbe(reason)


def _visible_handles(nvml: ModuleType, visible: str | None) -> list[Any]:
    """NVML handles in CUDA ordinal order, filtered as CUDA_VISIBLE_DEVICES would filter them."""
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    if visible is None:
        return handles
    if "MIG-" in visible:
        # MIG instances are separate NVML handles; we report whole GPUs rather than guess.
        log.warning("CUDA_VISIBLE_DEVICES names MIG instances; reporting every GPU")
        return handles
    uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
    chosen: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.isdigit():
            matches = [int(entry)] if int(entry) < len(handles) else []
        elif entry.startswith("GPU-"):  # a UUID or an unambiguous prefix of one
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
        else:
            matches = []
        # CUDA stops at the first entry it cannot match (so "-1" or "" hides every GPU).
        if len(matches) != 1 or matches[0] in chosen:
            break
        chosen.append(matches[0])
    return [handles[i] for i in chosen]


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes for strings.
    return value.decode() if isinstance(value, bytes) else value


class NvmlProbe:
    """Real GPUs through NVML. NVML measures what llama.cpp allocates, so reservations are moot."""

    kind = "nvml"
    backend_reason: str | None = None

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self._lock = threading.Lock()
        self._closed = False
        self.driver_version = self._optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        cuda = self._optional(nvml.nvmlSystemGetCudaDriverVersion)
        # NVML encodes CUDA 12.4 as 12040.
        self.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
        self._devices = [self._describe(i, h) for i, h in enumerate(handles)]

    def _optional(self, call: Any) -> Any:
        try:
            return call()
        except self._nvml.NVMLError:  # Not Supported on this GPU/driver: report unknown
            return None

    def _describe(self, index: int, handle: Any) -> DeviceInfo:
        nvml = self._nvml
        cc = self._optional(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
        return DeviceInfo(
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            vram_total_mb=nvml.nvmlDeviceGetMemoryInfo(handle).total // _MIB,
            compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
            uuid=self._optional(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
        )

    def devices(self) -> list[DeviceInfo]:
        return list(self._devices)

    def status(self) -> list[DeviceStatus]:
        nvml = self._nvml
        out = []
        with self._lock:
            if self._closed:
                raise RuntimeError("GPU probe is closed")
            for index, handle in enumerate(self._handles):
                try:
                    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                except nvml.NVMLError as exc:
                    # A lost GPU is left out rather than reported with made-up numbers.
                    log.warning("GPU %d: cannot read memory: %s", index, exc)
                    continue
                util = self._optional(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                temp = self._optional(
                    lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
                )
                out.append(
                    DeviceStatus(
                        index=index,
                        vram_total_mb=mem.total // _MIB,
                        vram_used_mb=mem.used // _MIB,
                        vram_free_mb=mem.free // _MIB,
                        utilization_pct=util,
                        temp_c=temp,
                    )
                )
        return out

    def reserve(self, owner: str, mb_by_device: Mapping[int, float]) -> None:
        pass

    def release(self, owner: str) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._optional(self._nvml.nvmlShutdown)


class NoGpuProbe:
    """A CPU host: no devices, and the reason there is no CUDA backend."""

    kind = "none"
    driver_version: str | None = None
    cuda_version: str | None = None

    def __init__(self, reason: str) -> None:
        self.backend_reason: str | None = reason

    def devices(self) -> list[DeviceInfo]:
        return []

    def status(self) -> list[DeviceStatus]:
        return []

    def reserve(self, owner: str, mb_by_device: Mapping[int, float]) -> None:
        pass

    def release(self, owner: str) -> None:
        pass

    def close(self) -> None:
        pass


def parse_fake_gpus(spec: str) -> dict[int, int]:
    """``0:24GiB,1:12GiB`` → {0: 24576, 1: 12288} (MiB). A bare size takes its position as index.

    Units: GiB/GB/G = 1024 MiB, MiB/MB/M or none = MiB. Raises ValueError naming the bad part.
    """
    gpus: dict[int, int] = {}
    for position, raw in enumerate(spec.split(",")):
        part = raw.strip()
        index_text, sep, size_text = part.rpartition(":")
        where = f"{FAKE_GPUS_ENV}: bad entry {part!r} in {spec!r}"
        if sep and not index_text.strip().isdigit():
            raise ValueError(f"{where}: index must be a non-negative integer")
        index = int(index_text) if sep else position
        m = _SIZE.match(size_text.strip())
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{where}: size must look like 24GiB, 512MiB or 8192 (MiB)")
        mb = math.floor(float(m.group(1)) * _UNITS[m.group(2).lower()])
        if mb <= 0:
            raise ValueError(f"{where}: size must be positive")
        if index in gpus:
            raise ValueError(f"{where}: GPU index {index} given twice")
        gpus[index] = mb
    return dict(sorted(gpus.items()))


class FakeProbe:
    """Pretend GPUs: used = sum of reservations, free = total − used, utilization 0."""

    kind = "fake"
    backend_reason: str | None = None
    driver_version: str | None = "fake"
    cuda_version: str | None = None

    def __init__(self, totals_mb: Mapping[int, int]) -> None:
        self._totals = dict(sorted(totals_mb.items()))
        self._reserved: dict[str, dict[int, float]] = {}
        self._lock = threading.Lock()

    def devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(i, f"Fake GPU {i}", total, None, f"FAKE-GPU-{i}")
            for i, total in self._totals.items()
        ]

    def status(self) -> list[DeviceStatus]:
        with self._lock:
            used = {i: 0.0 for i in self._totals}
            for plan in self._reserved.values():
                for i, mb in plan.items():
                    used[i] += mb
        out = []
        for i, total in self._totals.items():
            used_mb = min(total, math.ceil(used[i]))
            out.append(DeviceStatus(i, total, used_mb, total - used_mb, 0, None))
        return out

    def reserve(self, owner: str, mb_by_device: Mapping[int, float]) -> None:
        """Record `owner`'s planned use, replacing any earlier reservation of the same owner."""
        for i, mb in mb_by_device.items():
            if i not in self._totals:
                raise ValueError(f"no fake GPU {i} (have {sorted(self._totals)})")
            if not math.isfinite(mb) or mb < 0:
                raise ValueError(f"reservation on GPU {i} must be a finite MiB count >= 0: {mb}")
        with self._lock:
            self._reserved[owner] = {i: float(mb) for i, mb in mb_by_device.items()}

    def release(self, owner: str) -> None:
        with self._lock:
            self._reserved.pop(owner, None)

    def close(self) -> None:
        pass
