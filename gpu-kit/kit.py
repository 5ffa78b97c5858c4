#!/usr/bin/env python3
"""The GPU kit's Python side (run by run.sh): the machine's facts, random models with
transformers' own initialisation, PyTorch's logits and speed on the same inputs, the chip's
bf16 matrix rate, and the report. Needs torch, transformers and numpy, as the GPU machine has
them; Pillow comes with transformers' image processors.

    kit.py facts                      the machine, as JSON, with what differs from the known facts
    kit.py lib-path                   the folders of the NVIDIA libraries torch's wheels brought
    kit.py models DIR [--tiny]        random ViT-B/16, ViT-L/16, DeiT-Tiny (tiny ones for --tiny),
                                      images and a small labelled dataset, into DIR
    kit.py parity VIT DIR DEVICE      vit's logits against PyTorch's, per model and dtype
    kit.py bench-torch DIR DEVICE     PyTorch eager (SDPA) images/s, as vit bench's rows
    kit.py peak DEVICE                the chip's measured bf16 matrix-product rate
    kit.py finetune-check OUT         whether vit finetune's loss fell
    kit.py report OUT                 report.json and report.md from the steps' results
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# What the GPU machine is known to have (issue 12); `facts` prints what differs.
KNOWN = {
    "gpu": "H200",
    "compute_capability": "9.0",
    "driver_major": 580,
    "cuda_driver": "13.0",
    "nvcc": "13.0",
    "torch": "2.11",
    "torch_cuda": "13.0",
    "transformers": "5.17",
}

# Models: (name, hidden, layers, heads, mlp, patch, image size); tiny ones for --dry-run.
MODELS = [
    ("vit-base-patch16-224", 768, 12, 12, 3072, 16, 224),
    ("vit-large-patch16-224", 1024, 24, 16, 4096, 16, 224),
    ("deit-tiny-patch16-224", 192, 12, 3, 768, 16, 224),
]
TINY_MODELS = [
    ("tiny-a-patch8-32", 64, 2, 2, 128, 8, 32),
    ("tiny-b-patch8-32", 96, 2, 3, 192, 8, 32),
    ("tiny-deit-patch8-32", 48, 2, 3, 96, 8, 32),
]
# run.sh's steps, in their order.
STEPS = ["facts", "models", "parity", "bench-vit", "bench-torch", "peak", "finetune"]
PARITY_TOLERANCE = {"f32": 1e-4, "bf16": 2e-2, "f16": 2e-2}


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def facts() -> dict:
    out = {"python": platform.python_version(), "host": platform.node()}
    smi = run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
               "--format=csv,noheader"]) if which("nvidia-smi") else None
    if smi is not None and smi.returncode == 0 and smi.stdout.strip():
        name, driver, cap, memory = [x.strip() for x in smi.stdout.splitlines()[0].split(",")]
        out.update(gpu=name, driver=driver, compute_capability=cap, gpu_memory=memory)
        header = run(["nvidia-smi"]).stdout
        for token in header.split("CUDA Version:")[1:2]:
            out["cuda_driver"] = token.split()[0]
    nvcc = run(["nvcc", "--version"]) if which("nvcc") else None
    if nvcc is not None and nvcc.returncode == 0:
        release = [l for l in nvcc.stdout.splitlines() if "release" in l]
        out["nvcc"] = release[0].split("release")[1].split(",")[0].strip() if release else "?"
    try:
        import torch
        import transformers
        out.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   transformers=transformers.__version__,
                   torch_sees_cuda=torch.cuda.is_available())
    except ImportError as e:
        out["python_error"] = str(e)
    differs = {}
    for key, known in KNOWN.items():
        value = out.get(key)
        if key == "driver_major":
            value = out.get("driver", "").split(".")[0]
            value = int(value) if value.isdigit() else value
        if value is None or (str(known) not in str(value) and value != known):
            differs[key] = {"known": known, "found": value}
    out["differs_from_known"] = differs
    return out


def which(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


def lib_path() -> list:
    """Folders holding the shared libraries of torch's NVIDIA wheels (nvidia/*/lib)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    folders = []
    for root in (spec.submodule_search_locations if spec else []):
        for lib in sorted(Path(root).glob("*/lib")):
            if any(lib.glob("lib*.so*")):
                folders.append(str(lib))
    import torch

    folders.append(str(Path(torch.__file__).parent / "lib"))
    return folders


