#!/usr/bin/env python3
"""`vit serve` through OpenAI's own Python client (`openai` from PyPI): `make test-openai-client`.

Starts `vit serve` on a free loopback port with the committed CLIP fixture and a bearer key,
then calls `client.embeddings.create` with images as data URIs (float and base64, the client's
default), with texts (`extra_body={"modality": "text"}`), and checks every row against
`vit embed` of the same files and texts (within 1e-5), the usage, and that a wrong key raises
the client's AuthenticationError. Exits non-zero on any difference.
"""

import argparse
import base64
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "tests/fixtures/clip/clip_p16_s48"
IMAGES = [REPO / "tests/fixtures/preprocess/images" / n
          for n in ("palette_100x75.png", "odd_301x157.jpg", "rgba_120x90.png")]
TEXTS = ["a photo of a cat", "a diagram"]
KEY = "test-key-for-the-openai-client"


def start(vit: str):
    env = dict(os.environ, VIT_API_KEY=KEY, HF_HUB_OFFLINE="1")
    server = subprocess.Popen([vit, "serve", "--model", str(MODEL), "--port", "0"],
                              stderr=subprocess.PIPE, text=True, env=env)
    for line in server.stderr:
        if line.startswith("vit: serving on "):
            # Keep reading its log so that the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
            return server, line.split("serving on ", 1)[1].strip()
    raise SystemExit(f"vit serve did not start: exit {server.wait()}")


def cli_rows(vit: str, args: list) -> list:
    out = subprocess.run([vit, "embed", "--model", str(MODEL), "-f", "jsonl", *args],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line)["embedding"] for line in out.splitlines()]


def data_uri(path: Path) -> str:
    kind = "jpeg" if path.suffix == ".jpg" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def close(got, expected, what: str) -> None:
    diff = max(abs(a - b) for a, b in zip(got, expected))
    if len(got) != len(expected) or diff >= 1e-5:
        raise SystemExit(f"{what}: {len(got)} values, max |diff| {diff} against vit embed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit", required=True)
    args = parser.parse_args()
    image_rows = cli_rows(args.vit, [str(p) for p in IMAGES])
    text_rows = cli_rows(args.vit, [a for t in TEXTS for a in ("--text", t)])
    server, base = start(args.vit)
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY)
        for encoding in ("float", "base64"):
            answer = client.embeddings.create(model="clip", input=[data_uri(p) for p in IMAGES],
                                              encoding_format=encoding)
            for row, expected in zip(answer.data, image_rows):
                embedding = row.embedding
                if isinstance(embedding, str):
                    raw = base64.b64decode(embedding)
                    embedding = [v[0] for v in struct.iter_unpack("<f", raw)]
                close(embedding, expected, f"image {row.index} ({encoding})")
        # The client's default encoding is base64: decoded by the client itself.
        answer = client.embeddings.create(model="clip", input=[data_uri(p) for p in IMAGES])
        for row, expected in zip(answer.data, image_rows):
            close(row.embedding, expected, f"image {row.index} (client default)")
        if answer.usage.prompt_tokens != 0:
            raise SystemExit(f"usage of images: {answer.usage}")
        answer = client.embeddings.create(model="clip", input=TEXTS,
                                          extra_body={"modality": "text"})
        for row, expected in zip(answer.data, text_rows):
            close(row.embedding, expected, f"text {row.index}")
        try:
            openai.OpenAI(base_url=f"{base}/v1", api_key="wrong").embeddings.create(
                model="clip", input=[data_uri(IMAGES[0])])
            raise SystemExit("a wrong key was accepted")
        except openai.AuthenticationError:
            pass
    finally:
        server.terminate()
        status = server.wait(timeout=60)
    if status != 0:
        raise SystemExit(f"vit serve exited {status} after SIGTERM")
    print(f"openai {openai.__version__}: {len(IMAGES)} images (float, base64, client default) "
          f"and {len(TEXTS)} texts equal vit embed within 1e-5; a wrong key is refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
