"""The evaluation suite: every benchmark scored in one pass, one JSON report, one Markdown table.

Each unique image (crop) and each unique text across all benchmarks is embedded once; under DDP each
rank embeds every world-th of them and the shards are gathered in order, so every item is scored
exactly once and 1 and 2 processes give identical figures.

    python -m callbacks.suite --model ViT-B-32-quickgelu --pretrained openai --benchmarks configs/eval/suite.yaml
    python -m callbacks.suite --checkpoint runs/.../last.ckpt --out report.json
    python -m callbacks.suite compare clip.json negclip.json --out compare/   (table + a PNG per family)
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Subset

from callbacks.embedding import EpochEndEvaluation, embed_images, embed_texts, gather_shards, shard
from callbacks.protocols import Similarities, score
from callbacks.retrieval import retrieval_recall
from callbacks.zero_shot import class_embeddings, classification_metrics, elevater_metric, zero_shot_logits
from datamodules.benchmarks import (
    Benchmark,
    ClassificationSet,
    ImageFiles,
    RetrievalSet,
    compositional_benchmarks,
    load_classification,
    load_karpathy,
    sugarcrepe_averages,
)
from datamodules.benchmarks.shapesworld import SHAPE_TEMPLATES, shapesworld_benchmarks
from datamodules.shapesworld import SHAPES

Loader = Callable[..., "Benchmark | list[Benchmark]"]


def _loaders() -> dict[str, Loader]:
    """Benchmark kinds a spec may name, with the function that reads their official files."""
    from datamodules.benchmarks import aro, mmvp, sugarcrepe, whatsup, winoground

    return {
        "compositional": compositional_benchmarks,
        "karpathy": load_karpathy,
        "sugarcrepe": sugarcrepe.load_sugarcrepe,
        "sugarcrepe_pp": sugarcrepe.load_sugarcrepe_pp,
        "vg_relation": aro.load_vg_relation,
        "vg_attribution": aro.load_vg_attribution,
        "coco_order": aro.load_coco_order,
        "flickr30k_order": aro.load_flickr30k_order,
        "whatsup": whatsup.load_whatsup,
        "winoground": winoground.load_winoground,
        "mmvp": mmvp.load_mmvp,
    }


def load_benchmarks(
    specs: list[dict[str, Any]], datamodule: Any = None, transform: Callable | None = None
) -> list[Benchmark | RetrievalSet | ClassificationSet]:
    """Benchmarks from specs ``{"kind": ..., **loader arguments}``. ``{"kind": "shapesworld", "n": 500,
    "n_spatial": 100, "per_class": 20, "classification_metric": "accuracy"}`` is every ShapesWorld counterpart, retrieval and zero-shot shape
    classification included (generated offline on first use, read by the same loaders as the real
    files); ``classification`` needs the model's eval ``transform``."""
    from datamodules.benchmarks import sugarcrepe

    loaders = _loaders()
    benchmarks: list[Benchmark] = []
    for spec in specs:
        spec = dict(spec)
        kind = spec.pop("kind")
        if kind == "shapesworld":
            if datamodule is None or not hasattr(datamodule, "compositional_benchmark"):
                raise ValueError("kind 'shapesworld' needs a data module with compositional_benchmark()")
            n, n_spatial = spec.get("n", 500), spec.get("n_spatial", 100)
            loaded = shapesworld_benchmarks(
                datamodule.compositional_benchmark(n), datamodule.spatial_benchmark(n_spatial)
            )
            retrieval = datamodule.retrieval_benchmark(n)
            loaded.append(load_karpathy(retrieval, retrieval.parent, name="shapesworld/retrieval"))
            classes = datamodule.classification_benchmark(spec.get("per_class", 20))
            loaded.append(
                load_classification(
                    classes,
                    transform,
                    classnames=SHAPES,
                    templates=SHAPE_TEMPLATES,
                    name="shapesworld/shape_classification",
                    metric=spec.get("classification_metric", "accuracy"),
                )
            )
        elif kind == "brittleness":  # SugarCrepe++-format files: caption, rewrite, negative
            loaded = []
            for benchmark in sugarcrepe.load_sugarcrepe_pp(**spec):
                benchmark.protocol = "brittleness"
                benchmark.name = benchmark.name.replace("sugarcrepe_pp/", "brittleness/")
                loaded.append(benchmark)
        elif kind == "classification":
            loaded = load_classification(transform=transform, **spec)
        elif kind in loaders:
            loaded = loaders[kind](**spec)
        else:
            raise ValueError(f"unknown benchmark kind {kind!r}; known: {sorted([*loaders, 'shapesworld'])}")
        benchmarks.extend(loaded if isinstance(loaded, list) else [loaded])
    return benchmarks


