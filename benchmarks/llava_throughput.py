"""Stage-2 training speed: the zoo's LLaVA step (a LightningModule under a Trainer) beside a plain transformers +
peft loop over the same model, data, loss and optimiser.

Each measurement runs in its own process (peak memory is the process's maximum resident set size, or the GPU's
peak allocation), variants interleaved over ``--repeats``; the first ``--warmup`` steps are not timed. Both sides
build the model with the same seed, freeze the same parameters, use AdamW (fused) over the same groups and the
same pre-collated batches (InstructionDataModule, ShapesWorld). The plain loop is what users of transformers'
LLaVA write: ``loss = model(**batch, labels=labels).loss; loss.backward(); optimizer.step()``.

    python benchmarks/llava_throughput.py [--repeats 3] [--steps 20] [--lora] [--threads 1]
    python benchmarks/llava_throughput.py --variants plain zoo "zoo+chunked loss" zoo+grouped zoo+packed zoo+compiled
                                         zoo+all   # the speed features one at a time, then together
    python benchmarks/llava_throughput.py --shape llava-7b --lora --steps 10   # on a GPU: LLaVA-1.5-7B-sized,
                                                                              # random init, bf16, 2048 tokens

The CPU goal: zoo / plain tokens/s >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {"vision_tower": "open_clip:vlzoo-tiny-vit", "language_model": "vlzoo-tiny-llama"}
LLAVA_7B_LM = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 32, "vocab_size": 32064}  # fmt: skip


VARIANTS = {  # name: (loop, data module options, zoo.LLaVA options, compile the LM)
    "plain": ("plain", {}, {}, False),
    "zoo": ("zoo", {}, {"loss_chunk_size": None}, False),
    "zoo+chunked loss": ("zoo", {}, {}, False),
    "zoo+grouped": ("zoo", {"group_by_length": True}, {"loss_chunk_size": None}, False),
    "zoo+packed": ("zoo", {"pack": True}, {"loss_chunk_size": None}, False),
    "zoo+compiled": ("zoo", {}, {"loss_chunk_size": None}, True),
    "zoo+all": ("zoo", {"group_by_length": True, "pack": True}, {}, True),
}


def build_model(shape: str, lora: bool, **options):
    """The LLaVA both sides train: the tiny default, or LLaVA-1.5-7B's geometry with random weights (GPU)."""
    from zoo import LLaVA

    settings = {"lora": {} if lora else None, "stage": "finetune", "warmup_ratio": 0.0, "lr_schedule": "constant",
                **options}  # fmt: skip
    if shape == "tiny":
        return LLaVA(**TINY, **settings)
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = Path("/tmp/vlzoo-clip-l-336")
    if not folder.exists():  # CLIP ViT-L/14 at 336 px, random weights
        config = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                                  num_hidden_layers=24, num_attention_heads=16, hidden_act="quick_gelu")  # fmt: skip
        CLIPVisionModel(config).save_pretrained(folder)
    return LLaVA(vision_tower=str(folder), language_model="vlzoo-tiny-llama", language_model_config=LLAVA_7B_LM,
                 max_length=2048, activation_checkpointing=True, **settings)  # fmt: skip


