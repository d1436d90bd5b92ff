"""The statistics behind bench and kv-eval, on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgechat.stats import (
    kl_divergence,
    log_softmax,
    median,
    percentile,
    perplexity,
    token_nll,
    top1_agreement,
)

LATENCIES_MS = [12.0, 7.0, 9.0, 30.0, 8.0, 10.0, 11.0, 9.0, 8.0, 13.0]
finite = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False)


def test_percentiles_of_a_hand_checked_list() -> None:
    # sorted: 7 8 8 9 9 10 11 12 13 30; rank (n-1)q/100 with linear interpolation
    assert percentile(LATENCIES_MS, 50) == pytest.approx(9.5)  # rank 4.5: between 9 and 10
    assert percentile(LATENCIES_MS, 95) == pytest.approx(22.35)  # rank 8.55: 13 + 0.55 * (30 - 13)
    assert percentile(LATENCIES_MS, 0) == 7.0
    assert percentile(LATENCIES_MS, 100) == 30.0
    assert median([3.0, 1.0, 2.0]) == 2.0


def test_percentile_matches_numpy_default() -> None:
    for q in (5, 50, 90, 95, 99):
        assert percentile(LATENCIES_MS, q) == pytest.approx(float(np.percentile(LATENCIES_MS, q)))


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(min_value=0, max_value=100))
def test_percentile_lies_between_min_and_max(values: list[float], q: float) -> None:
    assert min(values) <= percentile(values, q) <= max(values)


@given(st.lists(finite, min_size=1, max_size=50))
def test_percentile_is_monotonic_in_q(values: list[float]) -> None:
    qs = [0, 25, 50, 75, 95, 100]
    got = [percentile(values, q) for q in qs]
    assert got == sorted(got)


def test_log_softmax_normalizes_and_survives_large_logits() -> None:
    lp = log_softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]))
    assert np.allclose(np.exp(lp).sum(axis=1), 1.0)
    assert lp[0] == pytest.approx([math.log(0.5)] * 2)
    assert np.exp(lp[1]) == pytest.approx([0.25, 0.75])


def test_kl_of_identical_distributions_is_exactly_zero() -> None:
    lp = log_softmax(np.random.default_rng(0).normal(size=(4, 1000)))
    assert np.all(kl_divergence(lp, lp) == 0.0)


def test_kl_of_a_known_pair() -> None:
    p = np.log([[0.5, 0.5]])
    q = np.log([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # 0.5108 nats
    assert kl_divergence(p, q)[0] == pytest.approx(expected)
    # not symmetric: KL(q || p) is a different number
    assert kl_divergence(q, p)[0] == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))


def test_kl_ignores_tokens_the_reference_rules_out() -> None:
    p = np.array([[0.0, -np.inf]])  # all mass on token 0
    q = np.log([[0.5, 0.5]])
    assert kl_divergence(p, q)[0] == pytest.approx(math.log(2.0))


@given(st.lists(finite, min_size=2, max_size=20), st.lists(finite, min_size=2, max_size=20))
def test_kl_is_never_negative(a: list[float], b: list[float]) -> None:
    n = min(len(a), len(b))
    assert kl_divergence(log_softmax([a[:n]]), log_softmax([b[:n]]))[0] >= 0.0


@pytest.mark.parametrize("vocab", [2, 49152, 262144])
def test_perplexity_of_a_uniform_distribution_is_the_vocab_size(vocab: int) -> None:
    lp = log_softmax(np.zeros((3, vocab)))
    nll = token_nll(lp, [0, vocab // 2, vocab - 1])
    assert perplexity(nll) == pytest.approx(vocab)


def test_perplexity_of_a_certain_model_is_one() -> None:
    assert perplexity([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        perplexity([])


def test_token_nll_picks_each_rows_target() -> None:
    lp = np.log([[0.25, 0.75], [0.5, 0.5]])
    assert token_nll(lp, [1, 0]) == pytest.approx([-math.log(0.75), -math.log(0.5)])


def test_top1_agreement() -> None:
    assert top1_agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert top1_agreement([5], [5]) == 1.0
    with pytest.raises(ValueError):
        top1_agreement([1, 2], [1])


@given(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.randoms())
def test_top1_agreement_is_a_share(ref: list[int], rnd) -> None:  # noqa: ANN001 - hypothesis Random
    other = [x if rnd.random() < 0.5 else (x + 1) % 4 for x in ref]
    share = top1_agreement(ref, other)
    assert 0.0 <= share <= 1.0
    assert share == sum(a == b for a, b in zip(ref, other, strict=True)) / len(ref)
