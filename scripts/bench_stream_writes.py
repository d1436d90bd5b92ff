#!/usr/bin/env python3
"""What writing the reply to the store while it streams costs the decode (issue 11: at most 1 %).

One process, one model, greedy turns on one conversation, alternating: with the writes as
shipped (every STREAM_WRITE_S / STREAM_WRITE_TOKENS) and with them pushed out of reach (only
the first write). Two figures, one run:
  - direct: seconds spent in the store writes / seconds of decoding, over the turns with writes;
  - A/B: median decode tok/s with writes / without (noisy on a busy machine; the direct
    ratio is the one to quote).

    .venv/bin/python scripts/bench_stream_writes.py [-m MODEL] [--turns 6] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF path (default: the SmolLM2 test model)")
    ap.add_argument("--turns", type=int, default=6, help="turns per arm")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from edgechat import session
    from edgechat.session import Runtime

    model = args.model
    if model is None:
        from fetch_test_models import fetch

        model = str(fetch("smollm2-135m"))
    shipped = (session.STREAM_WRITE_S, session.STREAM_WRITE_TOKENS)
    arms: dict[str, list[float]] = {"writes": [], "no writes": []}
    write_s = decode_s = 0.0
    writes = tokens = 0
    with tempfile.TemporaryDirectory() as home, Runtime(model=model, home=home, ctx=4096, threads=args.threads) as rt:
        for i in range(2 * args.turns):
            arm = "writes" if i % 2 == 0 else "no writes"
            session.STREAM_WRITE_S, session.STREAM_WRITE_TOKENS = shipped if arm == "writes" else (1e9, 10**9)
            conv = rt.new_conversation(system_prompt="")  # a fresh conversation: every turn decodes alike
            turn = conv.stream(
                f"Write a long story about a dragon number {i // 2} who learns to sing.",
                max_tokens=args.max_tokens, temperature=0, seed=0,
            )  # fmt: skip
            st = turn.run().stats
            arms[arm].append(st.decode_tokens_per_s)
            if arm == "writes" and st.decode_tokens_per_s:
                write_s += turn.write_s
                writes += turn.writes
                tokens += st.completion_tokens
                decode_s += st.completion_tokens / st.decode_tokens_per_s
    session.STREAM_WRITE_S, session.STREAM_WRITE_TOKENS = shipped
    with_w, without = statistics.median(arms["writes"]), statistics.median(arms["no writes"])
    print(f"model {Path(model).name}, {args.turns} turns per arm, up to {args.max_tokens} tokens each")
    print(
        f"direct: {writes} writes for {tokens} tokens took {write_s * 1000:.1f} ms of {decode_s:.2f} s decoding"
        f" = {100 * write_s / decode_s:.3f} % of decode time"
    )
    print(f"A/B: decode {with_w:.1f} tok/s with writes, {without:.1f} without; ratio {with_w / without:.3f}")


if __name__ == "__main__":
    main()
