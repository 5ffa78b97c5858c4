"""Dense features at high resolution, for `make bench-dense`: every token of one image through a
DINOv3 backbone at --image-size (1024: 64x64 = 4,096 patch tokens, plus the class and register
tokens), batch 1, `vit` against PyTorch + HF transformers (SDPA attention) on the same image.

  python bench_dense.py --model DIR --image IMG --vit target/release/vit \\
      [--image-size 1024] [--threads 2] [--seconds 10] [--out target/bench/dense]

Each measurement runs in a child process of its own, its peak RSS taken from os.wait4 (the
kernel's ru_maxrss of that child alone) and its wall time around it:

  vit embed    `vit embed -m DIR --image-size N --pool tokens --dtype f32 --device cpu -b 1
               -o OUT/dense-vit-tokens.safetensors IMG` (RAYON_NUM_THREADS=threads): the whole
               job from a cold process (load, decode, resize, one forward pass, write); its
               peak RSS is the one the memory target is about.
  vit bench    `vit bench -m DIR --image-size N --batch-sizes 1 --dtype f32 --threads T
               --seconds S`: the warm forward pass (after warm-up), p50 latency.
  torch        this script with --torch-child: loads the folder (the class its config.json
               names, SDPA attention), preprocesses IMG with the folder's image processor at NxN,
               times the first (cold) forward and then warm ones (--warmup 2, then at least
               --min-iters 3, for S seconds), inference_mode, torch.set_num_threads(T); writes
               last_hidden_state to OUT/dense-torch-tokens.npy.

Prints one JSON line per side (`vit`, `torch`) and a summary line: the weights' size (the
folder's *.safetensors files), vit's peak RSS against the target "at most the weights + 300 MB"
(PASS/FAIL), PyTorch's peak RSS, the speed ratio vit/PyTorch (warm p50 latency, and cold: vit
embed's whole process against PyTorch's load + preprocess + first forward), and the largest
difference between the two sides' tokens (the same image and processor: a check that both
computed the same thing; not a pass criterion). Exits 1 when a child fails; the memory
target's FAIL is reported, not an error (--strict makes it one).
"""

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time

MEMORY_ALLOWANCE = 300 * 10**6  # bytes over the weights' size


