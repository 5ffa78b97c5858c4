#!/bin/sh
# Runs a vit built with `--features cuda` (make check-cuda) on this machine, which has no GPU,
# and shows what a user sees, for `--device auto` and `--device cuda`:
#   1. no CUDA libraries at all (a plain machine),
#   2. CUDA 13 libraries but no NVIDIA driver (libcuda.so.1),
#   3. a driver but no GPU, played by .ci/cuda-stub.sh's libcuda.so (cuInit fails with
#      CUDA_ERROR_NO_DEVICE, as NVIDIA's driver does on a machine without a GPU).
# Fails if what it sees is not what the README says. Run inside `.ci/gpu-env.sh wheels`.
set -u

vit=${1:?usage: .ci/cuda-smoke.sh VIT_BINARY}
root=$(cd "$(dirname "$0")/.." && pwd)
cuda=${CUDA_HOME:?run inside .ci/gpu-env.sh wheels}
model="$root/tests/fixtures/hf/p4_s32_gelu"
image="$root/tests/fixtures/preprocess/images/rgba_120x90.png"
driver="$(dirname "$vit")/no-gpu-driver"
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
# run SCENARIO_LIBRARY_PATH EXPECTED_STATUS EXPECTED_TEXT DEVICE
run() {
    printf '\n$ vit classify --device %s ...   # LD_LIBRARY_PATH=%s\n' "$4" "${1:-(unset)}"
    if [ -n "$1" ]; then
        out=$(LD_LIBRARY_PATH="$1" "$vit" classify --model "$model" --device "$4" -k 1 \
            "$image" 2>&1)
    else
        out=$(env -u LD_LIBRARY_PATH "$vit" classify --model "$model" --device "$4" -k 1 \
            "$image" 2>&1)
    fi
    status=$?
    printf '%s\n[exit status %s]\n' "$out" "$status"
    if $check; then
        if [ "$status" != "$2" ] || ! printf '%s' "$out" | grep -q -- "$3" ||
            printf '%s' "$out" | grep -q panicked; then
            echo "cuda-smoke: FAILED: expected exit status $2 and output with \"$3\"" >&2
            failed=1
        fi
    fi
}

echo "== 1. no CUDA libraries: the dynamic loader refuses to start vit"
run "" 127 "error while loading shared libraries" auto
echo
echo "== 2. CUDA 13 libraries, no NVIDIA driver: the loader still refuses (libcuda.so.1)"
run "$cuda/lib" 127 "libcuda.so.1: cannot open shared object file" auto
echo
echo "== 3. a driver without a GPU: auto falls back to the CPU, cuda is a clear error"
run "$cuda/lib:$driver" 0 "vit: using the CPU: cuda:0: " auto
run "$cuda/lib:$driver" 2 "vit: cuda:0: " cuda

if [ "$failed" != 0 ]; then exit 1; fi
$check && echo && echo "cuda-smoke: all as documented"
exit 0
