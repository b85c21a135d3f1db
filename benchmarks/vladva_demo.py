"""VladVA's Table 4 on ShapesWorld, offline: a trained zoo LLaVA turned into a two-tower embedding model, one
adaptation at a time; retrieval R@1 both ways and compositional multiple-choice accuracy per category, beside the
zoo's CLIP (and FSC-CLIP) evaluated on the same validation images and captions.

Every row is a ``train.py`` run of the packaged configs, as a user runs them (``--config configs/vladva.yaml
--config configs/vladva/<row>.yaml``), on the LLaVA exported with ``LLaVA.export_hf`` (LoRA merged):

* ``no_adaptation``: ``validate`` only (the zero-shot LVLM with the handcrafted one-word prompts);
* ``soft_prompts``, ``lora``, ``lora_soft_prompts``: ``fit`` with the contrastive loss only;
* ``lora_soft_prompts_ar``: ``fit`` with L = L_c + λ·L_AR (the full method, = configs/vladva.yaml).

Each ``fit`` trains ``--steps`` optimiser steps (batch ``--batch-size``: the contrastive negatives) on
``--n-train`` ShapesWorld scenes without validating, then ``validate`` runs on the final weights: the configs'
``callbacks.RetrievalEvaluation`` (``--n-val`` scenes, all their short captions) and
``callbacks.CompositionalityEvaluation`` (ShapesWorld's compositional split of ``--n-compositional`` scenes).

Reference rows: ``validate`` of configs/clip.yaml with ``--clip`` (default: the LLaVA's own vision tower when it is
a zoo CLIP checkpoint) and of configs/fsc_clip.yaml with ``--fsc-clip``; without ``--fsc-clip`` an FSC-CLIP is
fine-tuned from ``--clip`` for ``--fsc-clip-epochs`` (configs/fsc_clip.yaml, the CLIP exported to open_clip and
loaded as ``pretrained``, lr ``--fsc-clip-lr``). Every row sees the same ShapesWorld validation scenes (seed 0,
64 px; a scene is a function of (seed, index)), which the script checks by fingerprinting each run's data.

    python benchmarks/vladva_demo.py --llava PATH [--keep DIR] [--steps 150] [--n-train 2048] [--n-val 256]
                                     [--batch-size 32] [--n-compositional 256] [--val-batches 2]
                                     [--clip PATH] [--fsc-clip PATH] [--fsc-clip-epochs 1] [--fsc-clip-lr 1e-4]
                                     [--rows no_adaptation soft_prompts lora lora_soft_prompts lora_soft_prompts_ar]
                                     [--references clip fsc_clip]

``--llava``: a zoo LLaVA checkpoint (``.ckpt``, exported to ``<keep>/llava_hf``) or an HF LLaVA folder (used as
is). Prints a markdown table (recall and accuracy in %, chance levels, training minutes), the soft prompts read
back as their nearest vocabulary tokens, and writes everything to ``<keep>/vladva_demo.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from callbacks import CompositionalityEvaluation, RetrievalEvaluation  # noqa: E402

ROWS = ["no_adaptation", "soft_prompts", "lora", "lora_soft_prompts", "lora_soft_prompts_ar"]
LABELS = {
    "no_adaptation": "no adaptation (zero-shot)",
    "soft_prompts": "+ soft prompts",
    "lora": "+ LoRA",
    "lora_soft_prompts": "+ LoRA + soft prompts",
    "lora_soft_prompts_ar": "+ LoRA + soft prompts + L_AR",
    "clip": "CLIP (the zoo's, the LLaVA's vision tower)",
    "fsc_clip": "FSC-CLIP (the zoo's)",
}
CATEGORIES = ["swap_attribute", "swap_object", "replace_attribute", "replace_object", "replace_relation"]


class TrainTime(Callback):
    """Seconds from the first training batch to the end of fit, and each batch's own seconds (its step)."""

    def __init__(self) -> None:
        self.start, self.seconds, self.batch_start, self.steps = None, 0.0, 0.0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.batch_start = time.perf_counter()
        if self.start is None:
            self.start = self.batch_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.steps.append(time.perf_counter() - self.batch_start)

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.seconds = time.perf_counter() - (self.start or time.perf_counter())

    def median_step(self) -> float:
        return sorted(self.steps)[len(self.steps) // 2] if self.steps else float("nan")


def build(configs: list[str], root: Path, name: str, *overrides: str) -> Any:
    """``train.py`` with the packaged ``configs`` stacked, logging under ``root/name``; model, data and trainer
    built (``run=False``) so the script can time the run and read its callbacks."""
    args = [a for config in configs for a in ("--config", str(ROOT / "configs" / f"{config}.yaml"))]
    args += ["--seed_everything", "0", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.default_root_dir", str(root / name), "--trainer.logger.init_args.save_dir", str(root)]
    args += ["--trainer.logger.init_args.name", name, "--data.init_args.benchmark_dir", str(root / "benchmark")]
    argv, sys.argv[1:] = sys.argv[1:], []  # LightningCLI warns of command-line arguments beside ``args``
    try:
        return train.main([*args, *overrides], run=False)
    finally:
        sys.argv[1:] = argv


def evaluators(cli: Any, n_compositional: int) -> tuple[RetrievalEvaluation, CompositionalityEvaluation]:
    """The run's two evaluation callbacks (the compositional split sized alike for every row)."""
    retrieval = next(c for c in cli.trainer.callbacks if isinstance(c, RetrievalEvaluation))
    compositional = next(c for c in cli.trainer.callbacks if isinstance(c, CompositionalityEvaluation))
    compositional.n = n_compositional
    return retrieval, compositional


def fingerprint(datamodule: Any) -> dict[str, Any]:
    """SHA-256 of the validation split as the run's data module gives it (keys, short captions, pixels)."""
    records = datamodule.records("val")
    digest, captions = hashlib.sha256(), 0
    for i in range(len(records)):
        record = records[i]
        digest.update(record["key"].encode() + b"\0" + "\n".join(record["captions"]).encode() + b"\0")
        digest.update(record["image"].convert("RGB").tobytes())
        captions += len(record["captions"])
    return {"sha256": digest.hexdigest(), "images": len(records), "captions": captions}


def validate(cli: Any, n_compositional: int, ckpt_path: str | None = None) -> dict[str, Any]:
    """``validate`` with the run's trainer; the two callbacks' results (their JSON files) and the seconds."""
    retrieval, compositional = evaluators(cli, n_compositional)
    start = time.perf_counter()
    cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    found = json.loads(retrieval.written[-1].read_text())
    composed = json.loads(compositional.written[-1].read_text())
    return {
        "i2t_R@1": found["metrics"]["i2t_R@1"],
        "t2i_R@1": found["metrics"]["t2i_R@1"],
        "retrieval": found,
        "compositionality": composed["metrics"],
        "benchmark": composed["benchmark"],
        "val/loss": float(cli.trainer.callback_metrics.get("val/loss", float("nan"))),
        "eval_minutes": seconds / 60,
        "data": fingerprint(cli.datamodule),
        "results": [str(retrieval.written[-1]), str(compositional.written[-1])],
    }


def llava_folder(llava: str, root: Path) -> Path:
    """An HF LLaVA folder: ``llava`` itself, or a zoo LLaVA checkpoint exported (LoRA merged) to root/llava_hf."""
    if Path(llava).is_dir():
        return Path(llava)
    from zoo import LLaVA

    model = LLaVA.load_from_checkpoint(llava, map_location="cpu")
    return model.export_hf(root / "llava_hf", merge_lora=True)


def default_clip(llava: str) -> str | None:
    """The LLaVA's vision tower when it is a zoo CLIP checkpoint (the reference VladVA's images are seen through)."""
    if not llava.endswith(".ckpt"):
        return None
    tower = torch.load(llava, map_location="cpu", weights_only=False)["hyper_parameters"].get("vision_tower")
    return tower if isinstance(tower, str) and tower.endswith(".ckpt") and Path(tower).is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llava", required=True, help="a zoo LLaVA .ckpt or an HF LLaVA folder")
    parser.add_argument("--keep", default=None, help="keep the runs (and vladva_demo.json) in this folder")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of each fitted row")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch (the contrastive negatives)")
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--n-val", type=int, default=256)
    parser.add_argument("--n-compositional", type=int, default=256, help="scenes of the compositional split")
    parser.add_argument("--val-batches", type=int, default=2, help="batches of the val/loss loop (not the callbacks)")
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--references", nargs="*", default=["clip", "fsc_clip"], choices=["clip", "fsc_clip"])
    parser.add_argument("--clip", default=None, help="a zoo CLIP checkpoint (default: the LLaVA's vision tower)")
    parser.add_argument("--fsc-clip", default=None, help="a zoo FSC-CLIP checkpoint (default: fine-tune one)")
    parser.add_argument("--fsc-clip-epochs", type=int, default=1, help="0: no FSC-CLIP row unless --fsc-clip")
    parser.add_argument("--fsc-clip-lr", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        base = llava_folder(args.llava, root)
        export_minutes = (time.perf_counter() - start) / 60
        sizes = ["--data.init_args.shapesworld.n_train", str(args.n_train), "--data.init_args.shapesworld.n_val",
                 str(args.n_val), "--data.init_args.shapesworld.seed", "0",
                 "--data.init_args.shapesworld.image_size", "64"]  # fmt: skip
        results: dict[str, dict[str, Any]] = {}
        words: dict[str, dict[str, str]] = {}

        for row in args.rows:
            configs = ["vladva", f"vladva/{row}"]
            common = ["--model.init_args.model_name_or_path", str(base), *sizes]
            common += ["--data.init_args.batch_size", str(args.batch_size)]
            if row == "no_adaptation":  # nothing but the temperature trains: the zero-shot LVLM, validated
                cli = build(configs, root, row, *common, "--trainer.limit_val_batches", str(args.val_batches))
                results[row] = {**validate(cli, args.n_compositional), "train_minutes": 0.0, "steps": 0}
                continue
            # fit without validating (no sanity check, no per-epoch evaluation), then validate the final weights
            steps = ["--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "-1"]
            cli = build(configs, root, row, *common, *steps, "--trainer.limit_val_batches", "0")
            timer = TrainTime()
            cli.trainer.callbacks.append(timer)
            cli.trainer.fit(cli.model, cli.datamodule)
            trained = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("train/")}
            cli.trainer.limit_val_batches = args.val_batches  # validate resets callback_metrics: read them first
            results[row] = validate(cli, args.n_compositional)
            results[row].update(train_minutes=timer.seconds / 60, steps=cli.trainer.global_step)
            results[row]["median_step_seconds"] = timer.median_step()
            results[row]["checkpoint"] = cli.trainer.checkpoint_callback.last_model_path
            results[row]["last_train_metrics"] = trained
            words[row] = cli.model.soft_prompt_words()

        reference_sizes = ["--data.init_args.shapesworld.n_val", str(args.n_val), *sizes[4:]]
        clip = args.clip or default_clip(args.llava)
        fsc_clip = args.fsc_clip if "fsc_clip" in args.references else None
        fsc_train_minutes = None
        wanted = "fsc_clip" in args.references and fsc_clip is None and args.fsc_clip_epochs > 0
        if wanted and clip is not None:  # a short FSC-CLIP from the CLIP
            from zoo import CLIP

            weights = CLIP.load_from_checkpoint(clip, map_location="cpu").export_open_clip(root / "clip_open_clip")
            cli = build(["fsc_clip"], root, "fsc_clip", "--trainer.max_epochs", str(args.fsc_clip_epochs),
                        "--model.init_args.backbone.pretrained", str(weights), "--model.init_args.lr",
                        str(args.fsc_clip_lr), "--trainer.limit_val_batches", "0")  # fmt: skip
            timer = TrainTime()
            cli.trainer.callbacks.append(timer)
            cli.trainer.fit(cli.model, cli.datamodule)
            fsc_clip, fsc_train_minutes = cli.trainer.checkpoint_callback.last_model_path, timer.seconds / 60
        for name, config, checkpoint, minutes in (
            ("clip", "clip", clip, None),
            ("fsc_clip", "fsc_clip", fsc_clip, fsc_train_minutes),
        ):
            if checkpoint is None or name not in args.references:
                continue
            cli = build([config], root, f"{name}_val", *reference_sizes)
            results[name] = {**validate(cli, args.n_compositional, ckpt_path=checkpoint), "checkpoint": checkpoint}
            results[name]["train_minutes"] = minutes

        # the same validation scenes and captions, and the same compositional split, in every row
        prints = {json.dumps(r["data"], sort_keys=True) for r in results.values()}
        benchmarks = {r["benchmark"] for r in results.values()}
        if len(prints) != 1 or len(benchmarks) != 1:
            raise RuntimeError(f"the rows saw different validation data: {prints} / {benchmarks}")

        chance = next(iter(results.values()))["retrieval"]["chance"]
        data = next(iter(results.values()))["data"]
        print(
            f"\nVladVA Table 4 on ShapesWorld val ({data['images']} scenes, {data['captions']} short captions; "
            f"compositional split of {args.n_compositional} scenes), {args.steps} steps x batch {args.batch_size} "
            f"on {args.n_train} training scenes; recall and accuracy in %"
        )
        columns = ["i2t R@1", "t2i R@1", *CATEGORIES, "mean", "train min"]
        print("| row | " + " | ".join(columns) + " |")
        print("|---" * (len(columns) + 1) + "|")
        print(f"| chance | {100 * chance['i2t_R@1']:.1f} | {100 * chance['t2i_R@1']:.1f} | "
              + " | ".join(["50.0"] * (len(CATEGORIES) + 1)) + " | |")  # fmt: skip
        for name, r in results.items():
            accuracy = r["compositionality"]
            cells = [f"{100 * r['i2t_R@1']:.1f}", f"{100 * r['t2i_R@1']:.1f}"]
            cells += [f"{100 * accuracy[c]:.1f}" for c in [*CATEGORIES, "mean"]]
            minutes = r.get("train_minutes")
            cells.append("-" if minutes is None else f"{minutes:.1f}")
            print(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        print(
            "mean: the macro average of the five categories (a tie is a failure); train min: the fit alone "
            "(CLIP: not trained here; FSC-CLIP: its fine-tuning from the CLIP)"
        )
        evaluation = ", ".join(f"{name} {r['eval_minutes']:.1f}" for name, r in results.items())
        print(f"evaluation minutes (validate: val/loss on {args.val_batches} batches + both callbacks): {evaluation}")
        print(f"LLaVA export: {export_minutes:.2f} min")
        for row, found in words.items():
            for modality, text in found.items():
                print(f"soft {modality} prompt after {row}: {text!r}")

        out = {
            "command": " ".join(sys.argv),
            "llava": args.llava,
            "base": str(base),
            "settings": {k: v for k, v in vars(args).items() if k not in ("llava", "keep")},
            "chance": {**chance, "compositional": 0.5},
            "validation_data": data,
            "rows": results,
            "soft_prompt_words": words,
            "export_minutes": export_minutes,
            "total_minutes": (time.perf_counter() - start) / 60,
        }
        (root / "vladva_demo.json").write_text(json.dumps(out, indent=2, default=str))
        print(f"total {out['total_minutes']:.1f} min; results in {root / 'vladva_demo.json'}")


if __name__ == "__main__":
    main()
