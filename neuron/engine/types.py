"""The engine's vocabulary: what a generation asks for and what it hands back.

Pure data, no llama_cpp: the API layer builds `GenerateRequest`s and renders `Piece`s and the
final `Finished`; the engines (`LlamaEngine`, `FakeEngine`) consume and produce them. Defaults
follow OpenAI's and Anthropic's APIs (temperature 1.0, no nucleus cut, no penalties), not
llama.cpp's, because the clients that send no value expect the hosted APIs' behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class FinishReason(StrEnum):
    """Why a generation ended."""

    STOP = "stop"  # end of generation token, or a stop string
    LENGTH = "length"  # max_tokens or the context is full
    CANCELLED = "cancelled"  # the consumer went away or the model is unloading


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar constraining the output, already checked (see `engine.grammar`).

    `root` names the start rule. With `triggers` the grammar is lazy: text is free until the
    model writes one of the trigger strings, and from there on the grammar applies (tool calls
    inside free text).
    """

    gbnf: str
    root: str = "root"
    triggers: tuple[str, ...] = ()
    param: str | None = None  # the request field the grammar came from, for error messages


@dataclass(frozen=True)
class Sampling:
    """One request's sampler chain settings."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    grammar: Grammar | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: a prompt (text, tokenized with the model's special tokens, or token ids),
    how to sample, when to stop, and how many alternative log-probabilities to report
    (`logprobs`: None = none, 0 = the chosen token's only, k = plus the top k)."""

    prompt: str | tuple[int, ...]
    sampling: Sampling = field(default_factory=Sampling)
    add_special: bool = True  # let the tokenizer add BOS (off when a template already did)
    param: str = "prompt"  # the request field the prompt came from, for error messages
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    # Prefix reuse is on by default; a seeded request turns it off so that its text does not
    # depend on what ran before it (batch shapes change logits in their last bits).
    reuse_prefix: bool = True


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one sampled token, with the top alternatives when asked for."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Piece:
    """Text produced since the last piece (may be empty when bytes await completion)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    """Token figures and timings of one finished generation."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    queued_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tok_s(self) -> float | None:
        if self.completion_tokens < 2 or self.decode_s <= 0:
            return None
        return (self.completion_tokens - 1) / self.decode_s

    def as_openai(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass(frozen=True)
class Finished:
    """The last item of every generation stream."""

    reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    text: str = ""  # the whole generated text, stop string excluded


@dataclass(frozen=True)
class EngineInfo:
    """What the API layer needs to know about a loaded model."""

    n_ctx: int  # the longest prompt + completion one request may have
    n_ctx_train: int
    parallel: int  # sequences decoded together
    n_vocab: int
    n_embd: int
    embedding: bool
    chat_template: str | None
    bos_token: str
    eos_token: str


@dataclass(frozen=True)
class EngineStats:
    """Live counters of one engine, read by /health and /metrics."""

    slots_busy: int = 0
    slots_total: int = 0
    waiting: int = 0
    decode_steps: int = 0
    batch_tokens: int = 0  # tokens in all decodes so far (batch size = batch_tokens / steps)
    prefill_tokens: int = 0
    decode_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    cache_sequences: int = 0  # finished sequences whose KV is kept for reuse
    kv_cells_used: int = 0
    kv_cells_total: int = 0
    last_batch_tokens: int = 0
    parked_prefixes: int = 0  # cached prefixes moved out of the KV pool into host RAM
    parked_bytes: int = 0
    parked_total: int = 0  # prefixes parked so far
    restored_tokens: int = 0  # prompt tokens served from parked prefixes (part of cached_tokens)
