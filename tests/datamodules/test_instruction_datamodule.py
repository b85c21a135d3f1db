"""InstructionDataModule end to end: every kind of bad sample named by its id (or, with ``skip_invalid``, left out,
counted and nothing else dropped); the LLaVA JSON and shards written from ShapesWorld give the ShapesWorld source's
batches; answers (+ ``</s>``) and captions (+ "\\n") are exactly what is supervised; a text-only row's zero image;
training and ``trainer.predict`` through the data module. A tiny LLaVA: 42 px tower, 9 image tokens, width-32 LM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

import zoo
from datamodules.instruction import InstructionDataModule
from datamodules.llava_json import LLaVASampleError, write_llava_shards
from datamodules.shapesworld import Scene, SceneObject, render_scene
from datamodules.shapesworld.instructions import write_instruction_data, write_vqa_questions
from tests.conftest import assert_stream_resumes_at_every_stop
from zoo.backbones.llava.conversation import InvalidSampleError

IGNORE = -100
TOWER = {"image_size": 42, "patch_size": 14, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
N = 16  # ShapesWorld records per split: 4 batches of 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llava(folder: Path, **kwargs):
    """``zoo.LLaVA`` over a seeded tiny HF CLIP tower saved in ``folder`` and the width-32 tiny Llama."""
    if not (folder / "config.json").is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            CLIPVisionModel(CLIPVisionConfig(**TOWER, num_attention_heads=2)).save_pretrained(folder)
    lm = {**LM, "num_key_value_heads": 2}
    return zoo.LLaVA(vision_tower=str(folder), language_model="vlzoo-tiny-llama", language_model_config=lm, **kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tower")
    return {stage: tiny_llava(folder, stage=stage) for stage in ("finetune", "pretrain")}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """ShapesWorld as LLaVA JSON (32 px), stage 2 (a quarter text-only) and stage 1, and 4 VQA questions."""
    out = tmp_path_factory.mktemp("shapesworld-llava")
    for stage in ("finetune", "pretrain"):
        write_instruction_data(out / stage, N, "train", stage, seed=0, image_size=32, text_only_rate=0.25)
    write_vqa_questions(out / "finetune", 4, "val", seed=0, image_size=32)
    return out


def connected(model, max_length: int | None = None, **kwargs) -> InstructionDataModule:
    dm = InstructionDataModule(**{"batch_size": 4, "num_workers": 0, **kwargs})
    transforms = model.data_transforms()
    dm.connect(**{**transforms, "max_length": max_length or transforms["max_length"]})
    return dm


def rows_by_key(loader) -> dict[str, dict[str, torch.Tensor]]:
    """Every row of a pass by its key, padding cut: input_ids, labels, attention_mask, pixel_values."""
    rows = {}
    for batch in loader:
        for i, key in enumerate(batch["key"]):
            width = int(batch["attention_mask"][i].nonzero().max()) + 1
            row = {name: batch[name][i, :width] for name in ("input_ids", "labels", "attention_mask")}
            rows[key] = {**row, "pixel_values": batch["pixel_values"][i]}
    return rows


def batches(loader) -> list[dict]:
    return [{k: v for k, v in batch.items() if k != "stream_position"} for batch in loader]


def assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a["key"] == b["key"]
        for name in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(a[name], b[name]), name
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"])


def supervised_runs(labels: torch.Tensor) -> list[list[int]]:
    """The maximal runs of supervised label ids of one row, in order."""
    runs, current = [], []
    for label in labels.tolist() + [IGNORE]:
        if label != IGNORE:
            current.append(label)
        elif current:
            runs, current = [*runs, current], []
    return runs


# ------------------------------------------------------------------------------------------- bad samples
ASK = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a circle"}]
HI = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
# name: (record without its id, max_length, what the error says); the sample's id is its name
BAD = {
    "missing": ({"image": "nowhere.png", "conversations": ASK}, None, "does not exist"),
    "unreadable": ({"image": "broken.png", "conversations": ASK}, None, "cannot read image"),
    "tag_without_image": ({"conversations": ASK}, None, "tag in a sample without an image"),
    "image_without_tag": ({"image": "a.png", "conversations": HI}, None, "has an image but no <image> tag"),
    "two_user_turns": ({"conversations": [HI[0], *HI]}, None, "two human turns in a row"),
    "empty_answer": ({"conversations": [HI[0], {"from": "gpt", "value": " "}]}, None, "empty answer"),
    "unknown_role": ({"conversations": [HI[0], {"from": "bot", "value": "Hi"}]}, None, "unknown role 'bot'"),
    "image_token_count": (
        {"image": "a.png", "conversations": [ASK[0], {"from": "gpt", "value": "an <image> tag"}]},
        None,
        "image token ids, expected 9",
    ),
    "answer_cut": (
        {"conversations": [{"from": "human", "value": "Tell me more. " * 40}, HI[1]]},
        120,
        "no supervised token left",
    ),
    "image_span_cut": ({"image": "a.png", "conversations": ASK}, 40, "cuts into the image span"),
}
REPLACED = {"missing", "unreadable"}  # found when the image is read: replaced, not left out


def write_rows(folder: Path, bad: list[str]) -> Path:
    """The bad records (first), then three good ones: two images (a.png, b.png) and a text-only record."""
    render_scene(Scene((SceneObject("circle", "red", "large", 1, 1),), 16)).save(folder / "a.png")
    render_scene(Scene((SceneObject("cross", "blue", "small", 0, 1),), 16)).save(folder / "b.png")
    png = (folder / "b.png").read_bytes()
    (folder / "broken.png").write_bytes(png[: len(png) // 2])  # a truncated PNG
    good = [
        {"id": "good-a", "image": "a.png", "conversations": ASK},
        {"id": "good-b", "image": "b.png", "conversations": [*ASK, *HI]},
        {"id": "good-text", "conversations": HI},
    ]
    rows = [{"id": name, **BAD[name][0]} for name in bad] + good
    path = folder / "train.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_sample_raises_an_error_naming_its_id(models, tmp_path, name):
    _, max_length, says = BAD[name]
    dm = connected(models["finetune"], max_length, source="json", val=str(write_rows(tmp_path, [name])))
    with pytest.raises(InvalidSampleError, match=says) as raised:
        dm.records("val")
        list(dm.val_dataloader())
    assert raised.value.sample_id == name and repr(name) in str(raised.value)


def test_skip_invalid_leaves_out_and_counts_bad_samples_and_replaces_unreadable_images(models, tmp_path):
    bad = [name for name in BAD if name != "image_span_cut"]  # which would cut every image sample
    path = str(write_rows(tmp_path, bad))
    dm = connected(models["finetune"], 120, source="json", val=path, skip_invalid=True)
    assert len(dm.records("val")) == 3 + len(REPLACED)  # whose images are not read yet
    keys = [key for batch in dm.val_dataloader() for key in batch["key"]]
    assert len(keys) == 3 + len(REPLACED) and set(keys) == {"good-a", "good-b", "good-text"}  # replaced, not dropped
    assert set(dm.skipped_invalid) == set(bad)
    for name in bad:
        assert BAD[name][2] in dm.skipped_invalid[name], name

    cut = connected(models["finetune"], 40, source="json", val=path, skip_invalid=True)
    assert [key for batch in cut.val_dataloader() for key in batch["key"]] == ["good-text"]
    assert "cuts into the image span" in cut.skipped_invalid["good-a"]


# ----------------------------------------------------------------------------- ShapesWorld as LLaVA JSON
@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_the_written_llava_json_gives_the_shapesworld_source_batches(models, written, stage):
    shapesworld = {"n_train": N, "seed": 0, "image_size": 32, "text_only_rate": 0.25}
    expected = batches(connected(models[stage], shapesworld=shapesworld).train_dataloader())
    dm = connected(models[stage], source="json", train=str(written / stage / "train.json"))
    assert_same_batches(batches(dm.train_dataloader()), expected)
    assert len(expected) == N // 4 and not dm.skipped_invalid


def test_supervised_tokens_are_each_answer_and_its_eos_and_a_text_only_row_gets_a_masked_zero_image(models, written):
    model = models["finetune"]
    tok, image_id, n_image = model.tokenizer, model.tokenizer.image_token_id, model.image_tokens
    records = {r["id"]: r for r in json.loads((written / "finetune" / "train.json").read_text())}
    dm = connected(model, source="json", train=str(written / "finetune" / "train.json"))
    seen = {"text-only": 0, "multi-round": 0}
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        for i, key in enumerate(batch["key"]):
            ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
            answers = [turn["value"] for turn in records[key]["conversations"][1::2]]
            assert [tok.decode(run) for run in supervised_runs(labels)] == [f" {a}</s>" for a in answers]
            slots = (ids == image_id).nonzero().flatten()
            assert len(slots) == n_image and (labels[slots] == IGNORE).all()
            assert torch.equal(slots, torch.arange(int(slots[0]), int(slots[0]) + n_image))
            seen["multi-round"] += len(answers) > 1
            if "image" in records[key]:
                assert mask[slots].all() and batch["pixel_values"][i].abs().sum() > 0
                continue
            seen["text-only"] += 1  # its zero image's slots follow its text, masked and unsupervised
            text = int(mask.sum())
            assert int(slots[0]) == text and not mask[slots].any() and not mask[text:].any()
            assert not batch["pixel_values"][i].any()
    assert seen["text-only"] >= 2 and seen["multi-round"] >= 8


def test_the_plain_template_supervises_the_caption_and_a_newline(models, written):
    model = models["pretrain"]
    records = {r["id"]: r for r in json.loads((written / "pretrain" / "train.json").read_text())}
    dm = connected(model, source="json", train=str(written / "pretrain" / "train.json"))
    batch = next(iter(dm.train_dataloader()))
    for i, key in enumerate(batch["key"]):
        labels = batch["labels"][i]
        caption = records[key]["conversations"][1]["value"]
        assert [model.tokenizer.decode(run) for run in supervised_runs(labels)] == [caption + "\n"]
        assert (batch["input_ids"][i, 1 : 1 + model.image_tokens] == model.tokenizer.image_token_id).all()
        assert (labels[: 1 + model.image_tokens] == IGNORE).all()


def test_trains_on_the_written_json_and_its_shards_and_predicts_answers_per_question_id(models, written, tmp_path):
    from lightning.pytorch import Trainer

    model = tiny_llava(tmp_path / "tower")  # a model of its own: training changes it
    json_path = written / "finetune" / "train.json"
    write_llava_shards(json_path, None, str(tmp_path / "llava-%06d.tar"), samples_per_shard=8)
    for source, train in (("json", json_path), ("webdataset", tmp_path / "llava-{000000..000001}.tar")):
        dm = connected(model, source=source, train=str(train), shuffle_buffer=4)
        trainer = Trainer(
            accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, datamodule=dm)
        assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"]), source

    questions = json.loads((written / "finetune" / "val_questions.json").read_text())
    questions.append({"question_id": "text-0", "text": "What is the plural of circle?"})  # no image
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(questions))
    predict = InstructionDataModule(predict=str(path), image_root=str(written / "finetune"), eval_batch_size=3)
    predict.connect(**model.data_transforms())
    answers = [a for batch in trainer.predict(model, datamodule=predict) for a in batch]
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    assert [a["prompt"] for a in answers] == [q.get("question", q.get("text")) for q in questions]
    assert all(set(a) == {"question_id", "prompt", "text"} and isinstance(a["text"], str) for a in answers)


# ----------------------------------------------------------------------------------------- webdataset
def test_shards_of_the_written_json_train_to_the_json_source_batches(models, written, tmp_path):
    model = models["finetune"]
    json_path = written / "finetune" / "train.json"
    write_llava_shards(json_path, None, str(tmp_path / "llava-%06d.tar"), samples_per_shard=4)
    shards = str(tmp_path / "llava-{000000..000003}.tar")
    expected = rows_by_key(connected(model, source="json", train=str(json_path)).train_dataloader())
    assert len(expected) == N
    for workers in (0, 2):
        stream = connected(model, source="webdataset", train=shards, shuffle_buffer=8, num_workers=workers)
        loader, orders = stream.train_dataloader(), []
        for _ in range(2):  # two epochs: every sample once in each, in a new order
            got = rows_by_key(loader)
            assert sorted(got) == sorted(expected)
            for key, row in expected.items():
                for name in ("input_ids", "labels", "attention_mask"):
                    assert torch.equal(got[key][name], row[name]), (key, name)
                torch.testing.assert_close(got[key]["pixel_values"], row["pixel_values"])
            orders.append(list(got))
        assert orders[0] != orders[1]
    # in order without a shuffle buffer: the JSON's order
    ordered = connected(model, source="webdataset", train=shards, shuffle_buffer=0)
    assert list(rows_by_key(ordered.train_dataloader())) == [r["id"] for r in json.loads(json_path.read_text())]


def test_a_webdataset_epoch_resumes_where_a_checkpoint_left_it(models, written, tmp_path):
    write_llava_shards(written / "finetune" / "train.json", None, str(tmp_path / "llava-%06d.tar"), 4)
    shards = str(tmp_path / "llava-{000000..000003}.tar")
    dm = connected(models["finetune"], source="webdataset", train=shards, shuffle_buffer=8, num_workers=2)
    whole = [(batch["key"], batch["stream_position"]) for batch in dm.train_dataloader()]
    assert len(whole) == N // 4
    assert_stream_resumes_at_every_stop(dm, whole)


def test_an_invalid_shard_sample_names_its_id_or_is_replaced_in_the_stream(models, tmp_path):
    bad = ["unreadable", "image_token_count", "answer_cut"]  # a bad image; two found only when tokenised
    shards = write_llava_shards(write_rows(tmp_path, bad), None, str(tmp_path / "s-%06d.tar"), 100)
    dm = connected(models["finetune"], 120, source="webdataset", val=shards[0])
    with pytest.raises(LLaVASampleError, match="cannot read image") as raised:
        list(dm.val_dataloader())
    assert raised.value.sample_id == "unreadable" and "s-000000.tar" in str(raised.value)
    dm = connected(models["finetune"], 120, source="webdataset", val=shards[0], skip_invalid=True)
    keys = [key for batch in dm.val_dataloader() for key in batch["key"]]
    assert keys == ["good-a"] * len(bad) + ["good-a", "good-b", "good-text"]  # replaced by the next good sample
    assert set(dm.skipped_invalid) == set(bad)
    assert all(BAD[name][2] in dm.skipped_invalid[name] for name in bad)


def test_a_training_epoch_ends_by_saying_how_many_invalid_samples_it_skipped(models, tmp_path, caplog):
    import logging

    from lightning.pytorch import Trainer

    caplog.set_level(logging.INFO)
    path = str(write_rows(tmp_path, ["empty_answer", "unknown_role"]))
    dm = InstructionDataModule(source="json", train=path, skip_invalid=True, batch_size=1, num_workers=0)
    model = tiny_llava(tmp_path / "tower", stage="finetune", lr_schedule="constant", warmup_ratio=0.0)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    dm.connect(**model.data_transforms())
    trainer.fit(model, dm)
    assert trainer.callback_metrics["data/skipped_invalid"] == 2
    assert "2 invalid sample(s) skipped (empty_answer: " in caplog.text


def test_group_by_length_gives_one_modality_per_batch_of_similar_lengths(models):
    """The records offer their lengths and modalities; the grouped epoch keeps every record once and mixes
    text-only and image rows in one batch at most, only when the counts force it (a quarter are text-only)."""
    shapes = {"n_train": 32, "n_val": 4, "n_test": 4, "image_size": 32, "text_only_rate": 0.25}
    dm = connected(models["finetune"], shapesworld=shapes, group_by_length=True)
    plain = connected(models["finetune"], shapesworld=shapes)
    grouped, shuffled = list(dm.train_dataloader()), list(plain.train_dataloader())
    assert sorted(k for b in grouped for k in b["key"]) == sorted(k for b in shuffled for k in b["key"])
    records = dm.records("train")
    assert 0 < sum(records.has_image) < len(records.has_image)
    image_token = models["finetune"].tokenizer.image_token_id
    mixed = 0
    for batch in grouped:  # a text-only row's placeholders are masked
        has_image = ((batch["input_ids"] == image_token) & batch["attention_mask"].bool()).any(-1)
        mixed += not (has_image.all() or not has_image.any())
    assert mixed == int(sum(records.has_image) % 4 != 0)
    spread = [int(b["attention_mask"].sum(-1).max() - b["attention_mask"].sum(-1).min()) for b in grouped]
    random_spread = [int(b["attention_mask"].sum(-1).max() - b["attention_mask"].sum(-1).min()) for b in shuffled]
    assert sum(spread) < sum(random_spread)