def write_models(dest: Path, tiny: bool) -> dict:
    """Random models (transformers' own initialisation), photos-like inputs and a dataset."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification

    dest.mkdir(parents=True, exist_ok=True)
    labels = 10 if tiny else 1000
    written = []
    for i, (name, hidden, layers, heads, mlp, patch, size) in enumerate(
            TINY_MODELS if tiny else MODELS):
        torch.manual_seed(1000 + i)
        config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=mlp, patch_size=patch,
                           image_size=size, num_labels=labels)
        model = ViTForImageClassification(config).eval()
        folder = dest / "models" / name
        model.save_pretrained(folder)
        # ViTImageProcessor's configuration, written as is: no image processor class (and so
        # no torchvision) is needed on either machine
        (folder / "preprocessor_config.json").write_text(json.dumps(
            {"image_processor_type": "ViTImageProcessor", "do_resize": True,
             "size": {"height": size, "width": size}, "resample": 2, "do_rescale": True,
             "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
             "image_std": [0.5] * 3}, indent=1))
        written.append({"name": name, "dir": str(folder), "image_size": size,
                        "params": sum(p.numel() for p in model.parameters())})
    rng = np.random.default_rng(7)
    # at the models' own size, so that no resize happens and both sides' preprocessing (ours,
    # and whichever backend this transformers' image processor has) is the same arithmetic
    images = dest / "images"
    for size in sorted({m["image_size"] for m in written}):
        folder = images / str(size)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"noise{i}.png")
    # two classes a model can tell apart (reddish and bluish noise), for finetune's loss: 100
    # each, 80 of them for training, are 10 steps of 16 an epoch
    for label, channel in (("red", 0), ("blue", 2)):
        folder = dest / "dataset" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(20 if tiny else 100):
            pixels = rng.integers(0, 120, (64, 64, 3), dtype=np.uint8)
            pixels[..., channel] += 135
            Image.fromarray(pixels).save(folder / f"{label}{i}.png")
    manifest = {"models": written, "images": str(images), "dataset": str(dest / "dataset")}
    (dest / "models.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def torch_dtype(name: str):
    import torch

    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[name]


def parity(vit: str, dest: Path, device: str, dtypes: list) -> list:
    """vit classify's logits (all labels, --function none) against PyTorch's on the same
    images, TF32 off on both sides."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import ViTForImageClassification

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    manifest = json.loads((dest / "models.json").read_text())
    rows = []
    for entry in manifest["models"]:
        folder = entry["dir"]
        images = sorted((Path(manifest["images"]) / str(entry["image_size"])).glob("*.png"))
        # the images are at the model's size: preprocessing is the rescale and normalisation
        # of preprocessor_config.json, (x / 255 - 0.5) / 0.5
        arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in images]
        pixels = torch.from_numpy((np.stack(arrays) * np.float32(1 / 255) - 0.5) / 0.5)
        pixels = pixels.permute(0, 3, 1, 2).contiguous()
        for dtype in dtypes:
            model = ViTForImageClassification.from_pretrained(
                folder, attn_implementation="sdpa").to(device, torch_dtype(dtype)).eval()
            with torch.no_grad():
                reference = model(pixel_values=pixels.to(device, torch_dtype(dtype))).logits
            reference = reference.float().cpu()
            labels = reference.shape[1]
            result = run([vit, "classify", "-m", folder, "--device", device, "--dtype", dtype,
                          "--function", "none", "-k", str(labels), "-f", "json"]
                         + [str(p) for p in images])
            row = {"model": entry["name"], "dtype": dtype, "device": device,
                   "tolerance": PARITY_TOLERANCE[dtype]}
            if result.returncode != 0:
                row.update(ok=False, error=result.stderr.strip().splitlines()[-1:])
            else:
                ours = torch.zeros_like(reference)
                for i, record in enumerate(json.loads(result.stdout)):
                    for prediction in record["predictions"]:
                        ours[i, prediction["index"]] = prediction["score"]
                diff = (ours - reference).abs().max().item()
                row.update(max_abs_diff=diff, ok=diff <= PARITY_TOLERANCE[dtype],
                           logit_scale=reference.abs().max().item())
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            del model
    return rows


