"""Command line: ``python -m datamodules.shapesworld {write,benchmark,show} ...``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .benchmark import write_compositional_benchmark
from .generate import generate_sample
from .scene import SPLITS
from .shards import write_shards

GRID_COLUMNS = 4
GRID_GAP = 2


def save_grid(n: int, out: Path, split: str, seed: int, image_size: int) -> None:
    """Save samples 0..n-1 side by side and print their captions."""
    columns = min(n, GRID_COLUMNS)
    rows = math.ceil(n / columns)
    step = image_size + GRID_GAP
    grid = Image.new("RGB", (columns * step - GRID_GAP, rows * step - GRID_GAP), (90, 90, 90))
    for index in range(n):
        sample = generate_sample(index, split, seed, image_size)
        grid.paste(sample["image"], ((index % columns) * step, (index // columns) * step))
        print(f"{sample['key']}: " + " | ".join(sample["captions"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"saved {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datamodules.shapesworld", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_common(command: argparse.ArgumentParser, split: str, image_size: int = 64) -> None:
        command.add_argument("--split", default=split, choices=SPLITS)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--image-size", type=int, default=image_size)

    write = commands.add_parser("write", help="write webdataset tar shards")
    write.add_argument("--out", type=Path, required=True)
    write.add_argument("--n", type=int, default=10000)
    write.add_argument("--shard-size", type=int, default=1000)
    write.add_argument("--max-objects", type=int, default=4)
    add_common(write, "train")

    benchmark = commands.add_parser("benchmark", help="write the compositional benchmark (images + JSON)")
    benchmark.add_argument("--out", type=Path, required=True)
    benchmark.add_argument("--n", type=int, default=500)
    add_common(benchmark, "test")

    show = commands.add_parser("show", help="save a grid of samples and print their captions")
    show.add_argument("--out", type=Path, default=Path("grid.png"))
    show.add_argument("--n", type=int, default=8)
    add_common(show, "train", image_size=128)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "write":
        shards = write_shards(
            args.out, args.n, args.split, args.seed, args.image_size, args.shard_size, args.max_objects
        )
        print(f"wrote {len(shards)} shard(s) to {args.out}")
    elif args.command == "benchmark":
        path = write_compositional_benchmark(args.out, args.n, args.split, args.seed, args.image_size)
        print(f"wrote {path}")
    else:
        save_grid(args.n, args.out, args.split, args.seed, args.image_size)


if __name__ == "__main__":
    main()
