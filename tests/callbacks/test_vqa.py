"""VQAEvaluation (ShapesWorld short-answer VQA with VQAv2 normalisation and a majority baseline) and
AnswerWriter (LLaVA's answer file), on planted answers, a real trainer, two gloo processes and a tiny LLaVA."""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

import zoo
from callbacks import AnswerWriter, VQAEvaluation, majority_answers, normalize_answer, vqa_scores
from callbacks.vqa import MAJORITY_QUESTIONS, merge_answers
from datamodules import InstructionDataModule
from datamodules.shapesworld import generate_sample
from datamodules.shapesworld.instructions import QA_TYPES, vqa_questions, write_vqa_questions
from tests.zoo.llava_fixtures import tiny_llava, tiny_vision_folder

SPELLED = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four"}
LLAVA_ANSWER_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digest(image) -> str:
    return hashlib.md5(image.tobytes()).hexdigest()


class Planned(LightningModule):
    """A generative model answering from a plan keyed by (image, prompt): a question asked with the wrong
    scene's image gets "unknown". Records every ``generate`` call."""

    predict_step = zoo.LLaVA.predict_step  # LLaVA's answer rows, from this generate

    def __init__(self, plan: dict[tuple[str, str], str] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.plan = plan or {}
        self.calls: list[tuple[list[str], dict]] = []

    def generate(self, images, prompts, **kwargs):
        self.calls.append((list(prompts), kwargs))
        if not self.plan:  # no plan: an answer that names the image and the question
            return [f"{digest(i)[:6]} {p[:12]}" for i, p in zip(images, prompts)]
        return [self.plan.get((digest(i), p), "unknown") for i, p in zip(images, prompts)]

    def validation_step(self, batch, batch_idx):
        return None

    def test_step(self, batch, batch_idx):
        return None


def planned_answer(question: dict) -> str:
    """Right (spelled or decorated) for count and side, "orange" for every other type."""
    if question["type"] == "count":
        return SPELLED[question["answer"]].capitalize()  # "Two" must count as "2"
    if question["type"] == "side":
        return f"The {question['answer'].upper()}."
    return "Orange."


def planned_model(n: int, image_size: int = 64) -> tuple[Planned, list[dict]]:
    questions = vqa_questions(n, "val", 0)
    plan = {
        (digest(generate_sample(i, "val", 0, image_size)["image"]), q["question"]): planned_answer(q)
        for i, q in enumerate(questions)
    }
    return Planned(plan), questions


def expected_scores(questions: list[dict]) -> dict[str, float]:
    """Accuracy and majority baseline per type of the planned answers, counted here from the records."""
    train = vqa_questions(MAJORITY_QUESTIONS, "train", 0)
    expected = {}
    for qa_type in QA_TYPES:
        answers = [q["answer"] for q in questions if q["type"] == qa_type]
        (top, _), *_ = Counter(q["answer"] for q in train if q["type"] == qa_type).most_common()
        right = {"count": len(answers), "side": len(answers), "color": answers.count("orange")}.get(qa_type, 0)
        expected[f"{qa_type}/accuracy"] = right / len(answers)
        expected[f"{qa_type}/majority_baseline"] = answers.count(top) / len(answers)
    return expected


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("the red.", "red"),
        ("yes.", "yes"),
        ("No", "no"),
        ("  A  Red   Square!", "red square"),
        ("none", "0"),
        ("Ten", "10"),
        ("eleven", "eleven"),  # VQAv2 maps zero..ten only
        ("1,000", "1000"),
        ("2.5", "2.5"),
        ("red-blue", "red blue"),
        ("left, right", "left right"),
        ("don't", "dont"),
        ("an apple", "apple"),
        ("the", ""),
        ("theater", "theater"),  # whole words only
    ],
)
def test_normalize_answer_vqav2_examples(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_scores_and_majority_on_hand_built_records():
    records = [
        {"type": "color", "answer": "red"},
        {"type": "color", "answer": "red"},
        {"type": "color", "answer": "blue"},
        {"type": "count", "answer": "2"},
        {"type": "count", "answer": "3"},
    ]
    predictions = ["Red", "the blue.", "blue", "two", "Three."]
    result = vqa_scores(records, predictions, {"color": "red", "count": "3"})
    assert result["metrics"] == pytest.approx(
        {
            "accuracy": 4 / 5,
            "majority_baseline": 3 / 5,
            "color/accuracy": 2 / 3,
            "color/majority_baseline": 2 / 3,
            "count/accuracy": 1.0,
            "count/majority_baseline": 1 / 2,
        }
    )
    assert result["types"]["count"] == {"n": 2, "accuracy": 1.0, "majority_baseline": 0.5, "majority_answer": "3"}
    assert list(result["types"]) == ["color", "count"]  # QA_TYPES order
    # the majority of normalised answers; a tie goes to the alphabetically first
    assert majority_answers(records) == {"color": "red", "count": "2"}
    assert majority_answers([{"type": "side", "answer": "Left."}, {"type": "side", "answer": "left"}]) == {
        "side": "left"
    }


def test_planted_answers_score_per_type_against_the_training_majority():
    model, questions = planned_model(64)
    result = VQAEvaluation(n=64, batch_size=16).evaluate(model)
    assert {q["type"] for q in questions} == set(QA_TYPES)  # every type is tested
    expected = expected_scores(questions)
    assert {k: v for k, v in result["metrics"].items() if "/" in k} == pytest.approx(expected)
    assert result["metrics"]["accuracy"] == pytest.approx(
        sum(expected[f"{t}/accuracy"] * result["types"][t]["n"] for t in QA_TYPES) / 64
    )
    assert 0 < expected["color/accuracy"] < 1 and expected["count/accuracy"] == 1
    # the baseline is the training split's majority, not these questions' own (which would score higher)
    own = vqa_scores(questions, ["orange"] * 64, majority_answers(questions))["metrics"]
    assert any(own[f"{t}/majority_baseline"] > expected[f"{t}/majority_baseline"] for t in QA_TYPES)
    # prompts in question order, 16 at a time, greedy answers of max_new_tokens
    assert [p for prompts, _ in model.calls for p in prompts] == [q["question"] for q in questions]
    assert [len(prompts) for prompts, _ in model.calls] == [16] * 4
    assert all(kwargs == {"max_new_tokens": 8} for _, kwargs in model.calls)
    rows = result["predictions"]
    assert [r["question_id"] for r in rows] == [f"val-{i:08d}" for i in range(64)]
    assert [r["correct"] for r in rows] == [r["type"] in ("count", "side") or r["answer"] == "orange" for r in rows]


def test_trainer_logs_keys_and_writes_json_at_validation_and_test(tmp_path):
    model, questions = planned_model(32)
    callback = VQAEvaluation(n=32, batch_size=16)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = Trainer(
        logger=logger, callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    loader = DataLoader(range(2), batch_size=1)
    trainer.validate(model, loader)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {q["type"] for q in questions} == set(QA_TYPES)
    keys = ["accuracy", "majority_baseline"] + [f"{t}/{m}" for t in QA_TYPES for m in ("accuracy", "majority_baseline")]
    assert set(metrics) == {f"val/vqa/{k}" for k in keys}
    for key, value in expected_scores(questions).items():
        assert metrics[f"val/vqa/{key}"] == pytest.approx(value)
    saved = json.loads((tmp_path / "run" / "version_0" / "vqa_val_epoch0.json").read_text())
    assert saved["metrics"] == pytest.approx({k.removeprefix("val/vqa/"): v for k, v in metrics.items()})
    assert set(saved["types"]["count"]) == {"n", "accuracy", "majority_baseline", "majority_answer"}
    assert sum(row["n"] for row in saved["types"].values()) == 32 == len(saved["predictions"])
    assert saved["predictions"][0]["prediction"] == planned_answer(questions[0])
    assert saved["settings"]["majority_from"] == "train"

    trainer.test(model, loader)
    assert "test/vqa/accuracy" in trainer.callback_metrics
    assert callback.written[-1] == tmp_path / "run" / "version_0" / "vqa_test_epoch0.json"
    assert callback.written[-1].is_file()


def test_fast_dev_run_asks_one_batch_and_output_names_the_file(tmp_path):
    model, _ = planned_model(8)
    callback = VQAEvaluation(n=8, batch_size=3, output=str(tmp_path / "vqa-{stage}.json"))
    trainer = Trainer(fast_dev_run=True, callbacks=[callback], accelerator="cpu", enable_progress_bar=False)
    trainer.validate(model, DataLoader(range(2), batch_size=1))
    assert [len(prompts) for prompts, _ in model.calls] == [3]
    assert len(json.loads((tmp_path / "vqa-val.json").read_text())["predictions"]) == 3


def test_a_clip_model_is_skipped_with_one_warning(tiny_clip, tmp_path):
    callback = VQAEvaluation(n=4, output=str(tmp_path / "vqa.json"))
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0)
    with pytest.warns(UserWarning, match="no generate"):
        callback.on_validation_epoch_end(trainer, tiny_clip)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.on_test_epoch_end(trainer, tiny_clip)
    assert callback.written == [] and not (tmp_path / "vqa.json").exists()


def test_answer_writer_writes_llava_answer_files(tmp_path):
    questions = write_vqa_questions(tmp_path / "data", n=5, image_size=32)
    loader = InstructionDataModule(predict=str(questions), batch_size=2).predict_dataloader()
    writer = AnswerWriter()  # relative: under the log dir
    absolute = AnswerWriter(output=str(tmp_path / "answers" / "a.jsonl"), model_id="llava-tiny")
    trainer = Trainer(
        logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[writer, absolute], accelerator="cpu",
        enable_progress_bar=False,
    )  # fmt: skip
    model = Planned()
    trainer.predict(model, loader, return_predictions=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "version_0" / "answers.jsonl").read_text().splitlines()]
    records = json.loads(questions.read_text())
    assert [list(line) for line in lines] == [LLAVA_ANSWER_KEYS] * 5
    assert [line["question_id"] for line in lines] == [r["question_id"] for r in records]
    assert [line["prompt"] for line in lines] == [r["question"] for r in records]
    assert lines[0]["text"] == model.generate([generate_sample(0, "val", 0, 32)["image"]], [records[0]["question"]])[0]
    assert {line["model_id"] for line in lines} == {"Planned"} and all(line["metadata"] == {} for line in lines)
    assert len({line["answer_id"] for line in lines}) == 5
    other = [json.loads(line) for line in (tmp_path / "answers" / "a.jsonl").read_text().splitlines()]
    assert [o["text"] for o in other] == [line["text"] for line in lines] and other[0]["model_id"] == "llava-tiny"


