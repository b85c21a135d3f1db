"""What M3ID decoding costs beside greedy decoding: ``model.generate`` on the same prompts and images, with and
without :class:`zoo.decoding.M3IDLogitsProcessor` (one extra text-only forward pass a step, its own KV cache).

One process, one thread (``--threads``), the variants interleaved over ``--repeats`` (their order alternating),
after one untimed warm-up call each; both decode exactly ``--new-tokens`` tokens (``min_new_tokens`` too, so EOS
cannot end one early). Prints each variant's median and range (seconds per call) and the ratio M3ID / greedy of
the medians and of each repeat's pair. No asserts: a measurement, not a test.

    python benchmarks/m3id_cost.py [--shape tiny|small] [--repeats 7] [--new-tokens 32] [--batch 4]

``tiny``: the test suite's width-32 LLaVA (per-call overhead dominates); ``small``: random weights, LM width 512,
8 layers (the matrix products start to count). Random weights only: no download.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2},
    "small": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 8},
}  # fmt: skip
QUESTIONS = ["What shape is in the picture, and where is it?", "How many objects?", "Describe the image.",
             "What colour is the large circle on the left of the square?"]  # fmt: skip


def build(shape: str):
    """A random-weight zoo LLaVA (the zoo's tiny ViT tower, ``vlzoo-tiny-llama`` at ``shape``), in eval mode, with
    noise on its weights so that greedy answers are not one repeated token."""
    from zoo import LLaVA

    torch.manual_seed(0)
    model = LLaVA(vision_tower="open_clip:vlzoo-tiny-vit", language_model="vlzoo-tiny-llama",
                  language_model_config=dict(SHAPES[shape]), stage="finetune").eval()  # fmt: skip
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def inputs(model, batch: int) -> dict:
    size = model.image_spec.image_size
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(batch)]
    questions = ["<image>\n" + QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
    prompts = model.prompt_batch(images, questions)
    input_ids, mask, _ = model.padded(prompts, "left")
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": prompts.images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from zoo.decoding import m3id_generate

    model = build(args.shape)
    llava, batch = model.llava, inputs(model, args.batch)
    image_id, pad = llava.config.image_token_id, model.tokenizer.pad_token_id
    options = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
               "pad_token_id": pad}  # fmt: skip
    variants = {
        "greedy": lambda: llava.generate(**batch, **options),
        "m3id": lambda: m3id_generate(
            llava, batch["input_ids"], batch["attention_mask"], image_id, pixel_values=batch["pixel_values"], **options
        ),  # fmt: skip
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for run in variants.values():  # warm-up
            run()
        for repeat in range(args.repeats):
            for name in list(variants)[:: 1 if repeat % 2 == 0 else -1]:
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
    width = batch["input_ids"].shape[1]
    print(f"shape {args.shape}, batch {args.batch}, prompt {width} tokens (image {model.image_tokens}), "
          f"{args.new_tokens} new tokens, {args.repeats} repeats, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")  # fmt: skip
    for name, values in times.items():
        print(f"{name:7s} median {statistics.median(values):.4f} s  range {min(values):.4f}-{max(values):.4f} s")
    pairs = [m / g for m, g in zip(times["m3id"], times["greedy"])]
    ratio = statistics.median(times["m3id"]) / statistics.median(times["greedy"])
    print(f"m3id / greedy: {ratio:.2f}x (ratio of medians); per-repeat pairs median {statistics.median(pairs):.2f}x, "
          f"range {min(pairs):.2f}-{max(pairs):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
