"""`LlamaEngine` on the real demo models, in process: batching, prefix reuse, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from neuron.engine import Finished, GenerateRequest, Piece, Sampling, TokenLogprob
from neuron.engine.llama import LlamaEngine, LlamaSettings
from neuron.engine.sampler import plain_greedy

pytestmark = pytest.mark.slow

GREEDY = Sampling(temperature=0)
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
]
# Prompts the small model continues with confidence (no near-tied tokens for a while), so that
# greedy texts can be compared across batch shapes.
CONFIDENT = ["1, 2, 3, 4,", "A, B, C, D,", "Monday, Tuesday, Wednesday,", "10, 20, 30, 40,"]


@contextlib.asynccontextmanager
async def started(name: str, settings: LlamaSettings) -> AsyncIterator[LlamaEngine]:
    """An engine of the test's own, closed however the test ends."""
    engine = LlamaEngine(name, settings)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture(scope="module")
def engine(smollm_path: Path) -> Iterator[LlamaEngine]:
    engine = LlamaEngine("smol", LlamaSettings(str(smollm_path), n_ctx=1024, parallel=4))
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


async def run(
    engine: LlamaEngine,
    prompt: str,
    max_tokens: int = 24,
    sampling: Sampling = GREEDY,
    **kwargs: object,
) -> tuple[str, Finished, list[float]]:
    """Text, the final item, and the arrival time of every piece."""
    text, times = "", []
    request = GenerateRequest(prompt=prompt, sampling=sampling, max_tokens=max_tokens, **kwargs)
    async for item in engine.generate(request):
        if isinstance(item, Piece):
            text += item.text
            times.append(time.monotonic())
        else:
            return text, item, times
    raise AssertionError("the stream ended without Finished")


async def greedy_tokens(engine: LlamaEngine, prompt: str, **kwargs: object) -> list[TokenLogprob]:
    request = GenerateRequest(prompt=prompt, sampling=GREEDY, max_tokens=24, logprobs=2, **kwargs)
    return [
        e
        async for item in engine.generate(request)
        if isinstance(item, Piece)
        for e in item.logprobs
    ]


def assert_same_greedy_text(expected: list[TokenLogprob], actual: list[TokenLogprob]) -> int:
    """Greedy runs evaluated in different batch shapes agree token for token, except where
    the model is at a near tie: llama.cpp's kernels for different batch sizes round
    differently (about 0.1 nats on this 4-bit model), which can flip a near-tied argmax. Checks
    that the texts agree up to the first near tie and the log-probabilities agree until then;
    returns how many tokens agreed."""
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        gap = want.top[0][1] - want.top[1][1]
        if gap < 0.4:
            return index  # a near tie: either token is the greedy choice within rounding
        assert got.token == want.token, f"token {index}: {got.token!r} != {want.token!r}"
        assert got.logprob == pytest.approx(want.logprob, abs=0.3)
    assert len(actual) == len(expected)
    return len(expected)


async def test_concurrent_greedy_requests_give_their_solo_text(engine: LlamaEngine) -> None:
    alone = [await greedy_tokens(engine, prompt, reuse_prefix=False) for prompt in CONFIDENT]
    together = await asyncio.gather(
        *(greedy_tokens(engine, p, reuse_prefix=False) for p in CONFIDENT)
    )
    agreed = [assert_same_greedy_text(a, b) for a, b in zip(alone, together, strict=True)]
    assert sum(agreed) >= 2 * 24  # most of the text is compared, not skipped
    assert engine.stats().decode_steps > 0


async def test_a_request_arriving_during_long_generations_streams_before_they_end(
    engine: LlamaEngine,
) -> None:
    counting = ["1, 2, 3, 4,", "10, 11, 12, 13,", "100, 101, 102, 103,"]  # never ends early
    long_runs = [asyncio.create_task(run(engine, p, max_tokens=160)) for p in counting]
    await asyncio.sleep(0.3)  # the three are generating
    short_text, short_done, short_times = await run(engine, "Hello, my name is", max_tokens=4)
    results = await asyncio.gather(*long_runs)
    assert short_text and short_done.usage.completion_tokens == 4
    for _, finished, times in results:
        assert finished.usage.completion_tokens == 160
        assert short_times[0] < times[-1]  # it did not wait for them to finish


async def test_a_cancelled_stream_frees_its_slot(engine: LlamaEngine) -> None:
    busy_before = engine.stats().slots_busy
    stream = engine.generate(GenerateRequest(prompt=PROMPTS[1], sampling=GREEDY, max_tokens=500))
    async for _item in stream:
        assert engine.stats().slots_busy == busy_before + 1
        break
    await stream.aclose()
    for _ in range(100):
        if engine.stats().slots_busy == busy_before:
            break
        await asyncio.sleep(0.02)
    assert engine.stats().slots_busy == busy_before