def test_merge_answers_restores_dataset_order_and_drops_sampler_padding():
    # DistributedSampler over 5 questions and 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3 and 0 again
    parts = [[(0, i, {"question_id": i, "rank": 0}) for i in (0, 2, 4)]]
    parts.append([(0, i, {"question_id": i, "rank": 1}) for i in (1, 3, 0)])
    merged = merge_answers(parts)
    assert [row["question_id"] for row in merged] == [0, 1, 2, 3, 4]
    assert merged[0]["rank"] == 0
    unknown = [[(0, None, {"question_id": "b"})], [(0, None, {"question_id": "a"})]]
    assert [row["question_id"] for row in merge_answers(unknown)] == ["b", "a"]  # as they came


def test_two_ranks_split_the_questions_call_generate_alike_and_gather_in_order(monkeypatch):
    """Two ranks as two threads (rank read per thread, gather through a barrier): the real collective is
    ``all_gather_object``; what can hang or scramble DDP is the split, the call count and the order."""
    import callbacks.embedding
    import callbacks.vqa

    single = VQAEvaluation(n=5, batch_size=2).evaluate(Planned())["predictions"]
    me, shares, barrier = threading.local(), {}, threading.Barrier(2, timeout=60)

    def gather(local):
        shares[me.rank] = local
        barrier.wait()
        return [shares[0], shares[1]]

    monkeypatch.setattr(callbacks.embedding, "rank", lambda: me.rank)
    monkeypatch.setattr(callbacks.embedding, "world_size", lambda: 2)
    monkeypatch.setattr(callbacks.vqa, "world_size", lambda: 2)
    monkeypatch.setattr(callbacks.vqa, "gather_objects", gather)
    models, results = [Planned(), Planned()], {}

    def run(rank):
        me.rank = rank
        results[rank] = VQAEvaluation(n=5, batch_size=2).evaluate(models[rank])["predictions"]

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results[0] == results[1] == single  # every rank holds all answers, in question order
    questions = [q["question"] for q in vqa_questions(5, "val", 0)]
    # rank 0 asks 0, 2 | 4; rank 1 asks 1, 3 | 0 again (its second batch is empty): two synced calls each
    assert [prompts for prompts, _ in models[0].calls] == [[questions[0], questions[2]], [questions[4]]]
    assert [prompts for prompts, _ in models[1].calls] == [[questions[1], questions[3]], [questions[0]]]
    assert all(kwargs["synced_gpus"] for model in models for _, kwargs in model.calls)


