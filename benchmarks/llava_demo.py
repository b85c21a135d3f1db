"""LLaVA on ShapesWorld, end to end and offline: the zoo's CLIP as the vision tower, the zoo's tiny LLM,
stage 1 (projector), stage 2 (full and LoRA); short-answer accuracy per question type after each stage.

Stages, each a ``train.py fit`` of a packaged config (as a user runs them):

1. ``clip``: configs/clip.yaml (the CLIP demo); its checkpoint becomes the LLaVA vision tower (converted to
   transformers' ``CLIPVisionModel``). Skip it with ``--clip-checkpoint PATH``.
2. ``llm``: configs/llm_pretrain.yaml, a tiny Llama trained on ShapesWorld text; its HF folder is the LLM.
3. ``stage 1``: configs/llava_pretrain.yaml (projector only, ``plain`` template).
4. ``stage 2`` and ``stage 2 LoRA``: configs/llava_finetune.yaml and llava_finetune_lora.yaml, both from
   stage 1's checkpoint (``init_from``).

    python benchmarks/llava_demo.py [--keep runs/llava_demo] [--clip-checkpoint PATH] [--stage1-steps 300]
                                    [--stage2-steps 600] [--llm-epochs 1] [--clip-epochs 2] [--llm FOLDER]

Prints: VQA accuracy per question type beside the majority baseline after each LLaVA stage (the
``callbacks.VQAEvaluation`` of the configs), one generated detailed description beside the scene's true long
caption, and training tokens/s of each stage (tokens = attention-mask ones, images' placeholders included).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402

TYPES = ["color", "shape", "count", "relation", "exists", "side"]


class TokenRate(Callback):
    """Training tokens per second (attention-mask ones), from the first batch to the end of fit."""

    def __init__(self) -> None:
        self.tokens, self.start, self.seconds = 0, None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.start is None:
            self.start = time.perf_counter()
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.seconds = time.perf_counter() - (self.start or time.perf_counter())


def fit(config: str, root: Path, name: str, *overrides: str) -> tuple[object, dict[str, float]]:
    rate = TokenRate()
    args = ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--seed_everything", "0"]
    args += ["--trainer.default_root_dir", str(root / name), "--trainer.logger.init_args.save_dir", str(root)]
    args += ["--trainer.logger.init_args.name", name, "--trainer.enable_progress_bar", "false", *overrides]
    start = time.perf_counter()
    cli = train.main(args, run=False)
    cli.trainer.callbacks.append(rate)
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    metrics["minutes"] = (time.perf_counter() - start) / 60
    metrics["tokens/s"] = rate.tokens / rate.seconds if rate.seconds else float("nan")
    return cli, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", default=None, help="keep the runs in this folder")
    parser.add_argument("--clip-checkpoint", default=None, help="a zoo CLIP checkpoint (skips the CLIP stage)")
    parser.add_argument("--llm", default=None, help="a trained LLM folder (skips the LLM stage)")
    parser.add_argument("--clip-epochs", type=int, default=2)
    parser.add_argument("--llm-epochs", type=int, default=1)
    parser.add_argument("--stage1-steps", type=int, default=300)
    parser.add_argument("--stage2-steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        rows: dict[str, dict[str, float]] = {}
        clip = args.clip_checkpoint
        if clip is None:
            cli, rows["clip"] = fit("clip", root, "clip", "--trainer.max_epochs", str(args.clip_epochs),
                                    "--trainer.callbacks", "[]")  # fmt: skip
            clip = cli.trainer.checkpoint_callback.last_model_path
        llm = Path(args.llm or root / "llm_hf")
        if args.llm is None:
            _, rows["llm"] = fit("llm_pretrain", root, "llm", "--trainer.max_epochs", str(args.llm_epochs),
                                 "--model.init_args.export_dir", str(llm))  # fmt: skip
        base = ["--model.init_args.vision_tower", str(clip), "--model.init_args.language_model", str(llm)]
        steps1 = ["--trainer.max_steps", str(args.stage1_steps)]
        cli, rows["stage 1"] = fit("llava_pretrain", root, "stage1", *base, *steps1)
        stage1 = cli.trainer.checkpoint_callback.last_model_path
        tune = [*base, "--model.init_args.init_from", stage1, "--trainer.max_steps", str(args.stage2_steps)]
        cli, rows["stage 2"] = fit("llava_finetune", root, "stage2", *tune)
        full = cli.model
        _, rows["stage 2 LoRA"] = fit("llava_finetune_lora", root, "stage2_lora", *tune)

        print("\nShort-answer VQA on ShapesWorld val (accuracy %, majority-answer baseline in brackets)")
        print("| stage | " + " | ".join(TYPES) + " | all | tokens/s | minutes |")
        print("|---" * (len(TYPES) + 4) + "|")
        for stage in ("stage 1", "stage 2", "stage 2 LoRA"):
            m = rows[stage]
            cells = [f"{100 * m.get(f'val/vqa/{t}/accuracy', float('nan')):.1f} "
                     f"({100 * m.get(f'val/vqa/{t}/majority_baseline', float('nan')):.1f})" for t in TYPES]  # fmt: skip
            overall = 100 * m.get("val/vqa/accuracy", float("nan"))
            cells += [f"{overall:.1f}", f"{m['tokens/s']:.0f}", f"{m['minutes']:.1f}"]
            print(f"| {stage} | " + " | ".join(cells) + " |")
        if "clip" in rows:
            print(f"clip: {rows['clip']['minutes']:.1f} min")
        if "llm" in rows:
            print(f"llm: {rows['llm']['minutes']:.1f} min, {rows['llm']['tokens/s']:.0f} tokens/s")

        from datamodules.shapesworld import generate_sample

        sample = generate_sample(0, "val", 0, 64, 4)
        full = full.eval()
        answer = full.generate(sample["image"], "Describe the image in detail.", max_new_tokens=120)[0]
        print(f"\nDetailed description (stage 2, val scene 0):\n  generated: {answer}")
        print(f"  true:      {sample['long_caption']}")


if __name__ == "__main__":
    main()
