"""int8 against f32 on real photos: `make int8-accuracy`.

Reads `vit classify --format jsonl -k 1` output of one model in f32 and in int8 over the
labelled ImageNet sample (`labels.csv`: file, imagenet_index, ...) and over the shared photos
(`labels.csv`: file, accepted indices, category), and prints top-1 agreement between the two,
each one's top-1 accuracy, and whether every `strict` photo stays top-1 correct in int8.
Exits 1 when a target is missed: agreement >= 98%, accuracy loss <= 0.5 points, every strict
photo correct. Standard library only.
"""

import argparse
import csv
import json
import os
import sys

SEPARATOR = ";"


def top1(path):
    """file name -> top-1 class index, from a jsonl file of `vit classify`."""
    found = {}
    with open(path) as lines:
        for line in lines:
            row = json.loads(line)
            if "error" in row:
                sys.exit(f"{path}: {row['file']}: {row['error']}")
            found[os.path.basename(row["file"])] = row["predictions"][0]["index"]
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-labels", required=True)
    parser.add_argument("--sample-f32", required=True)
    parser.add_argument("--sample-int8", required=True)
    parser.add_argument("--photo-labels", required=True)
    parser.add_argument("--photos-int8", required=True)
    args = parser.parse_args()

    with open(args.sample_labels) as f:
        truth = {row["file"]: int(row["imagenet_index"]) for row in csv.DictReader(f)}
    f32, int8 = top1(args.sample_f32), top1(args.sample_int8)
    missing = sorted(set(truth) - set(f32) | set(truth) - set(int8))
    if missing:
        sys.exit(f"no prediction for {len(missing)} photos, first {missing[0]}")
    n = len(truth)
    agree = sum(f32[name] == int8[name] for name in truth) / n
    acc_f32 = sum(f32[name] == label for name, label in truth.items()) / n
    acc_int8 = sum(int8[name] == label for name, label in truth.items()) / n
    loss = (acc_f32 - acc_int8) * 100

    with open(args.photo_labels) as f:
        rows = list(csv.DictReader(f))
    photos = top1(args.photos_int8)
    strict = [r for r in rows if r["category"] == "strict"]
    wrong = [
        r["file"]
        for r in strict
        if photos.get(r["file"]) not in {int(i) for i in r["expected_imagenet_indices"].split(SEPARATOR) if i}
    ]

    checks = [
        (f"top-1 agreement int8 vs f32 on {n} ImageNet photos: {agree:.1%} (target >= 98%)", agree >= 0.98),
        (
            f"top-1 accuracy: f32 {acc_f32:.1%}, int8 {acc_int8:.1%}, loss {loss:.1f} points (target <= 0.5)",
            loss <= 0.5,
        ),
        (
            f"strict shared photos top-1 correct in int8: {len(strict) - len(wrong)}/{len(strict)}"
            + (f" (wrong: {', '.join(wrong)})" if wrong else ""),
            not wrong and strict,
        ),
    ]
    for text, ok in checks:
        print(f"{text}: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
