"""Several images in one LLaVA training record (a JSON ``"image"`` list, one ``<image>`` tag each): each tag
becomes its image's span where it stands, the batch's ``pixel_values`` are every row's images in row order and the
model's loss on it is transformers' ``LlavaForConditionalGeneration`` loss; a wrong tag count, a ``max_length``
that would cut or drop an image span, and a high-res model are refused naming the sample."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from datamodules.instruction import (
    InstructionCollator,
    InstructionDataModule,
    InstructionRecipe,
    Tokenized,
    TokenizedRecords,
)
from datamodules.llava_json import LLaVAJsonRecords, LLaVASampleError, decode_llava_sample, write_llava_shards
from tests.zoo.llava_fixtures import IMAGE_TOKENS, llava_vision_folder, one_thread, perturb, tiny_llava
from zoo.backbones.llava.conversation import VICUNA_V1_SYSTEM, InvalidSampleError
from zoo.backbones.llava.high_res import HighRes

__all__ = ["llava_vision_folder", "one_thread"]  # fixtures, used by name
pytestmark = pytest.mark.usefixtures("one_thread")
IGNORE = -100
QUESTION = "Compare <image> with <image>: which one is greener?"
ANSWER = "the second one"
COLOURS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def model(llava_vision_folder):
    return perturb(tiny_llava(llava_vision_folder), seed=3)


def tokenized(model, max_length: int | None = None, high_res=None) -> Tokenized:
    data = model.data_transforms()
    image_tokens = 1 if high_res is not None else data["image_tokens"]
    return Tokenized(data["tokenizer"], data["template"], image_tokens, max_length, data["system_prompt"], high_res)


def record(sample_id: str, question: str, answer: str, images: list | Image.Image | None) -> dict:
    """A record as the LLaVA JSON reader gives it: a list of images has a list of files."""
    files = [f"{sample_id}-{k}.png" for k in range(len(images))] if isinstance(images, list) else f"{sample_id}.png"
    files = None if images is None else files
    conversations = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": sample_id, "conversations": conversations, "image": images, "image_file": files}


def solid(colour: str) -> Image.Image:
    return Image.new("RGB", (50, 40), colour)


def spans(ids: list[int], image_id: int) -> list[tuple[int, int]]:
    """(start, end) of each run of image ids."""
    runs, start = [], None
    for i, token in enumerate([*ids, None]):
        if token == image_id and start is None:
            start = i
        elif token != image_id and start is not None:
            runs, start = [*runs, (start, i)], None
    return runs


def mixed_batch(model) -> tuple[dict, list]:
    """Rows: two images (red, green), one image (blue), text only; and the images in the order they must come."""
    red, green, blue = map(solid, COLOURS)
    rows = [
        record("two", QUESTION, ANSWER, [red, green]),
        record("one", "<image>\nWhat colour is it?", "blue", blue),
        record("text", "What colour is the sky?", "blue too", None),
    ]
    data, tokenize = model.data_transforms(), tokenized(model)
    recipe = InstructionRecipe(data["train_transform"], data["image_size"])
    samples = [recipe.build(None, {**r, **tokenize(r), "key": r["id"]}, i, 0) for i, r in enumerate(rows)]
    collator = InstructionCollator(model.tokenizer.pad_token_id, model.tokenizer.image_token_id, IMAGE_TOKENS)
    return collator(samples), [red, green, blue, None]


# ------------------------------------------------------------------------------------------------ tokenising
def test_each_tag_becomes_its_image_span_where_it_stands_and_only_the_answer_is_supervised(model):
    tok, image_id = model.tokenizer, model.tokenizer.image_token_id
    out = tokenized(model)(record("s", QUESTION, ANSWER, [solid("red"), solid("green")]))
    ids, labels = out["input_ids"], out["labels"]
    (a, b), (c, d) = spans(ids, image_id)
    assert b - a == d - c == IMAGE_TOKENS
    assert all(label == IGNORE for label in labels[a:b] + labels[c:d])
    pieces = [tok.decode(ids[1:a]), tok.decode(ids[b:c]), tok.decode(ids[d:])]  # ids[0]: BOS
    tail = f": which one is greener? ASSISTANT: {ANSWER}</s>"
    assert pieces == [f"{VICUNA_V1_SYSTEM} USER: Compare ", " with ", tail]
    assert tok.decode([i for i, label in zip(ids, labels) if label != IGNORE]) == f" {ANSWER}</s>"
    prompt = model.prompt_ids([QUESTION], [True], [[IMAGE_TOKENS, IMAGE_TOKENS]])[0]  # what generation encodes
    assert ids[: len(prompt)] == prompt and labels[len(prompt) :] == ids[len(prompt) :]


def test_a_list_of_one_image_is_the_single_image_record_byte_for_byte(model):
    image, question = solid("blue"), "What colour? <image>"  # one image: LLaVA's rule moves the tag to the front
    single, listed = record("s", question, "blue", image), record("s", question, "blue", [image])
    tokenize = tokenized(model)
    assert tokenize(listed) == tokenize(single)
    assert spans(tokenize(single)["input_ids"], model.tokenizer.image_token_id)[0][0] < 40  # in the first turn
    data = model.data_transforms()
    recipe = InstructionRecipe(data["train_transform"], data["image_size"])
    collator = InstructionCollator(model.tokenizer.pad_token_id, model.tokenizer.image_token_id, IMAGE_TOKENS)
    one, many = ([recipe.build(None, {**r, **tokenize(r), "key": "s"}, 0, 0)] for r in (single, listed))
    assert torch.equal(collator(one)["pixel_values"], collator(many)["pixel_values"])
    assert collator(one)["pixel_values"].shape == (1, 3, data["image_size"], data["image_size"])


# --------------------------------------------------------------------------------------------------- batches
def test_pixel_values_are_every_rows_images_in_row_order_and_the_loss_is_transformers(model):
    batch, images = mixed_batch(model)
    data = model.data_transforms()
    size = data["image_size"]
    assert batch["pixel_values"].shape == (4, 3, size, size) and batch["images_per_row"].tolist() == [2, 1, 1]
    for k, image in enumerate(images):
        expected = data["train_transform"](image) if image is not None else torch.zeros(3, size, size)
        assert torch.equal(batch["pixel_values"][k], expected), k
    assert len({tuple(p.flatten().tolist()) for p in batch["pixel_values"]}) == 4  # four distinct images
    image_id = model.tokenizer.image_token_id
    placeholders = (batch["input_ids"] == image_id).sum(1)
    assert placeholders.tolist() == [2 * IMAGE_TOKENS, IMAGE_TOKENS, IMAGE_TOKENS]  # text only: masked stand-in
    assert (batch["attention_mask"][2][batch["input_ids"][2] == image_id] == 0).all()

    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    with torch.no_grad():
        expected = model.llava(**{k: batch[k] for k in keys}).loss
        torch.testing.assert_close(model.losses(batch)["lm_loss"], expected, rtol=1e-5, atol=1e-5)
        swapped = {**batch, "pixel_values": batch["pixel_values"][[1, 0, 2, 3]]}  # the order reaches the loss
        assert not torch.allclose(model.losses(swapped)["lm_loss"], expected)


# -------------------------------------------------------------------------------------------- refused samples
@pytest.mark.parametrize("question", ["Compare <image> with this: which one?", "<image> <image> <image> which?"])
def test_a_tag_count_unlike_the_image_count_is_refused_naming_the_sample(model, question):
    with pytest.raises(InvalidSampleError, match="2 images but [13] <image> tags") as raised:
        tokenized(model)(record("odd-7", question, ANSWER, [solid("red"), solid("green")]))
    assert raised.value.sample_id == "odd-7" and "'odd-7'" in str(raised.value)


def test_max_length_never_cuts_inside_or_before_an_image_span(model):
    image_id = model.tokenizer.image_token_id
    sample = record("long", QUESTION, ANSWER, [solid("red"), solid("green")])
    whole = tokenized(model)(sample)
    ends = [end for _, end in spans(whole["input_ids"], image_id)]
    kept = 0
    for max_length in range(1, len(whole["input_ids"])):
        if max_length < ends[-1]:
            with pytest.raises(InvalidSampleError, match=r"'long'.*max_length \d+ (cuts into|leaves out) the image"):
                tokenized(model, max_length)(sample)
            continue
        try:
            cut = tokenized(model, max_length)(sample)
        except InvalidSampleError as error:  # only when no answer token is left
            assert "no supervised token left" in error.reason
            continue
        assert cut["input_ids"] == whole["input_ids"][:max_length] and cut["labels"] == whole["labels"][:max_length]
        assert cut["input_ids"].count(image_id) == 2 * IMAGE_TOKENS
        kept += 1
    assert kept > 0


def test_a_high_res_model_refuses_several_images_naming_the_sample(model):
    high_res = HighRes.from_options({"mode": "anyres"}, 42, 14)
    tokenize = tokenized(model, high_res=high_res)
    with pytest.raises(InvalidSampleError, match="2 images in one sample: high_res") as raised:
        tokenize(record("pair-3", QUESTION, ANSWER, [solid("red"), solid("green")]))
    assert raised.value.sample_id == "pair-3"
    one = tokenize(record("one", "<image>\nWhat?", "red", [solid("red")]))["input_ids"]
    assert one.count(model.tokenizer.image_token_id) == 1  # one image in a list: one placeholder, expanded later
    rows = [record("pair-3", QUESTION, ANSWER, None), record("one", "<image>\nWhat?", "red", None)]
    rows[0]["image_file"], rows[1]["image_file"] = ["a.png", "b.png"], "c.png"
    kept = TokenizedRecords(rows, tokenize, True, rows.__getitem__, lambda index, r: (42, 42))
    assert kept.indices == [1] and "high_res" in kept.skipped["pair-3"]


# ------------------------------------------------------------------------------------ LLaVA JSON, end to end
def write_json(folder, rows: list[dict]) -> str:
    for colour in COLOURS:
        solid(colour).save(folder / f"{colour}.png")
    path = folder / "train.json"
    path.write_text(json.dumps(rows))
    return str(path)


def conversation(question: str, answer: str = ANSWER) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


GOOD = [
    {"id": "two", "image": ["red.png", "green.png"], "conversations": conversation(QUESTION)},
    {"id": "one", "image": "blue.png", "conversations": conversation("<image>\nWhat colour?", "blue")},
    {"id": "text", "conversations": conversation("Hi", "Hello")},
]


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (["red.png", 3], "'image' must be a path string or a non-empty list of path strings"),
        ([], "'image' must be a path string or a non-empty list of path strings"),
        (["red.png", "green.png", "blue.png"], "3 images but 2 <image> tags"),
        (["red.png", "nowhere.png"], "nowhere.png .* does not exist"),
    ],
)
def test_a_bad_image_list_names_the_file_and_the_record(tmp_path, image, says):
    path = write_json(tmp_path, [*GOOD, {"id": "bad-9", "image": image, "conversations": conversation(QUESTION)}])
    with pytest.raises(LLaVASampleError, match=says) as raised:
        [LLaVAJsonRecords(path)[i] for i in range(4)]
    assert raised.value.sample_id == "bad-9" and path in str(raised.value)
    skipping = LLaVAJsonRecords(path, skip_invalid=True)
    assert [skipping[i] is None for i in range(4)] == [False, False, False, True]
    assert list(skipping.skipped) == ["bad-9"]


def test_the_json_source_trains_a_multi_image_record_and_skips_a_wrong_tag_count(model, tmp_path):
    bad = {"id": "odd", "image": ["red.png", "green.png"], "conversations": conversation("<image>\nWhich one?")}
    path = write_json(tmp_path, [*GOOD, bad])
    dm = InstructionDataModule(source="json", train=path, batch_size=3, num_workers=0, skip_invalid=True)
    dm.connect(**model.data_transforms())
    with pytest.warns(UserWarning, match="left out 1 invalid sample"):
        records = dm.records("train")
    (batch,) = list(dm.train_dataloader())
    assert set(dm.skipped_invalid) == {"odd"} and "2 images but 1 <image> tags" in dm.skipped_invalid["odd"]
    row = {key: i for i, key in enumerate(batch["key"])}
    assert batch["images_per_row"].tolist() == [{"two": 2, "one": 1, "text": 1}[key] for key in batch["key"]]
    assert records.indices == [0, 1, 2] and records.has_image == [True, True, False]
    for key, length in zip(("two", "one", "text"), records.lengths):  # for length grouping: every image's tokens
        assert length == int(batch["attention_mask"][row[key]].sum()), key
    assert (batch["input_ids"][row["two"]] == model.tokenizer.image_token_id).sum() == 2 * IMAGE_TOKENS
    order = [c for key in batch["key"] for c in {"two": ["red", "green"], "one": ["blue"], "text": [None]}[key]]
    transform = model.data_transforms()["train_transform"]
    for k, colour in enumerate(order):
        if colour is not None:
            assert torch.equal(batch["pixel_values"][k], transform(Image.open(tmp_path / f"{colour}.png"))), k
    with pytest.raises(InvalidSampleError, match="2 images but 1 <image> tags") as raised:
        strict = InstructionDataModule(source="json", train=path, batch_size=4, num_workers=0)
        strict.connect(**model.data_transforms())
        strict.records("train")
    assert raised.value.sample_id == "odd"


def test_shards_refuse_a_record_of_several_images_naming_it(tmp_path):
    path = write_json(tmp_path, GOOD)
    with pytest.raises(LLaVASampleError, match="several images in one sample") as raised:
        write_llava_shards(path, None, str(tmp_path / "s-%06d.tar"))
    assert raised.value.sample_id == "two"
    row = json.dumps(GOOD[0]).encode()
    with pytest.raises(LLaVASampleError, match="several images in one sample") as raised:
        decode_llava_sample({"__key__": "k", "json": row, "png": (tmp_path / "red.png").read_bytes()})
    assert raised.value.sample_id == "two"
