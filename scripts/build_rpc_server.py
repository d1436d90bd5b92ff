#!/usr/bin/env python3
"""Build llama.cpp's `ggml-rpc-server` from the very sources of the installed llama-cpp-python.

An RPC client and server must speak the same protocol version (ggml-rpc.h
RPC_PROTO_MAJOR_VERSION), so the server is built from the llama.cpp that the installed
llama-cpp-python release vendors: that release's sdist from PyPI (`pip download
--no-binary llama-cpp-python`), its `vendor/llama.cpp`, cmake with -DGGML_RPC=ON, only the
`ggml-rpc-server` target. Versions match by construction.

The binary is cached per llama-cpp-python version (and CMAKE_ARGS, e.g. -DGGML_CUDA=on for
a helper machine with an NVIDIA GPU) under the user cache directory, so a second run is
instant. It prints the binary's path on its last line.

    scripts/build_rpc_server.py                  # build (or reuse) for this Python's llama-cpp-python
    scripts/build_rpc_server.py --path           # print where the binary is (or would be); build nothing
    CMAKE_ARGS="-DGGML_CUDA=on" scripts/build_rpc_server.py

Then, on the machine that lends its memory: `ggml-rpc-server -p 50052` (it binds 127.0.0.1;
reach it through an SSH tunnel, see README "Spreading a model over machines").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BINARY = "ggml-rpc-server"


def cache_root() -> Path:
    """$EDGECHAT_RPC_CACHE, else the user cache directory (~/.cache/edgechat/rpc-server on Linux)."""
    env = os.environ.get("EDGECHAT_RPC_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    if sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    return Path(base) / "edgechat" / "rpc-server"


def installed_version(python: str = sys.executable) -> str:
    """The llama-cpp-python version installed for `python` (the one whose protocol the server must speak)."""
    code = "import importlib.metadata as m; print(m.version('llama-cpp-python'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: llama-cpp-python is not installed for {python} — install edgechat first")
    return done.stdout.strip()


def binary_path(version: str, cmake_args: str | None = None) -> Path:
    """Where the server for this llama-cpp-python version (and these CMAKE_ARGS) lives once built."""
    args = os.environ.get("CMAKE_ARGS", "") if cmake_args is None else cmake_args
    # -DGGML_RPC=on is always given; only other flags (a GPU backend) make a different binary.
    extra = " ".join(a for a in args.split() if not a.upper().startswith("-DGGML_RPC"))
    key = version + (f"-{hashlib.sha256(extra.encode()).hexdigest()[:8]}" if extra else "")
    return cache_root() / key / BINARY


def cached_binary(python: str = sys.executable) -> Path | None:
    """The built server for `python`'s llama-cpp-python, when there is one (tests use this)."""
    try:
        version = installed_version(python)
    except SystemExit:
        return None
    plain = binary_path(version, "")
    others = sorted(cache_root().glob(f"{version}-*/{BINARY}"))
    return next((p for p in (plain, *others) if p.is_file() and os.access(p, os.X_OK)), None)


def _run(cmd: list[str], **kw: object) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def build(version: str, python: str, jobs: int) -> Path:
    """Download the sdist, configure llama.cpp with RPC, build the server target, cache the binary."""
    dest = binary_path(version)
    if dest.is_file():
        return dest
    cmake = shutil.which("cmake") or str(Path(python).parent / "cmake")
    if not Path(cmake).exists() and not shutil.which(cmake):
        raise SystemExit("error: cmake not found — install it (pip install cmake, or your system's package)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgechat-rpc-", dir=dest.parent) as tmp:
        work = Path(tmp)
        _run(
            [python, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary", "llama-cpp-python", "--no-deps",
             "-q", "-d", str(work)]
        )  # fmt: skip
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"), None) or next(work.glob("llama-cpp-python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            top = tar.getmembers()[0].name.split("/")[0]
            vendored = [m for m in tar.getmembers() if m.name.startswith(f"{top}/vendor/llama.cpp/")]
            tar.extractall(work, members=vendored, filter="data")
        src = work / top / "vendor" / "llama.cpp"
        build_dir = work / "build"
        configure = [
            cmake, "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_RPC=ON",
            "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_OPENSSL=OFF",
        ]  # fmt: skip
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        configure += os.environ.get("CMAKE_ARGS", "").split()
        _run(configure)
        nice = ["nice", "-n", "10"] if shutil.which("nice") else []
        _run([*nice, cmake, "--build", str(build_dir), "--config", "Release", "--target", BINARY, "-j", str(jobs)])
        built = next(p for p in build_dir.rglob(BINARY + (".exe" if os.name == "nt" else "")) if p.is_file())
        staged = dest.with_suffix(".tmp")
        shutil.copy2(built, staged)
        staged.replace(dest)
    print(f"built {BINARY} for llama-cpp-python {version} in {time.perf_counter() - t0:.0f} s", flush=True)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the Python whose llama-cpp-python to match")
    ap.add_argument("--path", action="store_true", help="print the binary's path and build nothing")
    ap.add_argument("-j", "--jobs", type=int, default=min(os.cpu_count() or 2, 2), help="parallel compile jobs (2)")
    args = ap.parse_args()
    version = installed_version(args.python)
    if args.path:
        print(binary_path(version))
        return
    print(build(version, args.python, args.jobs))


if __name__ == "__main__":
    main()
