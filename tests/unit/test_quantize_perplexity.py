"""cortex_quantize.perplexity math: which tokens are scored, NLL, PPL and its ± estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cortex_quantize.perplexity import chunk_count, score_chunk, summarize


def test_only_the_second_half_of_a_chunk_is_scored() -> None:
    rng = np.random.default_rng(0)
    n_ctx, n_vocab = 8, 5
    logits = rng.normal(size=(n_ctx, n_vocab)).astype(np.float32)
    tokens = [int(t) for t in rng.integers(0, n_vocab, size=n_ctx)]
    nll = score_chunk(logits, tokens)
    # positions 4, 5, 6 predict tokens 5, 6, 7 (llama-perplexity: first = n_ctx / 2)
    expected = []
    for j in range(4, 7):
        row = logits[j].astype(np.float64)
        expected.append(-(row[tokens[j + 1]] - math.log(np.exp(row).sum())))
    assert nll.dtype == np.float64
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


def test_score_chunk_is_stable_for_large_logits() -> None:
    logits = np.array([[0, 0], [0, 0], [1000.0, 0.0], [0, 0]], dtype=np.float32)
    nll = score_chunk(logits, [0, 0, 0, 1])  # position 2 predicts token 3 (= 1): very unlikely
    assert nll.tolist() == [pytest.approx(1000.0)]


def test_uniform_predictions_give_the_vocabulary_size() -> None:
    n_vocab = 7
    nll = score_chunk(np.zeros((16, n_vocab)), [i % n_vocab for i in range(16)])
    ppl, uncertainty = summarize(nll)
    assert ppl == pytest.approx(n_vocab)
    assert uncertainty == 0.0


def test_summarize_matches_llama_perplexity() -> None:
    nll = np.array([1.0, 2.0, 3.0, 4.0])
    ppl, uncertainty = summarize(nll)
    mean = 2.5
    variance = (nll**2).mean() - mean**2
    assert ppl == pytest.approx(math.exp(mean))
    assert uncertainty == pytest.approx(math.exp(mean) * math.sqrt(variance / 3))


def test_summarize_edge_cases() -> None:
    assert math.isnan(summarize(np.array([]))[0])
    assert summarize(np.array([0.5])) == (pytest.approx(math.exp(0.5)), None)


@pytest.mark.parametrize(
    ("n_tokens", "n_ctx", "max_chunks", "expected"),
    [(1000, 256, 4, 3), (1000, 256, 2, 2), (1000, 256, 0, 3), (255, 256, 4, 0), (512, 256, 9, 2)],
)
def test_chunk_count(n_tokens: int, n_ctx: int, max_chunks: int, expected: int) -> None:
    assert chunk_count(n_tokens, n_ctx, max_chunks) == expected
