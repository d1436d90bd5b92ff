#!/usr/bin/env bash
# The CUDA check on a GPU machine with no network (see gpu_check.py for what it compares).
#
# Prepare here, into .whl/ (git-ignored): the llama-cpp-python sdist (slimmed under the
# device's 64 MiB carry limit: vendor/llama.cpp without docs/, benches/, tools/ui and the
# vocab GGUFs in models/), wheels of diskcache, gguf and platformdirs, and the two specs:
#   python scripts/gpu_check.py spec MODEL.gguf .whl/NAME.spec.json.gz
# There, `bash scripts/gpu_check.sh build` compiles llama.cpp for sm_90 into .gpubuild/
# (resumable), and `bash scripts/gpu_check.sh check` clones the models and runs the check.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OUT="${OUT:-/tmp/out}"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
case "${1:-}" in
build)
    mkdir -p .gpubuild
    [ -d .gpubuild/src ] || { mkdir .gpubuild/src && tar xzf .whl/llama_cpp_python-*.tar.gz -C .gpubuild/src; }
    export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
    export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
    python3 -m pip wheel -q --no-index --no-deps --no-build-isolation -w .gpubuild/wheel \
        -C build-dir="$PWD/.gpubuild/build" .gpubuild/src/llama_cpp_python-*
    ;;
check)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpubuild/wheel/*.whl
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
    mkdir -p /tmp/m
    for s in .whl/*.spec.json.gz; do python3 scripts/gpu_check.py clone "$s" "/tmp/m/$(basename "$s" .spec.json.gz).gguf"; done
    python3 scripts/gpu_check.py check /tmp/m "$OUT"
    ;;
*)
    echo "usage: $0 build|check" >&2
    exit 2
    ;;
esac
