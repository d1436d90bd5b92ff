"""Measure how often replies loop under each anti-repetition setting (issue 19).

For each model and each sampler configuration, every prompt is answered (greedy by
default, plus --seeds sampled runs at temperature 0.7) with the loop guard OFF, so what is
measured is the sampler alone. A reply "loops" when it holds a span of 4+ words repeated
3+ times in a row (edgechat.loop_guard.repeated_words); "guard" counts the replies the
loop guard would have ended. Also printed: mean reply length, replies that ran to
max_tokens, and a sanity check that the factual answers survive (Paris, Rome, Ada).

    PYTHONPATH=$PWD python scripts/bench_sampling.py [--models smollm2-135m gemma3-270m] [--max-tokens 160]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fetch_test_models import fetch  # noqa: E402

from edgechat.config import EngineSettings, SamplingSettings  # noqa: E402
from edgechat.engine import Engine  # noqa: E402
from edgechat.loop_guard import LoopGuard, repeated_words  # noqa: E402

# (turns, a word the last reply should contain or None). The README's prompts come first.
PROMPTS: list[tuple[tuple[str, ...], str | None]] = [
    (("What is the capital of France?",), "paris"),
    (("What is the capital of France?", "And of Italy?"), "rome"),
    (("Write a haiku about rain",), None),
    (("Summarize: The meeting moved to Thursday because the projector broke, and lunch will be pizza.",), None),
    (("My name is Ada.", "What is my name?"), "ada"),
    (("hello",), None),
    (("Tell me about the moon.",), None),
    (("Write a short story about a dragon.",), None),
    (("List five fruits.",), None),
    (("Explain how a bicycle works.",), None),
    (("Write a poem about the sea.",), None),
    (("Give me three tips for learning to cook.",), None),
]

BASE = SamplingSettings(temperature=0.0, seed=0, loop_guard=False, repeat_penalty=1.0)
CONFIGS: dict[str, SamplingSettings] = {
    "none": BASE,
    "rp1.1": replace(BASE, repeat_penalty=1.1),
    "rp1.15": replace(BASE, repeat_penalty=1.15),
    "dry0.8": replace(BASE, dry_multiplier=0.8),
    "rp1.1+dry0.8": replace(BASE, repeat_penalty=1.1, dry_multiplier=0.8),
}


def run(engine: Engine, turns: tuple[str, ...], s: SamplingSettings) -> tuple[str, int, str, bool]:
    """Answer each turn in order (earlier replies stay in the history); the last reply's facts."""
    messages: list[dict[str, str]] = []
    text, n, finish, caught = "", 0, "", False
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        gen = engine.generate(engine.chat_tokens(messages), s)
        text = gen.run()
        messages.append({"role": "assistant", "content": text})
        assert gen.stats is not None
        n, finish = gen.stats.completion_tokens, gen.stats.finish_reason
        guard = LoopGuard(SamplingSettings.loop_repeats, engine.detokenize)
        caught = any(guard.add(t) for t in gen.tokens)
    return text, n, finish, caught


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--seeds", type=int, default=1, help="sampled runs (temperature 0.7) per prompt; 0: greedy only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="use the first N prompts only")
    ap.add_argument("--show", action="store_true", help="print every reply")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for model in args.models:
        engine = Engine(EngineSettings(model_path=str(fetch(model)), n_ctx=2048, threads=args.threads))
        for name in args.configs:
            for mode, temp, seeds in (("greedy", 0.0, [0]), ("t0.7", 0.7, list(range(args.seeds)))):
                if not seeds:
                    continue
                loops = guard = length = tokens = facts = fact_total = replies = 0
                t0 = time.perf_counter()
                for seed in seeds:
                    s = replace(CONFIGS[name], temperature=temp, seed=seed, max_tokens=args.max_tokens)
                    for turns, fact in PROMPTS[: args.prompts]:
                        text, n, finish, caught = run(engine, turns, s)
                        loop = repeated_words(text)
                        replies += 1
                        loops += loop is not None
                        guard += caught
                        length += finish == "length"
                        tokens += n
                        if fact is not None:
                            fact_total += 1
                            facts += fact in text.lower()
                        if args.show:
                            print(f"--- {model} {name} {mode} {turns[-1]!r} [{finish}, {n} tok, loop={loop!r}]")
                            print(text)
                row = {
                    "model": model, "config": name, "mode": mode, "replies": replies, "looping": loops,
                    "guard_would_stop": guard, "ran_to_max_tokens": length,
                    "mean_tokens": round(tokens / replies, 1), "facts": f"{facts}/{fact_total}",
                    "seconds": round(time.perf_counter() - t0, 1),
                }  # fmt: skip
                rows.append(row)
                if not args.json:
                    print(
                        f"{model:13} {name:13} {mode:6} looping {loops:2}/{replies:<2} guard {guard:2} "
                        f"max_tokens {length:2} mean {row['mean_tokens']:6} tok  facts {row['facts']}  "
                        f"({row['seconds']}s)",
                        flush=True,
                    )
        engine.close()
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
