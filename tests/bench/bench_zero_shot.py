"""End-to-end zero-shot classification: `vit classify --labels` against HF transformers'
`zero-shot-image-classification` pipeline, for `make bench-zero-shot`.

Jobs:

  --save-random DIR     writes a CLIPModel with HF's own initialisation (seed 0) and the
                        config of openai/clip-vit-base-patch32 (CLIPConfig's defaults: ViT-B/32
                        224, text 512 wide), with its CLIPProcessor: the real CLIP vocabulary
                        (vocab.json + merges.txt built from the shared BPE file, as HF's repo
                        holds it) and CLIPImageProcessor's defaults.
  --hf-run DIR          (a child process) loads the pipeline for DIR and classifies the
                        images into the labels; with --repeat 2, prints the time of the
                        faster call, in-process, after loading (the warm time).
  --compare DIR         runs both sides, each as a user would from a cold process (the wall
                        time of `vit classify` and of a Python process running the pipeline,
                        imports included), and warm (the classification time in-process,
                        after loading: `vit classify --stats`, and the pipeline's --hf-run
                        --repeat 2), best of --runs each, and prints the ratios as JSON and a
                        line of text.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LABELS = ["cat", "dog", "a red car", "a fish", "a bird", "a flower", "a cup of coffee",
          "a rocket", "a giant panda", "a piece of fruit"]


def save_random(out_dir: Path, shared: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
    from generate import clip_vocab, write_clip_vocab

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    vocab, merges = clip_vocab(shared / "tokenizers/clip/bpe_simple_vocab_16e6.txt.gz", None)
    write_clip_vocab(out_dir, vocab, merges)
    tokenizer = CLIPTokenizer.from_pretrained(out_dir, model_max_length=77)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)


def hf_run(model_dir: str, images: list, labels: list, threads: int, repeat: int) -> None:
    import torch
    from transformers import pipeline
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.set_num_threads(threads)
    classifier = pipeline("zero-shot-image-classification", model=model_dir, device="cpu")
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.inference_mode():
            results = classifier(images, candidate_labels=labels)
        best = min(best, time.perf_counter() - start)
    assert len(results) == len(images)
    print(json.dumps({"seconds": best}))


def wall(command: list, env: dict) -> tuple:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed: {done.stderr}")
    return seconds, done


def compare(args) -> None:
    images = sorted(str(p) for p in Path(args.images).iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    labels = ",".join(LABELS)
    vit_cmd = [args.vit, "classify", "--model", args.model, "--device", "cpu", "--labels",
               labels, "--stats", "-f", "json", *images]
    hf_cmd = [sys.executable, __file__, "--hf-run", args.model, "--threads", str(args.threads),
              "--images", *images]
    vit_cold, vit_warm, hf_cold, hf_warm = [], [], [], []
    for _ in range(args.runs):
        seconds, done = wall(vit_cmd, env)
        vit_cold.append(seconds)
        stats = [l for l in done.stderr.splitlines() if l.startswith("vit: stats:")]
        vit_warm.append(json.loads(stats[-1][len("vit: stats:"):])["classify_seconds"])
        seconds, _ = wall(hf_cmd, env)
        hf_cold.append(seconds)
        _, done = wall(hf_cmd + ["--repeat", "2"], env)
        hf_warm.append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
    row = {
        "images": len(images), "labels": len(LABELS), "threads": args.threads,
        "vit_cold_s": min(vit_cold), "hf_cold_s": min(hf_cold),
        "vit_warm_s": min(vit_warm), "hf_warm_s": min(hf_warm),
    }
    row["cold_ratio"] = row["hf_cold_s"] / row["vit_cold_s"]
    row["warm_ratio"] = row["hf_warm_s"] / row["vit_warm_s"]
    print(json.dumps(row))
    print(f"zero-shot, {row['images']} photos x {row['labels']} labels, random CLIP ViT-B/32, "
          f"{args.threads} threads (best of {args.runs}):\n"
          f"  cold process: vit {row['vit_cold_s']:.2f} s, HF pipeline {row['hf_cold_s']:.2f} s"
          f" -> vit {row['cold_ratio']:.2f}x faster\n"
          f"  warm (loaded, in-process): vit {row['vit_warm_s']:.2f} s, HF pipeline "
          f"{row['hf_warm_s']:.2f} s -> vit {row['warm_ratio']:.2f}x faster", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-random", type=Path, metavar="DIR")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("VIT_SHARED_DIR", "../shared")))
    ap.add_argument("--hf-run", metavar="DIR")
    ap.add_argument("--compare", dest="model", metavar="DIR")
    ap.add_argument("--vit", default="target/release/vit")
    ap.add_argument("--images", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if args.save_random:
        save_random(args.save_random, args.shared)
    elif args.hf_run:
        hf_run(args.hf_run, args.images, LABELS, args.threads, args.repeat)
    elif args.model:
        args.images = args.images[0]
        compare(args)
    else:
        ap.error("give --save-random, --hf-run or --compare")


if __name__ == "__main__":
    main()
