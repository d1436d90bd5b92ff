"""Pure statistics for the benchmarks: percentiles of timings, and the distribution metrics of kv-eval.

No I/O and no llama.cpp here, so each function can be checked against hand-computed values.
Distribution maths runs in float64: the KL divergence between a f16 and a q8_0 cache is
often around 1e-4, which float32 rounding of a 262k-entry softmax would blur.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default).

    Interpolating keeps p95 of a short list (a few dozen token latencies) between the two
    slowest samples instead of snapping to the single slowest one.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def median(values: Sequence[float]) -> float:
    """The middle value: one slow repeat on a shared machine does not move it."""
    return percentile(values, 50.0)


def log_softmax(logits: npt.ArrayLike) -> FloatArray:
    """Row-wise log-probabilities in float64 (max-shifted, so large logits cannot overflow)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def kl_divergence(ref_logprobs: npt.ArrayLike, logprobs: npt.ArrayLike) -> FloatArray:
    """KL(P_ref || P) per row, in nats, from log-probabilities.

    Terms where the reference probability is 0 contribute 0 (the limit of p·log p); a
    token the reference allows but the other distribution rules out gives +inf.
    """
    ref = np.asarray(ref_logprobs, dtype=np.float64)
    other = np.asarray(logprobs, dtype=np.float64)
    p = np.exp(ref)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0.0, p * (ref - other), 0.0)
    # Rounding can leave a true zero a hair below it; a divergence is never negative.
    return np.maximum(np.sum(terms, axis=-1), 0.0)


def token_nll(logprobs: npt.ArrayLike, targets: Sequence[int] | npt.ArrayLike) -> FloatArray:
    """Negative log-likelihood of each row's target token."""
    lp = np.asarray(logprobs, dtype=np.float64)
    idx = np.asarray(targets, dtype=np.int64)
    return -lp[np.arange(lp.shape[0]), idx]


def perplexity(nll: Sequence[float] | npt.ArrayLike) -> float:
    """exp(mean negative log-likelihood): a uniform guess over V tokens scores exactly V."""
    values = np.asarray(nll, dtype=np.float64)
    if values.size == 0:
        raise ValueError("perplexity of no tokens")
    return float(np.exp(np.mean(values)))


def top1_agreement(ref_top: Sequence[int] | npt.ArrayLike, top: Sequence[int] | npt.ArrayLike) -> float:
    """Share of positions where both distributions put their highest probability on the same token."""
    a = np.asarray(ref_top)
    b = np.asarray(top)
    if a.shape != b.shape:
        raise ValueError(f"top-1 arrays differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("top-1 agreement of no positions")
    return float(np.mean(a == b))