async def test_a_prefix_cache_hit_gives_the_cold_text(engine: LlamaEngine) -> None:
    system = "You are a careful assistant. " * 30
    question = system + CONFIDENT[0]
    cold_tokens = await greedy_tokens(engine, question, reuse_prefix=False)
    warm_tokens = await greedy_tokens(engine, question)
    assert assert_same_greedy_text(cold_tokens, warm_tokens) >= 8
    _, cold, _ = await run(engine, system + "Name a fruit:", reuse_prefix=False)
    _, warm, _ = await run(engine, system + "Name a fruit:")
    assert cold.usage.cached_tokens == 0
    assert warm.usage.cached_tokens >= cold.usage.prompt_tokens - 1
    # a different question behind the same system prompt reuses the shared part only
    _, other, _ = await run(engine, system + "Name a colour:")
    assert 0.8 * cold.usage.prompt_tokens < other.usage.cached_tokens < cold.usage.prompt_tokens


async def test_a_prefix_pushed_out_of_the_pool_comes_back_from_host_ram(
    smollm_path: Path,
) -> None:
    # One slot, so two sequences: a third conversation pushes the first out of the KV pool.
    settings = LlamaSettings(str(smollm_path), n_ctx=512, parallel=1, cache_ram_mb=64)
    async with started("smol-ram", settings) as small:
        conversations = [f"{topic} " * 40 + CONFIDENT[0] for topic in ("Sea.", "Sky.", "Sand.")]
        cold = await greedy_tokens(small, conversations[0], reuse_prefix=False)
        for prompt in conversations:
            await run(small, prompt, max_tokens=4)
        stats = small.stats()
        assert stats.parked_prefixes >= 1 and stats.parked_bytes > 0
        assert stats.restored_tokens == 0
        # the first conversation is in neither sequence now: only RAM holds it
        _, back, _ = await run(small, conversations[0], max_tokens=4)
        assert back.usage.cached_tokens >= back.usage.prompt_tokens - 1
        assert small.stats().restored_tokens == back.usage.cached_tokens
        warm = await greedy_tokens(small, conversations[0])
        assert assert_same_greedy_text(cold, warm) >= 8
    assert small.stats().parked_prefixes == 0  # freed with the engine


async def test_on_the_cpu_idle_prefixes_leave_the_pool_while_others_decode(
    smollm_path: Path,
) -> None:
    settings = LlamaSettings(
        str(smollm_path), n_ctx=1024, parallel=2, cache_ram_mb=64, park_idle=True
    )
    async with started("smol-park", settings) as small:
        idle_prompt = "Waves. " * 150 + CONFIDENT[1]
        cold = await greedy_tokens(small, idle_prompt, reuse_prefix=False)
        assert small.stats().cache_sequences == 1  # nothing else decodes: it stays in the pool
        stream = small.generate(
            GenerateRequest(prompt=CONFIDENT[0], sampling=GREEDY, max_tokens=40)
        )
        async for _item in stream:
            break
        stats = small.stats()  # the idle prefix was parked before the first step
        await stream.aclose()
        assert stats.parked_prefixes == 1
        # Its 300-odd cells left the pool; the running request holds the few that remain.
        assert stats.kv_cells_used < 100
        _, back, _ = await run(small, idle_prompt, max_tokens=1)
        assert back.usage.cached_tokens >= back.usage.prompt_tokens - 1 > 300
        assert small.stats().restored_tokens == back.usage.cached_tokens  # from RAM
        warm = await greedy_tokens(small, idle_prompt)
        assert assert_same_greedy_text(cold, warm) >= 8


# About 600 tokens of system prompt shared by the conversations below, ~150 of their own each.
SHARED_SYSTEM = "Rules: be brief, be kind, cite files. " * 60


def sharing_conversation(topic: str) -> str:
    return SHARED_SYSTEM + f"{topic}. " * 70 + CONFIDENT[0]


