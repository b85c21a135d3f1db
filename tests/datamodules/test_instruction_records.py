"""ShapesWorld instruction records (LLaVA JSON), the tiny LM's corpus, and reading LLaVA JSON and shards."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter

import pytest

from datamodules.llava_json import LLaVAJsonRecords, decode_llava_sample, write_llava_shards
from datamodules.shapesworld import Scene, SceneObject, generate_sample, render_scene
from datamodules.shapesworld.instructions import (
    IMAGE_TOKEN,
    QA_TYPES,
    SHORT_ANSWER_SUFFIX,
    caption_record,
    image_name,
    instruction_record,
    main,
    side_questions,
    vqa_questions,
)
from datamodules.shapesworld.text import VICUNA_V1_SYSTEM, language_corpus, vicuna_v1
from datamodules.sources import WebDatasetSource
from zoo.backbones.llava.conversation import IMAGE_TOKEN as LLAVA_IMAGE_TOKEN
from zoo.backbones.llava.conversation import InvalidSampleError, check_conversation, conversation_segments

N = 200


def records(split: str = "train", seed: int = 0, rate: float = 0.1, n: int = N) -> list[dict]:
    return [instruction_record(i, split, seed, image_name(split, i), rate) for i in range(n)]


@pytest.fixture(scope="module")
def stage2() -> list[dict]:
    return records()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The command's output for stage 2: 12 train and 6 val records of 32-pixel scenes, seed 3."""
    out = tmp_path_factory.mktemp("instructions")
    main(
        ["--out", str(out), "--stage", "finetune", "--n-train", "12", "--n-val", "6", "--seed", "3"]
        + ["--image-size", "32"]
    )
    return out


def image_bytes(image) -> bytes:
    return image.tobytes() if image is not None else b""


# ----------------------------------------------------------------------------- records
def test_records_are_deterministic_and_ignore_global_state(stage2):
    random.seed(1)
    order = [7, 0, 150, 3]
    again = {i: instruction_record(i, "train", 0, image_name("train", i)) for i in order}
    assert all(again[i] == stage2[i] for i in order)
    assert [caption_record(i, "val", 2, "x.png") for i in range(20)] == [
        caption_record(i, "val", 2, "x.png") for i in range(20)
    ]
    assert records(seed=1, n=20) != stage2[:20]
    assert records(split="val", n=20) != stage2[:20]


def test_caption_record_is_the_scene_caption_behind_the_image_tag():
    for i in range(20):
        record = caption_record(i, "train", 4, f"{i}.png")
        human, gpt = record["conversations"]
        assert record["image"] == f"{i}.png" and record["id"] == f"train-{i:08d}"
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith(IMAGE_TOKEN + "\n") and SHORT_ANSWER_SUFFIX not in human["value"]
        assert gpt["value"] == generate_sample(i, "train", 4)["captions"][0]
        single = caption_record(i, "train", 4, f"{i}.png", max_objects=1)["conversations"][1]["value"]
        assert single == generate_sample(i, "train", 4, max_objects=1)["captions"][0]


def test_every_short_answer_question_has_the_suffix_and_the_detail_turn_has_not(stage2):
    seen = Counter()
    for record in stage2:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert len(record["qa_types"]) == len(turns) // 2
        for human, qa_type in zip(turns[::2], record["qa_types"]):
            seen[qa_type] += 1
            if qa_type is None:
                assert human["value"].removeprefix(IMAGE_TOKEN + "\n") == "Describe the image in detail."
            else:
                assert human["value"].endswith(SHORT_ANSWER_SUFFIX)
    assert set(seen) == {*QA_TYPES, "text", None}


def test_image_records_open_with_the_tag_and_text_only_records_have_neither_tag_nor_image(stage2):
    assert IMAGE_TOKEN == LLAVA_IMAGE_TOKEN
    text_only = [r for r in stage2 if "image" not in r]
    assert 0.04 * N < len(text_only) < 0.2 * N  # text_only_rate 0.1
    for record in stage2:
        values = [t["value"] for t in record["conversations"]]
        tags = sum(v.count(IMAGE_TOKEN) for v in values)
        check_conversation(record["id"], record["conversations"], "image" in record)
        if "image" in record:
            assert 2 <= len(values) // 2 <= 4
            assert values[0].startswith(IMAGE_TOKEN + "\n") and tags == 1
            assert record["image"] == image_name("train", int(record["id"].split("-")[1]))
        else:
            assert tags == 0 and set(record["qa_types"]) == {"text"}
    assert all("image" not in r for r in records(rate=1.0, n=30))
    # the rate only turns records into text-only ones: an image record is the same at any rate
    assert [r for r in records(rate=0.0) if r["id"] not in {t["id"] for t in text_only}] == [
        r for r in stage2 if "image" in r
    ]


