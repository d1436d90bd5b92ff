#!/usr/bin/env python3
"""What carrying a conversation costs: bundle export and import times and size, and the next
turn's time to first token after an import, from the bundled state against from the transcript.

A conversation of about --tokens tokens is made in one home, exported, and imported into two
fresh homes: one keeps the bundled state, the other has it removed (a transcript-only import,
what a bundle without state would give). One run, one line of JSON per figure set.

    .venv/bin/python scripts/bench_bundle.py [-m MODEL] [--tokens 1000] [--kv f16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from edgechat import Runtime  # noqa: E402
from edgechat.bundle import export_bundle, import_bundle  # noqa: E402
from edgechat.config import resolve_paths  # noqa: E402
from edgechat.state import StateFiles  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="default: the SmolLM2 test model")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--kv", default="f16")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from fetch_test_models import fetch

        model = str(fetch("smollm2-135m"))
    text = files("edgechat").joinpath("data/sample_text.txt").read_text(encoding="utf-8")
    kw = {"ctx": max(2048, args.tokens * 2), "kv_type": args.kv, "threads": 2}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with Runtime(model=model, home=root / "a", **kw) as rt:
            conv = rt.new_conversation()
            words = text.split()
            message = " ".join(words[: int(args.tokens * 0.7)])
            first = conv.send("Read this and say OK.\n\n" + message, max_tokens=4, temperature=0)
            cid = conv.id
        t = time.perf_counter()
        out = export_bundle(resolve_paths(root / "a"), cid, root / "c.edgechat")
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        import_bundle(resolve_paths(root / "b"), root / "c.edgechat")
        import_s = time.perf_counter() - t
        import_bundle(resolve_paths(root / "t"), root / "c.edgechat")
        StateFiles(resolve_paths(root / "t").states_dir).delete(cid)
        ttft = {}
        for home in ("b", "t"):
            with Runtime(model=model, home=root / home, **kw) as rt:
                r = rt.conversation(cid).send("And now?", max_tokens=4, temperature=0)
                ttft[r.stats.restored_from] = (round(r.stats.ttft_s, 3), r.stats.prefill_tokens)
        print(json.dumps({
            "context_tokens": first.stats.context_tokens, "kv": args.kv, "bundle_mb": round(out.bytes / 1e6, 2),
            "state_mb": round(out.state_bytes / 1e6, 2), "export_s": round(export_s, 3), "import_s": round(import_s, 3),
            "next_turn_from_state_ttft_s_prefill": ttft.get("state"),
            "next_turn_from_transcript_ttft_s_prefill": ttft.get("transcript"),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
