#!/usr/bin/env python3
"""`vit serve` against Infinity (infinity-emb, torch engine) serving the same CLIP folder's image
embeddings: the same client load on each, one server at a time. Standard library only.

Starts `vit serve` on a free loopback port (--threads, --max-batch), waits for /health, embeds
each photo of --images once (its reference), then sends --requests POSTs, one photo per
request as a data URI, from --concurrency clients (threads with keep-alive connections, as
bench_serve.py does), cycling through the photos; stops it with SIGTERM. Then the same for
Infinity (`infinity_emb v2 --engine torch --device cpu --batch-size --max-batch`), run by
--infinity-python (a venv with infinity-emb[server,torch,vision]) with torch.set_num_threads
and OMP_NUM_THREADS/MKL_NUM_THREADS set to --threads. Both get the same body:

    {"input": ["data:image/jpeg;base64,..."], "model": NAME, "modality": "image",
     "encoding_format": "float"}

vit at POST /v1/embeddings, Infinity at POST /embeddings (its OpenAI-compatible route, where
"modality": "image" selects images; /embeddings_image is its deprecated twin).

Every answer is checked: status 200, one embedding of --dim floats, and the same direction as
that server's reference for the photo (cosine >= --self-cosine: batching must not change the
answer). vit's and Infinity's references of the same photo must agree in direction (cosine >=
--min-cosine; their preprocessing may differ slightly). Prints one JSON line: each server's
images/s, latency p50/p99, statuses, failures, peak RSS and CPU seconds, the min cosine, and
vit/infinity ratios. Exits 1 if any request failed, the cosines are below their bounds or vit
did not exit 0 on SIGTERM (Infinity's uvicorn shuts down, then re-raises the signal: -15).

The Infinity venv (its vision extra pins torch and transformers below this repo's .venv):
    python3 -m venv .venv-infinity
    .venv-infinity/bin/pip install "infinity-emb[server,torch,vision]==0.0.78" aiohttp
"""

import argparse
import base64
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import IMAGE_TYPES, cpu_seconds, peak_rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent

# Run by --infinity-python: torch's intra-op threads set before Infinity's CLI starts (Infinity
# itself never sets them), then `infinity_emb v2 ...` with the remaining arguments.
INFINITY_MAIN = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
sys.argv = ["infinity_emb"] + sys.argv[2:]
from infinity_emb.cli import cli
cli()
"""

INFINITY_VERSIONS = """
import json, importlib.metadata as m, torch
print(json.dumps({p: m.version(p) for p in ("infinity-emb", "torch", "transformers")}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(stream, tail: list) -> None:
    """Keeps reading a server's stderr so that it never blocks on a full pipe; keeps the end."""
    for line in stream:
        tail.append(line)
        del tail[:-40]


def pin(cpus):
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def start_vit(args) -> tuple:
    command = [args.vit, "serve", "--model", args.model, "--device", "cpu", "--port", "0",
               "--threads", str(args.threads), "--max-batch", str(args.max_batch),
               "--queue", str(max(256, args.concurrency)), "--log-format", "text"]
    if args.vit_image_backend:
        command += ["--image-backend", args.vit_image_backend]
    launched = time.perf_counter()
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                              preexec_fn=pin(args.cpus))
    tail = []
    for line in server.stderr:
        tail.append(line)
        if line.startswith("vit: serving on http://"):
            host, port = line.strip().rsplit("/", 1)[1].rsplit(":", 1)
            threading.Thread(target=drain, args=(server.stderr, tail), daemon=True).start()
            return server, host, int(port), "/v1/embeddings", tail, launched
    raise SystemExit(f"vit serve did not start: exit {server.wait()}\n{''.join(tail)}")


def start_infinity(args) -> tuple:
    port = free_port()
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0",
               TOKENIZERS_PARALLELISM="false")
    command = [args.infinity_python, "-c", INFINITY_MAIN, threads, "v2",
               "--model-id", args.model, "--served-model-name", args.model_name,
               "--engine", "torch", "--device", "cpu", "--dtype", "float32",
               "--batch-size", str(args.max_batch), "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
    launched = time.perf_counter()
    server = subprocess.Popen(command, stderr=subprocess.STDOUT, stdout=subprocess.PIPE,
                              text=True, env=env, preexec_fn=pin(args.cpus))
    tail = []
    threading.Thread(target=drain, args=(server.stdout, tail), daemon=True).start()
    return server, "127.0.0.1", port, "/embeddings", tail, launched


def wait_healthy(server, host, port, tail, launched, timeout) -> float:
    """Seconds from launch (model loading and Infinity's warm-up included) to /health's 200."""
    while time.perf_counter() - launched < timeout:
        if server.poll() is not None:
            raise SystemExit(f"server exited {server.returncode} before /health:\n"
                             f"{''.join(tail)}")
        try:
            connection = http.client.HTTPConnection(host, port, timeout=5)
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                return time.perf_counter() - launched
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"server not healthy after {timeout} s:\n{''.join(tail)}")


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else float("nan")


