"""LLaVA-NeXT AnyRes under DDP on two CPU processes (gloo), as tests/test_ddp_llava.py does for LLaVA-1.5: rank 0
trains on image samples (of different sizes: other grids, other token counts), rank 1 on text-only ones, which
carry a black image's views with masked placeholders. Loss and every trainable gradient (``image_newline``
included) equal one process over both batches, and the run needs no ``find_unused_parameters``. This file is also
the script each rank runs (``python tests/test_ddp_llava_high_res.py OUT TOWER``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.ddp_first_step import assert_ranks_equal_one_process, run_ranks, train_rank, trainable
from tests.test_ddp_llava import LM, RANK_RECORDS, write_tower

SIZES = [(48, 96), (90, 40)]  # (h, w) of rank 0's images


def tiny_anyres(tower: Path):
    import zoo

    lm = {**LM, "num_key_value_heads": 2}
    return zoo.LLaVA(
        vision_tower=str(tower), language_model="vlzoo-tiny-llama", language_model_config=lm, lr=1e-3,
        high_res={"mode": "anyres"},
    )  # fmt: skip


def batch_of(model, records: list[dict]) -> dict:
    from PIL import Image

    from datamodules.instruction import InstructionCollator, InstructionRecipe, Tokenized

    data = model.data_transforms()
    tokenize = Tokenized(data["tokenizer"], data["template"], 1, None, data["system_prompt"], data["high_res"])
    recipe = InstructionRecipe(data["train_transform"], data["image_size"], 0, tokenize)
    samples = []
    for record in records:
        image = None
        if "image" in record:
            height, width = SIZES[record["image"]]
            image = Image.new("RGB", (width, height), ("red", "blue")[record["image"]])
        row = {**record, "image_file": record.get("image"), "image": image, "key": record["id"]}
        samples.append(recipe.build(None, {**row, **tokenize(row)}, 0, 0))
    tok = data["tokenizer"]
    return InstructionCollator(tok.pad_token_id, tok.image_token_id, 1)(samples)


def main(out: Path, tower: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    model = tiny_anyres(tower)
    train_rank(model, batch_of(model, RANK_RECORDS[rank]), out)


@pytest.mark.slow
def test_anyres_ddp_with_a_text_only_rank_equals_one_process(tmp_path):
    torch.set_num_threads(1)
    tower = write_tower(tmp_path / "tower")
    ranks = run_ranks(__file__, tmp_path, str(tower))

    model = tiny_anyres(tower).train()
    both = batch_of(model, RANK_RECORDS[0] + RANK_RECORDS[1])
    assert len(set(model.visual_tokens(both)[:2].tolist())) == 2  # two images, two token counts
    loss = model.losses(both)["lm_loss"]
    loss.backward()
    grads = {name: p.grad for name, p in trainable(model).items()}
    assert "model.model.image_newline" in grads
    assert_ranks_equal_one_process(ranks, loss, grads)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
