#!/bin/sh
# Installs a CUDA 13.4 toolkit from NVIDIA's PyPI wheels into the venv VENV (once), for
# `make check-cuda` on machines without a CUDA toolkit or GPU, and writes the toolkit root to
# VENV/cuda-home. About 650 MB downloaded, 1.6 GB installed.
#
# - CUDA 13.4, not 13.5: cudarc 0.19 knows CUDA versions up to 13.4 and its build script
#   panics on a newer nvcc. PyPI's CUDA 12 wheels carry no nvcc.
# - nvcc, runtime, crt, nvvm and cccl compile candle-kernels; nvrtc, cublas and curand are only
#   needed to link the vit binary.
# - The wheels ship versioned libraries only (libcublas.so.13): the libX.so names that the
#   linker looks for are added as symlinks. They have no driver library (libcuda.so): see
#   .ci/cuda-stub.sh.
set -eu

venv=${1:?usage: .ci/cuda-wheels.sh VENV}
PINS="nvidia-cuda-nvcc==13.4.92 nvidia-cuda-runtime==13.4.92 nvidia-cuda-crt==13.4.92
nvidia-nvvm==13.4.92 nvidia-cuda-cccl==13.3.5.0.6 nvidia-cuda-nvrtc==13.4.92
nvidia-cublas==13.4.3.11 nvidia-curand==10.4.4.72"
stamp="$venv/.installed"

home=$(cat "$venv/cuda-home" 2>/dev/null || true)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PINS" ] && [ "${home#/}" != "$home" ] &&
    [ -x "$home/bin/nvcc" ]; then
    exit 0
fi

echo "cuda-wheels: installing CUDA 13.4 wheels from PyPI into $venv" >&2
rm -rf "$venv"
${PYTHON:-python3} -m venv "$venv"
# --no-deps: every wheel is named and pinned (their own requirements are unpinned and would
# bring CUDA 13.5).
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: $PINS

# An absolute path: build scripts run nvcc from their own folders, with this on PATH.
cuda=$(cd "$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)" && pwd)
[ -x "$cuda/bin/nvcc" ] || { echo "cuda-wheels: no nvcc in $cuda" >&2; exit 1; }
for lib in "$cuda"/lib/lib*.so.*; do
    name=$(basename "$lib")
    link="$cuda/lib/${name%%.so.*}.so"
    [ -e "$link" ] || ln -s "$name" "$link"
done
echo "$cuda" >"$venv/cuda-home"
echo "$PINS" >"$stamp"
"$cuda/bin/nvcc" --version | sed -n 4p >&2