def test_which_side_answers_follow_the_grid_column():
    scene = Scene(
        (
            SceneObject("square", "red", "large", row=0, col=2),
            SceneObject("circle", "blue", "small", row=2, col=0),
            SceneObject("star", "green", "small", row=1, col=1),
        )
    )
    answers = {qa["question"]: qa["answer"] for qa in side_questions(scene)}
    assert answers == {
        "Which side of the image is the red square on?": "right",
        "Which side of the image is the blue circle on?": "left",
        "Which side of the image is the green star on?": "middle",
    }


def test_short_answers_are_true_of_the_scene(stage2):
    """Which-side answers read off the scene of ``generate_sample`` (the image the record names)."""
    checked = 0
    for record in stage2[:80]:
        objects = {
            f"the {o['color']} {o['shape']}": o for o in generate_sample(int(record["id"][6:]))["scene"]["objects"]
        }
        for human, gpt, qa_type in zip(record["conversations"][::2], record["conversations"][1::2], record["qa_types"]):
            if qa_type == "side":
                name = human["value"].split(" is ", 1)[1].split(" on?")[0]
                assert gpt["value"] == ("left", "middle", "right")[objects[name]["col"]]
                checked += 1
    assert checked > 5


def test_vqa_questions_have_one_suffixed_question_per_scene_of_every_type():
    questions = vqa_questions(60, "val", 0)
    assert [q["question_id"] for q in questions] == [f"val-{i:08d}" for i in range(60)]
    assert all(
        q["question"].endswith(SHORT_ANSWER_SUFFIX) and q["image"] == image_name("val", i)
        for i, q in enumerate(questions)
    )
    assert {q["type"] for q in questions} == set(QA_TYPES)
    assert questions == vqa_questions(60, "val", 0)


def test_language_corpus_is_deterministic_has_chat_lines_and_no_image_tag():
    corpus = language_corpus(120, seed=1)
    assert corpus == language_corpus(120, seed=1) and corpus[:50] == language_corpus(50, seed=1)
    assert corpus != language_corpus(120, seed=2)
    assert not any(IMAGE_TOKEN in line for line in corpus)
    chats = [line for line in corpus if line.startswith(VICUNA_V1_SYSTEM + " USER: ")]
    assert 10 < len(chats) < 80 and all(line.endswith("</s>") and " ASSISTANT: " in line for line in chats)
    assert any(SHORT_ANSWER_SUFFIX in line for line in chats)


def test_corpus_chats_are_the_zoo_vicuna_v1_template_without_the_image_tag(stage2):
    """The corpus renders chats itself (ShapesWorld does not import the zoo): the same text as the model's template."""
    for record in stage2[:40] + [caption_record(i, "train", 0, "x.png") for i in range(5)]:
        untagged = [{**t, "value": t["value"].removeprefix(IMAGE_TOKEN + "\n")} for t in record["conversations"]]
        reference = "".join(text for text, _ in conversation_segments(untagged, "vicuna_v1", has_image=False))
        assert vicuna_v1(record["conversations"]) == reference


# ----------------------------------------------------------------------------- reading LLaVA JSON
def test_the_command_writes_json_that_reads_back_with_the_rendered_images(written):
    for split, n in (("train", 12), ("val", 6)):
        dataset = LLaVAJsonRecords(written / f"{split}.json")
        assert len(dataset) == n
        for i in range(n):
            record = dataset[i]
            assert record["id"] == f"{split}-{i:08d}" and "qa_types" in record
            if record["image"] is None:
                assert record["image_file"] is None
                continue
            assert record["image_file"] == image_name(split, i)
            assert image_bytes(record["image"]) == image_bytes(generate_sample(i, split, 3, 32)["image"])
    questions = json.loads((written / "val_questions.json").read_text())
    assert len(questions) == 6 and all((written / q["image"]).is_file() for q in questions)


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def good_rows(tmp_path):
    """Three records: two with images (a.png, b.png) and a text-only one without an id."""
    render_scene(Scene((SceneObject("circle", "red", "large", 1, 1),), 16)).save(tmp_path / "a.png")
    render_scene(Scene((SceneObject("cross", "blue", "small", 0, 1),), 16)).save(tmp_path / "b.png")
    chat = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a circle"}]
    return [
        {"id": "a", "image": "a.png", "conversations": chat, "qa_types": ["shape"]},
        {"id": "b", "image": "b.png", "conversations": chat},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]


