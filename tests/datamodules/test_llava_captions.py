"""LLaVA instruction JSON -> image-caption manifest (``datamodules.llava_captions``): the skip rules, the formats the
image-caption data module reads, ShapesWorld's instruction data end to end, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules import ImageCaptionDataModule, ManifestDataset
from datamodules.llava_captions import llava_to_captions, main
from datamodules.llava_json import LLaVASampleError
from datamodules.shapesworld.instructions import write_instruction_data
from datamodules.sources import read_manifest

ROOT = Path(__file__).resolve().parents[2]


def _turns(*pairs):
    return [{"from": who, "value": text} for pair in pairs for who, text in zip(("human", "gpt"), pair)]


RECORDS = [
    {
        "id": "r1",
        "image": "a.png",
        "conversations": _turns(
            ("<image>\nWhat is in the image?", "A red square on a white background."),
            ("Is it red?", "Yes"),  # short_answer
            ("How many?", "2"),  # short_answer
            ("What is it?", "A square"),  # short_answer: 2 words < 3
            ("Describe it.", "A  red square\non a white   background."),  # duplicate once whitespace is collapsed
            ("And the colour?", "a red square"),  # 3 words: a caption
        ),
    },
    {"id": "r2", "conversations": _turns(("Hi", "Hello there, how are you today?"))},  # text_only
    {
        "id": "r3",
        "image": "sub/b.png",
        "conversations": _turns(("Where?\n<image>", "<image> A blue circle in the middle")),
    },
    {
        "id": "r4",
        "image": "a.png",
        "conversations": _turns(("<image>\nCaption?", "A red square on a white background.")),
    },
    {  # multi_image: an answer about two images is a caption of neither
        "id": "r5",
        "image": ["a.png", "sub/b.png"],
        "conversations": _turns(("<image> and <image>: which has a circle?", "The second image has the circle.")),
    },
]
EXPECTED = [  # (image relative to the images folder, caption, id)
    ("a.png", "A red square on a white background.", "r1"),
    ("a.png", "a red square", "r1"),
    ("sub/b.png", "A blue circle in the middle", "r3"),
]


def _data(tmp_path, records=RECORDS):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images / "a.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(images / "sub" / "b.png")
    path = tmp_path / "llava" / "data.json"
    path.parent.mkdir()
    path.write_text(json.dumps(records))
    return path, images


def _rows(path):
    """(image resolved, caption) of every manifest row, as the image-caption data module reads them."""
    return [(Path(r["image"]).resolve(), c) for r in read_manifest(path) for c in r["captions"]]


def test_each_skip_reason_is_applied_and_counted(tmp_path):
    path, images = _data(tmp_path)
    out = tmp_path / "out" / "captions.jsonl"  # elsewhere than the JSON and the images: paths must still resolve
    summary = llava_to_captions(path, out, image_folder=images)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(str((out.parent / r["image"]).resolve().relative_to(images.resolve())), r["caption"], r["id"])
            for r in rows] == EXPECTED  # fmt: skip
    assert summary == {
        "records": 5,
        "image_records": 3,
        "answers": 8,
        "captions": 3,
        "images": 2,
        "skipped": {"text_only": 1, "multi_image": 1, "short_answer": 3, "duplicate": 2, "invalid": 0,
                    "missing_image": 0},  # fmt: skip
        "out": str(out),
    }
    assert not any("<image>" in r["caption"] for r in rows)


def test_min_words_and_dedupe_are_parameters(tmp_path):
    path, images = _data(tmp_path)
    out = tmp_path / "captions.jsonl"
    summary = llava_to_captions(path, out, image_folder=images, min_words=1, dedupe=False)
    assert summary["skipped"] == {"text_only": 1, "multi_image": 1, "short_answer": 0, "duplicate": 0, "invalid": 0,
                                  "missing_image": 0}  # fmt: skip
    captions = [json.loads(line)["caption"] for line in out.read_text().splitlines()]
    assert captions.count("A red square on a white background.") == 3 and "Yes" in captions and "2" in captions
    assert llava_to_captions(path, out, image_folder=images, min_words=4)["skipped"]["short_answer"] == 4


@pytest.mark.parametrize("name", ["captions.json", "captions.jsonl", "captions.csv"])
def test_every_manifest_format_reads_back_the_same_captions(tmp_path, name):
    path, images = _data(tmp_path)
    llava_to_captions(path, tmp_path / "out" / name, image_folder=images)
    assert _rows(tmp_path / "out" / name) == [((images / image).resolve(), caption) for image, caption, _ in EXPECTED]


def test_a_manifest_suffix_the_readers_do_not_take_is_refused(tmp_path):
    path, images = _data(tmp_path)
    with pytest.raises(ValueError, match=r"captions\.tsv.*\.jsonl"):  # .tsv would be read as NegCLIP's TSV
        llava_to_captions(path, tmp_path / "captions.tsv", image_folder=images)


def test_bad_records_name_the_file_and_id_or_are_counted(tmp_path):
    records = [*RECORDS, {"id": "no-turns", "image": "a.png"}, {"id": "gone", "image": "missing.png",
               "conversations": _turns(("<image>\nWhat?", "A thing that is not there."))}]  # fmt: skip
    path, images = _data(tmp_path, records)
    out = tmp_path / "captions.jsonl"
    with pytest.raises(LLaVASampleError, match=r"sample 'no-turns': .*data\.json: 'conversations' is missing"):
        llava_to_captions(path, out, image_folder=images)
    path.write_text(json.dumps([r for r in records if r["id"] != "no-turns"]))
    with pytest.raises(LLaVASampleError, match=r"sample 'gone': image file .*missing\.png \(named in .*data\.json\)"):
        llava_to_captions(path, out, image_folder=images)
    assert not out.exists()  # nothing half-written
    path.write_text(json.dumps(records))
    summary = llava_to_captions(path, out, image_folder=images, skip_invalid=True)
    assert summary["skipped"] == {"text_only": 1, "multi_image": 1, "short_answer": 3, "duplicate": 2, "invalid": 1,
                                  "missing_image": 1}  # fmt: skip
    assert summary["captions"] == 3
    assert llava_to_captions(path, out, image_folder=images, skip_invalid=True, check_images=False)["captions"] == 4


def test_unparseable_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"id": "a", ')
    with pytest.raises(ValueError, match=r"broken\.json: cannot parse"):
        llava_to_captions(path, tmp_path / "captions.jsonl")


def test_the_command_reports_errors_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text("{}")
    with pytest.raises(SystemExit, match=r"error: .*broken\.json: expected a list"):
        main([str(path), str(tmp_path / "captions.jsonl")])


@pytest.fixture(scope="module")
def shapesworld_finetune(tmp_path_factory):
    """ShapesWorld's stage-2 instruction data (short answers, detailed descriptions, text-only records)."""
    folder = tmp_path_factory.mktemp("shapesworld-finetune")
    return write_instruction_data(folder, n=16, split="train", stage="finetune", text_only_rate=0.2)


