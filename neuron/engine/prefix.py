"""Prefix cache policy: which KV sequence a new request takes, and what cached KV gives way.

Pure: plain token lists in, a decision out; `LlamaEngine` carries it out with llama.cpp's
memory calls (`seq_rm` to trim, `seq_cp` to share a prefix, `state_seq_get/set_data` to park a
sequence in host RAM and bring it back). The KV pool is unified, so a copied prefix shares
cells with its source instead of duplicating them.

Two tiers: sequences in the KV pool, and prefixes parked in host RAM (as llama-server's
`--cache-ram`). A cached sequence that has to give way — its sequence taken by another
conversation, or its cells wanted by live requests — is parked rather than dropped, so that a
host serves more conversations than it has sequences and a developer coming back after others
took every sequence gets their prefix back in milliseconds instead of re-reading it.

Rules, in order:
* A request never takes a sequence that is generating.
* It reuses the longest common prefix found in any sequence, busy or idle, keeping at least one
  prompt token to evaluate (the logits of the last prompt token are needed to sample).
* It takes that sequence over in place when it is idle and what would be trimmed away is short,
  both in tokens (`KEEP_TAIL_TOKENS`) and next to what is kept (at most a quarter of it): a
  conversation continuing, whose cached tail is the last reply as sampled rather than as the
  template renders it. Otherwise the shared prefix is copied into another idle sequence, so
  that the conversation cached there survives (two conversations sharing a system prompt, even
  short ones).
* A parked prefix is brought back into a sequence when it matches the prompt by at least
  `KEEP_TAIL_TOKENS` more tokens than the best sequence in the pool; the part it shares with
  that sequence then uses that sequence's cells, so that a system prompt common to many
  conversations stays in the pool once however many of them come back from RAM.
* Target sequences are chosen empty first, then least recently used.
* When live requests need cells, idle sequences give way least recently used first.
* On the CPU idle sequences also leave the pool while others generate (`idle_to_park`): every
  decode step attends over the pool's whole used range, masked cells of other conversations
  included (SmolLM2 with flash attention off: 101 tok/s alone, 23 beside four idle 1 300-token
  prefixes, 88 once they are parked). One whose own cells — past what it shares with a
  running sequence — number at least `PARK_IDLE_TOKENS` is parked, as llama-server's
  `--cache-idle-slots` does on a unified pool.
* Parking: a sequence of at least `MIN_PARK_TOKENS` tokens is parked unless a parked prefix
  already holds all of it (that one then counts as used when the sequence was); parked
  prefixes it extends are dropped as redundant, and the least recently used go when the parked
  bytes pass the budget.
* A parked prefix that shares at least `SHARE_PARKED_TOKENS` with a whole parked prefix (one
  parked with all its cells) is parked as a tail: only its cells past what they share, the
  rest read from that base when it comes back (from the pool's matching sequence when there is
  one, else from the base in RAM). Twelve agents on one 20k-token system prompt then hold it in
  RAM once, not twelve times. Bases are whole, so a tail is one lookup away from its cells.
  A base that tails depend on is never dropped as redundant, and the budget drops it only
  after its tails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A cached tail shorter than this is not worth keeping a sequence for: taking the sequence in
# place loses at most this many cached tokens.
KEEP_TAIL_TOKENS = 32
# Shorter sequences are read again in one step for about what parking and restoring them costs.
MIN_PARK_TOKENS = 64
# Fewer cells of an idle sequence cost a decode step little: llama.cpp pads the attended range
# to 256 cells anyway.
PARK_IDLE_TOKENS = 256
# A shared part shorter than this is parked again with each prefix rather than read from a base.
SHARE_PARKED_TOKENS = 256
_CHUNK = 256


@dataclass(frozen=True)
class CachedSequence:
    """What the policy sees of one KV sequence."""

    seq_id: int
    tokens: Sequence[int]  # tokens whose KV the sequence holds, in position order
    last_used: float
    busy: bool


@dataclass(frozen=True)
class ParkedPrefix:
    """What the policy sees of one prefix parked in host RAM. A tail (`base` set) holds the
    cells of `tokens[skip:]` only; its first `skip` tokens are parked prefix `base`'s."""

    key: int
    tokens: Sequence[int]
    last_used: float
    nbytes: int = 0
    base: int | None = None
    skip: int = 0


