#!/bin/sh
# Builds the GPU kit (make gpu-kit): $KIT (target/gpu-kit by default) with a stripped `vit`
# built with --features cuda,flash-attn for compute capability 9.0 by PyPI's CUDA 13.0 nvcc
# (xz-compressed: vit.xz), run.sh and kit.py. README, "The GPU kit".
#
# candle-flash-attn is built from a copy of the sources cargo fetched, with
# gpu-kit/flash-attn-trim.patch applied (the non-causal fp16/bf16 forward kernels of head
# dimensions 32 to 128 only: 8 kernels of 53), through a command-line `[patch]`, so that the
# normal build and CI never see it. Everything else lives in target/gpu-kit-build: the CUDA
# 13.0 wheels, CUTLASS's headers, the compiled kernels (kept between builds) and cargo's
# output.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
work="$target/gpu-kit-build"
kit=${KIT:-$target/gpu-kit}
start=$(date +%s)
mkdir -p "$work"

# The patched copy of candle-flash-attn, made fresh from the registry's sources.
source=$(cargo metadata --features cuda,flash-attn --format-version 1 |
    grep -o '"manifest_path":"[^"]*/candle-flash-attn-[0-9][^"]*/Cargo.toml"' | head -n 1 |
    sed 's/^"manifest_path":"//; s/\/Cargo.toml"$//')
[ -n "$source" ] || { echo "gpu-kit: candle-flash-attn not found by cargo metadata" >&2; exit 1; }
patched="$work/$(basename "$source")"
rm -rf "$patched"
cp -R "$source" "$patched"
chmod -R u+w "$patched"
(cd "$patched" && patch --quiet -p1 <"$root/gpu-kit/flash-attn-trim.patch")

# A `[patch]` rewrites Cargo.lock: the repository's is put back afterwards, also when the
# build is interrupted.
cp Cargo.lock "$work/Cargo.lock.saved"
restore_lock() { cp "$work/Cargo.lock.saved" "$root/Cargo.lock"; }
trap restore_lock EXIT
trap 'restore_lock; exit 130' INT
trap 'restore_lock; exit 143' TERM HUP
sh .ci/gpu-env.sh kit cargo build --release --features cuda,flash-attn --bin vit \
    --config "patch.crates-io.candle-flash-attn.path=\"$patched\""

# The stripped binary is about 116 MiB, nine tenths of it the GPU kernels' fat binaries
# (candle's quantized and MoE kernels, flash attention's): xz brings it to about 14 MiB, and
# run.sh unpacks it with Python's lzma.
rm -rf "$kit"
mkdir -p "$kit"
strip -o "$work/vit" "$work/cargo/release/vit"
${PYTHON:-python3} -c 'import lzma, shutil, sys
with open(sys.argv[1], "rb") as src, lzma.open(sys.argv[2], "wb", preset=9) as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$work/vit" "$kit/vit.xz"
cp gpu-kit/run.sh gpu-kit/kit.py "$kit/"
chmod +x "$kit/run.sh"
size=$(du -sm "$kit" | cut -f1)
echo "gpu-kit: $kit, ${size} MiB, built in $(($(date +%s) - start)) s" >&2
if [ "$size" -ge 50 ]; then
    echo "gpu-kit: $kit is ${size} MiB, over the 50 MiB a device call can carry" >&2
    exit 1
fi
