"""Per-request sampler chains and log-probabilities, on llama.cpp's sampler API.

Runs on the engine's scheduler thread only. Each generation owns one chain, built from its
`Sampling` and freed when it finishes:

    logit_bias → penalties → grammar → (greedy | top_k → top_p → min_p → temperature → dist)

Plain greedy decoding (no bias, penalties or grammar) needs no chain: it is the first index of
the largest logit, which numpy finds in the logits row in place. llama.cpp's chain would copy
the whole vocabulary into a candidate array on every token first (0.08 ms for SmolLM2's 49k,
0.3 ms for Gemma's 262k; 1–2 % of a CPU decode step). Both pick the first of equal maxima.

The grammar sampler is created through `llama_sampler_init_grammar(_lazy_patterns)`, which
returns NULL for a grammar llama.cpp cannot parse; that is an `InvalidRequest`, and no NULL
sampler is ever added to a chain. Penalties see only the generated tokens (OpenAI's definition
of presence and frequency penalties).
"""

from __future__ import annotations

import ctypes
import math
import re
from collections.abc import Callable

import llama_cpp
import numpy as np

from neuron.engine.types import Grammar, Sampling, TokenLogprob
from neuron.errors import InvalidRequest

_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed


class SamplerChain:
    """One generation's sampler chain; `sample` picks (and accepts) the next token."""

    def __init__(self, sampling: Sampling, vocab: llama_cpp.llama_vocab_p, n_vocab: int) -> None:
        self._bias: ctypes.Array[llama_cpp.llama_logit_bias] | None = None
        self._chain: llama_cpp.llama_sampler_p | None = None
        self._row: type[ctypes.Array[ctypes.c_float]] | None = None
        if plain_greedy(sampling):
            self._row = ctypes.c_float * n_vocab
            return
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(params)
        try:
            self._build(sampling, vocab, n_vocab)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, s: Sampling, vocab: llama_cpp.llama_vocab_p, n_vocab: int) -> None:
        if s.logit_bias:
            self._bias = (llama_cpp.llama_logit_bias * len(s.logit_bias))()
            for index, (token, bias) in enumerate(s.logit_bias.items()):
                # llama_cpp annotates the field as c_int32; ctypes stores a plain int in it.
                self._bias[index].token = token  # type: ignore[assignment]
                self._bias[index].bias = bias
            self._add(
                llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), self._bias)
            )
        if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    s.repeat_last_n,
                    s.repeat_penalty,
                    s.frequency_penalty,
                    s.presence_penalty,
                )
            )
        if s.grammar is not None:
            self._add(_grammar_sampler(s.grammar, vocab))
        if s.greedy:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if s.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = _RANDOM_SEED if s.seed is None else s.seed & 0xFFFFFFFF
        self._add(llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Sample from the logits of batch row `index` and accept the token."""
        if self._row is not None:
            row = llama_cpp.llama_get_logits_ith(ctx, index)
            logits = memoryview(self._row.from_address(ctypes.addressof(row.contents)))
            return int(np.frombuffer(logits, dtype=np.float32).argmax())
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


def plain_greedy(sampling: Sampling) -> bool:
    """Greedy with nothing that reshapes the logits first: the argmax is the whole answer."""
    return (
        sampling.greedy
        and not sampling.logit_bias
        and sampling.grammar is None
        and sampling.repeat_penalty == 1.0
        and not sampling.frequency_penalty
        and not sampling.presence_penalty
    )


def _grammar_sampler(grammar: Grammar, vocab: llama_cpp.llama_vocab_p) -> llama_cpp.llama_sampler_p:
    gbnf, root = grammar.gbnf.encode(), grammar.root.encode()
    if grammar.triggers:
        # The lazy sampler waits until the whole output so far matches a pattern and then
        # constrains from the first capture group on: the trigger itself is part of the grammar.
        patterns = [
            f"[\\s\\S]*?({_ecma_escape(trigger)}[\\s\\S]*)".encode() for trigger in grammar.triggers
        ]
        array = (ctypes.c_char_p * len(patterns))(*patterns)
        sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            vocab, gbnf, root, array, len(patterns), None, 0
        )
    else:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf, root)
    if not sampler:
        raise InvalidRequest(
            "llama.cpp could not parse the grammar made for this request",
            param=grammar.param,
            code="invalid_schema",
        )
    return sampler


def _ecma_escape(text: str) -> str:
    return re.sub(r"[\\^$.*+?()\[\]{}|/]", lambda m: "\\" + m.group(), text)


def token_logprob(
    logits: np.ndarray,
    token: int,
    top: int,
    piece: Callable[[int], bytes],
) -> TokenLogprob:
    """Log-probability of `token` under the model's raw distribution, and the `top` best."""
    values = logits.astype(np.float64)
    peak = float(values.max())
    log_total = peak + math.log(float(np.exp(values - peak).sum()))
    alternatives: list[tuple[str, float, tuple[int, ...]]] = []
    if top > 0:
        best = np.argpartition(values, -top)[-top:]
        best = best[np.argsort(-values[best])]
        for candidate in best:
            data = piece(int(candidate))
            alternatives.append(
                (
                    data.decode("utf-8", errors="replace"),
                    float(values[candidate]) - log_total,
                    tuple(data),
                )
            )
    data = piece(token)
    return TokenLogprob(
        token=data.decode("utf-8", errors="replace"),
        logprob=float(values[token]) - log_total,
        bytes=tuple(data),
        top=tuple(alternatives),
    )