def embedding_of(status: int, answer: bytes, dim: int):
    """The one embedding of an answer, or why the answer is wrong."""
    if status != 200:
        return None, f"status {status}: {answer[:200]!r}"
    try:
        data = json.loads(answer)["data"]
        embedding = data[0]["embedding"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        return None, f"unreadable answer ({err!r}): {answer[:200]!r}"
    if len(data) != 1 or not isinstance(embedding, list) or len(embedding) != dim:
        return None, f"{len(data)} embeddings, width {len(embedding)}, expected 1 of {dim}"
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in embedding):
        return None, "non-finite or non-number values"
    return embedding, None


def post(connection, path: str, body: bytes) -> tuple:
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def run_server(name: str, args, bodies: list) -> tuple:
    """Starts one server, embeds each photo once, drives the load, stops it: (result, refs)."""
    server, host, port, path, tail, launched = \
        (start_vit if name == "vit" else start_infinity)(args)
    result = {"endpoint": path}
    try:
        result["startup_s"] = round(
            wait_healthy(server, host, port, tail, launched, args.startup_timeout), 1)
        # References (and warm-up): each photo alone, one after the other.
        connection = http.client.HTTPConnection(host, port, timeout=args.request_timeout)
        refs = []
        for photo, body in bodies:
            embedding, error = embedding_of(*post(connection, path, body), args.dim)
            if error:
                raise SystemExit(f"{name}: reference of {photo.name}: {error}\n{''.join(tail)}")
            refs.append(embedding)
        connection.close()
        cpu_before = cpu_seconds(server.pid)

        lock = threading.Lock()
        statuses, latencies, failures = {}, [], []
        inconsistent = []
        counter = iter(range(args.requests))

        def client():
            connection = http.client.HTTPConnection(host, port, timeout=args.request_timeout)
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                photo = index % len(bodies)
                started = time.perf_counter()
                try:
                    status, answer = post(connection, path, bodies[photo][1])
                except (OSError, http.client.HTTPException) as err:
                    with lock:
                        failures.append(repr(err))
                    connection = http.client.HTTPConnection(host, port,
                                                            timeout=args.request_timeout)
                    continue
                seconds = time.perf_counter() - started
                embedding, error = embedding_of(status, answer, args.dim)
                agreement = cosine(embedding, refs[photo]) if embedding else None
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if error:
                        failures.append(error)
                    else:
                        latencies.append(seconds)
                        if not agreement >= args.self_cosine:
                            inconsistent.append((index, bodies[photo][0].name, agreement))

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            for _ in range(args.concurrency):
                pool.submit(client)
        elapsed = time.perf_counter() - started
        latencies.sort()
        result.update({
            "statuses": statuses, "failed": len(failures), "inconsistent": len(inconsistent),
            "seconds": round(elapsed, 2),
            "images_per_sec": round(len(latencies) / elapsed, 2),
            "p50_ms": round(1e3 * latencies[len(latencies) // 2], 1) if latencies else None,
            "p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                            1) if latencies else None,
            "server_cpu_seconds": round(cpu_seconds(server.pid) - cpu_before, 1),
            "peak_rss_mb": round(peak_rss_mb(server.pid), 1),
            "server_threads": os_threads(server.pid),
        })
        if failures:
            result["first_failure"] = failures[0]
        if inconsistent:
            result["first_inconsistent"] = inconsistent[0]
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
                result["killed"] = True
        result["exit_status"] = server.returncode
    return result, refs


def os_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def parse_cpus(text: str):
    if not text:
        return None
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit", default=str(ROOT / "target/release/vit"))
    parser.add_argument("--model", default=str(ROOT / "target/bench/clip-vit-base-patch32-random"),
                        help="a local HF CLIP folder (both servers load it)")
    parser.add_argument("--model-name", default="clip-vit-base-patch32-random",
                        help="the request's `model` (Infinity's --served-model-name)")
    parser.add_argument("--images", default=os.environ.get("VIT_SHARED_DIR", str(ROOT.parent / "shared"))
                        + "/images")
    parser.add_argument("--infinity-python", default=str(ROOT / ".venv-infinity/bin/python"),
                        help="a Python with infinity-emb[server,torch,vision]")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--cpus", type=parse_cpus, default=None,
                        help="pin both servers to these CPUs, e.g. 0-3 (default: no pinning)")
    parser.add_argument("--vit-image-backend", choices=["torchvision", "pil"],
                        help="vit serve's --image-backend (default: vit's own default)")
    parser.add_argument("--dim", type=int, default=512, help="the embeddings' width")
    parser.add_argument("--min-cosine", type=float, default=0.99,
                        help="least cosine between vit's and Infinity's embedding of a photo")
    parser.add_argument("--self-cosine", type=float, default=0.999,
                        help="least cosine between an answer and its server's reference")
    parser.add_argument("--order", default="vit,infinity")
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--request-timeout", type=float, default=600)
    args = parser.parse_args()
    order = args.order.split(",")
    if sorted(order) != ["infinity", "vit"]:
        parser.error("--order is vit,infinity or infinity,vit")

    photos = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_TYPES)
    if not photos:
        parser.error(f"no photos in {args.images}")
    bodies = []
    for photo in photos:
        uri = (f"data:{IMAGE_TYPES[photo.suffix.lower()]};base64,"
               f"{base64.b64encode(photo.read_bytes()).decode()}")
        bodies.append((photo, json.dumps({"input": [uri], "model": args.model_name,
                                          "modality": "image",
                                          "encoding_format": "float"}).encode()))
    versions = json.loads(subprocess.run([args.infinity_python, "-c", INFINITY_VERSIONS],
                                         check=True, capture_output=True, text=True).stdout)

    results, refs = {}, {}
    for name in order:
        results[name], refs[name] = run_server(name, args, bodies)
    results["infinity"]["versions"] = versions
    agreement = [cosine(a, b) for a, b in zip(refs["vit"], refs["infinity"])]
    worst = min(range(len(photos)), key=lambda i: agreement[i])
    vit, inf = results["vit"], results["infinity"]
    row = {
        "model": args.model, "photos": len(photos), "requests": args.requests,
        "concurrency": args.concurrency, "threads": args.threads, "max_batch": args.max_batch,
        "cpus": sorted(args.cpus) if args.cpus else None, "dim": args.dim,
        "vit": vit, "infinity": inf,
        "cosine_min": round(agreement[worst], 9), "cosine_min_photo": photos[worst].name,
        "cosine_mean": round(sum(agreement) / len(agreement), 9),
        "vit_over_infinity_images_per_sec": round(vit["images_per_sec"] / inf["images_per_sec"], 3)
        if inf["images_per_sec"] else None,
        "infinity_over_vit_p50": round(inf["p50_ms"] / vit["p50_ms"], 3)
        if vit["p50_ms"] and inf["p50_ms"] else None,
        "infinity_over_vit_p99": round(inf["p99_ms"] / vit["p99_ms"], 3)
        if vit["p99_ms"] and inf["p99_ms"] else None,
    }
    print(json.dumps(row))
    ok = all(r["failed"] == 0 and r["inconsistent"] == 0 and not r.get("killed")
             and set(r["statuses"]) == {200} for r in (vit, inf)) \
        and vit["exit_status"] == 0 and agreement[worst] >= args.min_cosine
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
