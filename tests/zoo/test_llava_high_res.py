"""zoo.LLaVA with ``high_res`` (LLaVA-NeXT AnyRes, LLaVA-1.5-HD) on the tiny model (42 px tiles, 14 px patches: 9
tokens per tile; pinpoints scaled to 42 px): the one visual-token count against LlavaNextProcessor and the model,
features and logits against transformers' LlavaNextForConditionalGeneration, HD's fixed count, the reduction to
LLaVA-1.5, budgets and max_length as named errors, text-only rows, generation, checkpoints and the export loaded
back in plain transformers in a fresh process. (The geometry alone is tests/zoo/test_anyres.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import zoo
from tests.conftest import ROOT
from tests.zoo.llava_fixtures import (
    IMAGE_SIZE,
    IMAGE_TOKENS,
    QA,
    llava_vision_folder,
    one_thread,
    perturb,
    picture,
    record,
    save,
    tiny_llava,
    tiny_vision_folder,
    trainable,
)
from zoo.backbones.llava.conversation import InvalidSampleError, inference_prompt
from zoo.backbones.llava.high_res import HighRes, VisualTokenBudgetError

__all__ = ["llava_vision_folder", "one_thread"]  # fixtures, used by name
pytestmark = pytest.mark.usefixtures("one_thread")
ANYRES = {"mode": "anyres"}
HD = {"mode": "hd"}
NEWLINE = "model.model.image_newline"
# (width, height) of test images: wide, tall, tiny, square, and one where "hw" and "wh" choose other grids
SIZES = [(100, 50), (37, 90), (20, 15), (42, 42), (61, 37)]


def samples(model, qa=QA, first: int = 0, max_length: int | None = None) -> list[dict]:
    """``qa`` rows through the instruction data's tokenizer and recipe (high-res: expansion once the image is read)."""
    from datamodules.instruction import InstructionRecipe, Tokenized

    data = model.data_transforms()
    tokenize = Tokenized(
        data["tokenizer"], data["template"], data["image_tokens"], max_length, data["system_prompt"],
        data.get("high_res"),
    )  # fmt: skip
    recipe = InstructionRecipe(data["train_transform"], data["image_size"], 0, tokenize)
    out = []
    for i, row in enumerate(qa, start=first):
        item = record(i, *row)
        out.append(recipe.build(None, {**item, **tokenize(item), "key": item["id"]}, i, 0))
    return out


def collate(model, qa=QA, first: int = 0) -> dict:
    from datamodules.instruction import InstructionCollator

    tok = model.tokenizer
    return InstructionCollator(tok.pad_token_id, tok.image_token_id, model.data_transforms()["image_tokens"])(
        samples(model, qa, first)
    )


def processor(model):
    from zoo.backbones.llava.next import next_processor

    return next_processor(model.llava, model.tokenizer, model.high_res, model.image_spec)


def zoo_logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_sizes"])
        return model.llava.lm_head(hidden)