async def test_a_shared_system_prompt_is_counted_once_in_the_pool(smollm_path: Path) -> None:
    # 2 048 cells: four conversations on one system prompt sum to ~3 000 tokens but use ~1 200
    # cells, so all four stay in the pool; summing their lengths would push two out.
    settings = LlamaSettings(str(smollm_path), n_ctx=1024, parallel=2, cache_ram_mb=0)
    async with started("smol-shared", settings) as small:
        topics = ("Sea", "Sky", "Sand", "Salt")
        lengths = []
        for topic in topics:
            _, finished, _ = await run(small, sharing_conversation(topic), max_tokens=4)
            lengths.append(finished.usage.prompt_tokens + finished.usage.completion_tokens)
        used = small.stats().kv_cells_used
        assert sum(lengths) > settings.kv_cells and used < sum(lengths) - 1500, (lengths, used)
        for topic in topics:
            _, back, _ = await run(small, sharing_conversation(topic) + " 5,", max_tokens=1)
            assert back.usage.cached_tokens >= back.usage.prompt_tokens - 3, topic


async def test_a_prefix_back_from_ram_shares_the_system_prompt_in_the_pool(
    smollm_path: Path,
) -> None:
    settings = LlamaSettings(str(smollm_path), n_ctx=1024, parallel=2, cache_ram_mb=64)
    async with started("smol-lend", settings) as small:
        sea, sky = sharing_conversation("Sea"), sharing_conversation("Sky")
        cold = await greedy_tokens(small, sea + " 5,", reuse_prefix=False)
        for prompt in (sea, sky):
            await run(small, prompt, max_tokens=4)
        for topic in ("Waves", "Tides", "Reefs"):  # the third pushes Sea out of the pool
            await run(small, f"{topic}. " * 60 + CONFIDENT[1], max_tokens=4)
        assert small.stats().parked_prefixes >= 1
        before = small.stats().kv_cells_used
        warm = await greedy_tokens(small, sea + " 5,")
        stats = small.stats()
        assert stats.restored_tokens > 600
        # Sea came back on Sky's system prompt cells: the pool grew by its own ~150 tokens and
        # what it generated, less the ~130-token conversation that made way (not by ~750).
        assert stats.kv_cells_used - before < 200, (before, stats.kv_cells_used)
        assert assert_same_greedy_text(cold, warm) >= 8
        # ... and Sky, the least recently used, lent its cells rather than making way
        _, sky_back, _ = await run(small, sky + " 5,", max_tokens=1)
        assert sky_back.usage.cached_tokens >= sky_back.usage.prompt_tokens - 3
        assert small.stats().restored_tokens == stats.restored_tokens


@pytest.mark.parametrize("model", ["smollm", "gemma"])
async def test_prefixes_parked_on_one_system_prompt_hold_it_in_ram_once(
    model: str, request: pytest.FixtureRequest
) -> None:
    """The second conversation parked is a tail of the first; it comes back right both on the
    cells of a pool sequence holding the system prompt and, with none there, from RAM."""
    path = request.getfixturevalue(f"{model}_path")
    settings = LlamaSettings(str(path), n_ctx=1024, parallel=1, cache_ram_mb=64)
    async with started(f"{model}-tails", settings) as small:
        sea, sky, sand = (sharing_conversation(t) for t in ("Sea", "Sky", "Sand"))
        length = len(await small.tokenize(sand + " 5,"))
        await run(small, sky, max_tokens=4)
        cold = await greedy_tokens(small, sand + " 5,", reuse_prefix=False)
        await run(small, sea, max_tokens=4)  # Sky makes way: parked whole
        whole = small.stats().parked_bytes
        await run(small, "Waves. " * 40 + CONFIDENT[1], max_tokens=4)  # Sand makes way
        stats = small.stats()
        assert stats.parked_prefixes == 2
        # Sand is longer than Sky, but only its part past the system prompt (~30 %) is copied.
        assert 0 < stats.parked_bytes - whole < whole / 2, (whole, stats.parked_bytes)

        before = stats.kv_cells_used
        warm = await greedy_tokens(small, sand + " 5,")  # Sea, in the pool, lends its cells
        after = small.stats()
        assert after.restored_tokens >= length - 4
        assert after.kv_cells_used - before < length / 2, (before, after.kv_cells_used)
        assert assert_same_greedy_text(cold, warm) >= 8

        for topic in ("Tides", "Reefs"):  # push Sea and Sand out: no lender left in the pool
            await run(small, f"{topic}. " * 40 + CONFIDENT[1], max_tokens=4)
        from_ram = await greedy_tokens(small, sand + " 5,")
        assert small.stats().restored_tokens - after.restored_tokens >= length - 4
        assert assert_same_greedy_text(cold, from_ram) >= 8


