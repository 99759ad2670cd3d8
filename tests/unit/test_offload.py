"""neuron.offload: the memory model and the offload planner, over fake geometries and GPUs."""

from __future__ import annotations

import pytest

from neuron.geometry import ModelGeometry
from neuron.offload import MIB, MemoryEstimate, OffloadPlan, estimate_memory, plan_offload

GIB = 1024  # in MiB, the planner's unit


def fake_geom(
    *,
    n_layers: int = 32,
    layer_mb: float = 800,
    n_embd: int = 4096,
    n_head: int = 32,
    n_head_kv: int = 8,
    head_dim: int = 128,
    n_vocab: int = 32000,
    output_mb: float = 500,
    token_embd_mb: float = 500,
    tied: bool = False,
    window: int | None = None,
    swa_every: int = 0,  # with a window: every swa_every-th layer (1-based) is global
) -> ModelGeometry:
    swa = tuple(
        window is not None and swa_every > 0 and (il % swa_every) < swa_every - 1
        for il in range(n_layers)
    )
    return ModelGeometry(
        architecture="fake",
        name="fake",
        file_bytes=int((n_layers * layer_mb + output_mb + token_embd_mb) * MIB) + 4096,
        n_layers=n_layers,
        n_ctx_train=32768,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=(n_head_kv,) * n_layers,
        head_dim_k=head_dim,
        head_dim_v=head_dim,
        sliding_window=window,
        swa_layers=swa,
        layer_bytes=(int(layer_mb * MIB),) * n_layers,
        output_bytes=0 if tied else int(output_mb * MIB),
        token_embd_bytes=int(token_embd_mb * MIB),
        tied_embeddings=tied,
        n_vocab=n_vocab,
        chat_template=None,
        bos_token=None,
        eos_token=None,
    )


SEVEN_B = fake_geom()  # 32 × 800 MiB layers, GQA 32/8, 500 MiB head: ~26 GiB offloaded


# --- the memory model -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "geom", "n_ctx", "kv_mb"),
    [
        # 2 (K,V) × cells × n_head_kv × head_dim × 2 bytes × layers
        ("gqa", SEVEN_B, 4096, 32 * 4096 * 8 * 256 * 2 / MIB),
        ("mha", fake_geom(n_head_kv=32), 4096, 32 * 4096 * 32 * 256 * 2 / MIB),
        ("padded-to-256", SEVEN_B, 1000, 32 * 1024 * 8 * 256 * 2 / MIB),
        ("tiny-ctx", SEVEN_B, 1, 32 * 256 * 8 * 256 * 2 / MIB),
    ],
)
def test_kv_cache_size(name: str, geom: ModelGeometry, n_ctx: int, kv_mb: float) -> None:
    assert estimate_memory(geom, n_ctx).kv_mb == pytest.approx(kv_mb)


def test_mha_kv_is_four_times_gqa_with_four_times_the_kv_heads() -> None:
    gqa = estimate_memory(SEVEN_B, 8192)
    mha = estimate_memory(fake_geom(n_head_kv=32), 8192)
    assert mha.kv_mb == pytest.approx(4 * gqa.kv_mb)
    assert mha.full_offload_mb - gqa.full_offload_mb >= 3 * gqa.kv_mb


GEMMA_LIKE = fake_geom(n_layers=18, window=512, swa_every=6, n_head=4, n_head_kv=1, head_dim=256)


@pytest.mark.parametrize(
    ("n_ctx", "swa_full", "cells_local", "cells_global"),
    [
        (8192, True, 8192, 8192),  # llama.cpp's default: SWA layers get the full context
        (8192, False, 1024, 8192),  # window 512 + ubatch 512, padded to 256
        (2048, False, 1024, 2048),
        (512, False, 512, 512),  # the window never exceeds the context
        (700, False, 768, 768),  # 700 → 768 cells; min(768, 1024) = 768
    ],
)
def test_sliding_window_layers_shrink_kv_unless_swa_full(
    n_ctx: int, swa_full: bool, cells_local: int, cells_global: int
) -> None:
    per_cell = 1 * 256 * 2 * 2 / MIB  # one KV head, K+V of 256 each, f16
    expected = (15 * cells_local + 3 * cells_global) * per_cell  # 18 layers: 15 local, 3 global
    assert estimate_memory(GEMMA_LIKE, n_ctx, swa_full=swa_full).kv_mb == pytest.approx(expected)