def make_batches(model, n: int, batch_size: int, shape: str, **options) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` training batches; ``pack``: rows of up to the longest sample's length (two or three short
    samples a row), ``group_by_length``: LLaVA's grouping (the epoch is 4 x n batches, so groups form)."""
    from datamodules.instruction import InstructionDataModule

    size, pack = model.image_spec.image_size, options.pop("pack", False)
    data = InstructionDataModule(shapesworld={"n_train": 4 * n * batch_size, "image_size": size},
                                 batch_size=batch_size, num_workers=0, **options)  # fmt: skip
    if pack:
        data.connect(**model.data_transforms())
        longest = max(len(r["input_ids"]) for r in data.records("train") if r is not None)
        data.pack_length = longest + model.image_tokens
    data.connect(**model.data_transforms())
    batches = list(data.loader("train", train=True, tokenize=True))[:n]
    if shape != "tiny":  # LLaVA-1.5's 2048-token samples: repeat the text to fill the length
        for b in batches:
            reps = 2048 // b["input_ids"].shape[1] + 1
            text = [b[k][:, model.image_tokens + 1 :] for k in ("input_ids", "labels", "attention_mask")]
            for key, tail in zip(("input_ids", "labels", "attention_mask"), text):
                b[key] = torch.cat([b[key], *[tail] * reps], 1)[:, :2048]
    return batches


def child(variant: str, args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loop, data_options, model_options, compiled = VARIANTS[variant]
    model = build_model(args.shape, args.lora, **model_options)
    batches = make_batches(model, args.steps + args.warmup, args.batch_size, args.shape, **data_options)
    if compiled:
        model.llava.model.language_model.compile(dynamic=True)  # lengths vary per batch
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup :])
    padding = 1 - sum(b["attention_mask"].float().mean().item() for b in batches) / len(batches)
    if loop == "zoo":
        from lightning.pytorch import Callback, Trainer

        class Clock(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
                if batch_idx == args.warmup:
                    if device == "cuda":
                        torch.cuda.synchronize()
                    self.start = time.perf_counter()

            def on_train_end(self, trainer, pl_module):  # noqa: ANN001
                if device == "cuda":
                    torch.cuda.synchronize()
                self.seconds = time.perf_counter() - self.start

        clock = Clock()
        trainer = Trainer(max_steps=len(batches), accelerator=device, devices=1, logger=False, callbacks=[clock],
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          precision="bf16-true" if device == "cuda" else "32-true")  # fmt: skip
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
        seconds = clock.seconds
    else:
        model = model.to(device, dtype)
        optimizer = torch.optim.AdamW(model.parameter_groups(), **model.optim_args, fused=True)
        llava = model.model  # the transformers (peft) model itself
        llava.train()
        for step, batch in enumerate(batches):
            if step == args.warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
            loss = llava(**batch).loss  # labels in the batch: transformers' own shifted CE
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens/s": tokens / seconds, "peak MiB": peak or rss, "memory": "GPU peak" if peak else "max RSS",
            "padding": padding}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lora", action="store_true", help="stage-2 LoRA (r 128) instead of full fine-tuning")
    parser.add_argument("--shape", choices=["tiny", "llava-7b"], default="tiny")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["zoo", "plain"])
    parser.add_argument("--child", choices=list(VARIANTS), default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    results: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    passed = [a for a in sys.argv[1:]]
    for _ in range(args.repeats):
        for variant in args.variants:  # interleaved: drifts of a shared machine hit them all
            out = subprocess.run([sys.executable, __file__, *passed, "--child", variant], capture_output=True,
                                 text=True, check=True).stdout  # fmt: skip
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
    kind = "LoRA r128" if args.lora else "full"
    print(f"\nLLaVA stage 2 ({kind}), shape {args.shape}, batch {args.batch_size}, {args.steps} timed steps, "
          f"{args.threads} thread(s), {args.repeats} interleaved repeats (median)")  # fmt: skip
    print("| loop | tokens/s (median) | range | padding | peak MiB | / plain (per repeat) |\n|---|---|---|---|---|---|")
    medians = {variant: statistics.median(r["tokens/s"] for r in runs) for variant, runs in results.items()}
    for variant, runs in results.items():
        speeds = [r["tokens/s"] for r in runs]
        ratios = ([f"{r['tokens/s'] / p['tokens/s']:.3f}" for r, p in zip(runs, results["plain"])]
                  if "plain" in results else [])  # fmt: skip
        print(f"| {variant} | {medians[variant]:.0f} | {min(speeds):.0f}-{max(speeds):.0f} | "
              f"{100 * runs[0]['padding']:.0f} % | {statistics.median(r['peak MiB'] for r in runs):.0f} "
              f"({runs[0]['memory']}) | {', '.join(ratios)} |")  # fmt: skip


if __name__ == "__main__":
    main()