@dataclass(frozen=True)
class Reuse:
    """Take `seq_id`; keep its first `keep` tokens (after copying them from `copy_from`, or
    restoring parked prefix `restore`, when set, into the emptied sequence) and evaluate the rest
    of the prompt. After a restore, the first `shared` tokens take the cells of pool sequence
    `share_from` in place of the restored copies, which are freed."""

    seq_id: int
    keep: int
    copy_from: int | None = None
    restore: int | None = None
    share_from: int | None = None
    shared: int = 0


@dataclass(frozen=True)
class ParkPlan:
    """Whether to park a sequence's KV, which parked prefixes it makes redundant, and, for a
    tail, the parked prefix `base` whose first `skip` tokens it shares and does not copy. When
    a parked prefix holds all of it already, `covered_by` names that one: it is as recent as
    the sequence now."""

    park: bool
    superseded: tuple[int, ...] = ()
    base: int | None = None
    skip: int = 0
    covered_by: int | None = None


def common_prefix(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the longest common prefix of two token lists whose first `start` agree."""
    limit = min(len(a), len(b))
    # Compare whole chunks first (list equality runs in C), then walk the first unequal one.
    while start + _CHUNK <= limit and a[start : start + _CHUNK] == b[start : start + _CHUNK]:
        start += _CHUNK
    while start < limit and a[start] == b[start]:
        start += 1
    return start


def parked_matches(
    prompt: Sequence[int], parked: Sequence[ParkedPrefix]
) -> list[tuple[int, ParkedPrefix]]:
    """`common_prefix(prompt, entry.tokens)` for every parked prefix, in order. A tail's first
    `skip` tokens are its base's, so the prompt is compared with them once per base and with
    each tail from there on: a thousand tails of one 2 600-token system prompt cost one long
    comparison and a thousand short ones, not a thousand long ones."""
    by_key = {entry.key: entry for entry in parked}
    on_base: dict[int, int] = {}
    matches = []
    for entry in parked:
        base = by_key.get(entry.base) if entry.base is not None else None
        if base is None:
            matches.append((common_prefix(prompt, entry.tokens), entry))
            continue
        if base.key not in on_base:
            on_base[base.key] = common_prefix(prompt, base.tokens)
        shared = on_base[base.key]
        # Parting from the base before the tail's own part is parting from the tail there too.
        length = shared if shared < entry.skip else common_prefix(prompt, entry.tokens, entry.skip)
        matches.append((length, entry))
    return matches


def _victim(candidates: Sequence[CachedSequence]) -> CachedSequence:
    """Empty sequences first, then the least recently used."""
    return min(candidates, key=lambda seq: (len(seq.tokens) > 0, seq.last_used))


def choose_sequence(
    prompt: Sequence[int],
    sequences: Sequence[CachedSequence],
    parked: Sequence[ParkedPrefix] = (),
    *,
    reuse: bool = True,
) -> Reuse | None:
    """The sequence a request with `prompt` should take, or None when all are busy."""
    idle = [seq for seq in sequences if not seq.busy]
    if not idle:
        return None
    if not reuse or len(prompt) < 2:
        return Reuse(_victim(idle).seq_id, 0)
    limit = len(prompt) - 1
    scored = [(min(common_prefix(prompt, seq.tokens), limit), seq) for seq in sequences]
    # Longest prefix wins; on a tie an idle sequence (no copy needed), then the freshest.
    best_len, best = max(scored, key=lambda item: (item[0], not item[1].busy, item[1].last_used))
    # A tail matched no further than its base holds nothing of its own worth bringing back.
    matches = [(min(n, limit), p) for n, p in parked_matches(prompt, parked)]
    matches = [(length, p) for length, p in matches if length > p.skip]
    if matches:
        parked_len, entry = max(matches, key=lambda item: (item[0], item[1].last_used))
        if parked_len >= best_len + KEEP_TAIL_TOKENS:
            # The pool's best match (a shared system prompt, typically) lends its cells to the
            # restored prefix, unless it is the one sequence there is to restore into.
            others = [seq for seq in idle if seq.seq_id != best.seq_id]
            if best_len == 0 or not others:
                return Reuse(_victim(idle).seq_id, parked_len, restore=entry.key)
            return Reuse(
                _victim(others).seq_id,
                parked_len,
                restore=entry.key,
                share_from=best.seq_id,
                shared=best_len,
            )
    if best_len == 0:
        return Reuse(_victim(idle).seq_id, 0)
    tail = len(best.tokens) - best_len
    if not best.busy and tail < KEEP_TAIL_TOKENS and 4 * tail <= best_len:
        return Reuse(best.seq_id, best_len)
    others = [seq for seq in idle if seq.seq_id != best.seq_id]
    if not others:
        return Reuse(best.seq_id, best_len)  # best is the only idle one: trim it in place
    return Reuse(_victim(others).seq_id, best_len, copy_from=best.seq_id)


def park_plan(
    tokens: Sequence[int], parked: Sequence[ParkedPrefix], *, tails: bool = True
) -> ParkPlan:
    """Whether a sequence holding `tokens` that gives way is worth parking, and how (module
    rules); `tails` False parks every prefix whole (memories that cannot copy a range)."""
    if len(tokens) < MIN_PARK_TOKENS:
        return ParkPlan(park=False)
    bases = {entry.base for entry in parked if entry.base is not None}
    superseded = []
    base, skip = None, 0
    for shared, entry in parked_matches(tokens, parked):
        if shared == len(tokens):  # already parked whole (or inside a longer one)
            return ParkPlan(park=False, covered_by=entry.key)
        if shared == len(entry.tokens) and entry.key not in bases:
            superseded.append(entry.key)
        elif tails and entry.base is None and shared >= SHARE_PARKED_TOKENS and shared > skip:
            base, skip = entry.key, shared
    return ParkPlan(park=True, superseded=tuple(superseded), base=base, skip=skip)


def idle_to_park(sequences: Sequence[CachedSequence]) -> list[int]:
    """Idle sequences to move out of the pool because running ones decode beside them."""
    running = [seq.tokens for seq in sequences if seq.busy]
    if not running:
        return []
    victims = []
    for seq in sequences:
        if seq.busy or len(seq.tokens) < PARK_IDLE_TOKENS:
            continue
        shared = max(common_prefix(seq.tokens, tokens) for tokens in running)
        if len(seq.tokens) - shared >= PARK_IDLE_TOKENS:
            victims.append(seq.seq_id)
    return victims


def parked_over_budget(parked: Sequence[ParkedPrefix], budget_bytes: int) -> list[int]:
    """Parked prefixes to drop, least recently used first, to bring them within the budget.
    A base counts as recent as its freshest tail and goes after its tails, so that no tail
    outlives its base."""
    total = sum(entry.nbytes for entry in parked)
    tails: dict[int, list[float]] = {}
    for entry in parked:
        if entry.base is not None:
            tails.setdefault(entry.base, []).append(entry.last_used)

    def order(entry: ParkedPrefix) -> tuple[float, bool]:
        return max([entry.last_used, *tails.get(entry.key, ())]), entry.key in tails

    drop = []
    for entry in sorted(parked, key=order):
        if total <= budget_bytes:
            break
        drop.append(entry.key)
        total -= entry.nbytes
    return drop


def cells_to_free(
    sequences: Sequence[CachedSequence],
    *,
    need: int,
    free: int,
    exclude: frozenset[int],
    own_cells: Mapping[int, int] | None = None,
) -> list[int]:
    """Idle sequences to clear (least recently used first) so that `need` cells fit in `free`.

    Clearing a sequence frees `own_cells[seq_id]` cells (those no other sequence shares), its
    length when not given. Sequences in `exclude` (the ones this step writes to) are never
    chosen. Returns as many as exist when even clearing all of them would not be enough; the
    caller then lets llama.cpp decide.
    """
    victims = []
    candidates = sorted(
        (seq for seq in sequences if not seq.busy and seq.tokens and seq.seq_id not in exclude),
        key=lambda seq: seq.last_used,
    )
    for seq in candidates:
        if free >= need:
            break
        victims.append(seq.seq_id)
        free += len(seq.tokens) if own_cells is None else own_cells[seq.seq_id]
    return victims
