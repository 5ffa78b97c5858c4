#!/bin/sh
# Runs a vit built with `--features cuda` (make check-cuda) on this machine, which has no GPU,
# and shows what a user sees, for `--device auto` and `--device cuda`:
#   1. no NVIDIA driver (libcuda.so.1): the dynamic loader refuses to start vit, whether the
#      CUDA libraries are there or not (it looks for libcuda.so.1 first);
#   2. a driver but no GPU, played by .ci/cuda-stub.sh's libcuda.so (cuInit fails with
#      CUDA_ERROR_NO_DEVICE, as NVIDIA's driver does on a machine without a GPU).
# Fails if what it sees is not what the README says. Run inside `.ci/gpu-env.sh wheels`.
set -u

vit=${1:?usage: .ci/cuda-smoke.sh VIT_BINARY}
root=$(cd "$(dirname "$0")/.." && pwd)
cuda=${CUDA_HOME:?run inside .ci/gpu-env.sh wheels}
model="$root/tests/fixtures/hf/p4_s32_gelu"
image="$root/tests/fixtures/preprocess/images/rgba_120x90.png"
driver="$(cd "$(dirname "$vit")" && pwd)/no-gpu-driver"
mkdir -p "$driver"
ln -sf "$cuda/lib/stubs/libcuda.so" "$driver/libcuda.so.1"

if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
    echo "cuda-smoke: this machine has an NVIDIA driver; scenarios 1 and 2 will not fail as" \
        "they do without one, so nothing is checked" >&2
    check=false
else
    check=true
fi

failed=0
# run LIBRARY_PATH DEVICE EXPECTED_STATUS EXPECTED_FIRST_LINE(grep -E)
run() {
    printf '\n$ vit classify --device %s ...   # LD_LIBRARY_PATH=%s\n' "$2" "${1:-(unset)}"
    if [ -n "$1" ]; then
        out=$(LD_LIBRARY_PATH="$1" "$vit" classify --model "$model" --device "$2" -k 1 \
            "$image" 2>&1)
    else
        out=$(env -u LD_LIBRARY_PATH "$vit" classify --model "$model" --device "$2" -k 1 \
            "$image" 2>&1)
    fi
    status=$?
    printf '%s\n[exit status %s]\n' "$out" "$status"
    $check || return 0
    # One line that says what happened: no panic, no backtrace (even under RUST_BACKTRACE=1).
    if [ "$status" != "$3" ] || ! printf '%s\n' "$out" | head -n 1 | grep -q -E -- "$4" ||
        printf '%s\n' "$out" | grep -q -E 'panicked|backtrace|candle_core::|cudarc::'; then
        echo "cuda-smoke: FAILED: expected exit status $3 and a first line matching: $4" >&2
        failed=1
    fi
}

echo "== 1. no NVIDIA driver: vit does not start (install the CPU build on such machines)"
run "" auto 127 "error while loading shared libraries: libcuda\.so\.1: cannot open shared object file"
run "$cuda/lib" cuda 127 "error while loading shared libraries: libcuda\.so\.1: cannot open shared object file"
echo
echo "== 2. a driver but no GPU: auto falls back to the CPU with a note, cuda is an error"
run "$cuda/lib:$driver" auto 0 '^vit: using the CPU: cuda:0: no usable CUDA GPU: .*CUDA_ERROR_NO_DEVICE'
run "$cuda/lib:$driver" cuda 2 '^vit: cuda:0: no usable CUDA GPU: .*CUDA_ERROR_NO_DEVICE'

if [ "$failed" != 0 ]; then exit 1; fi
if $check; then printf '\ncuda-smoke: all as documented\n'; fi
