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
* Prefill first, when it is short: if every prompt still being read fits in this one step, the
  step reads only those prompts and the generating sequences sit it out, so each new request
  samples its first token after a step of its own size rather than one that also carries every
  decoder (on a CPU a step costs about its token count: a short prompt read beside three
  decoders took as long as four tokens). Decoders never sit out two steps in a row
  (`decoders_waited`), so a stream of arrivals slows them by at most half, and a prompt longer
  than what is left of the budget is always chunked beside them.
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


def plan_batch(
    needs: Sequence[SequenceNeed], n_batch: int, *, decoders_waited: bool = False
) -> list[BatchSlice]:
    """The slices of the next decode, at most `n_batch` tokens in all. `decoders_waited`: the
    generating sequences sat out the previous step (see the module rules)."""
    reading = sum(need.pending for need in needs)
    decoding = any(need.pending == 0 for need in needs)
    prefill_first = decoding and 0 < reading <= n_batch and not decoders_waited
    slices = []
    budget = n_batch
    for need in needs:
        if need.pending == 0 and budget > 0 and not prefill_first:
            slices.append(BatchSlice(need.seq_id, 1, logits=True, prefill=False))
            budget -= 1
    for need in sorted(needs, key=lambda n: n.admitted):
        if need.pending == 0 or budget <= 0:
            continue
        count = min(need.pending, budget)
        slices.append(BatchSlice(need.seq_id, count, logits=count == need.pending, prefill=True))
        budget -= count
    return slices