# ------------------------------------------------------------------------------------------------ settings
def test_settings_are_resolved_and_validated(llava_vision_folder):
    anyres = HighRes.from_options(ANYRES, 42, 14)
    assert anyres.canvases == [[42, 84], [84, 42], [84, 84], [126, 42], [42, 126]]
    assert (anyres.merge, anyres.newline, anyres.global_view) == ("spatial_unpad", True, True)
    assert HighRes.from_options(anyres.options(), 42, 14) == anyres
    wh = HighRes.from_options({**ANYRES, "pinpoint_order": "wh"}, 42, 14)
    assert wh.canvases == [[84, 42], [42, 84], [84, 84], [42, 126], [126, 42]]  # stored for transformers as (h, w)
    hd = HighRes.from_options({**HD, "global_context": False}, 42, 14)
    assert (hd.canvases, hd.merge, hd.newline, hd.global_view) == ([[84, 84]], "spatial", False, False)
    bad = [
        ({"mode": "nope"}, "mode"),
        ({**ANYRES, "tiles": 3}, "unknown option"),
        ({**HD, "pinpoints": [[84, 84]]}, "fixed grid"),
        ({**ANYRES, "grid": [2, 2]}, "grid is for mode hd"),
        ({**HD, "newline": True}, "newline goes with merge spatial_unpad"),
        ({**ANYRES, "pinpoints": [[42, 80]]}, "not a grid of 42 px tiles"),
        ({**ANYRES, "merge": "unpad"}, "merge must be"),
        ({**ANYRES, "max_visual_tokens": 0}, "positive"),
        ({**ANYRES, "pinpoint_order": "xy"}, "pinpoint_order"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            HighRes.from_options(options, 42, 14)
    model = tiny_llava(llava_vision_folder, high_res=ANYRES)
    assert type(model.llava).__name__ == "LlavaNextForConditionalGeneration"
    assert model.llava.config.image_grid_pinpoints == anyres.canvases
    assert model.hparams.high_res == anyres.options()  # checkpoints keep the resolved settings


def test_newline_trains_with_the_projector_and_hd_leaves_it_frozen(llava_vision_folder):
    model = tiny_llava(llava_vision_folder, high_res=ANYRES, projector_lr=1e-3, stage="pretrain")
    assert NEWLINE in trainable(model)
    groups = model.parameter_groups()
    newline = model.get_parameter(NEWLINE)
    assert [g["lr"] for g in groups if any(p is newline for p in g["params"])] == [1e-3]
    projector = model.llava.model.multi_modal_projector.linear_1.weight
    assert [g["lr"] for g in groups if any(p is projector for p in g["params"])] == [1e-3]
    assert NEWLINE not in trainable(tiny_llava(llava_vision_folder, high_res=HD))
    frozen = tiny_llava(llava_vision_folder, high_res=ANYRES, trainable={"projector": False})
    assert NEWLINE not in trainable(frozen)


# ------------------------------------------------------------------------ counts: data, processor and model
def test_token_count_is_the_processors_and_the_models(llava_vision_folder):
    """transformers' convention (hw, spatial_unpad): the zoo's count of a sample = LlavaNextProcessor's number of
    <image> tokens = the model's feature count, and the data's expansion uses it."""
    model = tiny_llava(llava_vision_folder, high_res=ANYRES)
    proc = processor(model)
    inner = model.llava.model
    for size in SIZES:
        image = picture(size, 1)
        count = model.high_res.tokens(size[::-1])
        inputs = proc(text=inference_prompt("What?", "vicuna_v1", True), images=image, return_tensors="pt")
        assert int((inputs["input_ids"] == model.tokenizer.image_token_id).sum()) == count, size
        with torch.no_grad():
            theirs = inner.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        assert [len(f) for f in theirs] == [count], size
        sample = samples(model, [("<image>\nWhat?", "a square", size)])[0]
        assert sample["input_ids"].count(model.tokenizer.image_token_id) == count == sample["image_tokens"]
        assert sample["image_size"] == size[::-1] and tuple(inputs["image_sizes"][0].tolist()) == size[::-1]


@pytest.mark.parametrize("sizes", [[(100, 50), (37, 90)], [(61, 37), (20, 15)]])
def test_features_and_logits_equal_transformers(llava_vision_folder, sizes):
    """On the processor's own inputs (hw, spatial_unpad): the zoo's pixels, merged features and logits are
    transformers' LlavaNextForConditionalGeneration's."""
    model = perturb(tiny_llava(llava_vision_folder, high_res=ANYRES), seed=1).eval()
    proc = processor(model)
    proc.tokenizer.padding_side = "left"
    images = [picture(size, i) for i, size in enumerate(sizes)]
    prompts = [inference_prompt(q, "vicuna_v1", True) for q in ("What shape is it?", "How many?")]
    inputs = proc(text=prompts, images=images, return_tensors="pt", padding=True)
    views = [model.data_transforms()["train_transform"](image) for image in images]
    for row, view in zip(inputs["pixel_values"], views):  # the zoo's pixels = the processor's (PIL backend)
        torch.testing.assert_close(view["pixel_values"], row[: len(view["pixel_values"])], rtol=0, atol=1e-6)
    pixel_values = torch.cat([view["pixel_values"] for view in views])
    with torch.no_grad():
        theirs = model.llava(**inputs)
        ours = model.visual_features(pixel_values, inputs["image_sizes"], inputs["input_ids"])
    for mine, expected in zip(ours, theirs.image_outputs.pooler_output):
        torch.testing.assert_close(mine, expected, rtol=1e-5, atol=1e-6)
    batch = {**inputs, "pixel_values": pixel_values}
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(zoo_logits(model, batch)[mask], theirs.logits[mask], rtol=1e-5, atol=1e-5)


def test_hd_count_on_the_tiny_geometry(llava_vision_folder):
    """HD: a fixed 2×2 grid of 42 px tiles + the global view: 5·9 = 45 tokens for every image (36 without)."""
    for global_context, expected in ((True, 5 * IMAGE_TOKENS), (False, 4 * IMAGE_TOKENS)):
        model = tiny_llava(llava_vision_folder, high_res={**HD, "global_context": global_context})
        assert {model.high_res.tokens(size[::-1]) for size in SIZES} == {expected}
        batch = collate(model)
        assert batch["pixel_values"].shape == (3 * (4 + global_context), 3, IMAGE_SIZE, IMAGE_SIZE)
        assert batch["tiles_per_image"].tolist() == [4 + global_context] * 3
        placeholders = (batch["input_ids"] == model.tokenizer.image_token_id).sum(1)
        assert placeholders.tolist() == [expected] * 3
        features = model.visual_features(batch["pixel_values"], batch["image_sizes"], batch["input_ids"])
        assert [len(f) for f in features] == [expected] * 3
        model.losses(batch)["lm_loss"].backward()


def test_one_tile_without_the_global_view_is_llava_15(llava_vision_folder):
    """A 1×1 grid, global view off, merge spatial: LLaVA-1.5's features exactly (same weights; a square image
    has the same pixels in both pipelines), hence the same loss."""
    plain = perturb(tiny_llava(llava_vision_folder), seed=2)
    hd = tiny_llava(llava_vision_folder, high_res={**HD, "grid": [1, 1], "global_context": False})
    hd.load_state_dict(plain.state_dict(), strict=False)
    qa = [("<image>\nWhat shape is it?", "a red square", (IMAGE_SIZE, IMAGE_SIZE)), ("Hi?", "blue", None)]
    ours, theirs = collate(hd, qa), collate(plain, qa)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    torch.testing.assert_close(ours["pixel_values"][0], theirs["pixel_values"][0], rtol=0, atol=1e-6)
    features = hd.visual_features(ours["pixel_values"], ours["image_sizes"])
    assert torch.equal(features[0], plain.image_features(ours["pixel_values"][:1])[0])
    torch.testing.assert_close(hd.losses(ours)["lm_loss"], plain.losses(theirs)["lm_loss"], rtol=0, atol=1e-6)


def test_the_wh_convention_runs_on_its_own_counts(llava_vision_folder):
    """wh (the original code): other grids than hw on small images; data, model and features agree."""
    model = tiny_llava(llava_vision_folder, high_res={**ANYRES, "pinpoint_order": "wh"})
    hw = HighRes.from_options(ANYRES, IMAGE_SIZE, 14)
    assert (model.high_res.grid_of((15, 20)), hw.grid_of((15, 20))) == ((2, 1), (1, 2))  # a tie: orientation
    batch = collate(model, [("<image>\nWhat?", "a square", (20, 15)), ("<image>\nHow many?", "two", (20, 90))])
    features = model.visual_features(batch["pixel_values"], batch["image_sizes"], batch["input_ids"])
    assert [len(f) for f in features] == [model.high_res.tokens((15, 20)), model.high_res.tokens((90, 20))]
    assert model.high_res.tokens((15, 20)) != hw.tokens((15, 20))
    image = picture((20, 15), 0)
    theirs = processor(model).image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    views = model.data_transforms()["train_transform"](image)["pixel_values"]
    torch.testing.assert_close(views, theirs, rtol=0, atol=1e-6)
    model.losses(batch)["lm_loss"].backward()


# ------------------------------------------------------------------------------------ budgets and errors
def test_over_budget_and_max_length_are_named_errors(llava_vision_folder):
    model = tiny_llava(llava_vision_folder, high_res={**ANYRES, "max_visual_tokens": 27})
    big, small = (100, 50), (20, 15)  # (w, h): 9 + 3·(6 + 1) and 9 + 3·(4 + 1) tokens (hw)
    assert model.high_res.tokens(big[::-1]) == 30 and model.high_res.tokens(small[::-1]) == 24
    samples(model, [("<image>\nWhat?", "a square", small)])
    with pytest.raises(VisualTokenBudgetError, match=r"sample '7'.*\(50, 100\) needs 30 visual tokens.* 27"):
        samples(model, [("<image>\nWhat?", "a square", big)], first=7)
    with pytest.raises(VisualTokenBudgetError, match="prompt 0"):
        model.generate(picture(big, 0), "What?", max_new_tokens=2)
    unbounded = tiny_llava(llava_vision_folder, high_res=ANYRES)
    row = [("<image>\nWhat?", "a red square and more", big)]
    whole = samples(unbounded, row)[0]["input_ids"]
    image_id = unbounded.tokenizer.image_token_id
    end = len(whole) - whole[::-1].index(image_id)  # the image span's end
    with pytest.raises(InvalidSampleError, match=rf"sample '3'.*max_length {end - 1} cuts into the image span"):
        samples(unbounded, row, first=3, max_length=end - 1)
    cut = samples(unbounded, row, max_length=len(whole) - 2)[0]["input_ids"]
    assert cut == whole[:-2] and cut.count(image_id) == 30


def test_out_of_memory_names_the_samples(llava_vision_folder):
    model = tiny_llava(llava_vision_folder, high_res=ANYRES)
    batch = collate(model)

    def out_of_memory(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    logged = {}
    model.log = lambda name, value, **kwargs: logged.update({name: value})
    model.losses = out_of_memory
    with pytest.raises(torch.OutOfMemoryError) as raised:
        model.training_step(batch, 5)
    assert logged["train/visual_tokens"] == model.visual_tokens(batch).float().mean()  # text-only rows count 0
    message = str(raised.value)
    visual = model.visual_tokens(batch).tolist()
    assert visual[1] == 0 and visual[0] == model.high_res.tokens(QA[0][2][::-1])
    for key, tokens, seen in zip(batch["key"], batch["attention_mask"].sum(1).tolist(), visual):
        assert f"{key}: {tokens} tokens, {seen} visual" in message
    assert "batch 5" in message and "Tried to allocate 2 GiB" in message


# ------------------------------------------------------------------------------------- text-only and DDP
@pytest.mark.parametrize("high_res", [ANYRES, HD], ids=["anyres", "hd"])
def test_a_text_only_row_is_its_text_alone(llava_vision_folder, high_res):
    """A text-only row of an AnyRes / HD batch: a black image's views, its placeholders masked and unsupervised;
    the loss is the text's, and every trainable tensor (image_newline included) is in the graph."""
    model = perturb(tiny_llava(llava_vision_folder, high_res=high_res), seed=3)
    batch = collate(model, QA[1:2])
    text = int(batch["attention_mask"][0].sum())
    black = model.high_res.tokens((IMAGE_SIZE, IMAGE_SIZE))
    assert batch["input_ids"].shape[1] == text + black and (batch["labels"][0, text:] == -100).all()
    assert batch["image_sizes"].tolist() == [[IMAGE_SIZE, IMAGE_SIZE]]
    alone = {k: batch[k][:, :text] for k in ("input_ids", "labels", "attention_mask")}
    loss = model.losses(batch)["lm_loss"]
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    torch.testing.assert_close(loss, model.losses(alone)["lm_loss"], rtol=0, atol=1e-6)
    mixed = collate(model)
    model.zero_grad(set_to_none=True)
    model.losses(mixed)["lm_loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_dataset_lengths_and_modality(llava_vision_folder):
    """``lengths`` (text + visual tokens, from the canvas size alone) and ``has_image``, for the sampler."""
    from datamodules.instruction import InstructionDataModule

    model = tiny_llava(llava_vision_folder, high_res=ANYRES)
    shapes = {"n_train": 12, "n_val": 2, "n_test": 2, "layout": "small_objects", "text_only_rate": 0.3}
    data = InstructionDataModule(shapesworld=shapes, batch_size=4, num_workers=0)
    data.connect(**model.data_transforms())
    records = data.records("train")
    built = [data.recipe("train", records, True, True).build(records, records[i], i, 0) for i in range(len(records))]
    assert records.lengths == [len(s["input_ids"]) for s in built]
    assert records.has_image == [s["has_image"] for s in built]
    assert any(records.has_image) and not all(records.has_image)
    assert {s["image_size"] for s in built if s["has_image"]} == {(128, 256)}
    batch = data.collator("train", True)(built[:4])
    model.losses(batch)

    # an image over max_visual_tokens is left out up front (skip_invalid), named with its count
    tokens = model.high_res.tokens((128, 256))
    bounded = tiny_llava(llava_vision_folder, high_res={**ANYRES, "max_visual_tokens": tokens - 1})
    data = InstructionDataModule(shapesworld=shapes, batch_size=4, num_workers=0, skip_invalid=True)
    data.connect(**bounded.data_transforms())
    skipped = data.records("train").skipped
    assert len(skipped) == sum(records.has_image) and not any(data.records("train").has_image)
    assert all(f"needs {tokens} visual tokens" in reason for reason in skipped.values())


def test_json_lengths_read_the_image_header(llava_vision_folder, tmp_path):
    import json

    from datamodules.instruction import InstructionDataModule

    model = tiny_llava(llava_vision_folder, high_res=ANYRES)
    rows = []
    for i, (question, answer, size) in enumerate(QA):
        row = {"id": str(i), "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
        if size is not None:
            picture(size, i).save(tmp_path / f"{i}.png")
            row["image"] = f"{i}.png"
        rows.append(row)
    (tmp_path / "train.json").write_text(json.dumps(rows))
    data = InstructionDataModule(source="json", train=str(tmp_path / "train.json"), batch_size=3, num_workers=0)
    data.connect(**model.data_transforms())
    records = data.records("train")
    built = [data.recipe("train", records, True, True).build(records, records[i], i, 0) for i in range(3)]
    assert records.lengths == [len(s["input_ids"]) for s in built] and records.has_image == [True, False, True]


# ---------------------------------------------------------------------------------------------- generation
def test_generation_equals_transformers_and_batches(llava_vision_folder):
    """Greedy tokens of the zoo's generate (its own features as mm_encoder_outputs) = transformers' own
    LlavaNext generate on the processor's inputs; batched (with a text-only row) = one prompt at a time; HD too."""
    model = perturb(tiny_llava(llava_vision_folder, high_res=ANYRES), seed=4, scale=0.2)
    proc = processor(model)
    image, question = picture((100, 50), 5), "What shape is it?"
    inputs = proc(text=inference_prompt(question, "vicuna_v1", True), images=image, return_tensors="pt")
    pad = model.tokenizer.pad_token_id
    theirs = model.llava.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=pad)
    ours = model.generate(image, question, return_ids=True, max_new_tokens=6)[0]
    eos = model.tokenizer.eos_token_id
    expected = theirs[0, inputs["input_ids"].shape[1] :].tolist()
    assert ours == (expected[: expected.index(eos)] if eos in expected else expected) and len(ours) > 0
    hd = perturb(tiny_llava(llava_vision_folder, high_res=HD), seed=4, scale=0.2)
    images = [picture((100, 50), 0), None, picture((37, 90), 2)]
    questions = ["What shape is it?", "What colour is the sky?", "How many?"]
    for m in (model, hd):
        batched = m.generate(images, questions, return_ids=True, max_new_tokens=5)
        alone = [m.generate(i, q, return_ids=True, max_new_tokens=5)[0] for i, q in zip(images, questions)]
        assert batched == alone and all(alone)


# ----------------------------------------------------------------------------- checkpoints and exports
def test_projector_checkpoint_keeps_the_newline_and_hd_export_is_refused(llava_vision_folder, tmp_path):
    model = perturb(tiny_llava(llava_vision_folder, stage="pretrain", high_res=ANYRES), seed=6).eval()
    checkpoint = save(model, tmp_path / "stage1.ckpt")
    assert NEWLINE in checkpoint["state_dict"] and all("vision_tower" not in k for k in checkpoint["state_dict"])
    reloaded = zoo.LLaVA.load_from_checkpoint(tmp_path / "stage1.ckpt", map_location="cpu").eval()
    assert reloaded.high_res == model.high_res
    batch = collate(model)
    assert torch.equal(zoo_logits(reloaded, batch), zoo_logits(model, batch))
    hd = tiny_llava(llava_vision_folder, high_res=HD)
    with pytest.raises(ValueError, match="reloads through the zoo only"):
        hd.export_hf(tmp_path / "hd")


_FRESH = """
import sys
import torch
torch.set_num_threads(1)
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor
job = torch.load(sys.argv[1], weights_only=False)
model = LlavaNextForConditionalGeneration.from_pretrained(job["export"]).eval()
processor = LlavaNextProcessor.from_pretrained(job["export"], backend="pil")
inputs = processor(text=job["prompt"], images=job["image"], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
torch.save({"input_ids": inputs["input_ids"][0].tolist(), "pixel_values": inputs["pixel_values"][0],
            "tokens": out[0, inputs["input_ids"].shape[1]:].tolist()}, sys.argv[2])
"""


def test_anyres_export_generates_the_zoo_tokens_in_a_fresh_process(tmp_path):
    vision = tiny_vision_folder(tmp_path / "clip", seed=11)
    model = perturb(tiny_llava(vision, high_res=ANYRES, lora={"r": 4}), seed=8, scale=0.2)
    image, question = picture((90, 40), 7), "What shape is it?"
    model.export_hf(tmp_path / "export")
    expected = model.generate(image, question, return_ids=True, max_new_tokens=8)[0]
    job = {"export": str(tmp_path / "export"), "prompt": inference_prompt(question, "vicuna_v1", True), "image": image}
    torch.save(job, tmp_path / "job.pt")
    command = [sys.executable, "-c", _FRESH, str(tmp_path / "job.pt"), str(tmp_path / "out.pt")]
    subprocess.run(command, check=True, cwd=ROOT, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    result = torch.load(tmp_path / "out.pt", weights_only=False)
    count = model.high_res.tokens((40, 90))
    assert result["input_ids"] == model.prompt_ids([question], [True], [count])[0]
    views = model.data_transforms()["eval_transform"](image)["pixel_values"]
    torch.testing.assert_close(result["pixel_values"][: len(views)], views, rtol=0, atol=1e-6)
    tokens, eos = result["tokens"], model.tokenizer.eos_token_id
    assert (tokens[: tokens.index(eos)] if eos in tokens else tokens) == expected and len(set(expected)) > 1
    # and back into the zoo: a LLaVA-NeXT folder is AnyRes with its own pinpoints
    reloaded = zoo.LLaVA(model_name_or_path=str(tmp_path / "export"))
    assert reloaded.high_res.canvases == model.high_res.canvases
    assert reloaded.generate(image, question, return_ids=True, max_new_tokens=8)[0] == expected
