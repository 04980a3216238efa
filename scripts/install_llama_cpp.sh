#!/usr/bin/env bash
# Install llama-cpp-python (CPU only, with its OpenAI-compatible server) from a cached wheel.
# The first run compiles the wheel (several minutes on 2 cores) into the cache; later runs only install it.
# Usage: scripts/install_llama_cpp.sh   (inside the project's virtual environment)
set -euo pipefail

LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
CACHE_DIR="${RLRF_HUB_CACHE:-$HOME/.cache/rlrf-hub}"
WHEEL_DIR="$CACHE_DIR/wheels"
PYTHON="${PYTHON:-python}"

installed="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)"
if [ "$installed" = "$LLAMA_CPP_VERSION" ] && "$PYTHON" -c 'import llama_cpp.server' 2>/dev/null; then
    echo "llama-cpp-python $LLAMA_CPP_VERSION already installed"
    exit 0
fi

mkdir -p "$WHEEL_DIR"
wheel="$(ls "$WHEEL_DIR"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $LLAMA_CPP_VERSION (CPU, portable) into $WHEEL_DIR"
    # Portable CPU build: no -march=native (the wheel runs on any x86-64 with AVX2/FMA/F16C, ggml's defaults
    # without native tuning), no GPU backends, no examples or tests.
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
-DGGML_HIP=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_CURL=OFF}"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
    tmp_dir="$(mktemp -d)"
    trap 'rm -rf "$tmp_dir"' EXIT
    nice -n 10 "$PYTHON" -m pip wheel --no-deps --no-cache-dir -w "$tmp_dir" "llama-cpp-python==$LLAMA_CPP_VERSION"
    mv "$tmp_dir"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl "$WHEEL_DIR"/
fi

# The package and its server extras depend on numpy, jinja2, fastapi, uvicorn, ... but never on torch;
# the constraint keeps pip from touching the installed torch all the same.
torch_version="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
constraints="$(mktemp)"
if [ -n "$torch_version" ]; then
    echo "torch==$torch_version" > "$constraints"
fi
"$PYTHON" -m pip install --find-links "$WHEEL_DIR" --only-binary llama-cpp-python -c "$constraints" \
    "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
rm -f "$constraints"
"$PYTHON" -c 'import llama_cpp, llama_cpp.server; print("llama-cpp-python", llama_cpp.__version__, "ready")'
