"""Training throughput of PyTorch + transformers, for `make bench-train-compare`.

Fine-tunes an HF ViT model folder on an ImageFolder training split the way `vit finetune`
does: a new head sized to the classes, torchvision's RandomResizedCrop + horizontal flip,
the model's normalization, AdamW (weight decay 0.05, none on biases, norms, position
embeddings, class token), label smoothing 0.1, gradient clipping at 1.0, in float32 on the
CPU, with the data decoded in the training process (num_workers=0). Prints one JSON line
with the training images per second over the timed steps.
"""

import argparse
import json
import time

import torch
import torchvision
from torchvision import transforms
from transformers import ViTForImageClassification, ViTImageProcessor


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="ImageFolder training split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="0: one epoch")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    processor = ViTImageProcessor.from_pretrained(args.model)
    size = processor.crop_size["height"] if processor.do_center_crop else processor.size["height"]
    augment = transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(processor.image_mean, processor.image_std),
    ])
    data = torchvision.datasets.ImageFolder(args.data, transform=augment)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=0)
    model = ViTForImageClassification.from_pretrained(
        args.model, num_labels=len(data.classes), ignore_mismatched_sizes=True
    )
    model.train()
    no_decay = ("bias", "layernorm", "position_embeddings", "cls_token")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": 0.05},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-4)

    images, start, steps = 0, time.perf_counter(), 0
    for pixels, labels in loader:
        logits = model(pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        images += len(labels)
        steps += 1
        if args.steps and steps == args.steps:
            break
    seconds = time.perf_counter() - start
    print(json.dumps({
        "framework": f"torch {torch.__version__} + transformers",
        "threads": args.threads,
        "batch_size": args.batch_size,
        "steps": steps,
        "images": images,
        "seconds": round(seconds, 2),
        "train_images_per_s": images / seconds,
    }))


if __name__ == "__main__":
    main()
