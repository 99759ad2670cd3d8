"""One decode step's batch: which tokens of which sequences go into the next `llama_decode`.

Pure: the scheduler thread hands in what each active sequence still needs and gets back
slices. The rules (continuous batching with chunked prefill):
* Every sequence that is generating contributes exactly one token (its last sampled one) and
  wants logits: decoding never stalls behind someone else's prompt.
* The rest of the step's token budget (`n_batch`) goes to prompts still being read, oldest
  admission first, in chunks; a sequence's chunk that reaches the end of its prompt wants logits
  for its last token only (that is where its first completion token is sampled).
* A long prompt therefore takes several steps, and a request that arrives meanwhile starts at
  the next step; a cancelled one is dropped at the next step, at most one chunk late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SequenceNeed:
    """What one active sequence needs from the next step."""

    seq_id: int
    pending: int  # prompt tokens not yet evaluated; 0 = generating
    admitted: int  # admission order (lower = earlier)


@dataclass(frozen=True)
class BatchSlice:
    """`count` tokens of sequence `seq_id` (its next pending ones, or its last sampled token
    when generating); `logits`: whether to sample after this slice."""

    seq_id: int
    count: int
    logits: bool
    prefill: bool


def plan_batch(needs: Sequence[SequenceNeed], n_batch: int) -> list[BatchSlice]:
    """The slices of the next decode, at most `n_batch` tokens in all."""
    slices = []
    budget = n_batch
    for need in needs:
        if need.pending == 0 and budget > 0:
            slices.append(BatchSlice(need.seq_id, 1, logits=True, prefill=False))
            budget -= 1
    for need in sorted(needs, key=lambda n: n.admitted):
        if need.pending == 0 or budget <= 0:
            continue
        count = min(need.pending, budget)
        slices.append(BatchSlice(need.seq_id, count, logits=count == need.pending, prefill=True))
        budget -= count
    return slices