def embed_sharded_images(
    model: LightningModule, refs: list, transform: Callable, batch_size: int, num_workers: int, trainer: Trainer | None
) -> torch.Tensor:
    """Embeddings of image paths / crops in order, each embedded by exactly one rank."""
    loader = DataLoader(
        Subset(ImageFiles(refs, transform), list(shard(len(refs)))), batch_size=batch_size, num_workers=num_workers
    )
    return gather_shards(embed_images(model, loader, trainer, desc="suite images"), len(refs))


def embed_sharded_texts(
    model: LightningModule, texts: list[str], batch_size: int, trainer: Trainer | None
) -> torch.Tensor:
    """Embeddings of texts in order, each embedded by exactly one rank."""
    mine = [texts[i] for i in shard(len(texts))]
    return gather_shards(embed_texts(model, mine, batch_size, trainer, desc="suite texts"), len(texts))


@torch.no_grad()
def embed_benchmarks(
    model: LightningModule,
    benchmarks: list[Benchmark],
    transform: Callable,
    batch_size: int = 128,
    num_workers: int = 2,
    trainer: Trainer | None = None,
) -> Similarities:
    """Embed every unique image crop and text of ``benchmarks`` once (sharded across ranks)."""
    refs = sorted({ref for b in benchmarks for item in b.items for ref in item.images}, key=lambda r: r.key)
    texts = sorted({t for b in benchmarks for item in b.items for t in item.texts})
    return Similarities(
        embed_sharded_images(model, refs, transform, batch_size, num_workers, trainer).cpu(),
        embed_sharded_texts(model, texts, batch_size, trainer).cpu(),
        {ref.key: i for i, ref in enumerate(refs)},
        {t: i for i, t in enumerate(texts)},
    )


@torch.no_grad()
def evaluate_retrieval_set(
    model: LightningModule,
    data: RetrievalSet,
    transform: Callable,
    batch_size: int = 128,
    num_workers: int = 2,
    trainer: Trainer | None = None,
) -> dict[str, float]:
    """Recall@1/5/10 both ways on a retrieval set (COCO / Flickr30k Karpathy)."""
    images = embed_sharded_images(model, data.images, transform, batch_size, num_workers, trainer)
    texts = embed_sharded_texts(model, data.texts, batch_size, trainer)
    figures = retrieval_recall(images, texts, data.text_to_image)
    return {**figures, "items": len(data.images), "skipped": data.skipped}


def evaluate_suite(
    model: LightningModule, benchmarks: list[Benchmark | RetrievalSet | ClassificationSet], **embed_kwargs: Any
) -> dict[str, dict]:
    """Figures of every benchmark, by name. Multiple-choice style benchmarks share one embedding pass;
    zero-shot classification runs on every rank (identical figures; its shards are read by all)."""
    transform = model.data_transforms()["eval_transform"]
    items = [b for b in benchmarks if isinstance(b, Benchmark)]
    results: dict[str, dict] = {}
    if items:
        sims = embed_benchmarks(model, items, transform, **embed_kwargs)
        results.update({b.name: score(b, sims) for b in items})
    trainer = embed_kwargs.get("trainer")
    for data in benchmarks:
        if isinstance(data, RetrievalSet):
            results[data.name] = evaluate_retrieval_set(model, data, transform, **embed_kwargs)
        elif isinstance(data, ClassificationSet):
            loader = data.dataloader(embed_kwargs.get("batch_size", 128), embed_kwargs.get("num_workers", 2))
            classifier = class_embeddings(model, data.classnames, data.templates, trainer=trainer)
            logits, labels = zero_shot_logits(model, loader, classifier, trainer)
            figures = classification_metrics(logits, labels)
            if data.metric in ("11point_mAP", "roc_auc"):  # ELEVATER's other metrics
                figures[data.metric] = elevater_metric(data.metric, logits, labels)
            results[data.name] = {
                **figures,
                "items": len(labels),
                "skipped": data.skipped,
            }
    categories = {name: r["accuracy"] for name, r in results.items() if name.startswith("sugarcrepe/")}
    if averages := sugarcrepe_averages(categories):  # the paper's REPLACE / SWAP / ADD
        results["sugarcrepe/averages"] = {**averages, "items": sum(results[n]["items"] for n in categories)}
    return results


