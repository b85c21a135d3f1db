"""Training throughput of the CLIP family on one GPU, everything side by side in one process.

For each method (CLIP, NegCLIP and FSC-CLIP with 3 negatives per caption and the local loss on):
(a) a plain PyTorch loop over the same open_clip model and the zoo's loss functions, eager and
compiled; (b) the zoo's LightningModule under a Lightning Trainer, eager and compiled; for CLIP also
(c) open_clip's own trainer (``python -m open_clip_train.main --dataset-type synthetic``) as the peer,
and (d) end to end: ShapesWorld webdataset shards decoded in dataloader workers feeding the zoo's step.
Each measurement is repeated ``--repeats`` times, interleaved (run-to-run noise is about 10 %), and
the median and range of samples/s are printed with the peak memory.

    python benchmarks/gpu_throughput.py [--model ViT-B-32] [--batch-size 256] [--precision bf16]
    python benchmarks/gpu_throughput.py --device cpu --tiny --batch-size 8 --steps 3 --warmup 1 --repeats 1 \
        --compile-backend eager --workers 0   (a plumbing check, no figures)
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from datamodules import ImageCaptionDataModule  # noqa: E402
from datamodules.shapesworld import write_shards  # noqa: E402

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
METHODS = {"clip": zoo.CLIP, "negclip": zoo.NegCLIP, "fsc_clip": zoo.FSCCLIP}


def build(method: str, args: argparse.Namespace, compiled: bool) -> zoo.CLIP:
    cfg = {"model_cfg": TINY} if args.tiny else {"model_name": args.model}
    compile_options = {"backend": args.compile_backend} if compiled else False
    model = METHODS[method](backbone=cfg, compile=compile_options, lr=1e-5, warmup_steps=0, lr_schedule="constant")
    return model.to(args.device)


def synthetic_batch(model: zoo.CLIP, method: str, batch_size: int, device: str) -> dict[str, torch.Tensor]:
    """Random images and captions (and 3 valid negatives per caption for NegCLIP / FSC-CLIP)."""
    generator = torch.Generator().manual_seed(0)
    size = model.backbone.image_size
    words = ["red", "blue", "circle", "square", "left", "of", "a", "large", "small", "green"]
    captions = [
        " ".join(words[int(i)] for i in torch.randint(0, 10, (8,), generator=generator)) for _ in range(batch_size)
    ]
    batch = {"image": torch.randn(batch_size, 3, *size, generator=generator), "text": model.backbone.tokenize(captions)}
    if method != "clip":
        batch["negatives"] = model.backbone.tokenize([c[::-1] for c in captions for _ in range(3)]).view(
            batch_size, 3, -1
        )
        batch["negative_mask"] = torch.ones(batch_size, 3, dtype=torch.bool)
        batch["image_id"] = torch.arange(batch_size)
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_loop(model: zoo.CLIP, batch: dict, args: argparse.Namespace) -> float:
    """Samples/s of a hand-written loop: autocast forward, the zoo's losses, backward, AdamW step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model.train()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            _sync(args.device)
            start = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=args.precision == "bf16"):
            loss = torch.stack(list(model.losses(batch).values())).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.backbone.clamp_logit_scale_()
    _sync(args.device)
    return args.steps * len(batch["image"]) / (time.perf_counter() - start)