def bench_torch(dest: Path, device: str, dtypes: list, batches: list, iters: int,
                warmup: int) -> list:
    """PyTorch eager with SDPA attention: images/s and p50 latency per model, dtype and batch,
    timed with CUDA events on a GPU (wall time on the CPU)."""
    import torch
    from transformers import ViTForImageClassification

    manifest = json.loads((dest / "models.json").read_text())
    rows = []
    for entry in manifest["models"]:
        for dtype in dtypes:
            model = ViTForImageClassification.from_pretrained(
                entry["dir"], attn_implementation="sdpa").to(device, torch_dtype(dtype)).eval()
            size = entry["image_size"]
            for batch in batches:
                x = torch.randn(batch, 3, size, size, device=device, dtype=torch_dtype(dtype))
                times = []
                with torch.no_grad():
                    for _ in range(warmup):
                        model(pixel_values=x)
                    for _ in range(iters):
                        if device.startswith("cuda"):
                            start = torch.cuda.Event(enable_timing=True)
                            end = torch.cuda.Event(enable_timing=True)
                            start.record()
                            model(pixel_values=x)
                            end.record()
                            torch.cuda.synchronize()
                            times.append(start.elapsed_time(end) / 1000)
                        else:
                            t = time.perf_counter()
                            model(pixel_values=x)
                            times.append(time.perf_counter() - t)
                times.sort()
                p50 = times[len(times) // 2]
                row = {"model": entry["name"], "dtype": dtype, "batch": batch,
                       "images_per_sec": batch / p50, "latency_ms_p50": 1000 * p50,
                       "iters": iters, "warmup": warmup}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def peak(device: str) -> dict:
    """The best bf16 matrix-product rate of torch.matmul (cuBLAS) at 4096^3 and 8192^3."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    best = {}
    for n in ((4096, 8192) if device.startswith("cuda") else (256,)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t) / reps
        best[str(n)] = 2 * n ** 3 / seconds / 1e9
    return {"dtype": str(dtype).replace("torch.", ""), "gflops": best,
            "best_gflops": max(best.values())}


def finetune_check(out: Path) -> dict:
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    losses = [r["train_loss"] for r in rows]
    return {"epochs": len(rows), "steps": rows[-1]["step"] if rows else 0,
            "train_loss": losses, "val_accuracy": [r.get("val_accuracy") for r in rows],
            "train_images_per_s": [r.get("train_images_per_s") for r in rows],
            "loss_fell": len(losses) >= 2 and losses[-1] < losses[0]}


def read_jsonl(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip().startswith("{")]


def report(out: Path) -> dict:
    """report.json and report.md from what each step left in OUT/steps."""
    steps = {}
    ran = sorted((out / "steps").glob("*.status"), key=lambda p: STEPS.index(p.stem)
                 if p.stem in STEPS else len(STEPS))
    for status in ran:
        name = status.stem
        code, seconds = status.read_text().split()
        steps[name] = {"exit": int(code), "seconds": float(seconds),
                       "timed_out": code in ("124", "137")}
    load = lambda name: (json.loads((out / "steps" / name).read_text())
                         if (out / "steps" / name).exists() else None)
    data = {"steps": steps, "facts": load("facts.json"), "parity": load("parity.json"),
            "peak": load("peak.json"), "vit_bench": read_jsonl(out / "steps" / "bench-vit.jsonl"),
            "torch_bench": load("bench-torch.json"), "finetune": load("finetune.json")}
    (out / "report.json").write_text(json.dumps(data, indent=1))
    (out / "report.md").write_text(markdown(data))
    return data


def markdown(data: dict) -> str:
    lines = ["# vit GPU kit report", ""]
    lines += ["## Steps", "", "| step | exit | seconds |", "|---|---|---|"]
    for name, step in data["steps"].items():
        note = " (timed out)" if step["timed_out"] else ""
        lines.append(f"| {name} | {step['exit']}{note} | {step['seconds']:.0f} |")
    facts = data["facts"] or {}
    lines += ["", "## Facts", ""]
    for key, value in facts.items():
        if key != "differs_from_known":
            lines.append(f"- {key}: {value}")
    for key, d in facts.get("differs_from_known", {}).items():
        lines.append(f"- DIFFERS: {key}: known {d['known']}, found {d['found']}")
    lines += ["", "## Parity (max |logit diff|, vit against PyTorch on the same device)", "",
              "| model | dtype | max diff | tolerance | ok |", "|---|---|---|---|---|"]
    for row in data["parity"] or []:
        diff = row.get("max_abs_diff")
        shown = f"{diff:.2e}" if diff is not None else f"error: {row.get('error')}"
        lines.append(f"| {row['model']} | {row['dtype']} | {shown} | {row['tolerance']} | "
                     f"{row['ok']} |")
    peak_gflops = (data["peak"] or {}).get("best_gflops")
    lines += ["", "## Speed (images/s)", ""]
    if peak_gflops:
        lines.append(f"Chip's measured matrix rate ({data['peak']['dtype']}, torch.matmul): "
                     f"{peak_gflops:.0f} GFLOP/s.")
        lines.append("")
    lines += ["Flash rows appear only where their logits agree with standard attention's "
              "(vit bench's own check; a disagreement is in logs/bench-vit.log).", "",
              "| model | dtype | batch | attn | vit img/s | vit GFLOP/s (% of peak) | "
              "PyTorch SDPA img/s | vit / PyTorch |", "|---|---|---|---|---|---|---|---|"]
    torch_rows = {(r["model"], r["dtype"], r["batch"]): r for r in data["torch_bench"] or []}
    for row in data["vit_bench"]:
        model = Path(row["model"]).name
        peer = torch_rows.get((model, row["dtype"], row["batch"]))
        gflops = row.get("gflops") or 0.0
        share = f" ({100 * gflops / peak_gflops:.0f}%)" if peak_gflops else ""
        peer_rate = f"{peer['images_per_sec']:.1f}" if peer else "-"
        ratio = f"{row['images_per_sec'] / peer['images_per_sec']:.2f}x" if peer else "-"
        lines.append(f"| {model} | {row['dtype']} | {row['batch']} | {row['attn']} | "
                     f"{row['images_per_sec']:.1f} | {gflops:.0f}{share} | {peer_rate} | "
                     f"{ratio} |")
    finetune = data["finetune"]
    lines += ["", "## Finetune", ""]
    if finetune:
        lines.append(f"- {finetune['steps']} optimizer steps in {finetune['epochs']} epochs")
        lines.append(f"- train loss per epoch: {', '.join(f'{x:.4f}' for x in finetune['train_loss'])}")
        lines.append("- training images/s per epoch: "
                     + ", ".join(f"{x:.1f}" for x in finetune["train_images_per_s"]))
        lines.append(f"- loss fell: {finetune['loss_fell']}")
    else:
        lines.append("- no result")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("facts")
    sub.add_parser("lib-path")
    p = sub.add_parser("models")
    p.add_argument("dir", type=Path)
    p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("parity")
    p.add_argument("vit")
    p.add_argument("dir", type=Path)
    p.add_argument("device")
    p.add_argument("--dtypes", default="f32,bf16,f16")
    p = sub.add_parser("bench-torch")
    p.add_argument("dir", type=Path)
    p.add_argument("device")
    p.add_argument("--dtypes", default="bf16,f16")
    p.add_argument("--batch-sizes", default="1,64,256")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p = sub.add_parser("peak")
    p.add_argument("device")
    p = sub.add_parser("finetune-check")
    p.add_argument("out", type=Path)
    p = sub.add_parser("report")
    p.add_argument("out", type=Path)
    args = ap.parse_args()

    if args.command == "facts":
        result = facts()
    elif args.command == "lib-path":
        print(":".join(lib_path()))
        return 0
    elif args.command == "models":
        result = write_models(args.dir, args.tiny)
    elif args.command == "parity":
        result = parity(args.vit, args.dir, args.device, args.dtypes.split(","))
        print(json.dumps(result, indent=1))
        return 0 if all(r["ok"] for r in result) else 1
    elif args.command == "bench-torch":
        result = bench_torch(args.dir, args.device, args.dtypes.split(","),
                             [int(b) for b in args.batch_sizes.split(",")], args.iters,
                             args.warmup)
    elif args.command == "peak":
        result = peak(args.device)
    elif args.command == "finetune-check":
        result = finetune_check(args.out)
        print(json.dumps(result, indent=1))
        return 0 if result["loss_fell"] else 1
    else:
        result = report(args.out)
        failed = [name for name, step in result["steps"].items() if step["exit"] != 0]
        print(f"report: {args.out}/report.md; steps failed: {', '.join(failed) or 'none'}",
              file=sys.stderr)
        return 0 if not failed else 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