def test_records_keep_extra_keys_and_number_records_without_an_id(tmp_path):
    dataset = LLaVAJsonRecords(write_json(tmp_path / "d.json", good_rows(tmp_path)))
    assert dataset[0]["qa_types"] == ["shape"] and dataset[0]["image"].mode == "RGB"
    assert dataset[2]["id"] == "2" and dataset[2]["image"] is None and dataset[2]["image_file"] is None


@pytest.mark.parametrize("problem", ["missing", "unreadable"])
def test_a_missing_or_unreadable_image_names_the_sample_or_is_skipped_and_counted(tmp_path, problem, caplog):
    if problem == "missing":
        rows = good_rows(tmp_path)
        (tmp_path / "b.png").unlink()
    else:
        rows = good_rows(tmp_path)
        data = (tmp_path / "b.png").read_bytes()
        (tmp_path / "b.png").write_bytes(data[: len(data) // 2])  # a truncated PNG
    path = write_json(tmp_path / "d.json", rows)
    dataset = LLaVAJsonRecords(path)
    assert dataset[0] is not None
    with pytest.raises(InvalidSampleError, match="b.png") as raised:
        dataset[1]
    assert raised.value.sample_id == "b" and str(path) in str(raised.value)
    skipping = LLaVAJsonRecords(path, skip_invalid=True)
    with caplog.at_level(logging.WARNING):
        assert [skipping[i] is None for i in range(3)] == [False, True, False]
    assert list(skipping.skipped) == ["b"] and "b.png" in skipping.skipped["b"] and "'b'" in caplog.text


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"id": "a", "image": "a.png"}, "conversations"),
        (
            {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hi"}]},
            "duplicate id",
        ),
        ({"id": "d", "conversations": [{"from": "gpt", "value": "Hi"}]}, "first turn is not human"),
        ({"id": "c", "image": ["a.png", 3], "conversations": []}, "'image' must be a path"),
    ],
)
def test_structural_problems_are_found_when_built(tmp_path, row, reason):
    path = write_json(tmp_path / "d.json", [*good_rows(tmp_path), row])
    with pytest.raises(InvalidSampleError, match=reason) as raised:
        LLaVAJsonRecords(path)
    assert raised.value.sample_id == row["id"]
    skipping = LLaVAJsonRecords(path, skip_invalid=True)
    assert skipping[3] is None and list(skipping.skipped) == [row["id"]] and skipping[0]["id"] == "a"


def test_shards_written_and_read_back_give_the_same_records(written, tmp_path):
    shards = write_llava_shards(written / "train.json", None, str(tmp_path / "llava-%06d.tar"), samples_per_shard=5)
    assert len(shards) == 3
    dataset = LLaVAJsonRecords(written / "train.json")
    read = list(WebDatasetSource(shards, decode=decode_llava_sample))
    assert [r["key"] for r in read] == [f"sample{i:09d}" for i in range(12)]
    for record, expected in zip(read, dataset):
        strip = {"key", "position", "image"}
        assert {k: v for k, v in record.items() if k not in strip} == {
            k: v for k, v in expected.items() if k != "image"
        }
        assert image_bytes(record["image"]) == image_bytes(expected["image"])
    again = write_llava_shards(written / "train.json", None, str(tmp_path / "again-%06d.tar"), samples_per_shard=5)
    assert [open(p, "rb").read() for p in again] == [open(p, "rb").read() for p in shards]


def test_a_bad_shard_sample_names_its_id_and_is_skipped_as_corrupt(tmp_path):
    rows = good_rows(tmp_path)
    shards = write_llava_shards(write_json(tmp_path / "d.json", rows), None, str(tmp_path / "s-%06d.tar"), 10)
    broken = dict(next(iter(WebDatasetSource(shards, decode=lambda sample: sample))), png=b"not a png")
    with pytest.raises(InvalidSampleError, match="cannot read image") as raised:
        decode_llava_sample(broken)
    assert raised.value.sample_id == "a"
    with pytest.raises(InvalidSampleError, match="no image member"):
        decode_llava_sample({k: v for k, v in broken.items() if k != "png"})
    corrupt = lambda s: decode_llava_sample({**s, "png": b"x"} if "png" in s else s)  # noqa: E731
    source = WebDatasetSource(shards, skip_corrupt=True, decode=corrupt)
    assert [r["id"] for r in source] == ["2", "2", "2"] and source.skipped.count == 2