class RepeatedBatch:
    """A loader that yields one device-resident batch ``n`` times (no input pipeline in the way)."""

    def __init__(self, batch: dict[str, torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter([self.batch] * self.n)


class StepTimer(Callback):
    """Wall time of the training steps after ``warmup``."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.start, self.end = warmup, device, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        _sync(self.device)
        self.end = time.perf_counter()


def lightning_loop(model: zoo.CLIP, loader, args: argparse.Namespace, batch_size: int) -> float:
    """Samples/s of the zoo's LightningModule under Lightning's Trainer."""
    timer = StepTimer(args.warmup, args.device)
    trainer = Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        precision="bf16-mixed" if args.precision == "bf16" else "32-true",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    model.on_fit_start = lambda: None  # no parameter table in a timed run
    trainer.fit(model, train_dataloaders=loader)
    return args.steps * batch_size / (timer.end - timer.start)


def open_clip_trainer(args: argparse.Namespace) -> float | None:
    """Samples/s/gpu reported by open_clip's own trainer on synthetic data (None when not installed)."""
    command = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "synthetic", "--model", args.model]
    command += [
        "--batch-size", str(args.batch_size), "--train-num-samples", str(args.batch_size * (args.warmup + args.steps))
    ]
    command += ["--epochs", "1", "--workers", "4", "--precision", "amp_bf16" if args.precision == "bf16" else "fp32"]
    command += ["--log-every-n-steps", "1", "--report-to", "", "--save-frequency", "0", "--lr", "1e-5"]
    with tempfile.TemporaryDirectory() as logs:
        run = subprocess.run([*command, "--logs", logs], capture_output=True, text=True)
    rates = [float(r) for r in re.findall(r"([\d.]+)/s/gpu", run.stdout + run.stderr)]
    return statistics.median(rates[args.warmup :]) if len(rates) > args.warmup else None


def end_to_end_loader(model: zoo.CLIP, args: argparse.Namespace, root: Path):
    """ShapesWorld webdataset shards at the model's image size, decoded in dataloader workers."""
    n = args.batch_size * (args.warmup + args.steps + 2)
    shards = write_shards(root, n, image_size=model.backbone.image_size[0], shard_size=max(1, n // 8))
    pattern = str(root / f"shapesworld-train-{{000000..{len(shards) - 1:06d}}}.tar")
    data = ImageCaptionDataModule(
        source="webdataset", train=pattern, batch_size=args.batch_size, num_workers=args.workers
    )
    data.connect(**model.data_transforms())
    return data.train_dataloader()


def summary(name: str, rates: list[float], memory: list[float]) -> str:
    rates = [r for r in rates if r]
    if not rates:
        return f"| {name} | not run | | |"
    return f"| {name} | {statistics.median(rates):,.0f} | {min(rates):,.0f}–{max(rates):,.0f} | {max(memory):.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--tiny", action="store_true", help="a tiny model from a config (plumbing check)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: a quick check)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    results: dict[str, tuple[list[float], list[float]]] = {}

    def measure(name: str, run) -> None:
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        rate = run()
        peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0
        rates, memory = results.setdefault(name, ([], []))
        rates.append(rate)
        memory.append(peak)
        print(f"{name}: {rate:,.0f} samples/s" if rate else f"{name}: not run", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):  # interleaved: every variant once per round
            for method in args.methods:
                for compiled in (False, True):
                    tag = "compiled" if compiled else "eager"
                    model = build(method, args, compiled)
                    batch = synthetic_batch(model, method, args.batch_size, args.device)
                    measure(f"{method} plain {tag}", functools.partial(plain_loop, model, batch, args))
                    model = build(method, args, compiled)
                    loader = RepeatedBatch(batch, args.warmup + args.steps)
                    measure(
                        f"{method} zoo {tag}", functools.partial(lightning_loop, model, loader, args, args.batch_size)
                    )
            if "clip" in args.methods and not args.tiny:
                measure("clip open_clip trainer", lambda: open_clip_trainer(args))
            model = build("clip", args, compiled=True)
            loader = end_to_end_loader(model, args, Path(scratch) / f"shards-{len(results)}")
            measure(
                "clip zoo compiled, ShapesWorld shards",
                functools.partial(lightning_loop, model, loader, args, args.batch_size),
            )

    device = torch.cuda.get_device_name() if gpu else "CPU"
    print(f"\n{args.model if not args.tiny else 'tiny ViT'}, batch {args.batch_size}, {args.precision}, {device}, "
          f"{args.steps} timed steps after {args.warmup}, {args.repeats} interleaved repeats")
    print("| run | samples/s (median) | range | peak GiB |")
    print("|---|---|---|---|")
    for name, (rates, memory) in results.items():
        print(summary(name, rates, memory))
    for method in args.methods:
        for tag in ("eager", "compiled"):
            plain, ours = results[f"{method} plain {tag}"][0], results[f"{method} zoo {tag}"][0]
            print(f"{method} {tag}: zoo / plain = {statistics.median(ours) / statistics.median(plain):.3f}")


if __name__ == "__main__":
    main()
