"""Multimodal sequence packing: packed and unpacked batches give the same loss and gradients (block-diagonal
attention through per-sample position ids), images spliced per sample, the vision path on every batch."""

from __future__ import annotations

import pytest
import torch

from datamodules.instruction import InstructionCollator, InstructionRecipe, Tokenized
from datamodules.packing import PackingCollator, first_fit
from tests.zoo.llava_fixtures import llava_vision_folder, perturb, record, tiny_llava  # noqa: F401

QA = [
    ("<image>\nWhat shape is it?", "a red square with a blue circle beside it", (50, 70)),
    ("What colour is the sky?", "blue", None),
    ("<image>\nHow many?", "two", (64, 40)),
    ("<image>\nWhere is the circle?", "left of the square, near the top", (30, 30)),
    ("Say hello.", "hello there", None),
]


def test_first_fit_keeps_order_and_capacity():
    assert first_fit([5, 3, 4, 2, 9, 1], 8) == [[0, 1], [2, 3, 5], [4]]  # 9 > 8: a row of its own
    assert first_fit([], 8) == []


@pytest.fixture(scope="module")
def model(llava_vision_folder):  # noqa: F811
    torch.set_num_threads(1)
    return perturb(tiny_llava(llava_vision_folder), seed=4)


def samples(model, qa=QA):
    data = model.data_transforms()
    tokenize = Tokenized(data["tokenizer"], data["template"], data["image_tokens"], None, data["system_prompt"])
    recipe = InstructionRecipe(data["train_transform"], data["image_size"])
    return [recipe.build(None, {**item, **tokenize(item), "key": item["id"]}, i, 0)
            for i, item in enumerate(record(i, *row) for i, row in enumerate(qa))]  # fmt: skip


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model.losses(batch)["lm_loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("capacity", [10_000, 120])
def test_packed_rows_give_the_loss_and_gradients_of_the_unpacked_batch(model, capacity):
    built, tok = samples(model), model.tokenizer
    plain = InstructionCollator(tok.pad_token_id, tok.image_token_id, model.image_tokens)(built)
    packed = PackingCollator(tok.pad_token_id, tok.image_token_id, model.image_tokens, capacity)(built)
    assert len(packed["input_ids"]) < len(plain["input_ids"]) and packed["samples_per_row"].sum() == len(QA)
    assert len(packed["pixel_values"]) == 3  # the three images only: no stand-ins for text-only samples
    assert model.batch_size(packed) == model.batch_size(plain) == len(QA)  # samples, not rows (samples/s, logs)
    loss, grads = loss_and_grads(model, plain)
    packed_loss, packed_grads = loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == packed_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_images_are_spliced_per_sample_in_placeholder_order(model):
    built, tok = samples(model), model.tokenizer
    packed = PackingCollator(tok.pad_token_id, tok.image_token_id, model.image_tokens, 10_000)(built)
    with_image = [s["pixel_values"] for s in built if s["has_image"]]
    torch.testing.assert_close(packed["pixel_values"], torch.stack(with_image))
    positions, ids = packed["position_ids"][0].tolist(), packed["input_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0]
    assert len(starts) == len(QA) + (packed["attention_mask"][0] == 0).any().item()  # a restart per sample (+ pad)
    assert ids[starts[1] - 1] == tok.eos_token_id  # each sample ends with its answer's </s>


def test_a_batch_without_images_runs_the_vision_path_on_a_stand_in_segment(model):
    built, tok = samples(model, [QA[1], QA[4]]), model.tokenizer
    packed = PackingCollator(tok.pad_token_id, tok.image_token_id, model.image_tokens, 10_000)(built)
    assert len(packed["pixel_values"]) == 1
    assert (packed["labels"][packed["input_ids"] == tok.image_token_id] == -100).all()
    _, grads = loss_and_grads(model, packed)
    projector = [n for n in grads if "multi_modal_projector" in n]
    assert projector and all(float(grads[n].abs().sum()) == 0 for n in projector)  # in the graph, no gradient
    plain = InstructionCollator(tok.pad_token_id, tok.image_token_id, model.image_tokens)(built)
    torch.testing.assert_close(model.losses(packed)["lm_loss"], model.losses(plain)["lm_loss"], atol=1e-5, rtol=0)


def test_high_res_samples_are_refused_by_name(model):
    built = samples(model)
    built[0]["image_size"] = (50, 70)
    with pytest.raises(ValueError, match="high-res"):
        PackingCollator(0, 1, 9, 100)(built)


def test_the_instruction_data_module_packs_training_batches(model):
    from datamodules.instruction import InstructionDataModule

    def first_batches(**kwargs):
        data = InstructionDataModule(shapesworld={"n_train": 32, "image_size": 42}, batch_size=8, num_workers=0,
                                     **kwargs)  # fmt: skip
        data.connect(**model.data_transforms())
        return list(data.loader("train", train=True, tokenize=True))[:2]

    plain, packed = first_batches(), first_batches(pack_length=256)
    assert "position_ids" in packed[0] and "position_ids" not in plain[0]
    for p, q in zip(plain, packed):
        assert (q["labels"] != -100).sum() == (p["labels"] != -100).sum()  # the same samples, the same targets
        assert 1 - q["attention_mask"].float().mean() < 1 - p["attention_mask"].float().mean()  # less padding
        longest = max(int(n) for n in p["attention_mask"].sum(1))  # a sample longer than 256 gets a row of its own
        assert q["input_ids"].shape[1] <= max(256, longest)
        torch.testing.assert_close(model.losses(q)["lm_loss"], model.losses(p)["lm_loss"], atol=1e-5, rtol=1e-5)


def test_an_out_of_memory_error_names_each_packed_rows_samples(model):
    from zoo.backbones.llava.high_res import describe_out_of_memory

    built, tok = samples(model), model.tokenizer
    packed = PackingCollator(tok.pad_token_id, tok.image_token_id, model.image_tokens, 120)(built)
    message = describe_out_of_memory(packed, 0, model.visual_tokens(packed), RuntimeError("boom"))
    rows = packed["samples_per_row"].tolist()
    assert f"({len(rows)} samples" in message and all(str(s["key"]) in message for s in built)
    first = "+".join(str(s["key"]) for s in built[: rows[0]])
    assert message.split(": ", 1)[1].startswith(f"{first}: ")
