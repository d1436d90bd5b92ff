#!/usr/bin/env python3
"""Resume from the saved KV state vs re-prefill from the transcript, on each memory kind.

For each history length and KV type, a conversation with that much history is stored,
then its next turn is run in fresh runtimes (fresh llama.cpp contexts, as in a new
process): once with no state file (re-prefill), once from the state file, and once more
as a regenerate of that reply (the divergence that needs a context checkpoint on
sliding-window and hybrid models). Reports the time to first token of each, their ratios
to the re-prefill, the state file size and the checkpoint bytes. One run, medians of
--repeats.

    .venv/bin/python scripts/bench_resume.py [-m MODEL] [--lengths 500,2000,6000] [--kv f16,q8_0]
    .venv/bin/python scripts/bench_resume.py --kinds dense,swa,hybrid --lengths 2000 --kv f16

--kinds runs the test models: dense SmolLM2-135M, sliding-window Gemma 3 270M and a tiny
random-weight qwen35 hybrid built on the spot (tests/tiny_models.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from edgechat import Runtime  # noqa: E402
from edgechat.store import NewMessage  # noqa: E402

WORDS = ["river", "stone", "lantern", "harbour", "meadow", "copper", "violin", "orchard", "signal", "winter", "garden", "engine", "pepper", "island", "ladder", "mirror", "candle", "forest", "anchor", "tunnel"]  # fmt: skip


def filler(i: int, n_words: int) -> str:
    return " ".join(f"{WORDS[(i * 7 + k * 3) % len(WORDS)]}{'' if k % 9 else ' ' + str(i + k)}" for k in range(n_words))


def build_history(rt: Runtime, tokens: int) -> str:
    """Store synthetic turns until the rendered conversation holds about `tokens` tokens."""
    conv = rt.new_conversation(title=f"bench {tokens}")
    engine = rt.load()
    msgs: list[NewMessage] = []
    i = 0
    while True:
        msgs += [NewMessage("user", filler(i, 40)), NewMessage("assistant", filler(i + 1, 60))]
        i += 2
        chat = [{"role": m.role, "content": m.content} for m in msgs]
        if len(engine.chat_tokens(chat)) >= tokens:
            break
    rt.store.append_turn(conv.id, msgs)
    return conv.id


def one(model: str, home: Path, cid: str, kv: str, ctx: int, drop_state: bool, regenerate: bool = False) -> dict:
    with Runtime(model=model, home=home, kv_type=kv, ctx=ctx) as rt:
        rt.load()
        if drop_state:
            rt.states.delete(cid)
        conv = rt.conversation(cid)
        if regenerate:
            r = conv.regenerate(max_tokens=8, temperature=0).run()
        else:
            r = conv.send("Summarize that in one sentence.", max_tokens=8, temperature=0)
        header = rt.states.read_header(cid, missing_ok=True)
        return {"ttft_s": r.stats.ttft_s, "source": r.stats.restored_from, "prefill": r.stats.prefill_tokens,
                "restore_s": r.stats.restore_s, "state_bytes": r.stats.state_bytes,
                "checkpoint_bytes": sum(c["size"] for c in header.checkpoints) if header else 0,
                "context_tokens": r.stats.context_tokens}  # fmt: skip


def kind_models() -> dict[str, str]:
    """The three memory kinds, from the test models."""
    from fetch_test_models import fetch

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import write_qwen35

    tiny = Path(tempfile.mkdtemp()) / "tiny-qwen35.gguf"
    return {
        "dense": str(fetch("smollm2-135m")),
        "swa": str(fetch("gemma3-270m")),
        "hybrid": str(write_qwen35(tiny, ctx=32768)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="model (default: the SmolLM2 test model)")
    ap.add_argument("--lengths", default="500,2000,6000")
    ap.add_argument("--kv", default="f16,q8_0")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default=None, help="dense,swa,hybrid: run each memory kind's test model")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.kinds:
        models = kind_models()
        runs = [(kind, models[kind]) for kind in args.kinds.split(",")]
    else:
        if args.model is None:
            from fetch_test_models import fetch

            args.model = str(fetch("smollm2-135m"))
        runs = [("", args.model)]
    rows = []
    for kind, model in runs:
        rows += bench_model(args, kind, model)
    if args.json:
        print(json.dumps(rows))


def bench_model(args: argparse.Namespace, kind: str, model: str) -> list[dict]:
    rows = []
    for kv in args.kv.split(","):
        for length in (int(x) for x in args.lengths.split(",")):
            ctx = max(1024, ((length + 600) // 256 + 1) * 256)
            with tempfile.TemporaryDirectory() as tmp:
                home = Path(tmp)
                with Runtime(model=model, home=home, kv_type=kv, ctx=ctx) as rt:
                    cid = build_history(rt, length)
                prefill, resume, regen = [], [], []
                for _ in range(args.repeats):
                    # The first send saves a state for the conversation as it stands after it; to
                    # compare like with like, each pair starts from the same stored history.
                    p = one(model, home, cid, kv, ctx, drop_state=True)
                    r = one(model, home, cid, kv, ctx, drop_state=False)
                    g = one(model, home, cid, kv, ctx, drop_state=False, regenerate=True)
                    assert p["source"] == "transcript" and r["source"] in ("state", "checkpoint"), (p, r)
                    prefill.append(p)
                    resume.append(r)
                    regen.append(g)
                row = {
                    "kind": kind,
                    "kv_type": kv,
                    "history_tokens": resume[0]["context_tokens"] - resume[0]["prefill"],
                    "reprefill_ttft_s": statistics.median(x["ttft_s"] for x in prefill),
                    "resume_ttft_s": statistics.median(x["ttft_s"] for x in resume),
                    "resume_restore_s": statistics.median(x["restore_s"] for x in resume),
                    "resume_prefill_tokens": resume[0]["prefill"],
                    "regenerate_ttft_s": statistics.median(x["ttft_s"] for x in regen),
                    "regenerate_source": regen[0]["source"],
                    "regenerate_prefill_tokens": regen[0]["prefill"],
                    "state_mb": prefill[0]["state_bytes"] / 2**20,
                    "checkpoint_mb": regen[0]["checkpoint_bytes"] / 2**20,
                }
                row["speedup"] = row["reprefill_ttft_s"] / row["resume_ttft_s"]
                row["regenerate_speedup"] = row["reprefill_ttft_s"] / row["regenerate_ttft_s"]
                rows.append(row)
                if not args.json:
                    print(
                        f"{kind:6} {kv:5} history {row['history_tokens']:5d} tok: re-prefill {row['reprefill_ttft_s']:7.3f} s"
                        f"  resume {row['resume_ttft_s']:6.3f} s (restore {row['resume_restore_s'] * 1000:5.1f} ms,"
                        f" prefill {row['resume_prefill_tokens']} tok) x{row['speedup']:6.1f}"
                        f"  regenerate {row['regenerate_ttft_s']:6.3f} s ({row['regenerate_source']},"
                        f" prefill {row['regenerate_prefill_tokens']} tok) x{row['regenerate_speedup']:6.1f}"
                        f"  state {row['state_mb']:6.1f} MB + checkpoints {row['checkpoint_mb']:5.2f} MB",
                        flush=True,
                    )
    return rows


if __name__ == "__main__":
    main()