def describe_model(model: LightningModule, precision: str = "32-true") -> dict[str, Any]:
    """What silently changes numbers when it drifts: activation, preprocessing, tokenizer, precision."""
    info: dict[str, Any] = {"class": type(model).__qualname__, "precision": precision}
    backbone = getattr(model, "backbone", None)
    clip = getattr(backbone, "model", None)
    if clip is not None:
        from open_clip.model import get_model_preprocess_cfg

        info["model_name"] = backbone.model_name
        info["quick_gelu"] = bool((backbone.model_cfg or {}).get("quick_gelu", False))
        info["preprocess"] = get_model_preprocess_cfg(clip)
        tokenizer = backbone.tokenizer
        info["tokenizer"] = type(tokenizer).__name__
        info["context_length"] = getattr(tokenizer, "context_length", None)
    info["versions"] = {
        name: importlib.metadata.version(name) for name in ("torch", "open_clip_torch", "lightning", "vlzoo")
    }
    info["python"] = platform.python_version()
    return info


def to_markdown(results: dict[str, dict]) -> str:
    """One row per benchmark: its figures in % and the items they cover."""
    lines = ["| benchmark | figures | items |", "|---|---|---|"]
    for name, figures in results.items():
        shown = ", ".join(
            f"{k} {100 * v:.1f}" for k, v in figures.items() if k not in ("items", "skipped", "macro_groups")
        )
        skipped = f" ({figures['skipped']} skipped)" if figures.get("skipped") else ""
        lines.append(f"| {name} | {shown} | {figures['items']}{skipped} |")
    return "\n".join(lines)


def _head(data: Benchmark | RetrievalSet | ClassificationSet, n: int) -> Benchmark | RetrievalSet | ClassificationSet:
    """The first ``n`` items of a benchmark (for ``fast_dev_run``)."""
    if isinstance(data, Benchmark):
        data.items = data.items[:n]
    elif isinstance(data, RetrievalSet):
        data.images, data.captions = data.images[:n], data.captions[:n]
    elif hasattr(data.dataset, "__len__"):
        data.dataset = Subset(data.dataset, range(min(n, len(data.dataset))))
    return data


