"""REACT on ShapesWorld: retrieval-augmented customisation of a tiny CLIP for shape classification.

1. Pre-train: configs/clip.yaml for ``--pretrain-epochs`` on ShapesWorld (the "web-scale" CLIP), exported.
2. Knowledge base: ``--kb-size`` other ShapesWorld scenes (train split, seed 1) with noisy web-like
   captions (a quarter belong to another scene, a quarter carry web boilerplate), as webdataset shards.
3. Retrieval: the KB embedded by the pre-trained model into an HNSW index; queries = the eight shape
   names × templates (``attributes``: "a {size} {colour} {c}", the captions' own form, by default;
   ``shapes``: the evaluation's "a {c}." prompts); top ``--k`` per query (T2T or T2I), de-duplicated
   per class. The share of retrieved captions that name the query's shape is printed (precision).
4. Customisation: configs/react.yaml (gated-image, locked text, UniCL γ = 0.9) from the pre-trained
   weights on the retrieved pairs.
5. The suite before and after: zero-shot shape classification (the target task) and retrieval R@1 on
   held-out general scenes (what the locked text tower should keep).

    python benchmarks/react_customisation.py [--mode t2t] [--k 20] [--templates attributes] [--react-epochs 5]
                                             [--react-lr 5e-4] [--keep runs/react_demo]
                                             [-- extra train.py overrides for both fits]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import webdataset as wds
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # train.py is a script at the repository root

import train  # noqa: E402
from callbacks.retrieval_stage import embed_corpus, retrieve  # noqa: E402
from callbacks.suite import evaluate_suite, load_benchmarks  # noqa: E402
from datamodules import ImageCaptionDataModule  # noqa: E402
from datamodules.benchmarks.shapesworld import SHAPE_TEMPLATES  # noqa: E402
from datamodules.image_caption import ShapesWorldConfig  # noqa: E402
from datamodules.retrieval import IndexConfig, build_index  # noqa: E402
from datamodules.shapesworld import COLORS, SHAPES, SIZES, generate_sample, png_bytes, write_shards  # noqa: E402
from zoo.loading import load_model  # noqa: E402

TEMPLATES = {
    "attributes": [f"a {size} {color} {{c}}" for size in SIZES for color in COLORS],
    "shapes": list(SHAPE_TEMPLATES),
}
PREFIXES = ("stock photo: ", "image of ", "free download - ", "new post! ")
SUFFIXES = (" | hd wallpaper", " on white background", " #shapes #art", " (vector illustration)")


def noisy_caption(index: int, captions: list[str], rng: random.Random) -> str:
    """A web-like caption: 1/4 another scene's caption, 1/4 the scene's own with boilerplate, else its own."""
    draw = rng.random()
    if draw < 0.25:
        return captions[rng.randrange(len(captions))]
    if draw < 0.5:
        return rng.choice(PREFIXES) + captions[index] + rng.choice(SUFFIXES)
    return captions[index]


def write_knowledge_base(out: Path, n: int, image_size: int, shard_size: int = 1000) -> str:
    """``n`` ShapesWorld scenes (train split, seed 1: not the pre-training scenes) with noisy captions."""
    samples = [generate_sample(i, "train", 1, image_size) for i in range(n)]
    primary = [s["captions"][0] for s in samples]
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "kb-%06d.tar"), maxcount=shard_size, verbose=0, encoder=False, mtime=0.0) as sink:
        for i, sample in enumerate(samples):
            caption = noisy_caption(i, primary, rng)
            sink.write({"__key__": sample["key"], "png": png_bytes(sample["image"]), "txt": caption.encode()})
    return str(out / f"kb-{{000000..{math.ceil(n / shard_size) - 1:06d}}}.tar")


def retrieval_precision(folder: Path) -> float:
    """Share of retrieved pairs whose caption names the shape they were retrieved for."""
    samples = wds.WebDataset(sorted(map(str, folder.glob("*.tar"))), shardshuffle=False)
    named = [json.loads(sample["json"])["class"] in sample["txt"].decode() for sample in samples]
    return sum(named) / len(named)


def run_fit(args: list[str]) -> tuple[train.ZooCLI, float]:
    start = time.perf_counter()
    cli = train.main(["fit", *args, "--trainer.enable_progress_bar", "false"])
    return cli, (time.perf_counter() - start) / 60


def suite_figures(model, benchmarks) -> dict[str, float]:
    results = evaluate_suite(model, benchmarks, batch_size=128, num_workers=2)
    classification, retrieval = results["shapesworld/shape_classification"], results["shapesworld/retrieval"]
    return {
        "shape top-1": classification["top1"],
        "shape mean per-class recall": classification["mean_per_class_recall"],
        "retrieval i2t R@1": retrieval["i2t_R@1"],
        "retrieval t2i R@1": retrieval["t2i_R@1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--kb-size", type=int, default=8192)
    parser.add_argument("--mode", choices=["t2t", "t2i"], default="t2t")
    parser.add_argument("--k", type=int, default=20, help="neighbours per query (class × template)")
    parser.add_argument("--templates", choices=list(TEMPLATES), default="attributes")
    parser.add_argument("--react-epochs", type=int, default=5)
    parser.add_argument("--react-lr", type=float, default=5e-4)
    parser.add_argument(
        "--tuning", default="gated_image", choices=["gated_image", "locked_text", "locked_image", "full"]
    )
    parser.add_argument("--pretrained", default=None, help="an exported pre-trained CLIP folder (skips step 1)")
    parser.add_argument("--keep", default=None, help="keep every artefact in this folder")
    args, overrides = parser.parse_known_args()
    clip_config, react_config = str(ROOT / "configs" / "clip.yaml"), str(ROOT / "configs" / "react.yaml")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        common = ["--seed_everything", "0", "--data.init_args.benchmark_dir", str(root / "benchmark")]
        common += [o for o in overrides if o != "--"]  # train.py overrides for both fits
        shapesworld = ShapesWorldConfig(**yaml.safe_load(open(clip_config))["data"]["init_args"]["shapesworld"])
        export, pretrain_minutes = Path(args.pretrained or root / "pretrained"), 0.0
        if args.pretrained is None:
            base, pretrain_minutes = run_fit(
                ["--config", clip_config, *common, "--trainer.max_epochs", str(args.pretrain_epochs)]
                + ["--trainer.default_root_dir", str(root / "pretrain")]
                + ["--trainer.logger.init_args.save_dir", str(root / "pretrain")]
            )
            base.model.export_open_clip(export)
        image_size = shapesworld.image_size

        kb = write_knowledge_base(root / "kb", args.kb_size, image_size)
        model, _ = load_model(model_name=f"local-dir:{export}", device="cpu")
        start = time.perf_counter()
        embed_corpus(model, kb, root / "index", batch_size=256, num_workers=2)
        build = build_index(root / "index", "text" if args.mode == "t2t" else "image", IndexConfig())
        counts = retrieve(
            model,
            root / "index",
            list(SHAPES),
            root / "retrieved",
            TEMPLATES[args.templates],
            args.mode,
            args.k,
            shard_size=500,
        )
        retrieval_minutes = (time.perf_counter() - start) / 60
        pairs = sum(counts.values())
        precision = retrieval_precision(root / "retrieved")
        retrieved = len(list((root / "retrieved").glob("retrieved-*.tar")))
        val = write_shards(root / "val", 500, split="val", image_size=image_size)

        steps = args.react_epochs * (pairs // 128)
        react, react_minutes = run_fit(
            ["--config", react_config, *common]
            + ["--model.init_args.backbone.pretrained", str(export / "open_clip_pytorch_model.bin")]
            + ["--model.init_args.tuning", args.tuning, "--model.init_args.lr", str(args.react_lr)]
            + ["--data.init_args.source", "webdataset"]
            + ["--data.init_args.train", str(root / "retrieved" / f"retrieved-{{000000..{retrieved - 1:06d}}}.tar")]
            + ["--data.init_args.val", val[0], "--trainer.max_steps", str(steps)]
            + ["--trainer.max_epochs", str(args.react_epochs)]
            + ["--trainer.default_root_dir", str(root / "react")]
            + ["--trainer.logger.init_args.save_dir", str(root / "react")]
        )
        benchmarks = load_benchmarks(
            [{"kind": "shapesworld"}],
            ImageCaptionDataModule(benchmark_dir=str(root / "benchmark"), shapesworld=shapesworld),
            model.data_transforms()["eval_transform"],
        )
        before = suite_figures(model, benchmarks)
        after = suite_figures(react.model.cpu().eval(), benchmarks)

    print(f"\nREACT on ShapesWorld ({args.mode.upper()} retrieval, {args.templates} templates, k={args.k}, "
          f"tuning {args.tuning}, lr {args.react_lr}), seed 0")
    print(f"knowledge base {args.kb_size} noisy pairs; {build['kind']} index {build['params']}, "
          f"recall@{build['approximate_recall']['k']} vs exact {build['approximate_recall']['recall']:.3f}")
    print("retrieved unique pairs per class: " + json.dumps(counts) + f" (total {pairs}, {100 * precision:.0f}% name "
          f"their class); {steps} REACT steps")
    print(
        f"minutes: pre-training {pretrain_minutes:.1f}, embedding + retrieval {retrieval_minutes:.1f}, "
        f"REACT {react_minutes:.1f}"
    )
    print("| metric | pre-trained CLIP | REACT |")
    print("|---|---|---|")
    for name in before:
        print(f"| {name} | {100 * before[name]:.1f} | {100 * after[name]:.1f} |")


if __name__ == "__main__":
    main()
