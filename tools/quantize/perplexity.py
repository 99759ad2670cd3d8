"""Perplexity of a GGUF on a text, computed with llama-cpp-python the way llama-perplexity does.

Method (llama.cpp ``perplexity``): tokenize the whole text once; cut it into chunks of
``n_ctx`` tokens; if the vocabulary adds a BOS token, the first token of each chunk is replaced
by BOS; evaluate each chunk from an empty context with logits for every position; score only
the second half — for ``j`` in ``[n_ctx/2, n_ctx-1)`` the negative log-likelihood of token
``j+1`` under the softmax of position ``j`` — so every scored token has at least ``n_ctx/2``
tokens of context. PPL = exp(mean NLL); ± is llama.cpp's 1-σ estimate,
``ppl * sqrt(var(NLL) / (N-1))``.

Every model of one run is scored on the same token ids (tokenized with the input model's
vocabulary, which quantizing does not change), so the numbers are comparable with each other,
not with perplexities measured on other texts or context sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, RunError
from .llama_log import LlamaLog, capture_llama_log

__all__ = [
    "PerplexityResult",
    "TokenizedText",
    "chunk_count",
    "evaluate",
    "score_chunk",
    "summarize",
    "tokenize_text",
]


@dataclass(frozen=True)
class TokenizedText:
    """A text tokenized with the input model's vocabulary (no BOS added), with whether that
    vocabulary adds a BOS token and its id; every model of a run is scored on these same ids."""

    tokens: tuple[int, ...]
    add_bos: bool
    bos: int


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one model on the text: `ppl` (exp of the mean NLL), llama.cpp's 1-σ
    `uncertainty` (None with fewer than two scored tokens), and how many tokens and chunks were
    scored."""

    ppl: float
    uncertainty: float | None
    n_scored: int
    n_chunks: int


def chunk_count(n_tokens: int, n_ctx: int, max_chunks: int) -> int:
    """Whole chunks of ``n_ctx`` tokens available, at most ``max_chunks`` (≤0: no limit)."""
    whole = n_tokens // n_ctx if n_ctx > 0 else 0
    return whole if max_chunks <= 0 else min(whole, max_chunks)


def score_chunk(logits: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """NLL (float64) of tokens ``[n/2+1, n)`` given the logits of positions ``[n/2, n-1)``.
    ``logits``: (at least n) × vocab, row ``j`` predicting token ``j+1``."""
    n = len(tokens)
    first = n // 2
    rows = np.asarray(logits[first : n - 1], dtype=np.float64)
    targets = np.asarray(tokens[first + 1 : n], dtype=np.int64)
    peak = rows.max(axis=1)
    log_sum = peak + np.log(np.exp(rows - peak[:, None]).sum(axis=1))
    return log_sum - rows[np.arange(targets.size), targets]


def summarize(nll: np.ndarray) -> tuple[float, float | None]:
    """(exp(mean), llama.cpp's ± estimate or None with fewer than two values)."""
    count = int(nll.size)
    if count == 0:
        return math.nan, None
    mean = float(nll.mean())
    ppl = math.exp(mean)
    if count < 2:
        return ppl, None
    variance = float((nll * nll).mean()) - mean * mean
    if variance <= 0:
        return ppl, 0.0
    return ppl, ppl * math.sqrt(variance / (count - 1))


def tokenize_text(model_path: Path, text: str) -> TokenizedText:
    """Tokenize with the model's vocabulary only (no weights are loaded)."""
    import llama_cpp
    from llama_cpp import Llama

    log = LlamaLog()
    with capture_llama_log(log):
        try:
            llm = Llama(model_path=str(model_path), vocab_only=True, verbose=True)
        except Exception as exc:
            raise RunError(
                f"{model_path}: llama.cpp cannot load its vocabulary: {log.failure() or exc}"
            ) from exc
        try:
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            vocab = llama_cpp.llama_model_get_vocab(llm.model)
            add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
            bos = int(llm.token_bos())
        finally:
            llm.close()
    return TokenizedText(tuple(int(t) for t in tokens), add_bos, bos)


def read_text(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise InputError(f"--ppl-text {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"--ppl-text {path}: cannot read: {exc.strerror or exc}") from exc
    if not text.strip():
        raise InputError(f"--ppl-text {path}: the file is empty")
    return text


def evaluate(
    model_path: Path,
    text: TokenizedText,
    *,
    n_ctx: int,
    n_chunks: int,
    threads: int,
    gpu_layers: int = 0,
    on_chunk: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity over the first ``n_chunks`` chunks. ``on_chunk(done, total)`` after each."""
    from llama_cpp import Llama

    if n_chunks < 1:
        raise RunError("perplexity needs at least one chunk of text")
    log = LlamaLog()
    nll_parts: list[np.ndarray] = []
    with capture_llama_log(log):
        try:
            llm = Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                logits_all=True,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=gpu_layers,
                verbose=True,  # llama.cpp's log is captured; no fd juggling under the live display
            )
        except Exception as exc:
            raise RunError(
                f"{model_path}: llama-cpp-python cannot load it: {log.failure() or exc}"
            ) from exc
        try:
            for index in range(n_chunks):
                chunk = list(text.tokens[index * n_ctx : (index + 1) * n_ctx])
                if text.add_bos:
                    chunk[0] = text.bos
                llm.reset()
                llm.eval(chunk)
                nll_parts.append(score_chunk(llm.scores[: len(chunk)], chunk))
                if on_chunk is not None:
                    on_chunk(index + 1, n_chunks)
        except RunError:
            raise
        except Exception as exc:
            raise RunError(f"{model_path}: evaluation failed: {log.failure() or exc}") from exc
        finally:
            llm.close()
    nll = np.concatenate(nll_parts)
    ppl, uncertainty = summarize(nll)
    return PerplexityResult(ppl, uncertainty, int(nll.size), n_chunks)
