"""The engine's pure decisions: batch planning, prefix reuse, text assembly (table-driven)."""

from __future__ import annotations

import random

import pytest

from neuron.engine.batching import BatchSlice, SequenceNeed, plan_batch
from neuron.engine.prefix import (
    KEEP_TAIL_TOKENS,
    MIN_PARK_TOKENS,
    PARK_IDLE_TOKENS,
    SHARE_PARKED_TOKENS,
    CachedSequence,
    ParkedPrefix,
    ParkPlan,
    Reuse,
    cells_to_free,
    choose_sequence,
    common_prefix,
    idle_to_park,
    park_plan,
    parked_matches,
    parked_over_budget,
)
from neuron.engine.text import TextAssembler


def need(seq_id: int, pending: int, admitted: int | None = None) -> SequenceNeed:
    return SequenceNeed(seq_id, pending, seq_id if admitted is None else admitted)


@pytest.mark.parametrize(
    ("needs", "n_batch", "expected"),
    [
        # three generating sequences: one token each, all sampled
        (
            [need(0, 0), need(1, 0), need(2, 0)],
            512,
            [
                BatchSlice(0, 1, True, False),
                BatchSlice(1, 1, True, False),
                BatchSlice(2, 1, True, False),
            ],
        ),
        # a long prompt is chunked; only the chunk that ends the prompt is sampled
        ([need(0, 1200)], 512, [BatchSlice(0, 512, False, True)]),
        ([need(0, 300)], 512, [BatchSlice(0, 300, True, True)]),
        # a prompt longer than the step: decoding first, then prefill fills the rest
        (
            [need(0, 0), need(1, 0), need(2, 0), need(3, 2000)],
            512,
            [
                BatchSlice(0, 1, True, False),
                BatchSlice(1, 1, True, False),
                BatchSlice(2, 1, True, False),
                BatchSlice(3, 509, False, True),
            ],
        ),
        # two prompts: the earlier admission goes first, the later gets what is left
        (
            [need(5, 400, admitted=2), need(6, 400, admitted=1)],
            512,
            [BatchSlice(6, 400, True, True), BatchSlice(5, 112, False, True)],
        ),
        # a budget smaller than the decoders: never more tokens than n_batch
        ([need(0, 0), need(1, 0)], 1, [BatchSlice(0, 1, True, False)]),
        ([], 512, []),
    ],
)
def test_plan_batch(needs: list[SequenceNeed], n_batch: int, expected: list[BatchSlice]) -> None:
    plan = plan_batch(needs, n_batch)
    assert plan == expected
    assert sum(piece.count for piece in plan) <= n_batch


DECODERS = [need(0, 0), need(1, 0), need(2, 0)]


@pytest.mark.parametrize(
    ("needs", "waited", "expected"),
    [
        # a short prompt arrives while three sequences decode: it is read alone, first
        ([*DECODERS, need(3, 8)], False, [BatchSlice(3, 8, True, True)]),
        # two short prompts that fit together: both read, in admission order, decoders wait
        (
            [*DECODERS, need(4, 100, admitted=9), need(3, 300, admitted=8)],
            False,
            [BatchSlice(3, 300, True, True), BatchSlice(4, 100, True, True)],
        ),
        # ... but never two steps in a row: after waiting once the decoders go first again
        (
            [*DECODERS, need(3, 8)],
            True,
            [*(BatchSlice(i, 1, True, False) for i in range(3)), BatchSlice(3, 8, True, True)],
        ),
        # prompts that do not fit in one step are chunked beside the decoders as before
        (
            [*DECODERS, need(3, 600)],
            False,
            [*(BatchSlice(i, 1, True, False) for i in range(3)), BatchSlice(3, 509, False, True)],
        ),
        # nobody decoding: nothing to put first
        ([need(3, 8)], False, [BatchSlice(3, 8, True, True)]),
        # nobody reading: the decoders' step, waited or not
        (DECODERS, True, [BatchSlice(i, 1, True, False) for i in range(3)]),
    ],
)
def test_short_prompts_are_read_first_but_decoders_never_wait_twice(
    needs: list[SequenceNeed], waited: bool, expected: list[BatchSlice]
) -> None:
    assert plan_batch(needs, 512, decoders_waited=waited) == expected


