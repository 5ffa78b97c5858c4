#!/bin/sh
# The GPU kit's run, on the GPU machine, in one call (README, "The GPU kit"):
#
#   run.sh [OUT]            on the GPU (CUDA), report in OUT (default $OUT, else ./kit-out)
#   run.sh --dry-run [OUT]  the same steps on the CPU with tiny models, to test this script
#
# Steps, each under its own time limit so that one failure leaves the others' results:
#   facts      nvidia-smi, driver, nvcc, torch and transformers versions, ldd of vit; what
#              differs from the machine as it is known is printed
#   models     random ViT-B/16 224, ViT-L/16 224 and DeiT-Tiny with transformers' own
#              initialisation, noise images, a two-class dataset
#   parity     vit's logits against PyTorch's on the same device and images (TF32 off):
#              f32 within 1e-4, bf16 and f16 within 2e-2
#   bench-vit  vit bench, bf16 and f16, standard and flash attention (flash is reported only
#              where it agrees with standard), batches 1, 64, 256
#   bench-torch PyTorch eager with SDPA on the same models, dtypes and batches, CUDA events,
#              the same warm-up and timed iterations
#   peak       the chip's measured bf16 matrix-product rate (torch.matmul)
#   finetune   vit finetune of DeiT-Tiny, 50 optimizer steps: it runs and its loss falls
#   report     OUT/report.json and OUT/report.md
#
# Environment: PYTHON (python3), VIT (default: the kit's vit.xz beside this script, unpacked).
set -u

here=$(cd "$(dirname "$0")" && pwd)
kit="$here/kit.py"

facts() {
    "$PYTHON" "$kit" facts >"$out/steps/facts.json" || return 1
    echo "== nvidia-smi"
    nvidia-smi || echo "(no nvidia-smi)"
    echo "== nvcc"
    nvcc --version || echo "(no nvcc)"
    echo "== ldd $VIT"
    ldd "$VIT"
    echo "== what differs from the machine as it is known"
    "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["differs_from_known"], indent=1))' \
        "$out/steps/facts.json"
    if ldd "$VIT" | grep "not found"; then
        echo "facts: libraries of $VIT not found (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"
        return 1
    fi
}

models() {
    "$PYTHON" "$kit" models "$work" $tiny
}

parity() {
    "$PYTHON" "$kit" parity "$VIT" "$work" "$device" >"$out/steps/parity.json"
}

bench_vit() {
    : >"$out/steps/bench-vit.jsonl"
    for model in "$work"/models/*/; do
        "$VIT" bench -m "$model" --device "$device" --dtype bf16,f16 --attn all \
            --batch-sizes "$batches" --warmup "$warmup" --iters "$iters" --format json \
            >>"$out/steps/bench-vit.jsonl" || return 1
    done
}

bench_torch() {
    "$PYTHON" "$kit" bench-torch "$work" "$device" --batch-sizes "$batches" --iters "$iters" \
        --warmup "$warmup" >"$out/steps/bench-torch.json"
}

peak() {
    "$PYTHON" "$kit" peak "$device" >"$out/steps/peak.json"
}

finetune() {
    deit=$(ls -d "$work"/models/*deit* | head -n 1)
    "$VIT" finetune --data "$work/dataset" --model "$deit" --device "$device" \
        -o "$work/finetune" --force --epochs "$epochs" --batch-size 16 --val-split 0.2 \
        --lr 1e-3 || return 1
    "$PYTHON" "$kit" finetune-check "$work/finetune" >"$out/steps/finetune.json"
}

# One step, run by `step` below through this script again so that `timeout` can stop it
# (and everything it started).
if [ "${1:-}" = "--step" ]; then
    "$2"
    exit $?
fi

dry=0
if [ "${1:-}" = "--dry-run" ]; then
    dry=1
    shift
fi
out=${1:-${OUT:-$PWD/kit-out}}
mkdir -p "$out/steps" "$out/logs"
out=$(cd "$out" && pwd)
work="$out/work"
PYTHON=${PYTHON:-python3}
if [ -z "${VIT:-}" ]; then
    # The kit carries vit xz-compressed: unpacked for this run, removed at its end.
    VIT="$out/bin/vit"
    mkdir -p "$out/bin"
    "$PYTHON" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$here/vit.xz" "$VIT" || exit 1
    chmod +x "$VIT"
fi

if [ "$dry" = 1 ]; then
    device=cpu tiny=--tiny batches=1,4 iters=3 warmup=1 epochs=3
else
    device=cuda tiny= batches=1,64,256 iters=20 warmup=3 epochs=5
    # vit links the CUDA libraries dynamically: those of torch's NVIDIA wheels.
    libs=$("$PYTHON" "$kit" lib-path 2>"$out/logs/lib-path.log") || libs=
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export out work PYTHON VIT device tiny batches iters warmup epochs
echo "run.sh: device $device, results in $out" >&2

# step NAME SECONDS FUNCTION: runs FUNCTION under a time limit, its output in logs/NAME.log,
# its exit status and wall time in steps/NAME.status.
step() {
    name=$1 limit=$2
    start=$(date +%s.%N)
    timeout -k 10 "$limit" sh "$here/run.sh" --step "$3" >"$out/logs/$name.log" 2>&1
    code=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "$code $seconds" >"$out/steps/$name.status"
    case $code in
    0) verdict=ok ;;
    124 | 137) verdict="TIMED OUT after ${limit}s" ;;
    *) verdict="FAILED (exit $code)" ;;
    esac
    echo "run.sh: $name: $verdict, ${seconds}s" >&2
    [ "$code" = 0 ] || tail -n 5 "$out/logs/$name.log" | sed 's/^/    /' >&2
    # The report so far, so that a call stopped from outside still leaves one.
    "$PYTHON" "$kit" report "$out" >/dev/null 2>&1
}

# The limits add up to 470 s: under the 8 minutes a device call is planned for, so that the
# report is written even when every step runs into its limit.
step facts 30 facts
step models 60 models
step parity 120 parity
step bench-vit 120 bench_vit
step bench-torch 60 bench_torch
step peak 20 peak
step finetune 60 finetune
"$PYTHON" "$kit" report "$out"
status=$?
# The models and the binary are big and can be made again: only the results travel back.
rm -rf "$work/models" "$work/finetune" "$out/bin"
exit $status
