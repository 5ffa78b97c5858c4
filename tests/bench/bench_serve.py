#!/usr/bin/env python3
"""`vit serve` under load: a fixed number of requests from concurrent clients, every answer
checked, then stop. Standard library only.

Starts `vit serve` on a free loopback port with the model, sends --requests raw-image POSTs
to /v1/classify from --concurrency clients (threads with keep-alive connections), cycling
through the photos of --images, and checks each 200's top label against `vit classify` of the
same photo. Prints one JSON line: statuses, wrong answers, failed requests, images/s,
latency p50/p99, the server's peak RSS, /health answers polled throughout, and, for
comparison, `vit bench`'s images/s at batch --max-batch on the same threads.

With a small --queue and many clients it is the overload test: only 200s and 503s are
expected, /health stays 200 and the server answers again afterwards. With --sigterm-after S
the server gets SIGTERM S seconds into the load: it must answer every request it accepted
(the 200s its log counts all reach their clients) and exit 0; clients stop once it is gone.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


class ServerLog:
    """Reads the server's stderr (so that it never blocks on a full pipe), counting the
    answered classify requests its log lines report."""

    def __init__(self, stream):
        self.answered = 0
        self.thread = threading.Thread(target=self.read, args=(stream,), daemon=True)
        self.thread.start()

    def read(self, stream):
        for line in stream:
            if line.startswith("POST /v1/classify 200 "):
                self.answered += 1


def start_server(args) -> tuple:
    command = [args.vit, "serve", "--model", args.model, "--port", "0", "--threads",
               str(args.threads), "--max-batch", str(args.max_batch), "--queue", str(args.queue),
               "--log-format", "text"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        if line.startswith("vit: serving on http://"):
            host, port = line.strip().rsplit("/", 1)[1].rsplit(":", 1)
            return server, host, int(port), ServerLog(server.stderr)
    raise SystemExit(f"vit serve did not start: exit {server.wait()}")


def expected_labels(args, photos) -> dict:
    out = subprocess.run([args.vit, "classify", "--model", args.model, "-k", "1", "-f", "jsonl",
                          *map(str, photos)], check=True, capture_output=True, text=True).stdout
    return {json.loads(l)["file"]: json.loads(l)["predictions"][0]["label"] for l in out.splitlines()}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_images_per_second(args) -> float:
    out = subprocess.run([args.vit, "bench", "--model", args.model, "--batch-sizes",
                          str(args.max_batch), "--threads", str(args.threads), "--seconds",
                          str(args.bench_seconds), "-f", "json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[0])["images_per_sec"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--queue", type=int, default=256)
    parser.add_argument("--bench-seconds", type=float, default=10)
    parser.add_argument("--no-bench", action="store_true", help="skip vit bench's reference")
    parser.add_argument("--sigterm-after", type=float, default=None, metavar="S",
                        help="send SIGTERM S seconds into the load, then check the drain")
    args = parser.parse_args()

    photos = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_TYPES)
    expected = expected_labels(args, photos)
    bodies = [(p.read_bytes(), IMAGE_TYPES[p.suffix.lower()], expected[str(p)]) for p in photos]
    server, host, port, log = start_server(args)
    terminated = threading.Event()
    lock = threading.Lock()
    statuses, latencies, wrong, failed, health = {}, [], [], [], {}
    counter = iter(range(args.requests))
    stop_health = threading.Event()

    def poll_health():
        connection = http.client.HTTPConnection(host, port, timeout=30)
        while not stop_health.is_set():
            try:
                connection.request("GET", "/health")
                status = connection.getresponse()
                status.read()
                health[status.status] = health.get(status.status, 0) + 1
            except (OSError, http.client.HTTPException) as err:
                health[type(err).__name__] = health.get(type(err).__name__, 0) + 1
                connection = http.client.HTTPConnection(host, port, timeout=30)
            time.sleep(0.1)

    def client():
        connection = http.client.HTTPConnection(host, port, timeout=120)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            body, content_type, label = bodies[index % len(bodies)]
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/classify", body=body,
                                   headers={"Content-Type": content_type})
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as err:
                if terminated.is_set():
                    return  # the server is draining or gone: this client stops
                with lock:
                    failed.append(repr(err))
                connection = http.client.HTTPConnection(host, port, timeout=120)
                continue
            seconds = time.perf_counter() - started
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    latencies.append(seconds)
                    top = json.loads(answer)["data"][0]["predictions"][0]["label"]
                    if top != label:
                        wrong.append((index, top, label))

    if args.sigterm_after is not None:
        def terminate():
            time.sleep(args.sigterm_after)
            terminated.set()
            server.terminate()
        threading.Thread(target=terminate, daemon=True).start()
        return drain_result(args, server, log, lock, statuses, failed, wrong, client)
    health_thread = threading.Thread(target=poll_health, daemon=True)
    health_thread.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        for _ in range(args.concurrency):
            pool.submit(client)
    elapsed = time.perf_counter() - started
    stop_health.set()
    health_thread.join()
    # Recovery: one more request after the load.
    connection = http.client.HTTPConnection(host, port, timeout=60)
    body, content_type, _ = bodies[0]
    connection.request("POST", "/v1/classify", body=body, headers={"Content-Type": content_type})
    recovered = connection.getresponse().status
    rss = peak_rss_mb(server.pid)
    server_cpu = cpu_seconds(server.pid)
    server.terminate()
    exit_status = server.wait(timeout=60)
    answered = statuses.get(200, 0)
    latencies.sort()
    result = {
        "requests": args.requests, "concurrency": args.concurrency, "queue": args.queue,
        "max_batch": args.max_batch, "threads": args.threads, "statuses": statuses,
        "failed": len(failed), "wrong_answers": len(wrong), "seconds": round(elapsed, 2),
        "images_per_sec": round(answered / elapsed, 2),
        "p50_ms": round(1e3 * latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1)
        if latencies else None,
        "server_cpu_seconds": round(server_cpu, 1),
        "client_cpu_seconds": round(sum(os.times()[:2]), 1),
        "peak_rss_mb": round(rss, 1), "health": health, "recovered_status": recovered,
        "exit_status": exit_status,
    }
    if not args.no_bench:
        bench = bench_images_per_second(args)
        result["vit_bench_images_per_sec"] = round(bench, 2)
        result["serve_over_bench"] = round(result["images_per_sec"] / bench, 3)
    print(json.dumps(result))
    ok = not failed and not wrong and recovered == 200 and exit_status == 0 and \
        set(statuses) <= {200, 503} and set(health) == {200}
    return 0 if ok else 1


def drain_result(args, server, log, lock, statuses, failed, wrong, client) -> int:
    """Runs the load through a SIGTERM: every request the server answered reached its client."""
    with ThreadPoolExecutor(args.concurrency) as pool:
        for _ in range(args.concurrency):
            pool.submit(client)
    exit_status = server.wait(timeout=120)
    log.thread.join(timeout=10)
    received = statuses.get(200, 0)
    result = {"requests": args.requests, "concurrency": args.concurrency,
              "sigterm_after_s": args.sigterm_after, "statuses": statuses,
              "answered_by_server": log.answered, "received_by_clients": received,
              "lost": log.answered - received, "failed_before_sigterm": len(failed),
              "wrong_answers": len(wrong), "exit_status": exit_status}
    print(json.dumps(result))
    ok = exit_status == 0 and log.answered == received and not failed and not wrong
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
