"""Inference throughput of ONNX Runtime on the CPU, for `make bench-compare`.

  --model DIR   an HF model folder (e.g. one written by bench_infer_torch.py --save-random),
                loaded as bench_infer_torch.py loads it (the class its config.json names:
                ViTForImageClassification, DINOv3ViTModel, ...). Exported once with
                torch.onnx.export (opset 17, dynamic batch axis, input `pixel_values`; outputs
                `logits` for a classifier, `last_hidden_state` and `pooler_output` for a
                backbone without a head such as DINOv3ViTModel) to
                DIR/model.onnx unless that file exists (--onnx PATH to use another file), then
                timed with onnxruntime.InferenceSession on the CPUExecutionProvider:
                intra_op_num_threads N, inter_op_num_threads 1, ORT_ENABLE_ALL, random f32
                pixels, warm-up runs, then as many timed runs as fit in --seconds (at least 3).
                Prints one JSON line per batch with the fields of bench_infer_torch.py's rows.

  --dtypes f32,int8   int8 is the same export through onnxruntime.quantization.quantize_dynamic
                (per-channel int8 weights, QInt8; activations quantized per call, ORT's
                default), written once to DIR/model.int8.onnx; its outputs' distance to
                PyTorch's goes to stderr (quantization moves them: not checked).

Before timing, ORT's outputs are checked once against PyTorch's on the same input (batch 2, so
that the dynamic batch axis is exercised): the max abs difference goes to stderr, and the
script fails above 1e-3 for logits, 1e-4 for a backbone's hidden states (a stale
DIR/model.onnx from other weights fails here: delete it).
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bench_infer_torch import image_size_of, load_model, output_names

# Max abs difference allowed between ORT's f32 outputs and PyTorch's, per output.
TOLERANCE = {"logits": 1e-3, "last_hidden_state": 1e-4, "pooler_output": 1e-4}


def percentile(sorted_values, q):
    # Nearest rank, as `vit bench` computes it.
    index = max(1, min(len(sorted_values), int(np.ceil(q * len(sorted_values))))) - 1
    return sorted_values[index]


def outputs_of(model):
    """The exported outputs: a classifier's logits, a backbone's last_hidden_state and
    pooler_output (DINOv3ViTModel: the class token after the final norm)."""
    return ["logits"] if output_names(model) == "logits" else ["last_hidden_state", "pooler_output"]


class Outputs(torch.nn.Module):
    """The HF model with a plain tensor in and plain tensors out, for the exporters."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.names = outputs_of(model)

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return tuple(getattr(out, name) for name in self.names)


def torch_outputs(model, pixels):
    with torch.inference_mode():
        out = model(pixel_values=torch.from_numpy(pixels))
    return [getattr(out, name).numpy() for name in outputs_of(model)]