def run_child(cmd, env=None):
    """Runs cmd; returns (wall seconds, peak RSS bytes of that child, stdout). Exits on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench_dense: {' '.join(cmd)} failed with exit status {proc.returncode}")
    return wall, usage.ru_maxrss * 1024, out  # ru_maxrss: KiB on Linux


def weights_bytes(model_dir):
    files = glob.glob(os.path.join(model_dir, "*.safetensors"))
    if not files:
        sys.exit(f"bench_dense: no *.safetensors in {model_dir}")
    return sum(os.path.getsize(f) for f in files)


def torch_child(args):
    """The PyTorch side, in its own process (so its RSS is its own)."""
    start = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_infer_torch import load_model

    torch.set_num_threads(args.threads)
    imported = time.perf_counter()
    model = load_model(args.model, "sdpa")
    loaded = time.perf_counter()
    processor = AutoImageProcessor.from_pretrained(args.model)
    image = Image.open(args.image).convert("RGB")
    pixels = processor(images=image, size={"height": args.image_size, "width": args.image_size},
                       return_tensors="pt")["pixel_values"]
    preprocessed = time.perf_counter()
    with torch.inference_mode():
        out = model(pixel_values=pixels)
        first = time.perf_counter()
        for _ in range(args.warmup):
            model(pixel_values=pixels)
        latencies = []
        budget_end = time.perf_counter() + args.seconds
        while len(latencies) < args.min_iters or time.perf_counter() < budget_end:
            t0 = time.perf_counter()
            model(pixel_values=pixels)
            latencies.append(time.perf_counter() - t0)
    latencies.sort()
    tokens = out.last_hidden_state[0].float().numpy()
    np.save(os.path.join(args.out, "dense-torch-tokens.npy"), tokens)
    print(json.dumps({
        "framework": f"torch {torch.__version__} + transformers",
        "attn": "sdpa",
        "model_class": type(model).__name__,
        "pixel_values": list(pixels.shape),
        "tokens": list(tokens.shape),
        "import_s": imported - start,
        "load_s": loaded - imported,
        "preprocess_s": preprocessed - loaded,
        "first_forward_s": first - preprocessed,
        "iters": len(latencies),
        "latency_ms": {"p50": 1e3 * latencies[(len(latencies) - 1) // 2], "min": 1e3 * latencies[0],
                       "mean": 1e3 * sum(latencies) / len(latencies)},
        "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", required=True)
    parser.add_argument("--image", metavar="IMG", required=True)
    parser.add_argument("--vit", metavar="PATH", default="target/release/vit")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-iters", type=int, default=3, help="PyTorch's timed forwards, at least (smoke tests: 1)")
    parser.add_argument("--out", metavar="DIR", default="target/bench/dense")
    parser.add_argument("--strict", action="store_true", help="exit 1 when vit's peak RSS misses the target")
    parser.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.torch_child:
        torch_child(args)
        return

    weights = weights_bytes(args.model)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    tokens_path = os.path.join(args.out, "dense-vit-tokens.safetensors")
    embed_cmd = [args.vit, "embed", "-m", args.model, "--image-size", str(args.image_size), "--pool", "tokens",
                 "--dtype", "f32", "--device", "cpu", "-b", "1", "-o", tokens_path, "--force", args.image]
    embed_wall, embed_rss, _ = run_child(embed_cmd, env)
    bench_cmd = [args.vit, "bench", "-m", args.model, "--image-size", str(args.image_size), "--batch-sizes", "1",
                 "--dtype", "f32", "--device", "cpu", "--threads", str(args.threads), "--seconds", str(args.seconds),
                 "--warmup", str(args.warmup), "--format", "json"]
    bench_wall, bench_rss, bench_out = run_child(bench_cmd, env)
    bench = next(json.loads(l) for l in bench_out.splitlines() if l.startswith("{"))

    torch_cmd = [sys.executable, os.path.abspath(__file__), "--torch-child", "--model", args.model, "--image", args.image,
                 "--image-size", str(args.image_size), "--threads", str(args.threads), "--seconds", str(args.seconds),
                 "--warmup", str(args.warmup), "--min-iters", str(args.min_iters), "--out", args.out]
    torch_wall, torch_rss, torch_out = run_child(torch_cmd)
    torch_row = next(json.loads(l) for l in torch_out.splitlines() if l.startswith("{"))

    import numpy as np
    from safetensors.numpy import load_file

    vit_tokens = load_file(tokens_path)["embeddings"]
    vit_tokens = vit_tokens.reshape(vit_tokens.shape[-2:]) if vit_tokens.ndim == 3 else vit_tokens
    torch_tokens = np.load(os.path.join(args.out, "dense-torch-tokens.npy"))
    diff = float(np.max(np.abs(vit_tokens - torch_tokens))) if vit_tokens.shape == torch_tokens.shape else None

    common = {"model": args.model, "image": args.image, "image_size": args.image_size, "batch": 1,
              "threads": args.threads, "dtype": "f32", "weights_bytes": weights}
    vit_row = {"side": "vit", **common,
               "embed": {"wall_s": embed_wall, "peak_rss_bytes": embed_rss, "tokens": list(vit_tokens.shape),
                         "command": " ".join(embed_cmd)},
               "bench": {"latency_ms": bench["latency_ms"],
                         "peak_memory_bytes": bench.get("peak_memory_bytes"), "peak_rss_bytes": bench_rss,
                         "gflop_per_image": bench.get("gflop_per_image"), "wall_s": bench_wall}}
    cold_torch = torch_row["load_s"] + torch_row["preprocess_s"] + torch_row["first_forward_s"]
    torch_json = {"side": "torch", **common, **torch_row, "process_wall_s": torch_wall, "peak_rss_bytes": torch_rss,
                  "cold_s": cold_torch}
    print(json.dumps(vit_row), flush=True)
    print(json.dumps(torch_json), flush=True)

    mb = 1e-6
    limit = weights + MEMORY_ALLOWANCE
    ok = embed_rss <= limit
    warm = torch_row["latency_ms"]["p50"] / bench["latency_ms"]["p50"]
    cold = cold_torch / embed_wall
    print(f"dense {args.image_size}x{args.image_size}, batch 1, {args.threads} threads, {vit_tokens.shape[0]} tokens: "
          f"weights {weights * mb:.1f} MB; vit embed peak RSS {embed_rss * mb:.1f} MB "
          f"(target <= weights + 300 = {limit * mb:.1f} MB: {'PASS' if ok else 'FAIL'}, "
          f"{(embed_rss - weights) * mb:+.1f} MB over the weights), PyTorch peak RSS {torch_rss * mb:.1f} MB; "
          f"forward p50 vit {bench['latency_ms']['p50']:.0f} ms, PyTorch {torch_row['latency_ms']['p50']:.0f} ms: "
          f"speed ratio vit/PyTorch {warm:.2f}x; cold (vit embed's process {embed_wall:.2f} s, PyTorch load + "
          f"preprocess + first forward {cold_torch:.2f} s) {cold:.2f}x; "
          f"tokens max abs diff {'n/a (shapes ' + str(vit_tokens.shape) + ' vs ' + str(torch_tokens.shape) + ')' if diff is None else format(diff, '.2e')}",
          flush=True)
    if args.strict and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