def seq(
    seq_id: int, tokens: list[int], last_used: float = 0.0, busy: bool = False
) -> CachedSequence:
    return CachedSequence(seq_id, tokens, last_used, busy)


SYSTEM = list(range(100, 200))  # a shared 100-token system prompt
CONV_A = [*SYSTEM, *range(1000, 1100)]
CONV_B = [*SYSTEM, *range(2000, 2100)]


@pytest.mark.parametrize(
    ("prompt", "sequences", "reuse", "expected"),
    [
        # nothing cached: an empty sequence first, not the LRU one holding KV
        ([1, 2, 3], [seq(0, [9, 9], 1.0), seq(1, [])], True, Reuse(1, 0)),
        # no empty one: the least recently used
        ([1, 2, 3], [seq(0, [9], 5.0), seq(1, [8], 1.0)], True, Reuse(1, 0)),
        # the next turn of a cached conversation continues it in place
        ([*CONV_A, 7, 8], [seq(0, CONV_A, 1.0), seq(1, [])], True, Reuse(0, len(CONV_A))),
        # an identical prompt keeps one token to evaluate (its logits are needed)
        ([1, 2, 3, 4], [seq(0, [1, 2, 3, 4])], True, Reuse(0, 3)),
        # another conversation with the same system prompt copies it and keeps A cached
        (CONV_B, [seq(0, CONV_A, 2.0), seq(1, [])], True, Reuse(1, len(SYSTEM), copy_from=0)),
        # ... also from a sequence that is generating right now
        (
            CONV_B,
            [seq(0, CONV_A, busy=True), seq(1, [5])],
            True,
            Reuse(1, len(SYSTEM), copy_from=0),
        ),
        # a tail short in tokens and next to what is kept is not worth a sequence: trim in place
        (
            [*SYSTEM, 1],
            [seq(0, [*SYSTEM, *range(len(SYSTEM) // 4)]), seq(1, [])],
            True,
            Reuse(0, len(SYSTEM)),
        ),
        # ... but one as long as the shared prefix is another short conversation: copy
        (
            [*SYSTEM[:20], 1],
            [seq(0, [*SYSTEM[:20], *range(KEEP_TAIL_TOKENS - 7)]), seq(1, [])],
            True,
            Reuse(1, 20, copy_from=0),
        ),
        # a tail of KEEP_TAIL_TOKENS or more is kept whatever the prefix: copy
        (
            [*SYSTEM, 1],
            [seq(0, [*SYSTEM, *range(KEEP_TAIL_TOKENS)]), seq(1, [])],
            True,
            Reuse(1, len(SYSTEM), copy_from=0),
        ),
        # the best match is the only idle sequence: trim it in place
        (CONV_B, [seq(0, CONV_A), seq(1, [3], busy=True)], True, Reuse(0, len(SYSTEM))),
        # all busy: wait
        ([1, 2], [seq(0, [1], busy=True)], True, None),
        # reuse off (seeded requests): a fresh sequence, nothing kept
        ([*CONV_A, 7], [seq(0, CONV_A), seq(1, [])], False, Reuse(1, 0)),
    ],
)
def test_choose_sequence(
    prompt: list[int], sequences: list[CachedSequence], reuse: bool, expected: Reuse | None
) -> None:
    assert choose_sequence(prompt, sequences, reuse=reuse) == expected


def parked(
    key: int,
    tokens: list[int],
    last_used: float = 0.0,
    nbytes: int = 0,
    *,
    base: int | None = None,
    skip: int = 0,
) -> ParkedPrefix:
    return ParkedPrefix(key, tokens, last_used, nbytes, base=base, skip=skip)


# Three agents on one long system prompt, each with a turn of its own, parked as a base and
# two tails.
BASE = list(range(9000, 9000 + SHARE_PARKED_TOKENS))
AGENT_A = [*BASE, *range(100, 180)]
AGENT_B = [*BASE, *range(200, 280)]
AGENT_C = [*BASE, *range(200, 240), *range(300, 340)]
TAIL_B = parked(2, AGENT_B, base=1, skip=len(BASE))


@pytest.mark.parametrize(
    ("prompt", "sequences", "in_ram", "expected"),
    [
        # a conversation parked in RAM comes back into the LRU idle sequence
        (
            [*CONV_A, 7],
            [seq(0, [5], 2.0), seq(1, [6], 1.0)],
            [parked(9, CONV_A)],
            Reuse(1, len(CONV_A), restore=9),
        ),
        # ... into an empty one first, and the longest parked match wins; the system prompt it
        # shares with a conversation in the pool keeps that one's cells
        (
            [*CONV_A, 7],
            [seq(0, CONV_B), seq(1, [])],
            [parked(8, SYSTEM), parked(9, CONV_A)],
            Reuse(1, len(CONV_A), restore=9, share_from=0, shared=len(SYSTEM)),
        ),
        # ... a busy one lends its cells too
        (
            [*CONV_A, 7],
            [seq(0, CONV_B, busy=True), seq(1, [5])],
            [parked(9, CONV_A)],
            Reuse(1, len(CONV_A), restore=9, share_from=0, shared=len(SYSTEM)),
        ),
        # ... but the only idle sequence cannot both lend its cells and take the restore
        (
            [*CONV_A, 7],
            [seq(0, CONV_B)],
            [parked(9, CONV_A)],
            Reuse(0, len(CONV_A), restore=9),
        ),
        # in the pool already: no restore
        ([*CONV_A, 7], [seq(0, CONV_A)], [parked(9, CONV_A)], Reuse(0, len(CONV_A))),
        # a parked prefix barely longer than the pool's match is not worth the copy
        (
            [*CONV_A, 7],
            [seq(0, CONV_A[:-10]), seq(1, [])],
            [parked(9, CONV_A)],
            Reuse(0, len(CONV_A) - 10),
        ),
        # ... but KEEP_TAIL_TOKENS more is
        (
            [*CONV_A, 7],
            [seq(0, CONV_A[:-KEEP_TAIL_TOKENS]), seq(1, [])],
            [parked(9, CONV_A)],
            Reuse(1, len(CONV_A), restore=9, share_from=0, shared=len(CONV_A) - KEEP_TAIL_TOKENS),
        ),
        # an identical prompt still keeps one token to evaluate
        (CONV_A, [seq(0, [])], [parked(9, CONV_A)], Reuse(0, len(CONV_A) - 1, restore=9)),
        # every sequence busy: wait, whatever is parked
        ([*CONV_A, 7], [seq(0, CONV_B, busy=True)], [parked(9, CONV_A)], None),
        # a tail comes back on the cells of the pool sequence that holds its base's part
        (
            [*AGENT_B, 7],
            [seq(0, AGENT_A), seq(1, [])],
            [parked(1, AGENT_A), TAIL_B],
            Reuse(1, len(AGENT_B), restore=2, share_from=0, shared=len(BASE)),
        ),
        # ... or, with no such sequence, alone (the engine reads the base's part from RAM)
        (
            [*AGENT_B, 7],
            [seq(0, [])],
            [parked(1, AGENT_A), TAIL_B],
            Reuse(0, len(AGENT_B), restore=2),
        ),
        # a tail matched no further than its base has nothing of its own: the base comes back
        ([*BASE, 7], [seq(0, [])], [parked(1, AGENT_A), TAIL_B], Reuse(0, len(BASE), restore=1)),
    ],
)
def test_choose_sequence_with_parked_prefixes(
    prompt: list[int],
    sequences: list[CachedSequence],
    in_ram: list[ParkedPrefix],
    expected: Reuse | None,
) -> None:
    assert choose_sequence(prompt, sequences, in_ram) == expected


def test_seeded_requests_restore_nothing() -> None:
    got = choose_sequence([*CONV_A, 7], [seq(0, [])], [parked(9, CONV_A)], reuse=False)
    assert got == Reuse(0, 0)


LONG = list(range(5000, 5000 + 2 * MIN_PARK_TOKENS))


@pytest.mark.parametrize(
    ("tokens", "in_ram", "expected"),
    [
        # too short to be worth a copy
        (LONG[: MIN_PARK_TOKENS - 1], [], ParkPlan(park=False)),
        (LONG[:MIN_PARK_TOKENS], [], ParkPlan(park=True)),
        # already parked whole, or inside a longer parked prefix, which is then as recent
        (LONG, [parked(1, LONG)], ParkPlan(park=False, covered_by=1)),
        (LONG[:100], [parked(1, LONG)], ParkPlan(park=False, covered_by=1)),
        # it extends parked prefixes: they go, a diverging one stays
        (
            LONG,
            [parked(1, LONG[:70]), parked(2, LONG[:100]), parked(3, [*LONG[:70], -1, -2])],
            ParkPlan(park=True, superseded=(1, 2)),
        ),
        # a long part shared with a whole parked prefix is not copied again: a tail of it
        (AGENT_B, [parked(1, AGENT_A)], ParkPlan(park=True, base=1, skip=len(BASE))),
        # ... a shorter one is
        (
            [*BASE[:-1], *range(200, 280)],
            [parked(1, AGENT_A)],
            ParkPlan(park=True),
        ),
        # a tail is never a base, though it shares more: bases are whole
        (AGENT_C, [parked(1, AGENT_A), TAIL_B], ParkPlan(park=True, base=1, skip=len(BASE))),
        # a base that tails depend on is not redundant, even when extended
        (
            AGENT_A,
            [parked(1, BASE), parked(2, AGENT_B, base=1, skip=len(BASE))],
            ParkPlan(park=True, base=1, skip=len(BASE)),
        ),
        # ... one without tails is
        (AGENT_A, [parked(1, BASE)], ParkPlan(park=True, superseded=(1,))),
    ],
)
def test_park_plan(tokens: list[int], in_ram: list[ParkedPrefix], expected: ParkPlan) -> None:
    assert park_plan(tokens, in_ram) == expected


def test_parked_matches_agree_with_comparing_every_whole_prefix() -> None:
    rng = random.Random(20261204)
    whole = parked(1, [*BASE, *range(100, 180)])
    entries = [whole, parked(9, CONV_A)]
    for key in range(2, 40):  # tails parting from the base at various points past 256 tokens
        cut = rng.randrange(SHARE_PARKED_TOKENS, len(whole.tokens))
        tokens = [*whole.tokens[:cut], *(rng.randrange(10**6, 2 * 10**6) for _ in range(50))]
        entries.append(parked(key, tokens, base=1, skip=common_prefix(tokens, whole.tokens)))
    prompts = [
        [*BASE[:100], 5],  # parts from the base before any tail's own part
        whole.tokens,
        [*whole.tokens, 7],
        *(entry.tokens[: rng.randrange(1, len(entry.tokens) + 1)] for entry in entries),
        *([*entry.tokens, 7] for entry in entries[2:12]),
        CONV_A,
        [],
    ]
    for prompt in prompts:
        got = [length for length, _ in parked_matches(prompt, entries)]
        assert got == [common_prefix(prompt, entry.tokens) for entry in entries]


def test_memories_that_cannot_copy_a_range_park_every_prefix_whole() -> None:
    assert park_plan(AGENT_B, [parked(1, AGENT_A)], tails=False) == ParkPlan(park=True)


IDLE = list(range(7000, 7000 + PARK_IDLE_TOKENS))


@pytest.mark.parametrize(
    ("sequences", "expected"),
    [
        # nothing decodes: idle sequences cost nothing, they stay
        ([seq(0, [*SYSTEM, *IDLE]), seq(1, [])], []),
        # an idle conversation beside a running one leaves the pool
        ([seq(0, [*SYSTEM, *IDLE]), seq(1, [1, 2], busy=True)], [0]),
        # ... unless what it does not share with a running one is short
        ([seq(0, [*IDLE, 1, 2]), seq(1, [*IDLE, 3], busy=True)], []),
        ([seq(0, [*IDLE, *IDLE]), seq(1, [*IDLE, 3], busy=True)], [0]),
        # short idle sequences stay
        ([seq(0, IDLE[:-1]), seq(1, [1], busy=True)], []),
        # running ones never go
        ([seq(0, IDLE, busy=True), seq(1, IDLE, busy=True)], []),
    ],
)
def test_idle_to_park(sequences: list[CachedSequence], expected: list[int]) -> None:
    assert idle_to_park(sequences) == expected


def test_parked_prefixes_over_budget_go_least_recently_used_first() -> None:
    entries = [parked(1, [], 3.0, 100), parked(2, [], 1.0, 100), parked(3, [], 2.0, 100)]
    assert parked_over_budget(entries, 300) == []
    assert parked_over_budget(entries, 250) == [2]
    assert parked_over_budget(entries, 100) == [2, 3]
    assert parked_over_budget(entries, 0) == [2, 3, 1]


def test_a_base_is_as_recent_as_its_freshest_tail_and_goes_after_its_tails() -> None:
    base = parked(1, BASE, 1.0, 100)
    tail = parked(2, AGENT_B, 5.0, 10, base=1, skip=len(BASE))
    other = parked(3, CONV_A, 3.0, 100)
    assert parked_over_budget([base, tail, other], 200) == [3]
    assert parked_over_budget([base, tail, other], 105) == [3, 2]
    assert parked_over_budget([base, tail, other], 0) == [3, 2, 1]
    stale_tail = parked(4, AGENT_C, 0.5, 10, base=1, skip=len(BASE))
    assert parked_over_budget([base, stale_tail, tail], 0) == [4, 2, 1]


@pytest.mark.parametrize(
    ("a", "b", "length"),
    [
        ([], [1], 0),
        ([1, 2, 3], [1, 2, 4], 2),
        (list(range(1000)), list(range(1000)), 1000),
        (list(range(700)), [*range(600), -1], 600),
    ],
)
def test_common_prefix(a: list[int], b: list[int], length: int) -> None:
    assert common_prefix(a, b) == common_prefix(b, a) == length


def test_cached_sequences_give_way_least_recently_used_first() -> None:
    sequences = [
        seq(0, [1] * 100, last_used=3.0),
        seq(1, [1] * 100, last_used=1.0),
        seq(2, [1] * 100, last_used=2.0),
        seq(3, [1] * 100, busy=True),
        seq(4, [1] * 100, last_used=0.5),  # written by this step: never a victim
    ]
    assert cells_to_free(sequences, need=150, free=0, exclude=frozenset({4})) == [1, 2]
    assert cells_to_free(sequences, need=10, free=10, exclude=frozenset()) == []
    assert cells_to_free(sequences, need=10_000, free=0, exclude=frozenset({4})) == [1, 2, 0]
    # A sequence whose cells are mostly shared frees only its own: more have to go.
    own = {0: 100, 1: 10, 2: 10, 3: 100, 4: 100}
    got = cells_to_free(sequences, need=150, free=0, exclude=frozenset({4}), own_cells=own)
    assert got == [1, 2, 0]
    assert cells_to_free(sequences, need=150, free=0, exclude=frozenset()) == [4, 1]
    got = cells_to_free(sequences, need=150, free=0, exclude=frozenset(), own_cells=own)
    assert got == [4, 1, 2, 0]


@pytest.mark.parametrize(
    ("stops", "chunks", "released", "stopped"),
    [
        ((), [b"Hello", b" world"], ["Hello", " world"], None),
        # a character split across tokens comes out whole
        ((), [b"caf\xc3", b"\xa9!"], ["caf", "é!"], None),
        # a stop string spanning tokens: held back, then dropped with everything after it
        (("\n\n",), [b"one\n", b"\ntwo"], ["one", ""], "\n\n"),
        # a held-back prefix that turns out not to be a stop is released
        (("STOP",), [b"ST", b"ART"], ["", "START"], None),
        # the earliest stop string wins
        (("b", "a"), [b"xab"], ["x"], "a"),
    ],
)
def test_text_assembler(
    stops: tuple[str, ...], chunks: list[bytes], released: list[str], stopped: str | None
) -> None:
    assembler = TextAssembler(stops)
    assert [assembler.feed(chunk) for chunk in chunks] == released
    assert assembler.stopped == stopped
    assembler.flush()
    assert "".join(released) in assembler.text