@pytest.mark.parametrize(
    ("geom", "n_ctx", "n_ubatch", "compute_mb"),
    [
        # logits-bound: (n_vocab + 2·n_embd) × T × 4
        (fake_geom(n_vocab=256000, n_head=8), 512, 512, (256000 + 2 * 4096) * 512 * 4 / MIB),
        # attention-bound: (n_head·n_kv + mask + 4·n_embd + n_head·hd + 2·n_head_kv·hd) × T × 4
        (SEVEN_B, 8192, 512, (32 * 8192 + 8192 + 4 * 4096 + 4096 + 2 * 1024) * 512 * 4 / MIB),
        # n_ubatch is clamped to the (unpadded) context
        (fake_geom(n_vocab=256000), 256, 512, (256000 + 2 * 4096) * 256 * 4 / MIB),
        (fake_geom(n_vocab=256000), 2048, 128, (256000 + 2 * 4096) * 128 * 4 / MIB),
        # … and with a small ubatch a long context turns it attention-bound
        (fake_geom(n_vocab=256000), 8192, 128, (32 * 8192 + 8192 + 22528) * 128 * 4 / MIB),
    ],
)
def test_compute_buffer(geom: ModelGeometry, n_ctx: int, n_ubatch: int, compute_mb: float) -> None:
    est = estimate_memory(geom, n_ctx, n_ubatch=n_ubatch)
    assert est.compute_mb == pytest.approx(compute_mb)


def test_tied_embeddings_put_a_copy_of_token_embd_with_the_output_layer() -> None:
    untied = estimate_memory(fake_geom(output_mb=500, token_embd_mb=500), 2048)
    tied = estimate_memory(fake_geom(tied=True, token_embd_mb=500), 2048)
    assert untied.output_mb == pytest.approx(500)
    assert tied.output_mb == pytest.approx(500)
    # the host copy of token_embd stays; the GPUs see the same totals either way
    assert tied.full_offload_mb == pytest.approx(untied.full_offload_mb)
    assert tied.weights_mb == pytest.approx(untied.weights_mb - 500)


def test_estimate_totals_and_contract_dict() -> None:
    est = estimate_memory(SEVEN_B, 4096)
    assert est.weights_mb == pytest.approx(32 * 800 + 500 + 500)
    assert est.per_layer_mb == pytest.approx(800 + est.kv_mb / 32)
    assert est.full_offload_mb == pytest.approx(32 * est.per_layer_mb + 500 + est.compute_mb)
    assert est.host_mb > est.weights_mb + est.kv_mb + est.compute_mb
    as_dict = est.as_dict()
    assert {"full_offload_mb", "per_layer_mb", "kv_mb", "compute_mb"} <= as_dict.keys()
    assert all(isinstance(v, int) for v in as_dict.values())
    assert as_dict["per_layer_mb"] == 816  # 800 MiB weights + 16 MiB KV
    assert as_dict["n_ctx"] == 4096


def test_contract_dict_rounds_up() -> None:
    est = estimate_memory(fake_geom(layer_mb=800.25), 4096)
    assert est.per_layer_mb == pytest.approx(816.25)
    assert est.as_dict()["per_layer_mb"] == 817  # an estimate must not under-promise


@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_context_is_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        estimate_memory(SEVEN_B, bad)


# --- the planner ----------------------------------------------------------------------------------

FULL = SEVEN_B.n_layers + 1  # llama.cpp's "all repeating layers and the output layer"


def _check_invariants(plan: OffloadPlan, free: dict[int, float], headroom: float) -> None:
    assert 0 <= plan.n_gpu_layers <= FULL
    assert plan.fits_fully == (plan.n_gpu_layers == FULL)
    for dev, mb in plan.device_mb.items():
        assert mb <= free[dev] - headroom + 1e-6, f"device {dev} over budget"
    if plan.tensor_split is not None:
        assert sum(plan.tensor_split) == plan.n_gpu_layers
        assert len(plan.tensor_split) == max(free) + 1
    if plan.n_gpu_layers == 0:
        assert plan.device_mb == {} and plan.tensor_split is None


@pytest.mark.parametrize(
    ("case", "free", "headroom", "n_gpu_layers", "tensor_split"),
    [
        ("one 24 GiB GPU takes a ~19 GiB model", {0: 24 * GIB}, 512, FULL, None),
        (
            "24+12 GiB: the big device alone suffices",
            {0: 24 * GIB, 1: 12 * GIB},
            512,
            FULL,
            (33.0, 0.0),
        ),
        ("roomiest device is chosen", {0: 12 * GIB, 1: 24 * GIB}, 512, FULL, (0.0, 33.0)),
        ("no GPU", {}, 512, 0, None),
        ("headroom eats everything", {0: 2 * GIB}, 4 * GIB, 0, None),
        ("a 1 GiB GPU holds nothing useful", {0: 1 * GIB}, 256, 0, None),
    ],
)
def test_plan_table_small_model(
    case: str,
    free: dict[int, float],
    headroom: float,
    n_gpu_layers: int,
    tensor_split: tuple[float, ...] | None,
) -> None:
    geom = fake_geom(layer_mb=560)  # 32 × (560 + 16) + 500 + compute ≈ 19 GiB
    plan = plan_offload(geom, 4096, free, headroom)
    assert plan.n_gpu_layers == n_gpu_layers, case
    assert plan.tensor_split == tensor_split, case
    _check_invariants(plan, free, headroom)


