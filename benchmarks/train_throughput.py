"""Training throughput of ``zoo.CLIP`` under Lightning vs a plain PyTorch loop.

Both train the same open_clip model (built from the same config and seed) on the same in-memory
ShapesWorld batches with the same loss, optimiser groups and schedule; runs alternate
(plain, Lightning, plain, Lightning, ...) so machine noise hits both alike. Prints samples/s of each
and the ratio Lightning / plain.

    python benchmarks/train_throughput.py                      # tiny config of configs/clip.yaml, CPU
    python benchmarks/train_throughput.py --model ViT-B-32 --batch-size 256 --image-size 224   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

import zoo
from datamodules.shapesworld import ShapesWorld
from zoo.losses import contrastive_loss

ROOT = Path(__file__).resolve().parents[1]


class Batches(Dataset):
    """Pre-transformed images and token ids, served from memory."""

    def __init__(self, images: torch.Tensor, tokens: torch.Tensor) -> None:
        self.images, self.tokens = images, tokens

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "text": self.tokens[i]}


class Timer(Callback):
    """Wall time of the training steps after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.elapsed = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        _sync()
        self.elapsed = time.perf_counter() - self.start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_model(args: argparse.Namespace) -> zoo.CLIP:
    torch.manual_seed(0)
    if args.model:
        return zoo.CLIP(backbone={"model_name": args.model}, lr=1e-4, warmup_steps=10)
    init = yaml.safe_load((ROOT / "configs" / "clip.yaml").read_text())["model"]["init_args"]
    return zoo.CLIP(**init)


def plain_loop(args: argparse.Namespace, data: Batches, device: torch.device) -> float:
    """samples/s of a hand-written loop: the same model, loss, optimiser and schedule as zoo.CLIP."""
    module = make_model(args).to(device)
    backbone = module.backbone
    optimizer = torch.optim.AdamW(module.parameter_groups(), **module.optim_args)
    total = args.warmup + args.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: zoo.base.warmup_cosine(step, module.warmup_steps, total, module.min_lr_ratio)
    )
    loader = DataLoader(
        data, batch_size=args.batch_size, shuffle=True, drop_last=True, pin_memory=device.type == "cuda"
    )
    backbone.train()
    step, start = 0, 0.0
    while step < total:
        for batch in loader:
            if step == args.warmup:
                _sync()
                start = time.perf_counter()
            images = batch["image"].to(device, non_blocking=True)
            tokens = batch["text"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
                loss = contrastive_loss(
                    backbone.encode_image(images), backbone.encode_text(tokens), backbone.logit_scale
                )
            optimizer.zero_grad(set_to_none=True)
            loss["contrastive_loss"].backward()
            optimizer.step()
            schedule.step()
            backbone.clamp_logit_scale_()
            step += 1
            if step == total:
                break
    _sync()
    return args.steps * args.batch_size / (time.perf_counter() - start)


def lightning_loop(args: argparse.Namespace, data: Batches) -> float:
    """samples/s of zoo.CLIP under a plain Lightning Trainer (no logger, checkpoints or progress bar)."""
    timer = Timer(args.warmup)
    trainer = Trainer(
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=args.precision,
        callbacks=[timer],
        devices=1,
    )
    loader = DataLoader(
        data, batch_size=args.batch_size, shuffle=True, drop_last=True, pin_memory=torch.cuda.is_available()
    )
    trainer.fit(make_model(args), loader)
    return args.steps * args.batch_size / timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="open_clip model name (default: the tiny config of clip.yaml)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make_model(args)
    transform = model.backbone.image_transform(train=False)
    scenes = ShapesWorld(args.samples, split="train", image_size=args.image_size)
    images = torch.stack([transform(scenes[i]["image"]) for i in range(len(scenes))])
    tokens = model.backbone.tokenizer([scenes[i]["captions"][0] for i in range(len(scenes))])
    data = Batches(images, tokens)
    del model

    results: dict[str, list[float]] = {"plain": [], "lightning": []}
    for _ in range(args.repeats):
        results["plain"].append(plain_loop(args, data, device))
        results["lightning"].append(lightning_loop(args, data))
    plain, lightning = statistics.median(results["plain"]), statistics.median(results["lightning"])
    name = args.model or "configs/clip.yaml tiny ViT"
    print(f"device: {device}, model: {name}, batch {args.batch_size}, {args.steps} timed steps, {args.repeats} repeats")
    for kind, values in results.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"{kind:>9}: median {statistics.median(values):8.1f} samples/s  (runs: {runs})")
    print(f"lightning / plain = {lightning / plain:.3f}")


if __name__ == "__main__":
    main()
