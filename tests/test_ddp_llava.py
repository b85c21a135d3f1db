"""LLaVA under DDP on two CPU processes (gloo), through Lightning's own ``Trainer(strategy="ddp")``: rank 0 trains
on image samples, rank 1 on text-only ones. The step's loss (mean over ranks) and every trainable gradient (as
DDP averages them) equal one process over both batches: the loss is a token mean over the supervised tokens of
every rank (zoo/losses/language.py), not a mean of per-rank means. And the run needs no
``find_unused_parameters``: a text-only row carries a zero image, so the projector runs on every rank every step
(InstructionCollator). This file is also the script each rank runs (``python tests/test_ddp_llava.py OUT TOWER``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.ddp_first_step import assert_ranks_equal_one_process, run_ranks, train_rank, trainable

TOWER = {"image_size": 42, "patch_size": 14, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _chat(*turns: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(turns)]


# rank 0: image samples with long answers; rank 1: text-only samples with short ones (far fewer supervised tokens,
# so a mean of per-rank means is far from the token mean of the step)
RANK_RECORDS = (
    [
        {"id": "img-0", "image": 0, "conversations": _chat("<image>\nDescribe it.", "a large red circle " * 6)},
        {"id": "img-1", "image": 1, "conversations": _chat("<image>\nWhat?", "blue " * 9, "And?", "a green star")},
    ],
    [
        {"id": "txt-0", "conversations": _chat("Is red a color or a shape?", "color")},
        {"id": "txt-1", "conversations": _chat("What is the plural of circle? Answer in one word, please.", "circles")},
    ],
)


def write_tower(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPVisionModel(CLIPVisionConfig(**TOWER, num_attention_heads=2)).save_pretrained(folder)
    return folder


def tiny_llava(tower: Path):
    """The finetune-stage tiny LLaVA (projector + LM trained, tower frozen): the same weights in every process."""
    import zoo

    lm = {**LM, "num_key_value_heads": 2}
    return zoo.LLaVA(vision_tower=str(tower), language_model="vlzoo-tiny-llama", language_model_config=lm, lr=1e-3)


def batch_of(model, records: list[dict]) -> dict:
    """The records through the data module's own tokenisation, recipe and collator."""
    from datamodules.instruction import InstructionCollator, InstructionRecipe, Tokenized
    from datamodules.shapesworld import Scene, SceneObject, render_scene

    data = model.data_transforms()
    tokenize = Tokenized(data["tokenizer"], data["template"], data["image_tokens"], None, data["system_prompt"])
    recipe = InstructionRecipe(data["train_transform"], data["image_size"])
    samples = []
    for record in records:
        image = None
        if "image" in record:
            color = ("red", "blue")[record["image"]]
            image = render_scene(Scene((SceneObject("circle", color, "large", 1, record["image"]),), 48))
        row = {**record, "image_file": record.get("image"), "image": image, "key": record["id"]}
        samples.append(recipe.build(None, {**row, **tokenize(row)}, 0, 0))
    tok = data["tokenizer"]
    return InstructionCollator(tok.pad_token_id, tok.image_token_id, data["image_tokens"])(samples)


def main(out: Path, tower: Path) -> None:
    """One rank of the DDP run."""
    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    model = tiny_llava(tower)
    train_rank(model, batch_of(model, RANK_RECORDS[rank]), out)


@pytest.mark.slow
def test_ddp_with_a_text_only_rank_equals_one_process_and_needs_no_find_unused_parameters(tmp_path):
    torch.set_num_threads(1)
    tower = write_tower(tmp_path / "tower")
    ranks = run_ranks(__file__, tmp_path, str(tower))  # the whole run, on plain DDP, every step

    model = tiny_llava(tower).train()
    both = batch_of(model, RANK_RECORDS[0] + RANK_RECORDS[1])
    counts = [int((batch_of(model, records)["labels"][:, 1:] != -100).sum()) for records in RANK_RECORDS]
    assert counts[0] > 3 * counts[1]  # per-rank means would weigh rank 1's tokens far more
    loss = model.losses(both)["lm_loss"]
    loss.backward()
    grads = {name: p.grad for name, p in trainable(model).items()}
    assert any("multi_modal_projector" in name for name in grads) and any("layers.1." in name for name in grads)
    assert not any("vision_tower" in name for name in grads)

    assert_ranks_equal_one_process(ranks, loss, grads)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
