"""`edgechat kv-eval`: how much a quantized KV cache changes what the model predicts.

An f16-cache context is the reference. Each candidate cache type gets its own context of
the same size and flash-attention setting, and all of them read the same text in lockstep,
chunk by chunk, with logits kept at every position. From those: the perplexity of each
cache on the text, the mean KL divergence KL(P_f16 || P_cache) of the next-token
distributions, and how often the most likely next token is the same (top-1 agreement).

Per-position logits are not something `Engine`'s eval keeps (only the last row), so the
contexts are read through engine.py's `AllLogitsDecoder`, which keeps a row per token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .bench import KvSpec, LoadedModel, OpenEngine
from .errors import EdgechatError
from .stats import kl_divergence, log_softmax, percentile, perplexity, token_nll, top1_agreement

if TYPE_CHECKING:
    from .engine import Engine

DEFAULT_TOKENS = 1024
MIN_TOKENS = 16
REFERENCE = KvSpec("f16", "f16")
# Logits kept per decode call: n_tokens x n_vocab floats per context. Gemma 3's 262k vocabulary
# makes 512 rows 512 MiB; 64 Mi floats caps every context's output buffer at 256 MiB.
LOGITS_BUDGET = 1 << 26
ROW_BLOCK = 32  # rows per float64 softmax: 32 x 262k x 8 B = 64 MiB per temporary

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CacheQuality:
    """One cache type against the f16 reference on the same tokens (KL in nats)."""

    kv_type: str
    type_k: str
    type_v: str
    perplexity: float
    ppl_ratio: float  # perplexity / the reference's: 1.01 is 1 % worse
    kl_mean: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    eval_s: float  # this context's decode time, all logits kept


@dataclass(frozen=True)
class KvEvalReport:
    """The `kv-eval --json` object; `reference` is the f16 cache itself (KL 0, agreement 1)."""

    model: str
    model_file: str
    model_sha256: str
    llama_build: str
    threads: int
    gpu_layers: int
    n_ctx: int
    flash_attn: bool
    text_source: str
    tokens: int
    scored_positions: int
    reference: CacheQuality
    results: tuple[CacheQuality, ...]
    wall_s: float


@dataclass
class _Accumulator:
    nll: list[npt.NDArray[np.float64]]
    kl: list[npt.NDArray[np.float64]]
    top: list[npt.NDArray[np.int64]]

    @classmethod
    def empty(cls) -> _Accumulator:
        return cls([], [], [])


def text_tokens(engine: Engine, text: str, n: int) -> list[int]:
    """The first n tokens of the text (BOS first); never repeated: a repeat would flatter perplexity."""
    tokens = engine.tokenize(text, add_bos=True, special=False)[:n]
    if len(tokens) < MIN_TOKENS:
        raise EdgechatError(f"the text has only {len(tokens)} tokens", f"give --text with at least {MIN_TOKENS} tokens")
    return tokens


def run_kv_eval(
    open_engine: OpenEngine,
    candidates: Sequence[KvSpec],
    text: str,
    text_source: str,
    n_tokens: int = DEFAULT_TOKENS,
    progress: Progress = lambda _s: None,
) -> KvEvalReport:
    """Score every candidate cache against an f16 cache on the first n_tokens of the text."""
    from .engine import AllLogitsDecoder, default_threads, llama_build

    t_start = time.perf_counter()
    # An explicit f16 candidate gets its own context: a determinism check (KL must be 0).
    specs = [REFERENCE, *candidates]
    n_ctx = n_tokens + 1
    with contextlib.ExitStack() as stack:
        loaded: list[LoadedModel] = []
        for spec in specs:
            progress(f"loading a {spec.label} context")
            loaded.append(stack.enter_context(open_engine(spec, n_ctx)))
        ref = loaded[0].engine
        tokens = text_tokens(ref, text, min(n_tokens, ref.n_ctx))
        chunk = max(16, min(int(ref.llm.n_batch), LOGITS_BUDGET // int(ref.llm.n_vocab())))
        scorers = [AllLogitsDecoder(m.engine, chunk) for m in loaded]
        for s in scorers:
            stack.callback(s.close)
        acc = [_Accumulator.empty() for _ in specs]
        n_scored = len(tokens) - 1  # the last position has no next token to score
        for start in range(0, n_scored, chunk):
            part = tokens[start : min(start + chunk, n_scored)]
            progress(f"tokens {start}-{start + len(part)} of {n_scored}")
            logits = [s.decode(part, start) for s in scorers]
            targets = tokens[start + 1 : start + 1 + len(part)]
            _score(logits, targets, acc)
        settings = ref.settings
        first = loaded[0]
        results = [_quality(spec, a, acc[0], s.seconds) for spec, a, s in zip(specs, acc, scorers, strict=True)]
        return KvEvalReport(
            model=first.name, model_file=str(settings.model_path), model_sha256=first.sha256,
            llama_build=llama_build(), threads=settings.threads or default_threads(),
            gpu_layers=settings.gpu_layers, n_ctx=ref.n_ctx, flash_attn=settings.use_flash_attn,
            text_source=text_source, tokens=len(tokens), scored_positions=n_scored,
            reference=results[0], results=tuple(results[1:]), wall_s=time.perf_counter() - t_start,
        )  # fmt: skip


def _score(logits: list[npt.NDArray[np.float32]], targets: Sequence[int], acc: list[_Accumulator]) -> None:
    """Accumulate per-position NLL, KL to the reference (index 0) and argmax, ROW_BLOCK rows at a time."""
    target = np.asarray(targets, dtype=np.int64)
    for lo in range(0, len(target), ROW_BLOCK):
        hi = min(lo + ROW_BLOCK, len(target))
        ref_lp = log_softmax(logits[0][lo:hi])
        for i, rows in enumerate(logits):
            lp = ref_lp if i == 0 else log_softmax(rows[lo:hi])
            acc[i].nll.append(token_nll(lp, target[lo:hi]))
            acc[i].kl.append(np.zeros(hi - lo) if i == 0 else kl_divergence(ref_lp, lp))
            acc[i].top.append(np.argmax(rows[lo:hi], axis=-1).astype(np.int64))


def _quality(spec: KvSpec, a: _Accumulator, ref: _Accumulator, seconds: float) -> CacheQuality:
    nll = np.concatenate(a.nll)
    kl = np.concatenate(a.kl)
    ppl = perplexity(nll)
    ref_ppl = perplexity(np.concatenate(ref.nll))
    kl_list: list[Any] = kl.tolist()
    return CacheQuality(
        kv_type=spec.label,
        type_k=spec.type_k,
        type_v=spec.type_v,
        perplexity=ppl,
        ppl_ratio=ppl / ref_ppl,
        kl_mean=float(np.mean(kl)),
        kl_median=percentile(kl_list, 50),
        kl_p99=percentile(kl_list, 99),
        kl_max=float(np.max(kl)),
        top1_agreement=top1_agreement(np.concatenate(ref.top), np.concatenate(a.top)),
        eval_s=seconds,
    )
