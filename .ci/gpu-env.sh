#!/bin/sh
# Runs a command in the environment of one of the GPU builds that work without a GPU:
#
#   .ci/gpu-env.sh fake   COMMAND...   toolkit-free type checks (make check-gpu-types)
#   .ci/gpu-env.sh wheels COMMAND...   real nvcc from PyPI's CUDA 13.4 wheels (make check-cuda)
#   .ci/gpu-env.sh kit    COMMAND...   the GPU kit's build (make gpu-kit): CUDA 13.0 wheels,
#                                      sm_90, CUTLASS from PyPI, kernels cached
#
# fake: cudaforge (candle-kernels' and candle-flash-attn's build scripts) runs
#   .ci/fake-nvcc, which writes empty PTX, objects and libraries, and finds an empty CUTLASS
#   checkout instead of cloning it. Everything goes to target/gpu-check, cudaforge's cache
#   included, and CANDLE_FLASH_ATTN_BUILD_DIR is unset, so no empty kernel ever lands where a
#   real build would pick it up. Good for `cargo check`/`cargo clippy` only.
# wheels: installs the pinned wheels into target/cuda-venv on first use (see
#   .ci/cuda-wheels.sh), points CUDA_HOME and PATH at them, and builds into target/cuda.
# kit: the same with CUDA 13.0 (the GPU machine's driver refuses PTX of a newer nvcc) in
#   target/gpu-kit-build, for compute capability 9.0 (H200), with CUTLASS 3.5.0's headers
#   (the release of candle-flash-attn's pinned commit) from PyPI's nvidia-cutlass wheel where
#   cudaforge looks for its checkout, and the compiled flash-attention kernels kept in
#   target/gpu-kit-build/flash-attn-kernels (CANDLE_FLASH_ATTN_BUILD_DIR).
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

# The folder where cudaforge looks for its CUTLASS checkout: it uses
# $CUDAFORGE_HOME/git/checkouts/cutlass-<first 16 hex of the commit> when it has an include/
# folder and `git rev-parse HEAD` there gives the commit (else it clones from GitHub). Made
# here with a .git whose HEAD is that commit.
cutlass_checkout() {
    commit=$(sed -n 's/^const CUTLASS_COMMIT: &str = "\([0-9a-f]*\)";.*/\1/p' \
        "$(crate_dir candle-flash-attn flash-attn)/build.rs")
    if [ -z "$commit" ]; then
        echo "gpu-env: cannot read CUTLASS_COMMIT from candle-flash-attn's build.rs" >&2
        exit 1
    fi
    dir="$CUDAFORGE_HOME/git/checkouts/cutlass-$(echo "$commit" | cut -c1-16)"
    mkdir -p "$dir/.git/objects" "$dir/.git/refs"
    echo "$commit" >"$dir/.git/HEAD"
    echo "$dir"
}

# Installs the CUDA $2 wheels into the venv $1 (once) and points the build at them.
use_wheels() {
    sh "$root/.ci/cuda-wheels.sh" "$1" "$2"
    cuda=$(cat "$1/cuda-home")
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
}

case $mode in
fake)
    export CARGO_TARGET_DIR="$target/gpu-check"
    export NVCC="$root/.ci/fake-nvcc"
    # cudarc asks `nvcc --version` for the CUDA version unless told.
    export CUDARC_CUDA_VERSION=13040
    unset NVCC_CCBIN
    # An empty CUTLASS checkout.
    export CUDAFORGE_HOME="$CARGO_TARGET_DIR/cudaforge"
    cutlass=$(cutlass_checkout)
    mkdir -p "$cutlass/include"
    ;;
wheels)
    export CARGO_TARGET_DIR="$target/cuda"
    use_wheels "$root/target/cuda-venv" 13.4
    ;;
kit)
    work="$target/gpu-kit-build"
    export CARGO_TARGET_DIR="$work/cargo" CUDA_COMPUTE_CAP=90
    export CANDLE_FLASH_ATTN_BUILD_DIR="$work/flash-attn-kernels"
    mkdir -p "$CANDLE_FLASH_ATTN_BUILD_DIR"
    use_wheels "$work/cuda-venv" 13.0
    export CUDAFORGE_HOME="$work/cudaforge"
    cutlass=$(cutlass_checkout)
    if [ ! -f "$cutlass/include/cute/tensor.hpp" ]; then
        echo "gpu-env: CUTLASS 3.5.0 headers from PyPI into $cutlass" >&2
        rm -rf "$work/cutlass-wheel" && mkdir -p "$work/cutlass-wheel"
        ${PYTHON:-python3} -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: nvidia-cutlass==3.5.0.0 -d "$work/cutlass-wheel"
        ${PYTHON:-python3} -m zipfile -e "$work/cutlass-wheel"/nvidia_cutlass-*.whl \
            "$work/cutlass-wheel/files"
        rm -rf "$cutlass/include"
        cp -R "$work/cutlass-wheel/files/cutlass_library/source/include" "$cutlass/include"
    fi
    ;;
*)
    echo "gpu-env: unknown mode $mode (expected fake, wheels or kit)" >&2
    exit 2
    ;;
esac

exec "$@"
