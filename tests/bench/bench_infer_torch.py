"""Inference throughput of PyTorch + HF transformers, for `make bench-compare`.

Two jobs:

  --save-random DIR   writes a ViTForImageClassification with random weights (HF's own
                      initialisation, seed 0) for a config (ViT-B/16 224 by default) as an HF
                      model folder, so that `vit bench --model DIR` and this script time the very
                      same weights.
  --model DIR         times the eager forward pass of that folder the way `vit bench` does:
                      torch.set_num_threads(N), inference_mode, random pixels, warm-up
                      iterations, then as many timed iterations as fit in --seconds. Prints one
                      JSON line per (dtype, batch) row with images/s and latency percentiles.
                      --peak adds a row with the GFLOP/s of a 2048^3 torch.mm per dtype.
"""

import argparse
import json
import math
import sys
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def float_dtypes(names):
    """The float dtypes of a comma-separated list; others (int8, whose peer in
    `make bench-compare` is ONNX Runtime's dynamic quantization) are skipped with a note."""
    chosen = []
    for name in names.split(","):
        if name in DTYPES:
            chosen.append(name)
        else:
            print(f"bench_infer_torch: no {name} row for PyTorch", file=sys.stderr)
    return chosen


def percentile(sorted_values, q):
    # Nearest rank, as `vit bench` and bench_infer_onnx.py compute it.
    return sorted_values[max(1, min(len(sorted_values), math.ceil(q * len(sorted_values)))) - 1]


def save_random(out_dir, hidden, layers, heads, image_size, patch_size):
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=image_size,
        patch_size=patch_size,
        num_labels=1000,
    )
    ViTForImageClassification(config).save_pretrained(out_dir, safe_serialization=True)


def time_rows(args):
    model = ViTForImageClassification.from_pretrained(args.model, attn_implementation=args.attn)
    model.eval()
    size = model.config.image_size
    for name in float_dtypes(args.dtypes):
        dtype = DTYPES[name]
        model = model.to(dtype)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            pixels = torch.randn(batch, 3, size, size, dtype=dtype)
            with torch.inference_mode():
                for _ in range(args.warmup):
                    model(pixel_values=pixels)
                latencies = []
                budget_end = time.perf_counter() + args.seconds
                while len(latencies) < 3 or time.perf_counter() < budget_end:
                    start = time.perf_counter()
                    model(pixel_values=pixels)
                    latencies.append(time.perf_counter() - start)
            latencies.sort()
            mean = sum(latencies) / len(latencies)
            print(json.dumps({
                "framework": f"torch {torch.__version__} + transformers",
                "attn": args.attn,
                "threads": torch.get_num_threads(),
                "dtype": name,
                "batch": batch,
                "iters": len(latencies),
                "images_per_sec": batch / mean,
                "latency_ms": {
                    "p50": 1e3 * percentile(latencies, 0.5),
                    "p90": 1e3 * percentile(latencies, 0.9),
                    "p99": 1e3 * percentile(latencies, 0.99),
                    "mean": 1e3 * mean,
                },
            }), flush=True)


def time_peak(dtypes):
    n = 2048
    for name in float_dtypes(dtypes):
        a = torch.randn(n, n).to(DTYPES[name])
        b = torch.randn(n, n).to(DTYPES[name])
        torch.mm(a, b)
        runs, start = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - start < 3.0:
            torch.mm(a, b)
            runs += 1
        seconds = (time.perf_counter() - start) / runs
        print(json.dumps({"matmul_peak": name, "gflops": 2 * n**3 / seconds / 1e9}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save-random", metavar="DIR")
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--model", metavar="DIR")
    parser.add_argument("--dtypes", default="f32")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--attn", default="eager", help="transformers attn_implementation: eager or sdpa")
    parser.add_argument("--peak", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.save_random:
        save_random(args.save_random, args.hidden_size, args.layers, args.heads, args.image_size, args.patch_size)
    if args.peak:
        time_peak(args.dtypes)
    if args.model:
        time_rows(args)


if __name__ == "__main__":
    main()
