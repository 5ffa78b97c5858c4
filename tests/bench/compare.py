"""Joins the JSON lines of one `make bench-compare` run and prints, per model and per
(dtype, batch): the throughput of `vit bench`, of PyTorch + transformers (bench_infer_torch.py)
and of ONNX Runtime (bench_infer_onnx.py), vit's throughput as a ratio of each, the p50
latencies, and the share of the machine's f32 ceiling each reaches; then the matrix-product
peaks behind that ceiling (machine_peaks.py, and vit's own kernel from `vit bench --peak`).

  python3 compare.py --peaks PEAKS_JSONL \\
      --model NAME VIT_JSONL TORCH_JSONL ORT_JSONL [--model NAME2 VIT2 TORCH2 ORT2 ...]

Models may be classifiers (the peers time the forward to the logits) or backbones without a
head, such as DINOv3ViTModel (the peers time the forward to last_hidden_state and
pooler_output, `vit bench` to the model's embedding): the rows are the same, and the header
says which from the peers' `output` field.

The achieved GFLOP/s of a row is images/s x the model's GFLOP per image (as `vit bench`
counts it: the same for all three, as they run the same weights); the ceiling is the best f32
product at 2048^3 or 4096^3 among vit's kernel, numpy's BLAS and torch.mm on this machine and
thread count. bf16 rows are measured against the same f32 ceiling, int8 rows against the
int8 one (torch._int_mm, ONNX Runtime's quantized MatMul and vit's int8 product); ONNX Runtime
has no bf16 row and PyTorch no int8 row (n/a). Only the standard library.
"""

import argparse
import json
import sys


def read(path):
    lines = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as error:
                sys.exit(f"{path}:{number}: not JSON: {error}")
    return lines


def rows_of(lines):
    """(dtype, batch) -> row: the standard attention kernel's where there are several, and of
    the rounds of a run (`make bench-compare` alternates the three sides BENCH_ROUNDS times),
    the fastest."""
    rows = {}
    for row in lines:
        if "batch" not in row or "images_per_sec" not in row:
            continue
        key = (row["dtype"], row["batch"])
        old = rows.get(key)
        standard = row.get("attn", "standard") == "standard"
        if old is None or (standard and old.get("attn", "standard") != "standard"):
            rows[key] = row
        elif standard == (old.get("attn", "standard") == "standard") and \
                row["images_per_sec"] > old["images_per_sec"]:
            rows[key] = row
    return rows


def vit_peaks(lines):
    """vit's own products: (label, dtype, size, gflops), from both forms `vit bench` has printed."""
    peaks = []
    for line in lines:
        peak = line.get("matmul_peak")
        if not isinstance(peak, dict):
            continue
        kernel = peak.get("kernel", "")
        label = kernel if kernel.startswith("vit") else f"vit {kernel}".strip()
        peaks.append((label, peak["dtype"], peak.get("size", 2048), peak["gflops"]))
    return peaks


def library_peaks(lines, default_label):
    """machine_peaks.py's lines, and bench_infer_torch.py --peak's (2048^3, no library named)."""
    peaks = []
    for line in lines:
        if isinstance(line.get("matmul_peak"), str):
            peaks.append((line.get("library", default_label), line["matmul_peak"], line.get("size", 2048), line["gflops"]))
    return peaks


def share_of_best_library(products, kind="", unit="GFLOP/s"):
    """Our best 2048^3 product among `products` ((label, dtype, size) -> rate), and its share
    of the best library's, as text (None without both)."""
    ours = max((v for k, v in products.items() if k[0].startswith("vit") and k[2] == 2048), default=None)
    libraries = {k: v for k, v in products.items() if not k[0].startswith("vit") and k[2] == 2048}
    if not (ours and libraries):
        return ours, None
    top = max(libraries, key=libraries.get)
    return ours, (f"{100 * ours / libraries[top]:.0f}% of the best library{kind} product at 2048^3 "
                  f"({top[0]}, {libraries[top]:.1f} {unit})")