async def test_conversations_parked_and_restored_under_load_keep_their_text(
    smollm_path: Path,
) -> None:
    """Six agents on one system prompt, three rounds at once on a model with four sequences:
    every round parks, restores (tails included) and makes room while others decode."""
    settings = LlamaSettings(
        str(smollm_path), n_ctx=1024, parallel=2, cache_ram_mb=64, park_idle=True
    )
    async with started("smol-churn", settings) as small:
        prompts = [sharing_conversation(t) + " 5," for t in ("Ant", "Bee", "Cat", "Doe", "Elk")]
        prompts.append("Waves. " * 90 + CONFIDENT[1])  # one that shares nothing
        alone = [await greedy_tokens(small, prompt, reuse_prefix=False) for prompt in prompts]
        for _ in range(3):
            together = await asyncio.gather(*(greedy_tokens(small, p) for p in prompts))
            agreed = [assert_same_greedy_text(a, b) for a, b in zip(alone, together, strict=True)]
            assert sum(agreed) >= 3 * 24, agreed
        stats = small.stats()
        assert stats.restored_tokens > 3 * 600 and stats.parked_total > 6
        assert stats.slots_busy == 0 and stats.waiting == 0


async def test_without_host_ram_a_pushed_out_prefix_is_read_again(smollm_path: Path) -> None:
    settings = LlamaSettings(str(smollm_path), n_ctx=512, parallel=1, cache_ram_mb=0)
    async with started("smol-no-ram", settings) as small:
        conversations = [f"{topic} " * 40 + CONFIDENT[0] for topic in ("Sea.", "Sky.", "Sand.")]
        for prompt in conversations:
            await run(small, prompt, max_tokens=4)
        _, again, _ = await run(small, conversations[0], max_tokens=4)
        assert again.usage.cached_tokens < 8  # at most a shared leading token or two
        assert small.stats().parked_prefixes == 0


async def test_stop_strings_and_limits(engine: LlamaEngine) -> None:
    text, finished, _ = await run(engine, "1, 2, 3, 4,", max_tokens=40, stop=(" 7",))
    assert finished.stop_sequence == " 7" and " 7" not in text and "6" in text
    _, limited, _ = await run(engine, "1, 2, 3, 4,", max_tokens=3)
    assert limited.reason.value == "length" and limited.usage.completion_tokens == 3


@pytest.mark.parametrize(
    ("sampling", "plain"),
    [
        (GREEDY, True),
        (Sampling(temperature=0, logit_bias={0: 0.0}), False),
        (Sampling(temperature=0, repeat_penalty=1.1), False),
        (Sampling(temperature=0, presence_penalty=0.5), False),
        (Sampling(temperature=0.7), False),
    ],
)
def test_only_greedy_with_nothing_reshaping_the_logits_skips_the_chain(
    sampling: Sampling, plain: bool
) -> None:
    assert plain_greedy(sampling) is plain


async def test_plain_greedy_picks_the_tokens_of_llamas_own_greedy_sampler(
    engine: LlamaEngine,
) -> None:
    """The argmax path against the chain (a zero logit bias routes a request through it), on
    prompts the model continues without confidence, where near-equal logits are common."""
    through_chain = Sampling(temperature=0, logit_bias={0: 0.0})
    for prompt in PROMPTS:
        plain, _, _ = await run(engine, prompt, max_tokens=32, reuse_prefix=False)
        chained, _, _ = await run(
            engine, prompt, max_tokens=32, sampling=through_chain, reuse_prefix=False
        )
        assert plain == chained and len(plain) > 40


async def test_seeded_sampling_reproduces(engine: LlamaEngine) -> None:
    def sampled(seed: int) -> GenerateRequest:
        return GenerateRequest(
            prompt="Once upon a time",
            sampling=Sampling(temperature=1.0, seed=seed),
            max_tokens=16,
            reuse_prefix=False,
        )

    async def text(request: GenerateRequest) -> str:
        return "".join([i.text async for i in engine.generate(request) if isinstance(i, Piece)])

    assert await text(sampled(7)) == await text(sampled(7)) != await text(sampled(8))


async def test_a_job_whose_caller_gave_up_does_not_kill_the_engine(engine: LlamaEngine) -> None:
    """A /tokenize whose request was cancelled (a bounded wait in the gateway) left a cancelled
    future that the engine thread then failed to settle, and the thread died."""
    busy = asyncio.create_task(run(engine, "1, 2, 3, 4,", max_tokens=60))
    await asyncio.sleep(0.2)
    for _ in range(5):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(engine.tokenize("some text " * 50), timeout=0.0001)
    await busy
    text, finished, _ = await run(engine, "A, B, C, D,", max_tokens=4)
    assert finished.usage.completion_tokens == 4 and text
    assert await engine.tokenize("hello") != []
