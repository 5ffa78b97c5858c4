#!/bin/sh
# Installs a CUDA toolkit from NVIDIA's PyPI wheels into the venv VENV (once) and writes the
# toolkit root to VENV/cuda-home: CUDA 13.4 (the default) for `make check-cuda` on machines
# without a CUDA toolkit or GPU, CUDA 13.0 for `make gpu-kit`. About 650 MB downloaded, 1.6 GB
# installed.
#
#   .ci/cuda-wheels.sh VENV [13.4|13.0]
#
# - CUDA 13.4, not 13.5: cudarc 0.19 knows CUDA versions up to 13.4 and its build script
#   panics on a newer nvcc. PyPI's CUDA 12 wheels carry no nvcc.
# - CUDA 13.0 for the GPU kit: the GPU machine's driver (580) is CUDA 13.0, and the driver
#   refuses PTX from a newer nvcc; the libraries linked are those of the same release.
# - nvcc, runtime, crt, nvvm and cccl compile candle-kernels; nvrtc, cublas and curand are only
#   needed to link the vit binary.
# - The wheels ship versioned libraries only (libcublas.so.13): the libX.so names that the
#   linker looks for are added as symlinks. They have no driver library (libcuda.so): see
#   .ci/cuda-stub.sh.
set -eu

venv=${1:?usage: .ci/cuda-wheels.sh VENV [13.4|13.0]}
version=${2:-13.4}
case $version in
13.4)
    PINS="nvidia-cuda-nvcc==13.4.92 nvidia-cuda-runtime==13.4.92 nvidia-cuda-crt==13.4.92
nvidia-nvvm==13.4.92 nvidia-cuda-cccl==13.3.5.0.6 nvidia-cuda-nvrtc==13.4.92
nvidia-cublas==13.4.3.11 nvidia-curand==10.4.4.72"
    ;;
13.0)
    PINS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-crt==13.0.88
nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35"
    ;;
*)
    echo "cuda-wheels: unknown CUDA version $version (expected 13.4 or 13.0)" >&2
    exit 2
    ;;
esac
stamp="$venv/.installed"

home=$(cat "$venv/cuda-home" 2>/dev/null || true)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PINS" ] && [ "${home#/}" != "$home" ] &&
    [ -x "$home/bin/nvcc" ]; then
    exit 0
fi

echo "cuda-wheels: installing CUDA $version wheels from PyPI into $venv" >&2
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