class EvaluationSuite(EpochEndEvaluation):
    """Run the suite after validation / test epochs (a forgetting monitor while fine-tuning).

    Args:
        benchmarks: specs ``{"kind": ..., **loader arguments}``; default: ShapesWorld's split.
        batch_size: images / texts per forward.
        num_workers: image decoding workers.
        every_n_epochs: evaluate every n validation epochs.
    """

    name = "suite"

    def __init__(
        self,
        benchmarks: list[dict[str, Any]] | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__(every_n_epochs)
        self.specs = benchmarks or [{"kind": "shapesworld"}]
        self.batch_size = batch_size
        self.num_workers = num_workers

    def run(self, trainer: Trainer, model: LightningModule, stage: str) -> dict[str, Any]:
        transform = model.data_transforms()["eval_transform"]
        if trainer.is_global_zero:  # generated benchmarks are written once, then read everywhere
            load_benchmarks(self.specs, trainer.datamodule, transform)
        trainer.strategy.barrier()
        benchmarks = load_benchmarks(self.specs, trainer.datamodule, transform)
        if self.max_batches(trainer):  # a smoke test: a few items of every benchmark
            benchmarks = [_head(b, self.max_batches(trainer) * 8) for b in benchmarks]
        results = evaluate_suite(
            model, benchmarks, batch_size=self.batch_size, num_workers=self.num_workers, trainer=trainer
        )
        metrics = {f"{name}/{k}": v for name, figures in results.items() for k, v in figures.items() if k != "skipped"}
        return {
            "metrics": {k: v for k, v in metrics.items() if not k.endswith("/items")},
            "benchmarks": results,
            "sources": {b.name: b.source for b in benchmarks},
            "model": describe_model(model, str(trainer.precision)),
            "checkpoint": trainer.ckpt_path,
            "table": to_markdown(results),
        }

    def summary(self, result: dict[str, Any]) -> str:
        return "\n" + result["table"]


def specs_from_config(path: str | Path) -> list[dict[str, Any]]:
    """The benchmark specs of a suite YAML (the ``EvaluationSuite`` callback's ``benchmarks``)."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    for callback in config.get("trainer", {}).get("callbacks", []):
        if str(callback.get("class_path", "")).endswith("EvaluationSuite"):
            return callback.get("init_args", {}).get("benchmarks") or [{"kind": "shapesworld"}]
    raise ValueError(f"{path} configures no callbacks.EvaluationSuite")


def suite_benchmarks(config: str | Path, model: LightningModule) -> list[Benchmark | RetrievalSet | ClassificationSet]:
    """The benchmarks of a suite YAML, ShapesWorld's generated with the data module's defaults."""
    from datamodules import ImageCaptionDataModule

    transform = model.data_transforms()["eval_transform"]
    return load_benchmarks(specs_from_config(config), ImageCaptionDataModule(), transform)


def compare(reports: list[str | Path], out_dir: str | Path) -> str:
    """Side-by-side Markdown table of several suite JSON reports (written to ``out_dir/compare.md``)
    and one PNG bar chart per benchmark family (the name before ``/``). Returns the table."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {Path(r).stem: json.loads(Path(r).read_text())["benchmarks"] for r in reports}
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for run, results in runs.items():
        for name, figures in results.items():
            for metric, value in figures.items():
                if metric not in ("items", "skipped", "macro_groups"):
                    rows.setdefault((name, metric), {})[run] = value
    lines = ["| benchmark | metric | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for (name, metric), values in rows.items():
        cells = [f"{100 * values[r]:.1f}" if r in values else "–" for r in runs]
        lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "compare.md").write_text(table + "\n")
    families = sorted({name.split("/")[0] for name, _ in rows})
    for family in families:
        keys = [k for k in rows if k[0].split("/")[0] == family]
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(keys) * len(runs)), 3.5))
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            ax.bar(
                [k + i * width for k in range(len(keys))],
                [100 * rows[key].get(run, float("nan")) for key in keys],
                width,
                label=run,
            )
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))])
        ax.set_xticklabels([f"{n.split('/', 1)[-1]}\n{m}" for n, m in keys], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("%")
        ax.set_title(family)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{family}.png", dpi=120)
        plt.close(fig)
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Stand-alone suite on an open_clip model (name + pretrained tag, ``local-dir:``) or a checkpoint;
    ``compare A.json B.json [--out DIR]`` puts several reports side by side."""
    import argparse
    import json

    argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="python -m callbacks.suite compare")
        parser.add_argument("reports", nargs="+")
        parser.add_argument("--out", default="suite-compare")
        args = parser.parse_args(argv[1:])
        print(compare(args.reports, args.out))
        return {}

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="open_clip model name or local-dir:/path")
    source.add_argument("--checkpoint", help="a zoo checkpoint (.ckpt)")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file")
    parser.add_argument("--module", default="zoo.CLIP", help="the zoo class of --checkpoint")
    parser.add_argument("--benchmarks", default="configs/eval/suite.yaml", help="suite YAML")
    parser.add_argument("--out", default="suite.json")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)

    from zoo.loading import load_model

    model, _ = load_model(args.checkpoint, args.module, args.model, args.pretrained)
    benchmarks = suite_benchmarks(args.benchmarks, model)
    results = evaluate_suite(model, benchmarks, batch_size=args.batch_size, num_workers=args.num_workers)
    report = {
        "benchmarks": results,
        "sources": {b.name: b.source for b in benchmarks},
        "model": describe_model(model),
        "checkpoint": args.checkpoint,
        "pretrained": args.pretrained,
    }
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(to_markdown(results))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