def test_shapesworld_descriptions_become_captions_and_short_answers_do_not(shapesworld_finetune, tmp_path):
    out = tmp_path / "captions.jsonl"
    summary = llava_to_captions(shapesworld_finetune, out)
    records = json.loads(shapesworld_finetune.read_text())
    image_records = [r for r in records if "image" in r]
    answers = [(r, t["value"], qa_type) for r in image_records
               for t, qa_type in zip(r["conversations"][1::2], r["qa_types"])]  # fmt: skip
    folder = shapesworld_finetune.parent
    descriptions = [((folder / r["image"]).resolve(), value) for r, value, qa_type in answers if qa_type is None]
    assert 0 < len(descriptions) < len(image_records) and len(image_records) < len(records)  # every kind present
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [((out.parent / r["image"]).resolve(), r["caption"]) for r in rows] == descriptions  # all, nothing else
    assert summary["skipped"]["short_answer"] == sum(qa_type is not None for _, _, qa_type in answers)
    assert summary["skipped"]["text_only"] == len(records) - len(image_records)


def test_shapesworld_stage_1_captions_are_all_kept(tmp_path):
    path = write_instruction_data(tmp_path, n=24, split="train", stage="pretrain")
    summary = llava_to_captions(path, tmp_path / "captions.csv")
    captions = [t["value"] for r in json.loads(path.read_text()) for t in r["conversations"][1::2]]
    assert summary["captions"] == len(captions) == 24 and min(len(c.split()) for c in captions) >= 3


def test_several_files_go_into_one_manifest_each_with_its_own_image_folder(shapesworld_finetune, tmp_path):
    stage1 = write_instruction_data(tmp_path / "stage1", n=8, split="train", stage="pretrain")
    alone = [llava_to_captions(p, tmp_path / f"{k}.jsonl") for k, p in enumerate((stage1, shapesworld_finetune))]
    both = llava_to_captions([stage1, shapesworld_finetune], tmp_path / "both.jsonl")
    assert both["captions"] == sum(a["captions"] for a in alone) and both["records"] == sum(a["records"] for a in alone)
    rows = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for k in range(2) for line in (tmp_path / f"{k}.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == [r["caption"] for r in expected]
    assert all((tmp_path / r["image"]).is_file() for r in rows)


def test_converted_shapesworld_feeds_the_image_caption_data_module(shapesworld_finetune, tmp_path):
    out = tmp_path / "manifest" / "captions.jsonl"
    llava_to_captions(shapesworld_finetune, out)
    expected = {}
    for row in map(json.loads, out.read_text().splitlines()):
        expected.setdefault(str((out.parent / row["image"]).resolve()), []).append(row["caption"])
    to_tensor = lambda image: torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(3, *image.size)  # noqa: E731
    dm = ImageCaptionDataModule(source="manifest", train=str(out), val=str(out), batch_size=4, num_workers=0)
    dm.connect(tokenizer=lambda texts: torch.tensor([[len(t)] for t in texts]), train_transform=to_tensor,
               eval_transform=to_tensor)  # fmt: skip
    batches = list(dm.train_dataloader())
    assert sum(len(b["caption"]) for b in batches) == len(expected)  # one record per image
    dataset = ManifestDataset(out)
    for batch in batches:
        assert batch["image"].shape[1:] == (3, 64, 64)
        assert batch["text"].squeeze(1).tolist() == [len(c) for c in batch["caption"]]
        for key, caption, captions in zip(batch["key"], batch["caption"], batch["captions"]):
            (record,) = [r for r in dataset.records if r["key"] == key]
            assert captions == expected[str(Path(record["image"]).resolve())] and caption in captions
    retrieval = next(iter(dm.retrieval_dataloader("val")))
    assert retrieval["image"].shape == (4, 3, 64, 64)


def test_command_line_in_a_subprocess(tmp_path):
    path, images = _data(tmp_path)
    out = tmp_path / "out" / "captions.jsonl"
    command = [sys.executable, "-m", "datamodules.llava_captions", str(path), str(out), "--image-folder", str(images)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "records: 5 (3 with an image, 8 answers)",
        f"captions written: 3 of 2 images to {out}",
        "skipped: 1 text-only records, 1 records of several images, 3 answers under 3 words, 2 duplicate captions, "
        "0 invalid records, 0 missing images",
    ]
    assert _rows(out) == [((images / image).resolve(), caption) for image, caption, _ in EXPECTED]