def test_split_over_two_gpus_in_proportion_to_free_memory() -> None:
    # 26 GiB of layers + head does not fit 24 GiB; 24+12 holds it, split ~2:1 by usable memory
    free, headroom = {0: 24 * GIB, 1: 12 * GIB}, 512
    plan = plan_offload(SEVEN_B, 4096, free, headroom)
    assert plan.fits_fully and plan.n_gpu_layers == FULL
    assert plan.tensor_split == (22.0, 11.0)
    est = estimate_memory(SEVEN_B, 4096)
    # device 0: 22 layers + its own compute buffer; device 1: 10 layers + head + full compute
    assert plan.device_mb[0] == pytest.approx(22 * est.per_layer_mb + est.compute_mb)
    assert plan.device_mb[1] == pytest.approx(10 * est.per_layer_mb + 500 + est.compute_mb)
    _check_invariants(plan, free, headroom)


def test_partial_offload_on_one_small_gpu() -> None:
    free, headroom = {0: 8 * GIB}, 512
    plan = plan_offload(SEVEN_B, 4096, free, headroom)
    est = estimate_memory(SEVEN_B, 4096)
    assert not plan.fits_fully
    # head + compute + op-offload copy of one layer, then as many 816 MiB layers as fit
    budget = 8 * GIB - headroom - 500 - est.compute_mb - 800
    assert plan.n_gpu_layers == 1 + int(budget // est.per_layer_mb)
    _check_invariants(plan, free, headroom)


def test_output_layer_is_offloaded_first() -> None:
    # llama.cpp's n_gpu_layers counts from the top: 1 = only the output layer
    est = estimate_memory(SEVEN_B, 4096)
    room = 500 + est.compute_mb + 800 + est.compute_mb / 2  # head fits, a layer does not
    plan = plan_offload(SEVEN_B, 4096, {0: room}, 0)
    assert plan.n_gpu_layers == 1
    assert plan.device_mb[0] == pytest.approx(500 + est.compute_mb + 800)


def test_output_layer_that_does_not_fit_blocks_any_offload() -> None:
    # huge tied vocabulary: its GPU copy alone exceeds the card, so no layer can go either
    geom = fake_geom(tied=True, token_embd_mb=3000, layer_mb=100)
    plan = plan_offload(geom, 2048, {0: 3 * GIB}, 0)
    assert plan.n_gpu_layers == 0


@pytest.mark.parametrize("delta_mb", [0.0, -1.0])
def test_model_exactly_at_the_boundary(delta_mb: float) -> None:
    est = estimate_memory(SEVEN_B, 4096)
    headroom = 1024
    free = {0: est.full_offload_mb + headroom + delta_mb}
    plan = plan_offload(SEVEN_B, 4096, free, headroom)
    assert plan.fits_fully == (delta_mb >= 0)
    if delta_mb >= 0:
        assert plan.device_mb[0] == pytest.approx(est.full_offload_mb)
    else:
        assert plan.n_gpu_layers < FULL
    _check_invariants(plan, free, headroom)


@pytest.mark.parametrize(("cap", "expected"), [(None, FULL), (-1, FULL), (10, 10), (0, 0)])
def test_cap_bounds_the_layer_count(cap: int | None, expected: int) -> None:
    plan = plan_offload(SEVEN_B, 4096, {0: 80 * GIB}, 512, n_gpu_layers_cap=cap)
    assert plan.n_gpu_layers == expected


def test_sliding_window_kv_lets_more_layers_fit() -> None:
    geom = fake_geom(window=1024, swa_every=4)
    free = {0: 12 * GIB}
    full = plan_offload(geom, 32768, free, 512)
    windowed = plan_offload(geom, 32768, free, 512, swa_full=False)
    assert windowed.n_gpu_layers > full.n_gpu_layers


@pytest.mark.parametrize(
    "free",
    [
        {0: 6 * GIB, 1: 6 * GIB, 2: 6 * GIB, 3: 6 * GIB},
        {0: 4 * GIB, 1: 20 * GIB},
        {1: 16 * GIB, 3: 16 * GIB},  # sparse device indices
        {0: 30 * GIB, 1: 0.0},
    ],
)
def test_plans_never_exceed_any_device(free: dict[int, float]) -> None:
    for n_ctx in (2048, 8192, 32768):
        plan = plan_offload(SEVEN_B, n_ctx, free, 512)
        _check_invariants(plan, free, 512)
        assert plan.n_gpu_layers > 0


def test_more_free_memory_never_means_fewer_layers() -> None:
    layers = [
        plan_offload(SEVEN_B, 8192, {0: mb}, 512).n_gpu_layers for mb in range(0, 40 * GIB, 256)
    ]
    assert layers == sorted(layers)
    assert layers[0] == 0 and layers[-1] == FULL


def test_plan_as_dict() -> None:
    plan = plan_offload(SEVEN_B, 4096, {0: 24 * GIB, 1: 12 * GIB}, 512)
    assert plan.as_dict() == {
        "n_gpu_layers": FULL,
        "tensor_split": [22.0, 11.0],
        "fits_fully": True,
        "device_mb": {str(d): int(-(-mb // 1)) for d, mb in plan.device_mb.items()},
    }


def test_memory_estimate_is_frozen() -> None:
    est = estimate_memory(SEVEN_B, 4096)
    assert isinstance(est, MemoryEstimate)
    with pytest.raises(AttributeError):
        est.kv_mb = 0  # type: ignore[misc]