def fmt(value, spec, missing="n/a"):
    return missing if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peaks", metavar="PEAKS_JSONL", required=True, help="machine_peaks.py's output")
    parser.add_argument("--model", nargs=4, action="append", required=True,
                        metavar=("NAME", "VIT_JSONL", "TORCH_JSONL", "ORT_JSONL"))
    args = parser.parse_args()

    peak_lines = read(args.peaks)
    cpu = next((l for l in peak_lines if "cpu" in l), {})
    models = []
    for name, vit_path, torch_path, ort_path in args.model:
        vit_lines, torch_lines, ort_lines = read(vit_path), read(torch_path), read(ort_path)
        models.append((name, rows_of(vit_lines), rows_of(torch_lines), rows_of(ort_lines)))
        peak_lines += [l for l in vit_lines + torch_lines if "matmul_peak" in l]

    # Every product measured, best value per (label, dtype, size).
    best = {}
    for label, dtype, size, gflops in vit_peaks(peak_lines) + library_peaks(peak_lines, "torch.mm"):
        key = (label, dtype, size)
        best[key] = max(best.get(key, 0.0), gflops)
    f32 = {k: v for k, v in best.items() if k[1] == "f32" and k[2] in (2048, 4096)}
    ceiling_key = max(f32, key=f32.get) if f32 else None
    ceiling = f32[ceiling_key] if ceiling_key else None
    int8 = {k: v for k, v in best.items() if k[1] == "int8" and k[2] in (2048, 4096)}
    int8_key = max(int8, key=int8.get) if int8 else None
    # int8 rows are measured against the int8 ceiling, the others against f32's.
    ceilings = {"int8": int8[int8_key] if int8_key else None}

    threads = sorted({r["threads"] for _, _, t, o in models for r in list(t.values()) + list(o.values())}
                     | ({cpu["threads"]} if "threads" in cpu else set()))
    flags = f" ({cpu['flags']})" if cpu.get("flags") else ""
    print(f"CPU: {cpu.get('cpu', 'unknown')}{flags}; threads: {', '.join(map(str, threads)) or '?'}"
          + ("  (NOT the same for every side)" if len(threads) > 1 else ""))
    if ceiling:
        label, _, size = ceiling_key
        print(f"f32 ceiling: {ceiling:.1f} GFLOP/s ({label}, {size}^3); %ceil = achieved GFLOP/s / ceiling")
    if int8_key:
        label, _, size = int8_key
        print(f"int8 ceiling: {int8[int8_key]:.1f} GOP/s ({label}, {size}^3), for the int8 rows' %ceil")

    header = ("dtype", "batch", "vit img/s", "torch img/s", "ort img/s", "vit/torch", "vit/ort",
              "vit p50 ms", "torch p50", "ort p50", "vit %ceil", "torch %ceil", "ort %ceil")
    line_format = "{:<5} {:>5} {:>10} {:>11} {:>10} {:>9} {:>8} {:>10} {:>10} {:>10} {:>9} {:>11} {:>9}"
    for name, vit_rows, torch_rows, ort_rows in models:
        if not vit_rows:
            print(f"\n{name}: no vit rows")
            continue
        first = next(iter(vit_rows.values()))
        gflop = first["gflop_per_image"]
        peers = []
        if torch_rows:
            t = next(iter(torch_rows.values()))
            peers.append(f"{t['framework']} ({t.get('attn', '?')} attention)")
        if ort_rows:
            o = next(iter(ort_rows.values()))
            peers.append(f"{o['framework']} ({o.get('export', 'exporter unknown')})")
        params = f", {first['params'] / 1e6:.1f}M params" if first.get("params") else ""
        size = f" at {first['image_size']} px" if first.get("image_size") else ""
        outputs = {r.get("output") for r in list(torch_rows.values()) + list(ort_rows.values())} - {None}
        kind = "" if outputs <= {"logits"} else f"; backbone, peers time the forward to {'/'.join(sorted(outputs))}"
        print(f"\n{name} ({first.get('model', '?')}{params}, {gflop:.2f} GFLOP per image{size}{kind})")
        print(f"peers: {'; '.join(peers) or 'none'}")
        print(line_format.format(*header))
        for key in sorted(vit_rows, key=lambda k: (k[0] != "f32", k[0], k[1])):
            dtype, batch = key
            sides = [vit_rows[key], torch_rows.get(key), ort_rows.get(key)]
            ips = [s["images_per_sec"] if s else None for s in sides]
            p50 = [s["latency_ms"]["p50"] if s else None for s in sides]
            ratio = [ips[0] / other if other else None for other in ips[1:]]
            row_ceiling = ceilings.get(dtype, ceiling)
            share = [100 * v * gflop / row_ceiling if v is not None and row_ceiling else None for v in ips]
            print(line_format.format(
                dtype, batch, *(fmt(v, ".3f") for v in ips), *(fmt(r, ".2f") + ("x" if r else "") for r in ratio),
                *(fmt(v, ".1f") for v in p50), *(fmt(s, ".0f") + ("%" if s is not None else "") for s in share)))

    if best:
        sizes = sorted({k[2] for k in best})
        print("\nmatrix products, GFLOP/s (GOP/s for int8; best call):")
        width = max(len(k[0]) for k in best)
        print(f"{'dtype':<5}  {'product':<{width}}" + "".join(f" {f'{n}^3':>8}" for n in sizes))
        for label, dtype in sorted({(k[0], k[1]) for k in best}, key=lambda k: (k[1] != "f32", k[1], not k[0].startswith("vit"), k[0])):
            cells = "".join(" " + fmt(best.get((label, dtype, n)), "8.1f", "-".rjust(8)) for n in sizes)
            mark = "  <- ceiling" if ceiling_key and (label, dtype) == ceiling_key[:2] else ""
            print(f"{dtype:<5}  {label:<{width}}{cells}{mark}")
        ours, share = share_of_best_library(f32)
        if share:
            print(f"our kernel at 2048^3 = {share}")
        elif not ours:
            print("our kernel at 2048^3: not measured (no `vit bench --peak` line)")
        _, share = share_of_best_library(int8, " int8", "GOP/s")
        if share:
            print(f"our int8 kernel at 2048^3 = {share}")


if __name__ == "__main__":
    main()
