"""CLIP vs NegCLIP vs FSC-CLIP on ShapesWorld: same seed, data and steps; retrieval and compositional accuracy.

Trains each variant with ``train.py fit`` from its config (tiny ViT, ShapesWorld) and prints one
table: retrieval R@1 both ways and multiple-choice accuracy per negative category of the ShapesWorld
compositional split. Variants:

* ``clip``: configs/clip.yaml;
* ``negclip``: configs/negclip.yaml, rule-based swap negatives (NegCLIP's own rule);
* ``negclip-rules``: the three rule-based generators FSC-CLIP uses (negclip, replace, bigram_shuffle);
* ``negclip-exact``: ShapesWorld's exact negatives of all five types;
* ``fsc-clip``: configs/fsc_clip.yaml (the same three rule-based negatives as ``negclip-rules``);
* ``fsc-clip-no-local`` / ``fsc-clip-no-scr``: its Table 2 ablations (configs/fsc_clip/*.yaml).

    python benchmarks/compositionality.py [--epochs 3] [--variants clip negclip ...] [--keep runs/compare]
                                          [-- extra train.py overrides]

With ``--finetune-epochs N`` every variant instead fine-tunes, for N epochs at ``--finetune-lr``, the
same CLIP first trained for ``--epochs`` (exported to open_clip and loaded as ``pretrained``), which
is NegCLIP's own setting (fine-tuning a pre-trained CLIP); the base model's row is printed first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # train.py is a script at the repository root

import train  # noqa: E402

EXACT = "[swap_attribute, swap_object, replace_attribute, replace_object, replace_relation]"
VARIANTS = {
    "clip": ["--config", str(ROOT / "configs" / "clip.yaml")],
    "negclip": ["--config", str(ROOT / "configs" / "negclip.yaml")],
    "negclip-rules": [
        "--config",
        str(ROOT / "configs" / "negclip.yaml"),
        "--data.init_args.hard_negatives",
        "[negclip, replace, bigram_shuffle]",
    ],
    "negclip-exact": ["--config", str(ROOT / "configs" / "negclip.yaml"), "--data.init_args.hard_negatives", EXACT],
    "fsc-clip": ["--config", str(ROOT / "configs" / "fsc_clip.yaml")],
    **{
        f"fsc-clip-{ablation.replace('_', '-')}": [
            "--config",
            str(ROOT / "configs" / "fsc_clip.yaml"),
            "--config",
            str(ROOT / "configs" / "fsc_clip" / f"{ablation}.yaml"),
        ]
        for ablation in ("no_local", "no_scr")
    },
}
CATEGORIES = ["swap_attribute", "swap_object", "replace_attribute", "replace_object", "replace_relation"]


def run(variant: str, epochs: int, overrides: list[str], root: Path, export: Path | None = None) -> dict[str, float]:
    """Train one variant; with ``export``, export the trained model there (open_clip layout)."""
    args = ["fit", *VARIANTS[variant], "--trainer.max_epochs", str(epochs), "--seed_everything", "0"]
    args += ["--trainer.default_root_dir", str(root / variant), "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.logger.init_args.save_dir", str(root / variant)]
    args += ["--data.init_args.benchmark_dir", str(root / "benchmark"), *overrides]
    start = time.perf_counter()
    cli = train.main(args)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    metrics["minutes"] = (time.perf_counter() - start) / 60
    if export is not None:
        cli.model.export_open_clip(export)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--keep", default=None, help="keep the runs (checkpoints, exports) in this folder")
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        if args.finetune_epochs:
            results = {"base clip": run("clip", args.epochs, overrides, root / "base", export=root / "export")}
            weights = str(root / "export" / "open_clip_pytorch_model.bin")
            tune = ["--model.init_args.backbone.pretrained", weights, "--model.init_args.lr", str(args.finetune_lr)]
            for v in args.variants:
                results[f"{v} (fine-tuned)"] = run(v, args.finetune_epochs, overrides + tune, root)
        else:
            results = {v: run(v, args.epochs, overrides, root) for v in args.variants}

    columns = ["i2t R@1", "t2i R@1", *CATEGORIES, "mean", "minutes"]
    keys = ["val/retrieval/i2t_R@1", "val/retrieval/t2i_R@1"]
    keys += [f"val/compositionality/{c}" for c in [*CATEGORIES, "mean"]] + ["minutes"]
    setting = f"{args.epochs} epochs" + (f" + {args.finetune_epochs} fine-tuning" if args.finetune_epochs else "")
    print(f"\nShapesWorld, {setting}, seed 0 (accuracy and recall in %)")
    print("| variant | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for variant, metrics in results.items():
        cells = [f"{metrics[k]:.1f}" if k == "minutes" else f"{100 * metrics[k]:.1f}" for k in keys]
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
