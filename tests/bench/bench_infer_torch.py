"""Inference throughput of PyTorch + HF transformers, for `make bench-compare`.

Two jobs:

  --save-random DIR   writes a model with random weights (HF's own initialisation, seed 0) as an
                      HF model folder (safetensors), so that `vit bench --model DIR` and this
                      script time the very same weights. --family vit (default): a
                      ViTForImageClassification (ViT-B/16 224 unless the size flags say
                      otherwise). --family dinov3: a DINOv3ViTModel backbone (no head) with the
                      released ViT/16 checkpoints' config (facebook/dinov3-vits16-pretrain-lvd1689m:
                      4 register tokens, RoPE theta 100, layer scale, no key bias, plain GELU MLP
                      4x wide, LayerNorm eps 1e-5; --hidden-size/--layers/--heads pick S or B) and
                      DINOv3ViTImageProcessor's preprocessor_config.json.
  --model DIR         times the eager forward pass of that folder (any HF model folder: the class
                      its config.json's `architectures` names, e.g. ViTForImageClassification
                      (logits) or DINOv3ViTModel (last_hidden_state and pooler_output), else
                      AutoModel) the way `vit bench` does:
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
import transformers
from transformers import AutoConfig, AutoModel, ViTConfig, ViTForImageClassification

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


def save_random(out_dir, hidden, layers, heads, image_size, patch_size, family="vit", registers=4):
    torch.manual_seed(0)
    if family == "dinov3":
        save_random_dinov3(out_dir, hidden, layers, heads, image_size, patch_size, registers)
        return
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


def save_random_dinov3(out_dir, hidden, layers, heads, image_size, patch_size, registers):
    """A DINOv3ViTModel as facebook/dinov3-vit{s,b}16-pretrain-lvd1689m configure it (their
    config.json: DINOv3ViTConfig's defaults, which are ViT-S/16's, with 4 register tokens; B/16
    is 768 wide with 12 heads), random weights, and the processor those folders ship."""
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    config = DINOv3ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=image_size,
        patch_size=patch_size,
        num_register_tokens=registers,
        rope_theta=100.0,
        layerscale_value=1.0,
        query_bias=True,
        key_bias=False,
        value_bias=True,
        proj_bias=True,
        mlp_bias=True,
        use_gated_mlp=False,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    DINOv3ViTModel(config).save_pretrained(out_dir, safe_serialization=True)
    DINOv3ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out_dir)


def model_class(model_dir):
    """The class config.json's `architectures` names (e.g. ViTForImageClassification,
    DINOv3ViTModel), else AutoModel: the same model `vit` loads from the folder."""
    config = AutoConfig.from_pretrained(model_dir)
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return AutoModel


def load_model(model_dir, attn):
    model = model_class(model_dir).from_pretrained(model_dir, attn_implementation=attn)
    return model.eval()


def image_size_of(config):
    size = config.image_size
    return size[0] if isinstance(size, (list, tuple)) else size


def output_names(model):
    """What the timed forward returns: `logits` for classifiers, else the backbone's
    last_hidden_state (and pooler_output, the class token after the final norm)."""
    return "logits" if model.config.architectures and "ForImageClassification" in model.config.architectures[0] \
        else "last_hidden_state"


def time_rows(args):
    model = load_model(args.model, args.attn)
    size = args.image_size or image_size_of(model.config)
    output = output_names(model)
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
                "model_class": type(model).__name__,
                "output": output,
                "image_size": size,
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
    parser.add_argument("--family", choices=["vit", "dinov3"], default="vit",
                        help="--save-random's model: vit (ViTForImageClassification) or dinov3 (DINOv3ViTModel)")
    parser.add_argument("--hidden-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--registers", type=int, default=4, help="--family dinov3: register tokens")
    parser.add_argument("--image-size", type=int, default=None,
                        help="--save-random: the config's image size (224); --model: the timed input's size "
                             "(default the config's)")
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
        save_random(args.save_random, args.hidden_size, args.layers, args.heads, args.image_size or 224,
                    args.patch_size, args.family, args.registers)
    if args.peak:
        time_peak(args.dtypes)
    if args.model:
        time_rows(args)


if __name__ == "__main__":
    main()
