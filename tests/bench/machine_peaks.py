"""The machine's f32 and int8 matrix-product ceilings, for `make bench-compare`.

Prints JSON lines:

  {"cpu": "<lscpu Model name>", "flags": "avx2 fma ...", "threads": N}
  {"matmul_peak": "f32", "library": "numpy 2.x (OpenBLAS 0.3.x, <core>)", "size": 2048, "gflops": X, ...}

one peak line per library (f32: numpy's BLAS, torch.mm; int8 ("matmul_peak": "int8", GOP/s):
torch._int_mm, and ONNX Runtime's quantize_dynamic MatMul) and size (2048 and 4096): GFLOP/s of
an n x n by n x n product with N threads, the best call of those that fit in --seconds after a
warm-up call (best, as `vit bench --peak` reports its own kernel; the mean is there too); a
size whose calls would take far over --seconds, judged from the size below it, is skipped
with a note on stderr (compare.py prints "-" there). Each
library runs in its own process, with OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and
MKL_NUM_THREADS set to N before it is imported, so that neither's idle threads spin beside the
other's.

OPENBLAS_CORETYPE (which pins OpenBLAS to one CPU's kernels, e.g. Haswell's AVX2 ones on an
AVX-512 CPU) and OPENBLAS_L2_SIZE slow numpy down where they are set: `make bench-compare`
runs this script with both unset; a warning goes to stderr if they are set.
"""

import argparse
import json
import os
import subprocess
import sys
import time

RELEVANT_FLAGS = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]


def cpu_line(threads):
    name, flags = "unknown", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                name = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    if not flags:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() == "flags":
                        flags = set(value.split())
                    elif key.strip() == "model name" and name == "unknown":
                        name = value.strip()
        except OSError:
            pass
    return {"cpu": name, "flags": " ".join(f for f in RELEVANT_FLAGS if f in flags), "threads": threads}


# How many times its time budget a (library, size) may take before larger sizes are skipped.
SKIP_FACTOR = 10


def time_product(matmul, a, b, seconds):
    matmul(a, b)  # warm-up: thread pool start, page faults, packing buffers
    times, start = [], time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        matmul(a, b)
        times.append(time.perf_counter() - t)
    return min(times), sum(times) / len(times), len(times)


def openblas_description(np):
    """'OpenBLAS 0.3.31, SkylakeX' from the library numpy loaded, as far as it can be found."""
    blas = {}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # noqa: BLE001 - older numpy: no dict form
        pass
    name, version = blas.get("name", "BLAS"), blas.get("version", "")
    core = None
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info.get("user_api") == "blas":
                name, version = info.get("internal_api", name), info.get("version") or version
                core = info.get("architecture")
                break
    except ImportError:
        import ctypes

        try:
            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
            for path in paths:
                lib = ctypes.CDLL(path)
                for symbol in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
                    if hasattr(lib, symbol):
                        getattr(lib, symbol).restype = ctypes.c_char_p
                        core = getattr(lib, symbol)().decode()
                        break
        except OSError:
            pass
    label = "OpenBLAS" if "openblas" in name.lower() else name
    version = version.split(".dev")[0]
    if label == "OpenBLAS" and version.count(".") > 2:
        version = ".".join(version.split(".")[:3])  # scipy-openblas appends its build number
    return ", ".join(x for x in (f"{label} {version}".strip(), core) if x)


def run_numpy(sizes, seconds):
    import numpy as np

    library = f"numpy {np.__version__} ({openblas_description(np)})"
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        yield library, n, time_product(np.matmul, a, b, seconds)


def run_torch(sizes, seconds, threads):
    import torch

    torch.set_num_threads(threads)
    blas = "MKL" if torch.backends.mkl.is_available() else next(
        (s.split("=", 1)[1] for s in torch.__config__.show().replace(",", " ").split() if s.startswith("BLAS_INFO=")),
        "BLAS")
    library = f"torch {torch.__version__.split('+')[0]} ({blas}, {torch.backends.cpu.get_cpu_capability()})"
    for n in sizes:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        yield library, n, time_product(torch.mm, a, b, seconds)


def run_torch_int8(sizes, seconds, threads):
    """torch._int_mm: int8 x int8 -> int32, both operands given (no quantization timed)."""
    import torch

    torch.set_num_threads(threads)
    library = f"torch {torch.__version__.split('+')[0]} _int_mm"
    for n in sizes:
        a = torch.randint(-127, 128, (n, n), dtype=torch.int8)
        b = torch.randint(-127, 128, (n, n), dtype=torch.int8)
        yield library, n, time_product(torch._int_mm, a, b, seconds)


def run_ort_int8(sizes, seconds, threads):
    """ONNX Runtime's int8 product as its dynamically quantized models run it: one f32 MatMul
    of an n x n input by an n x n weight, through quantize_dynamic (per-channel int8 weight;
    the activation quantized in each call, as in `vit`'s int8 product)."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    library = f"onnxruntime {ort.__version__} (quantize_dynamic MatMul)"
    rng = np.random.default_rng(0)
    for n in sizes:
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])], "peak",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        with tempfile.TemporaryDirectory() as tmp:
            f32_path, int8_path = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "int8.onnx")
            onnx.save(model, f32_path)
            quantize_dynamic(f32_path, int8_path, per_channel=True, weight_type=QuantType.QInt8)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            sess = ort.InferenceSession(int8_path, options, providers=["CPUExecutionProvider"])
        x = rng.standard_normal((n, n), dtype=np.float32)
        yield library, n, time_product(lambda a, _: sess.run(["y"], {"x": a}), x, None, seconds)


RUNNERS = {
    "numpy": ("f32", lambda sizes, seconds, threads: run_numpy(sizes, seconds)),
    "torch": ("f32", run_torch),
    "torch-int8": ("int8", run_torch_int8),
    "onnxruntime-int8": ("int8", run_ort_int8),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="2048,4096")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per (library, size)")
    parser.add_argument("--library", choices=list(RUNNERS), help="time only this one, in this process")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    if args.library is None:
        for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            if var in os.environ:
                print(f"machine_peaks: {var}={os.environ[var]} is set; it can slow numpy's OpenBLAS "
                      f"(`env -u {var}` to measure without it)", file=sys.stderr)
        print(json.dumps(cpu_line(args.threads)), flush=True)
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
        for library in RUNNERS:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--library", library,
                            "--threads", str(args.threads), "--sizes", args.sizes,
                            "--seconds", str(args.seconds)], env=env, check=True)
        return

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy or torch is imported
    dtype, runner = RUNNERS[args.library]
    previous = None  # (size, best seconds) of the last size timed
    for n in sorted(sizes):
        # A product far off the ceiling (torch._int_mm without a fast int8 kernel: 0.7 GOP/s on
        # a Zen 3, minutes a call at 4096^3) is not timed at larger sizes: its three calls would
        # take more than SKIP_FACTOR times the budget and cannot be the ceiling.
        if previous and 3 * previous[1] * (n / previous[0]) ** 3 > SKIP_FACTOR * args.seconds:
            print(f"machine_peaks: {args.library} at {n}^3 skipped (about "
                  f"{previous[1] * (n / previous[0]) ** 3:.0f} s a call)", file=sys.stderr)
            continue
        for library, size, (best, mean, runs) in runner([n], args.seconds, args.threads):
            flop = 2 * size**3
            print(json.dumps({"matmul_peak": dtype, "library": library, "size": size, "threads": args.threads,
                              "gflops": flop / best / 1e9, "gflops_mean": flop / mean / 1e9, "runs": runs}),
                  flush=True)
            previous = (size, best)


if __name__ == "__main__":
    main()
