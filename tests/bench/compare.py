"""Joins the JSON lines of `vit bench` and of bench_infer_torch.py (one run each, same model,
same machine, same threads) and prints, per (dtype, batch), both throughputs and latencies and
vit's throughput as a ratio of PyTorch's; then each side's matrix-product peak and how much of
it the rows reach. Only the standard library: `python3 compare.py VIT_JSONL TORCH_JSONL`.
"""

import json
import sys


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    vit_lines, torch_lines = read(sys.argv[1]), read(sys.argv[2])
    vit_peaks = {l["matmul_peak"]["dtype"]: l["matmul_peak"]["gflops"] for l in vit_lines if "matmul_peak" in l}
    torch_peaks = {l["matmul_peak"]: l["gflops"] for l in torch_lines if "matmul_peak" in l}
    vit_rows = {(r["dtype"], r["batch"]): r for r in vit_lines if "batch" in r}
    torch_rows = {(r["dtype"], r["batch"]): r for r in torch_lines if "batch" in r}
    gflop = next(iter(vit_rows.values()))["gflop_per_image"]

    print(f"{next(iter(vit_rows.values()))['model']}: {gflop:.2f} GFLOP per image, "
          f"{next(iter(torch_rows.values()))['threads']} threads; PyTorch: {next(iter(torch_rows.values()))['framework']}")
    header = ("dtype", "batch", "vit img/s", "torch img/s", "ratio", "vit p50 ms", "torch p50 ms",
              "vit %peak", "torch %peak")
    print("{:<5} {:>5} {:>10} {:>12} {:>6} {:>11} {:>13} {:>10} {:>12}".format(*header))
    for key in sorted(vit_rows, key=lambda k: (k[0] != "f32", k[0], k[1])):
        if key not in torch_rows:
            continue
        ours, theirs = vit_rows[key], torch_rows[key]
        dtype, batch = key

        def share(images_per_sec, peaks):
            # A model row above the measured peak means that side's 2048^3 product is not the
            # kernel its model runs (PyTorch's bf16 torch.mm on a CPU without native bf16).
            peak = peaks.get(dtype)
            achieved = images_per_sec * gflop
            return f"{100 * achieved / peak:.0f}%" if peak and achieved <= peak else "n/a"

        print("{:<5} {:>5} {:>10.3f} {:>12.3f} {:>5.2f}x {:>11.1f} {:>13.1f} {:>10} {:>12}".format(
            dtype, batch, ours["images_per_sec"], theirs["images_per_sec"],
            ours["images_per_sec"] / theirs["images_per_sec"],
            ours["latency_ms"]["p50"], theirs["latency_ms"]["p50"],
            share(ours["images_per_sec"], vit_peaks), share(theirs["images_per_sec"], torch_peaks)))
    for dtype in sorted(set(vit_peaks) | set(torch_peaks)):
        ours, theirs = vit_peaks.get(dtype), torch_peaks.get(dtype)
        print(f"matmul peak {dtype} (2048^3): vit {ours or 0:.1f} GFLOP/s, torch {theirs or 0:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
