"""LLaVA-1.5 vs LLaVA-1.5-HD vs LLaVA-NeXT AnyRes on ShapesWorld, offline: the same vision tower, LLM, stage-1
projector, data, batch, learning rate and steps; only the image input differs.

Rows (each a ``train.py fit`` of a packaged config, as a user runs it, from the same stage-1 checkpoint):

* ``llava15``: configs/llava_finetune.yaml (pad to a square with the mean colour, resize to the tower's size);
* ``hd``: configs/llava_hd.yaml (a fixed 2×2 grid of native tiles + the downsampled whole image);
* ``hd_tiles``: the same without the global view (``high_res.global_context false``: the "tiles only" ablation);
* ``anyres``: configs/llava_next_anyres.yaml (canvas per image, unpad, newline, global view first).

Splits: ``small_objects`` (4-8 small shapes on a 128×256 canvas, where resolution matters) and ``grid`` (the
ordinary 64 px scenes). Each run trains ``--steps`` steps of batch ``--batch-size`` at lr ``--lr`` on its split and
is scored by its config's ``callbacks.VQAEvaluation`` (the first ``--n-vqa`` validation questions of the split:
exact match per question type, the majority answer of each type from the training questions beside it).

    python benchmarks/high_res_demo.py --clip CLIP.ckpt --llm LLM_FOLDER --stage1 STAGE1.ckpt [--keep DIR]
        [--steps 256] [--batch-size 8] [--lr 1e-4] [--n-vqa 128] [--rows llava15 hd hd_tiles anyres]
        [--splits small_objects grid]

``benchmarks/llava_demo.py --keep DIR`` writes the three inputs (DIR/clip, DIR/llm_hf, DIR/stage1). Prints a
markdown table per split (accuracy %, visual tokens per image, training tokens/s, minutes) and writes
``<keep>/high_res_demo.json``.
"""

from __future__ import annotations

import argparse
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
from callbacks import VQAEvaluation  # noqa: E402

TYPES = ["color", "shape", "count", "relation", "exists", "side"]
ROWS: dict[str, tuple[str, list[str]]] = {
    "llava15": ("llava_finetune", []),
    "hd": ("llava_hd", []),
    "hd_tiles": ("llava_hd", ["--model.init_args.high_res.global_context", "false"]),
    "anyres": ("llava_next_anyres", []),
}
LABELS = {
    "llava15": "LLaVA-1.5 (pad + resize)",
    "hd": "HD (2×2 + global)",
    "hd_tiles": "HD (2×2 tiles only)",
    "anyres": "AnyRes (LLaVA-NeXT)",
}


class InputCost(Callback):
    """Training tokens (attention-mask ones) per second, and the visual tokens of each image sample."""

    def __init__(self) -> None:
        self.tokens, self.start, self.seconds = 0, None, 0.0
        self.visual: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is None:
            self.start = time.perf_counter()
        mask = batch["attention_mask"].bool()
        self.tokens += int(mask.sum())
        image = (batch["input_ids"] == pl_module.llava.config.image_token_id) & mask
        self.visual += [int(n) for n in image.sum(-1).tolist() if n]  # text-only rows' placeholders are masked

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.seconds = time.perf_counter() - (self.start or time.perf_counter())


def run(row: str, split: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One fit of ``row`` on ``split``; its VQA figures, visual tokens per image, tokens/s and minutes."""
    config, extra = ROWS[row]
    name = f"{row}_{split}"
    cli_args = ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--seed_everything", "0", *extra]
    cli_args += ["--model.init_args.vision_tower", args.clip, "--model.init_args.language_model", args.llm]
    cli_args += ["--model.init_args.init_from", args.stage1, "--model.init_args.lr", str(args.lr)]
    cli_args += ["--data.init_args.batch_size", str(args.batch_size), "--data.init_args.shapesworld.layout", split]
    cli_args += ["--data.init_args.shapesworld.n_train", str(args.steps * args.batch_size)]
    cli_args += ["--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "1"]
    cli_args += ["--trainer.default_root_dir", str(root / name), "--trainer.logger.init_args.save_dir", str(root)]
    cli_args += ["--trainer.logger.init_args.name", name, "--trainer.enable_progress_bar", "false"]
    argv, sys.argv[1:] = sys.argv[1:], []  # LightningCLI warns of command-line arguments beside ``args``
    try:
        cli = train.main(cli_args, run=False)
    finally:
        sys.argv[1:] = argv
    vqa = next(c for c in cli.trainer.callbacks if isinstance(c, VQAEvaluation))
    vqa.n = args.n_vqa  # the same questions for every row of the split
    cost = InputCost()
    cli.trainer.callbacks.append(cost)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    return {
        "accuracy": {t: metrics.get(f"val/vqa/{t}/accuracy") for t in TYPES},
        "majority": {t: metrics.get(f"val/vqa/{t}/majority_baseline") for t in TYPES},
        "all": metrics.get("val/vqa/accuracy"),
        "all_majority": metrics.get("val/vqa/majority_baseline"),
        "visual_tokens": sum(cost.visual) / max(len(cost.visual), 1),
        "visual_tokens_range": [min(cost.visual, default=0), max(cost.visual, default=0)],
        "tokens_per_second": cost.tokens / cost.seconds if cost.seconds else float("nan"),
        "minutes": (time.perf_counter() - start) / 60,
        "train_loss": metrics.get("train/loss"),
        "val_loss": metrics.get("val/loss"),
        "checkpoint": cli.trainer.checkpoint_callback.last_model_path,
    }


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", required=True, help="a zoo CLIP checkpoint (the vision tower)")
    parser.add_argument("--llm", required=True, help="the tiny LLM's HF folder")
    parser.add_argument("--stage1", required=True, help="a zoo LLaVA stage-1 checkpoint (the projector)")
    parser.add_argument("--keep", default=None, help="keep the runs (and high_res_demo.json) in this folder")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n-vqa", type=int, default=128, help="validation questions per split")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--splits", nargs="+", default=["small_objects", "grid"], choices=["small_objects", "grid"])
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        root.mkdir(parents=True, exist_ok=True)
        results: dict[str, dict[str, Any]] = {}
        for split in args.splits:
            for row in args.rows:
                print(f"=== {row} on {split}", flush=True)
                results[f"{row}/{split}"] = run(row, split, args, root)
        for split in args.splits:
            print(f"\n{split}: VQA accuracy % (majority baseline in brackets), {args.steps} steps x batch "
                  f"{args.batch_size}, lr {args.lr}, {args.n_vqa} validation questions")  # fmt: skip
            print("| input | " + " | ".join(TYPES) + " | all | visual tokens | tokens/s | minutes |")
            print("|---" * (len(TYPES) + 5) + "|")
            for row in args.rows:
                r = results[f"{row}/{split}"]
                cells = [f"{percent(r['accuracy'][t])} ({percent(r['majority'][t])})" for t in TYPES]
                low, high = r["visual_tokens_range"]
                tokens = f"{r['visual_tokens']:.0f}" + (f" ({low}-{high})" if low != high else "")
                cells += [f"{percent(r['all'])} ({percent(r['all_majority'])})", tokens,
                          f"{r['tokens_per_second']:.0f}", f"{r['minutes']:.1f}"]  # fmt: skip
                print(f"| {LABELS[row]} | " + " | ".join(cells) + " |")
        out = {"command": " ".join(sys.argv), "settings": vars(args), "results": results}
        (root / "high_res_demo.json").write_text(json.dumps(out, indent=2))
        print(f"results in {root / 'high_res_demo.json'}")


if __name__ == "__main__":
    main()
