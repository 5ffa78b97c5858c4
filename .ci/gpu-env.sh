#!/bin/sh
# Runs a command in the environment of one of the GPU builds that work without a GPU:
#
#   .ci/gpu-env.sh fake   COMMAND...   toolkit-free type checks (make check-gpu-types)
#   .ci/gpu-env.sh wheels COMMAND...   real nvcc from PyPI's CUDA 13.4 wheels (make check-cuda)
#
# fake: cudaforge (candle-kernels' and candle-flash-attn's build scripts) runs
#   .ci/fake-nvcc, which writes empty PTX, objects and libraries, and finds an empty CUTLASS
#   checkout instead of cloning it. Everything goes to target/gpu-check, cudaforge's cache
#   included, and CANDLE_FLASH_ATTN_BUILD_DIR is unset, so no empty kernel ever lands where a
#   real build would pick it up. Good for `cargo check`/`cargo clippy` only.
# wheels: installs the pinned wheels into target/cuda-venv on first use (see
#   .ci/cuda-wheels.sh), points CUDA_HOME and PATH at them, and builds into target/cuda.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:?usage: .ci/gpu-env.sh fake|wheels COMMAND...}
shift

# No GPU to ask (nvidia-smi): compile for sm_80, the oldest flash attention supports.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
unset CANDLE_FLASH_ATTN_BUILD_DIR

# The source folder of dependency $1 (as resolved with features $2), from cargo metadata.
crate_dir() {
    dir=$(cd "$root" && cargo metadata --features "$2" --format-version 1 |
        grep -o "\"manifest_path\":\"[^\"]*/$1-[0-9][^\"]*/Cargo.toml\"" | head -n 1 |
        sed 's/^"manifest_path":"//; s/\/Cargo.toml"$//')
    [ -n "$dir" ] || { echo "gpu-env: $1 not found by cargo metadata" >&2; exit 1; }
    echo "$dir"
}

# Each build has its own folder under cargo's (CARGO_TARGET_DIR when set, else target/).
target=${CARGO_TARGET_DIR:-$root/target}

case $mode in
fake)
    export CARGO_TARGET_DIR="$target/gpu-check"
    export NVCC="$root/.ci/fake-nvcc"
    # cudarc asks `nvcc --version` for the CUDA version unless told.
    export CUDARC_CUDA_VERSION=13040
    unset NVCC_CCBIN
    # cudaforge uses $CUDAFORGE_HOME/git/checkouts/cutlass-<first 16 hex of the commit> when
    # it has an include/ folder and `git rev-parse HEAD` there gives the commit; else it clones.
    export CUDAFORGE_HOME="$CARGO_TARGET_DIR/cudaforge"
    commit=$(sed -n 's/^const CUTLASS_COMMIT: &str = "\([0-9a-f]*\)";.*/\1/p' \
        "$(crate_dir candle-flash-attn flash-attn)/build.rs")
    if [ -z "$commit" ]; then
        echo "gpu-env: cannot read CUTLASS_COMMIT from candle-flash-attn's build.rs" >&2
        exit 1
    fi
    cutlass="$CUDAFORGE_HOME/git/checkouts/cutlass-$(echo "$commit" | cut -c1-16)"
    mkdir -p "$cutlass/include" "$cutlass/.git/objects" "$cutlass/.git/refs"
    echo "$commit" >"$cutlass/.git/HEAD"
    ;;
wheels)
    export CARGO_TARGET_DIR="$target/cuda"
    venv="$root/target/cuda-venv"
    sh "$root/.ci/cuda-wheels.sh" "$venv"
    cuda=$(cat "$venv/cuda-home")
    export CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_ROOT="$cuda"
    export PATH="$cuda/bin:$PATH" NVCC="$cuda/bin/nvcc"
    unset CUDARC_CUDA_VERSION
    # The wheels have no driver library to link against: a stand-in where a toolkit keeps its
    # own (lib/stubs, which cudarc's build script adds to the link search path).
    cudarc=$(crate_dir cudarc cuda)
    if [ "$(cat "$cuda/lib/stubs/.cudarc" 2>/dev/null)" != "$cudarc" ]; then
        sh "$root/.ci/cuda-stub.sh" "$cudarc" "$cuda/lib/stubs"
        echo "$cudarc" >"$cuda/lib/stubs/.cudarc"
    fi
    export LIBRARY_PATH="$cuda/lib:$cuda/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
    ;;
*)
    echo "gpu-env: unknown mode $mode (expected fake or wheels)" >&2
    exit 2
    ;;
esac

exec "$@"