def export(model, path, image_size):
    """Writes `path` (temp file, then rename); returns which exporter wrote it."""
    wrapped = Outputs(model).eval()
    names = wrapped.names
    dummy = torch.randn(1, 3, image_size, image_size)
    common = dict(input_names=["pixel_values"], output_names=names, opset_version=17)
    dynamic_axes = {"pixel_values": {0: "batch"}, **{name: {0: "batch"} for name in names}}
    attempts = [
        # The TorchScript exporter: opset 17 natively, no onnxscript needed. Recent torch
        # defaults to the dynamo exporter, so it has to be asked for.
        ("torch.onnx.export TorchScript (dynamo=False)",
         lambda tmp: torch.onnx.export(wrapped, (dummy,), tmp, dynamic_axes=dynamic_axes, dynamo=False, **common)),
        # torch older than 2.5 has no `dynamo` argument and always uses TorchScript.
        ("torch.onnx.export TorchScript",
         lambda tmp: torch.onnx.export(wrapped, (dummy,), tmp, dynamic_axes=dynamic_axes, **common)),
        # A torch without the TorchScript exporter: torch.export + onnxscript.
        ("torch.onnx.export dynamo (onnxscript)",
         lambda tmp: torch.onnx.export(
             wrapped, (dummy,), tmp, dynamo=True, external_data=False,
             dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}, **common)),
    ]
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp.onnx")
    errors = []
    try:
        for method, run in attempts:
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    # The TorchScript exporter's deprecation notice and the tracer's notes on
                    # HF's shape checks (constant for a fixed image size): not news here.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    run(tmp)
            except Exception as error:  # noqa: BLE001 - try the next exporter, report all
                errors.append(f"{method}: {type(error).__name__}: {error}")
                continue
            # Record the exporter in the file, for the rows of later runs that reuse it.
            exported = onnx.load(tmp)
            onnx.helper.set_model_props(exported, {"exporter": method})
            onnx.save(exported, tmp)
            os.replace(tmp, path)
            return method
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    sys.exit("onnx export failed:\n  " + "\n  ".join(errors))


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def quantized(path):
    """DIR/model.int8.onnx from DIR/model.onnx (temp file, then rename), once."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = os.path.splitext(path)[0] + ".int8.onnx"
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(path):
        return out
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.{os.getpid()}.tmp.onnx")
    try:
        quantize_dynamic(path, tmp, per_channel=True, weight_type=QuantType.QInt8)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def distances(sess, model, image_size):
    """{output: max abs difference between ORT's and PyTorch's} on one random batch of 2."""
    pixels = np.random.default_rng(1).standard_normal((2, 3, image_size, image_size), dtype=np.float32)
    names = outputs_of(model)
    ours = sess.run(names, {"pixel_values": pixels})
    theirs = torch_outputs(model, pixels)
    return {name: float(np.max(np.abs(a - b))) for name, a, b in zip(names, ours, theirs)}


def check(sess, model, image_size):
    for name, diff in distances(sess, model, image_size).items():
        print(f"onnxruntime vs torch {name} (batch 2): max abs diff {diff:.2e}", file=sys.stderr, flush=True)
        if not diff <= TOLERANCE[name]:
            sys.exit(f"onnxruntime's {name} differs from PyTorch's by {diff:.2e} > {TOLERANCE[name]:g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="DIR", required=True)
    parser.add_argument("--onnx", metavar="PATH", help="the ONNX file (default DIR/model.onnx)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--dtypes", default="f32", help="f32 and/or int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.model, "eager")
    size = image_size_of(model.config)
    path = args.onnx or os.path.join(args.model, "model.onnx")
    if not os.path.exists(path):
        start = time.perf_counter()
        method = export(model, path, size)
        print(f"exported {path} with {method} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    sessions = []
    for dtype in args.dtypes.split(","):
        if dtype == "f32":
            sess = session(path, args.threads)
            check(sess, model, size)
        elif dtype == "int8":
            sess = session(quantized(path), args.threads)
            for name, distance in distances(sess, model, size).items():
                print(f"onnxruntime int8 vs torch f32 {name} (batch 2): max abs diff {distance:.2e}", file=sys.stderr, flush=True)
        else:
            print(f"bench_infer_onnx: no {dtype} row for ONNX Runtime (f32 and int8 only)", file=sys.stderr)
            continue
        sessions.append((dtype, sess))
    names = outputs_of(model)
    del model
    for dtype, sess in sessions:
        time_session(sess, dtype, size, names, args)


def time_session(sess, dtype, size, names, args):
    method = sess.get_modelmeta().custom_metadata_map.get("exporter", "unknown")
    rng = np.random.default_rng(0)
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        feed = {"pixel_values": rng.standard_normal((batch, 3, size, size), dtype=np.float32)}
        for _ in range(args.warmup):
            sess.run(names, feed)
        latencies = []
        budget_end = time.perf_counter() + args.seconds
        while len(latencies) < 3 or time.perf_counter() < budget_end:
            start = time.perf_counter()
            sess.run(names, feed)
            latencies.append(time.perf_counter() - start)
        latencies.sort()
        mean = sum(latencies) / len(latencies)
        print(json.dumps({
            "framework": f"onnxruntime {ort.__version__}",
            "provider": "CPUExecutionProvider",
            "export": method,
            "output": names[0],
            "threads": args.threads,
            "dtype": dtype,
            "quantization": "quantize_dynamic per-channel QInt8" if dtype == "int8" else None,
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


if __name__ == "__main__":
    main()