@pytest.mark.slow
def test_tiny_llava_end_to_end_validate_and_predict(tmp_path):
    torch.manual_seed(0)
    model = tiny_llava(tiny_vision_folder(tmp_path / "clip"))
    questions = write_vqa_questions(tmp_path / "data", n=3, image_size=42)
    data = InstructionDataModule(
        shapesworld={"n_train": 4, "n_val": 2, "n_test": 2, "image_size": 42}, predict=str(questions),
        batch_size=2, num_workers=0,
    )  # fmt: skip
    data.connect(**model.data_transforms())
    vqa, writer = VQAEvaluation(n=6, batch_size=4, max_new_tokens=3), AnswerWriter()
    trainer = Trainer(
        logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[vqa, writer], accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.validate(model, datamodule=data)
    assert 0 <= float(trainer.callback_metrics["val/vqa/accuracy"]) <= 1
    saved = json.loads(vqa.written[-1].read_text())
    assert saved["settings"]["image_size"] == 42  # the data module's scenes
    assert len(saved["predictions"]) == 6 and all(isinstance(p["prediction"], str) for p in saved["predictions"])
    trainer.predict(model, datamodule=data)
    lines = [json.loads(line) for line in writer.written[-1].read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [f"val-{i:08d}" for i in range(3)]
    assert [list(line) for line in lines] == [LLAVA_ANSWER_KEYS] * 3 and lines[0]["model_id"] == "LLaVA"
