#!/usr/bin/env python3
"""What importing edgechat's `send` path costs a cold start beyond llama-cpp-python's own import,
and how much of that is building dataclasses (their generated methods are compiled at import).

llama_cpp and typer are imported first, so the figure is edgechat's own share: what a
`send` or `generate` process pays on top of a bare llama-cpp-python script.

    .venv/bin/python scripts/import_cost.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import llama_cpp  # noqa: F401 - the bare script pays this too
    import typer  # noqa: F401 - counted apart: the CLI's parser

    built: list[tuple[float, str]] = []
    process_class = dataclasses._process_class  # type: ignore[attr-defined]

    def timed(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return process_class(cls, *args, **kwargs)
        finally:
            built.append((time.perf_counter() - t, cls.__module__))

    dataclasses._process_class = timed  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    import edgechat.cli  # noqa: F401
    import edgechat.commands.send  # noqa: F401
    import edgechat.session  # noqa: F401

    total = time.perf_counter() - t0
    ours = [(s, m) for s, m in built if m.startswith("edgechat")]
    spent = sum(s for s, _ in ours)
    print(f"edgechat's import beyond llama_cpp and typer: {total * 1000:.1f} ms")
    print(f"  {len(ours)} dataclasses built: {spent * 1000:.1f} ms ({spent / total:.0%})")
    per_module: Counter[str] = Counter()
    for s, m in ours:
        per_module[m] += s
    for module, s in per_module.most_common():
        print(f"    {module}: {s * 1000:.1f} ms")


if __name__ == "__main__":
    main()
