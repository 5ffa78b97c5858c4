#!/usr/bin/env python3
"""`vit explain` against `vit classify` of the same photos (issue 27's target: at most 1.3x).

Runs the two whole commands in turn (classify, explain, classify, ...) so that a drift of the
machine's speed moves both, and prints one JSON line: each command's median wall seconds,
the median of the pairs' ratios, and the target. Standard library only.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def wall(command: list) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target", type=float, default=1.3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        classify = [args.vit, "classify", "--model", args.model, args.images]
        explain = [args.vit, "explain", "--model", args.model, args.images, "-o", out, "--force"]
        wall(classify)
        wall(explain)
        pairs = [(wall(classify), wall(explain)) for _ in range(args.rounds)]
    ratio = statistics.median(e / c for c, e in pairs)
    print(json.dumps({
        "classify_seconds": round(statistics.median(c for c, _ in pairs), 3),
        "explain_seconds": round(statistics.median(e for _, e in pairs), 3),
        "explain_over_classify": round(ratio, 3),
        "pair_ratios": [round(e / c, 3) for c, e in pairs],
        "target": args.target,
        "met": ratio <= args.target,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
