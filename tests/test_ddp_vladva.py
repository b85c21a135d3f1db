"""VladVA under DDP on two CPU processes (gloo): L_c + λ·L_AR of the step and every trainable gradient (soft prompts,
LoRA, temperature) equal one process over both ranks' batches. The contrastive negatives are the global batch (the
zoo's gathering, with the rows of a missing short caption left out on every rank) and the next-token loss is a mean
over the supervised tokens of every rank, so rank 1's few long-caption tokens are not over-weighted. This file is
also the script each rank runs (``python tests/test_ddp_vladva.py OUT TOWER``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.ddp_first_step import assert_ranks_equal_one_process, run_ranks, train_rank, trainable
from tests.zoo.llava_fixtures import IMAGE_SIZE, tiny_vision_folder, tiny_vladva

# rank 0: long captions on both rows; rank 1: a row without a short caption and one without a long caption
RANK_ROWS = (
    (["a red square", "two blue circles"], ["There is one object. " * 6, "There are two objects. A blue circle. " * 3]),
    ([None, "a large green triangle left of a star"], ["There is one object in the image.", None]),
)


def model_of(tower: Path):
    model = tiny_vladva(tower, lora={"r": 4, "alpha": 8, "dropout": 0.0}, lr_schedule="constant")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # as if trained: LoRA's B away from zero, so every adapter takes a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def batch_of(model, rank: int | None) -> dict:
    rows = [RANK_ROWS[rank]] if rank is not None else RANK_ROWS
    shorts = [s for r in rows for s in r[0]]
    longs = [s for r in rows for s in r[1]]
    pixels = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    pixels = pixels[2 * rank : 2 * rank + 2] if rank is not None else pixels
    return {**model.sequences(shorts, longs), "pixel_values": pixels}


def main(out: Path, tower: Path) -> None:
    """One rank of the DDP run."""
    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    model = model_of(tower)
    train_rank(model, batch_of(model, rank), out)


@pytest.mark.slow
def test_ddp_equals_one_process_for_the_contrastive_and_next_token_losses(tmp_path):
    torch.set_num_threads(1)
    tower = tiny_vision_folder(tmp_path / "tower")
    ranks = run_ranks(__file__, tmp_path, str(tower))
    model = model_of(tower).train()
    both = batch_of(model, None)
    tokens = [int((batch_of(model, r)["labels"][:, 1:] != -100).sum()) for r in (0, 1)]
    assert tokens[0] > 3 * tokens[1]  # per-rank token means would weigh rank 1's tokens far more
    terms = model.losses(both)
    assert set(terms) == {"contrastive_loss", "ar_loss"}
    loss = sum(terms.values())
    loss.backward()
    grads = {name: p.grad for name, p in trainable(model).items()}
    assert {"soft_prompts.prompts.image", "soft_prompts.prompts.text", "log_logit_scale"} <= set(grads)
    assert_ranks_equal_one_process(ranks, loss, grads)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
