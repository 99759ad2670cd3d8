"""Pure memory model of a llama.cpp load, and the GPU offload plan that follows from free VRAM.

Job: from a `ModelGeometry` and a context size, estimate what llama.cpp (as vendored by
llama-cpp-python 0.3.36) allocates — weights, KV cache, compute buffer — and choose
``n_gpu_layers`` / ``tensor_split`` so that the load fits the devices' free memory. No I/O, no
logging, no engine imports: numbers in, plan out.

What the model reproduces (read from llama.cpp's sources, calibrated against its own log lines
for SmolLM2-135M and Gemma-3-270M, see tests/integration/test_estimate_accuracy.py):
* Context: ``n_ctx`` is padded up to a multiple of 256; ``n_batch = min(n_ctx, n_batch)``;
  ``n_ubatch = min(n_batch, n_ubatch)``. One sequence, no unified KV (llama-cpp-python's default).
* KV cache: per layer ``cells × n_head_kv[i] × (head_dim_k + head_dim_v) × kv_bytes_per_elem``.
  ``cells`` is the padded ``n_ctx``; for a sliding-window layer it is
  ``pad256(min(n_ctx, window + n_ubatch))`` — but only when ``swa_full`` is False. llama.cpp's
  default context parameters set ``swa_full = true`` and llama-cpp-python keeps that unless told
  otherwise, so by default sliding-window layers cost as much as global ones.
* Compute buffer: the worst-case graph for ``n_ubatch`` tokens with every position a logit row
  (llama.cpp reserves ``n_outputs = n_ubatch``). ggml-alloc reuses memory between ops, so the
  buffer is the larger of two phases: the output head (``n_vocab × T`` f32 logits plus two
  ``n_embd × T`` activations) and attention without flash-attention (``n_head × n_kv × T`` f32
  scores, one ``n_kv × T`` f32 mask per KV cache, plus the layer's activations). With flash
  attention enabled the real buffer is smaller; this is then an upper bound.
* Placement: llama.cpp offloads from the top. ``n_gpu_layers = k`` puts the output layer and the
  last ``k - 1`` repeating layers on the GPUs; ``k = n_layers + 1`` is everything. The input
  embeddings always stay in host memory. A model with tied embeddings gets a second copy of
  ``token_embd.weight`` on the output layer's device. Each layer's KV cache lives with its layer.

Planning invariants:
* ``n_gpu_layers`` is in llama.cpp's numbering above (never -1): 0 = CPU only,
  ``n_layers + 1`` = full offload; ``fits_fully`` iff ``n_gpu_layers == n_layers + 1``.
* Usable memory per device is ``free - headroom_mb`` (never below 0). Every device in the plan
  stays within it: weights + KV of its blocks + its compute buffer (the full one on the device
  holding the output layer; the attention-phase one elsewhere). A partial offload also charges
  the first device for llama.cpp's op offload (CPU-resident weights of one layer copied over
  for large batches) — modelled from ggml-backend's scheduler, not measured here.
* Search is greedy from the largest ``k`` down: for each ``k``, one device if one suffices
  (the one with the most usable memory), else a split in proportion to usable memory, else a
  front-to-back fill in device order; the first fit wins. No fit for any ``k ≥ 1`` → CPU plan.
* ``tensor_split`` is set whenever the inventory has more than one device (llama.cpp would
  otherwise spread layers over all of them by free memory). It holds, per device index from 0
  to the highest index, the number of offloaded blocks that device gets; llama.cpp normalises
  it, and integer counts reproduce our assignment exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from neuron.geometry import ModelGeometry

__all__ = ["MemoryEstimate", "OffloadPlan", "estimate_memory", "plan_offload"]

MIB = 1024 * 1024
_CTX_PAD = 256  # llama_context: cparams.n_ctx = GGML_PAD(n_ctx, 256); SWA cache padded alike
_F32 = 4
_EPS_MB = 1e-6  # float slack: a load exactly at the budget fits


@dataclass(frozen=True)
class MemoryEstimate:
    """What one load of the model costs, in MiB."""

    weights_mb: float  # all tensors, as mapped in host memory for a CPU load
    per_layer_mb: float  # mean over repeating layers of weights + that layer's KV cache
    kv_mb: float  # whole KV cache
    compute_mb: float  # worst-case compute buffer (output head included)
    output_mb: float  # output layer on its device (incl. the tied-embedding copy)
    full_offload_mb: float  # on the GPUs for n_gpu_layers = n_layers + 1 (single device)
    host_mb: float  # host RAM for a CPU-only load: weights + KV + compute + logits buffer
    n_ctx: int  # context actually allocated (padded)

    def as_dict(self) -> dict[str, int]:
        """Contract form: whole MiB, rounded up (an estimate must not under-promise)."""
        return {key: math.ceil(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class OffloadPlan:
    """How a load is split between the GPUs and the host: llama.cpp's `n_gpu_layers` (0 = CPU only,
    ``n_layers + 1`` = everything; `fits_fully` then), the `tensor_split` block counts per device
    (None unless there are several devices), and the MiB planned per device index."""

    n_gpu_layers: int
    tensor_split: tuple[float, ...] | None
    fits_fully: bool
    device_mb: dict[int, float]  # planned use per device index, MiB

    def as_dict(self) -> dict[str, object]:
        return {
            "n_gpu_layers": self.n_gpu_layers,
            "tensor_split": list(self.tensor_split) if self.tensor_split is not None else None,
            "fits_fully": self.fits_fully,
            "device_mb": {str(dev): math.ceil(mb) for dev, mb in sorted(self.device_mb.items())},
        }


@dataclass(frozen=True)
class _Costs:
    """Per-block costs in MiB; block ``n_layers`` is the output layer."""

    block_mb: tuple[float, ...]  # weights (+ KV) per block, output last
    kv_mb: tuple[float, ...]  # KV per repeating layer
    compute_full_mb: float
    compute_layers_mb: float
    max_layer_weights_mb: float
    n_ctx: int


def estimate_memory(
    geom: ModelGeometry,
    n_ctx: int,
    *,
    n_batch: int = 512,
    n_ubatch: int = 512,
    kv_bytes_per_elem: float = 2.0,
    swa_full: bool = True,
) -> MemoryEstimate:
    """Memory for loading `geom` with context `n_ctx` (llama-cpp-python's defaults otherwise)."""
    costs = _costs(geom, n_ctx, n_batch, n_ubatch, kv_bytes_per_elem, swa_full)
    weights_mb = geom.tensor_bytes / MIB
    kv_mb = sum(costs.kv_mb)
    layers_mb = sum(costs.block_mb[:-1])
    output_mb = costs.block_mb[-1]
    logits_buffer_mb = geom.n_vocab * _F32 / MIB  # host-side output buffer, one row at start
    return MemoryEstimate(
        weights_mb=weights_mb,
        per_layer_mb=layers_mb / geom.n_layers,
        kv_mb=kv_mb,
        compute_mb=costs.compute_full_mb,
        output_mb=output_mb,
        full_offload_mb=layers_mb + output_mb + costs.compute_full_mb,
        host_mb=weights_mb + kv_mb + costs.compute_full_mb + logits_buffer_mb,
        n_ctx=costs.n_ctx,
    )


def plan_offload(
    geom: ModelGeometry,
    n_ctx: int,
    free_mb: Mapping[int, float],
    headroom_mb: float,
    *,
    n_gpu_layers_cap: int | None = None,
    n_batch: int = 512,
    n_ubatch: int = 512,
    kv_bytes_per_elem: float = 2.0,
    swa_full: bool = True,
) -> OffloadPlan:
    """The largest offload that fits `free_mb` (MiB per device index) less `headroom_mb` each.

    `n_gpu_layers_cap` bounds the result (llama.cpp numbering; None or negative: no bound).
    """
    costs = _costs(geom, n_ctx, n_batch, n_ubatch, kv_bytes_per_elem, swa_full)
    devices = sorted(free_mb)
    usable = {dev: max(0.0, float(free_mb[dev]) - headroom_mb) for dev in devices}
    n_blocks = geom.n_layers + 1
    top = n_blocks if n_gpu_layers_cap is None or n_gpu_layers_cap < 0 else n_gpu_layers_cap
    for k in range(min(top, n_blocks), 0, -1):
        counts = _place(costs, k, devices, usable)
        if counts is not None:
            return OffloadPlan(
                n_gpu_layers=k,
                tensor_split=_split(counts, devices),
                fits_fully=k == n_blocks,
                device_mb={d: mb for d, mb in _loads(costs, k, devices, counts).items() if mb},
            )
    return OffloadPlan(n_gpu_layers=0, tensor_split=None, fits_fully=False, device_mb={})


# --- the memory model ---------------------------------------------------------------------------


def _pad(value: int, to: int) -> int:
    return -(-value // to) * to


def _costs(
    geom: ModelGeometry,
    n_ctx: int,
    n_batch: int,
    n_ubatch: int,
    kv_bytes_per_elem: float,
    swa_full: bool,
) -> _Costs:
    if n_ctx <= 0 or n_batch <= 0 or n_ubatch <= 0:
        raise ValueError(
            f"n_ctx, n_batch and n_ubatch must be positive: {n_ctx}/{n_batch}/{n_ubatch}"
        )
    # llama-cpp-python clamps n_batch to the requested n_ctx, llama.cpp then to the padded one
    ctx = _pad(n_ctx, _CTX_PAD)
    tokens = min(n_ubatch, n_batch, n_ctx, ctx)

    swa_cells = ctx
    if geom.sliding_window and not swa_full:
        swa_cells = _pad(min(ctx, geom.sliding_window + tokens), _CTX_PAD)
    cells = [swa_cells if swa else ctx for swa in geom.swa_layers]
    kv_mb = tuple(
        cells[i] * geom.n_head_kv[i] * (geom.head_dim_k + geom.head_dim_v) * kv_bytes_per_elem / MIB
        for i in range(geom.n_layers)
    )

    # Output head: logits for every token of the ubatch, plus the normed input and its source.
    logits = (geom.n_vocab + 2 * geom.n_embd) * tokens * _F32
    # Attention (no flash-attn): scores n_head × n_kv × T (soft_max runs in place on them), a
    # mask per KV cache (two when the model has sliding-window layers), and the layer's
    # activations: residual, norm, Q, output projection (~4 × n_embd) plus Q/K/V rows.
    has_swa = any(geom.swa_layers)
    masks = ctx + (swa_cells if has_swa else 0)
    n_kv_max = ctx if not all(geom.swa_layers) else swa_cells
    n_head_kv_max = max(geom.n_head_kv, default=0)
    activations = (
        4 * geom.n_embd
        + geom.n_head * geom.head_dim_k
        + n_head_kv_max * (geom.head_dim_k + geom.head_dim_v)
    )
    attention = (geom.n_head * n_kv_max + masks + activations) * tokens * _F32

    output_mb = geom.output_bytes / MIB
    if geom.tied_embeddings:
        # llama.cpp duplicates token_embd.weight onto the output layer's buffer type
        output_mb += geom.token_embd_bytes / MIB
    block_mb = tuple(geom.layer_bytes[i] / MIB + kv_mb[i] for i in range(geom.n_layers))
    return _Costs(
        block_mb=(*block_mb, output_mb),
        kv_mb=kv_mb,
        compute_full_mb=max(logits, attention) / MIB,
        compute_layers_mb=attention / MIB,
        max_layer_weights_mb=max(geom.layer_bytes, default=0) / MIB,
        n_ctx=ctx,
    )


# --- placement ----------------------------------------------------------------------------------


def _loads(
    costs: _Costs, k: int, devices: list[int], counts: Mapping[int, int]
) -> dict[int, float]:
    """MiB each device needs when the top `k` blocks are split over devices as `counts`."""
    n_blocks = len(costs.block_mb)
    first = n_blocks - k
    loads: dict[int, float] = {}
    start = first
    holders = [dev for dev in devices if counts.get(dev, 0) > 0]
    for dev in devices:
        n = counts.get(dev, 0)
        if n == 0:
            loads[dev] = 0.0
            continue
        loads[dev] = sum(costs.block_mb[start : start + n])
        holds_output = dev == holders[-1]
        loads[dev] += costs.compute_full_mb if holds_output else costs.compute_layers_mb
        start += n
    if k < n_blocks and devices:
        # op offload: large-batch matmuls of CPU-resident layers run on the first GPU backend,
        # with that layer's weights copied into its compute buffer
        first_dev = devices[0]
        extra = costs.max_layer_weights_mb
        if counts.get(first_dev, 0) == 0:
            extra += costs.compute_layers_mb
        loads[first_dev] += extra
    return loads


def _fits(
    costs: _Costs,
    k: int,
    devices: list[int],
    counts: Mapping[int, int],
    usable: Mapping[int, float],
) -> bool:
    loads = _loads(costs, k, devices, counts)
    return all(loads[dev] <= usable[dev] + _EPS_MB for dev in devices)


def _place(
    costs: _Costs, k: int, devices: list[int], usable: Mapping[int, float]
) -> dict[int, int] | None:
    """Blocks per device for the top `k` blocks, or None when they cannot fit."""
    candidates = [dev for dev in devices if usable[dev] > 0]
    if not candidates:
        return None
    roomiest = min(candidates, key=lambda d: (-usable[d], d))
    if _fits(costs, k, devices, {roomiest: k}, usable):
        return {roomiest: k}
    if len(candidates) > 1:
        counts = _proportional(k, candidates, usable)
        if _fits(costs, k, devices, counts, usable):
            return counts
        in_order = _front_to_back(costs, k, candidates, usable)
        if in_order is not None and _fits(costs, k, devices, in_order, usable):
            return in_order
    return None


def _proportional(k: int, devices: list[int], usable: Mapping[int, float]) -> dict[int, int]:
    """Largest-remainder apportionment of `k` blocks by usable memory."""
    total = sum(usable[dev] for dev in devices)
    shares = {dev: k * usable[dev] / total for dev in devices}
    counts = {dev: int(shares[dev]) for dev in devices}
    by_remainder = sorted(devices, key=lambda d: (counts[d] - shares[d], d))
    for dev in by_remainder[: k - sum(counts.values())]:
        counts[dev] += 1
    return counts


def _front_to_back(
    costs: _Costs, k: int, devices: list[int], usable: Mapping[int, float]
) -> dict[int, int] | None:
    """Fill devices in index order with as many blocks as each takes (output goes last)."""
    n_blocks = len(costs.block_mb)
    blocks = list(range(n_blocks - k, n_blocks))
    counts: dict[int, int] = {}
    i = 0
    for dev in devices:
        used = costs.compute_layers_mb
        n = 0
        while i + n < len(blocks):
            block = blocks[i + n]
            extra = costs.block_mb[block]
            if block == n_blocks - 1:  # the output layer brings the full compute buffer
                extra += costs.compute_full_mb - costs.compute_layers_mb
            if used + extra > usable[dev] + _EPS_MB:
                break
            used += extra
            n += 1
        counts[dev] = n
        i += n
    return counts if i == len(blocks) else None


def _split(counts: Mapping[int, int], devices: list[int]) -> tuple[float, ...] | None:
    if len(devices) <= 1:
        return None
    return tuple(float(counts.get(dev, 0)) for dev in range(max(devices) + 1))
