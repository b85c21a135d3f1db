"""Short-answer VQA for generative models (LLaVA): exact-match accuracy on ShapesWorld's QA questions after
VQAv2-style answer normalisation, per question type beside a majority-answer baseline; and the writer of
LLaVA's answer file for ``predict``."""

from __future__ import annotations

import functools
import json
import math
import re
import string
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.embedding import EpochEndEvaluation, progress, shard
from datamodules.shapesworld import generate_sample
from datamodules.shapesworld.generate import sample_key
from datamodules.shapesworld.instructions import QA_TYPES, scene_image, vqa_questions
from datamodules.shapesworld.small_objects import SmallObjectsLayout
from zoo.losses.distributed import world_size

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
MAJORITY_QUESTIONS = 4096  # training-split questions the majority answer of each type is taken from
_DROPPED = re.compile(r"(?<=\d),(?=\d)|'|\.(?!\d)")  # 1,000 -> 1000; don't -> dont; yes. -> yes (2.5 stays)
_SPACED = re.compile("[" + re.escape("".join(c for c in string.punctuation if c not in ".'")) + "]")


def normalize_answer(text: str) -> str:
    """An answer as VQAv2's evaluation compares it (its ``processPunctuation`` + ``processDigitArticle``,
    simplified; contractions are not expanded, apostrophes are dropped on both sides instead):

    1. lower-case;
    2. a comma between digits is dropped (``"1,000"`` → ``"1000"``), a period is dropped unless a digit
       follows (``"yes."`` → ``"yes"``, ``"2.5"`` stays), an apostrophe is dropped (``"don't"`` → ``"dont"``),
       any other punctuation becomes a space (``"red-blue"`` → ``"red blue"``);
    3. word by word, number words ``none`` / ``zero`` … ``ten`` become digits (``"Two"`` → ``"2"``) and the
       articles a / an / the are removed (``"the red."`` → ``"red"``);
    4. whitespace is collapsed (single spaces, none at the ends).
    """

    text = _SPACED.sub(" ", _DROPPED.sub("", text.lower()))
    words = [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]
    return " ".join(words)


def majority_answers(questions: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The most common normalised answer of each question type (a tie goes to the alphabetically first)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for question in questions:
        counts[question["type"]][normalize_answer(question["answer"])] += 1
    return {qa_type: min(c.items(), key=lambda item: (-item[1], item[0]))[0] for qa_type, c in counts.items()}


@functools.lru_cache(maxsize=4)
def _training_majority(
    seed: int, max_objects: int, layout: SmallObjectsLayout | None = None
) -> tuple[tuple[str, str], ...]:
    return tuple(majority_answers(vqa_questions(MAJORITY_QUESTIONS, "train", seed, max_objects, layout)).items())


def training_majority(seed: int, max_objects: int, layout: SmallObjectsLayout | None = None) -> dict[str, str]:
    """The majority answer of each type among the training split's first :data:`MAJORITY_QUESTIONS` VQA
    questions (computed once per process and setting; ``layout``: of the small-objects scenes)."""
    return dict(_training_majority(seed, max_objects, layout))


def vqa_scores(
    questions: Sequence[dict[str, Any]], predictions: Sequence[str], majority: dict[str, str]
) -> dict[str, Any]:
    """Exact-match accuracy of ``predictions`` against the questions' ``answer`` (both through
    :func:`normalize_answer`), overall and per ``type``, and the accuracy of answering every question with its
    type's ``majority`` answer (the baseline; a type missing from ``majority`` scores 0).

    Returns ``{"metrics": {"accuracy", "majority_baseline", "<type>/accuracy", "<type>/majority_baseline"},
    "types": {type: {"n", "accuracy", "majority_answer", "majority_baseline"}}, "n"}`` (fractions in [0, 1];
    types in :data:`QA_TYPES` order, then any others alphabetically; only types among the questions).
    """
    if len(questions) != len(predictions):
        raise ValueError(f"{len(questions)} questions but {len(predictions)} predictions")
    by_type: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for question, prediction in zip(questions, predictions):
        answer = normalize_answer(question["answer"])
        by_type[question["type"]].append(
            (normalize_answer(prediction) == answer, majority.get(question["type"]) == answer)
        )
    order = [t for t in QA_TYPES if t in by_type] + sorted(set(by_type) - set(QA_TYPES))
    everything = [row for rows in by_type.values() for row in rows]
    metrics = {
        "accuracy": sum(ok for ok, _ in everything) / len(everything),
        "majority_baseline": sum(base for _, base in everything) / len(everything),
    }
    types = {}
    for qa_type in order:
        rows = by_type[qa_type]
        accuracy, baseline = sum(ok for ok, _ in rows) / len(rows), sum(base for _, base in rows) / len(rows)
        metrics[f"{qa_type}/accuracy"], metrics[f"{qa_type}/majority_baseline"] = accuracy, baseline
        types[qa_type] = {"n": len(rows), "accuracy": accuracy, "majority_baseline": baseline}
        types[qa_type]["majority_answer"] = majority.get(qa_type)
    return {"metrics": metrics, "types": types, "n": len(everything)}


def gather_objects(local: list[Any]) -> list[list[Any]]:
    """Every rank's ``local`` list, in rank order (``[local]`` when not distributed)."""
    if world_size() == 1:
        return [local]
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, local)
    return parts


def under_log_dir(trainer: Trainer, path: str | Path) -> Path | None:
    """``path``, a relative one under ``trainer.log_dir`` (``None`` without one). Every rank must call it
    alike: reading ``log_dir`` is a broadcast."""
    path = Path(path)
    if path.is_absolute():
        return path
    log_dir = trainer.log_dir
    return None if log_dir is None else Path(log_dir) / path


class VQAEvaluation(EpochEndEvaluation):
    """Short-answer VQA accuracy of a generative model (``generate(images, prompts, **kwargs)``, e.g.
    :class:`zoo.LLaVA`) on ShapesWorld's questions, after validation epochs (every ``every_n_epochs``) and
    after test epochs.

    The questions are ``vqa_questions(n, split, seed, max_objects)`` (one per scene; question ``i`` asks
    about the image of ``generate_sample(i, split, seed, image_size, max_objects)``, rendered in memory), with
    LLaVA-1.5's short-answer suffix. Each is answered greedily in ``max_new_tokens`` tokens and is right when
    answer and prediction are equal after :func:`normalize_answer`. The majority baseline of a type is the
    accuracy of always giving that type's most common answer **in the training split's questions**
    (``vqa_questions(4096, "train", seed, max_objects)``), not in the evaluated ones, so it is a prior a model
    could have learned, not one fitted to the test.

    Logs ``{stage}/vqa/accuracy``, ``{stage}/vqa/majority_baseline`` and, per type (color, shape, count,
    relation, exists, side), ``{stage}/vqa/<type>/accuracy`` and ``.../<type>/majority_baseline``; writes a JSON
    (``metrics``, the per-type table ``types`` with ``n``, the settings and every question's ``prediction``)
    to ``output``, by default ``vqa_{stage}_epoch{epoch}.json``, relative paths under the trainer's log dir
    (``{stage}`` / ``{epoch}`` are filled in; without them each evaluation overwrites the file).

    Under DDP every rank answers its share of the questions (the same number of ``generate`` calls on each,
    with ``synced_gpus``, so sharded models step together) and the answers are gathered; rank zero writes.
    A module without ``generate`` (a CLIP model) is skipped, with one warning. Under ``fast_dev_run`` only
    the first ``batch_size`` questions are asked.

    Args:
        n: questions (scenes 0..n-1 of ``split``).
        split, seed: of the ShapesWorld scenes.
        batch_size: questions per ``generate`` call.
        max_new_tokens: generation length of an answer.
        every_n_epochs: evaluate every n validation epochs.
        output: the JSON file (see above).
        image_size, max_objects: of the scenes; ``None`` takes the data module's ShapesWorld config
            (``datamodule.shapesworld``) when it has one, else 64 and 4. A data module config whose ``layout`` is
            ``small_objects`` (``scene_layout()``) makes the questions and images those of its small-objects
            scenes (settings key ``layout``; images at the canvas's native size).
    """

    name = "vqa"

    def __init__(
        self,
        n: int = 256,
        split: str = "val",
        seed: int = 0,
        batch_size: int = 32,
        max_new_tokens: int = 8,
        every_n_epochs: int = 1,
        output: str | None = None,
        image_size: int | None = None,
        max_objects: int | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
        self.n, self.split, self.seed, self.batch_size = n, split, seed, batch_size
        self.max_new_tokens, self.output = max_new_tokens, output
        self.image_size, self.max_objects = image_size, max_objects
        self._warned = False

    def settings(self, trainer: Trainer | None) -> dict[str, Any]:
        """Scene settings: those given, else the data module's ShapesWorld config, else 64 px and 4 objects."""
        config = getattr(getattr(trainer, "datamodule", None), "shapesworld", None)
        image_size = self.image_size if self.image_size is not None else getattr(config, "image_size", 64)
        max_objects = self.max_objects if self.max_objects is not None else getattr(config, "max_objects", 4)
        settings = {"split": self.split, "seed": self.seed, "image_size": image_size, "max_objects": max_objects}
        layout = config.scene_layout() if callable(getattr(config, "scene_layout", None)) else None
        return settings if layout is None else {**settings, "layout": layout}

    def answer(
        self, model: Any, questions: list[dict[str, Any]], settings: dict[str, Any], trainer: Trainer | None = None
    ) -> list[str]:
        """The model's answers to ``questions`` (question ``i`` is about scene ``i``), this rank's share
        answered here and all gathered; every rank calls ``generate`` equally often (a rank short of
        questions asks question 0 again and drops the answer)."""
        mine = list(shard(len(questions)))
        rounds = math.ceil(math.ceil(len(questions) / world_size()) / self.batch_size)  # the busiest rank's calls
        sync = {"synced_gpus": True} if world_size() > 1 else {}
        image_settings = {k: settings[k] for k in ("split", "seed", "image_size", "max_objects")}
        answers: list[tuple[int, str]] = []
        for start in progress(range(0, rounds * self.batch_size, self.batch_size), trainer, "vqa", total=rounds):
            indices = mine[start : start + self.batch_size]
            asked = indices or [0]
            if settings.get("layout") is not None:
                images = [scene_image(i, settings["split"], settings["seed"], layout=settings["layout"]) for i in asked]
            else:
                images = [generate_sample(i, **image_settings)["image"] for i in asked]
            prompts = [questions[i]["question"] for i in asked]
            texts = model.generate(images, prompts, max_new_tokens=self.max_new_tokens, **sync)
            answers += list(zip(indices, texts))
        by_index = dict(pair for part in gather_objects(answers) for pair in part)
        return [by_index[i] for i in range(len(questions))]

    def evaluate(self, model: Any, trainer: Trainer | None = None, limit: int | None = None) -> dict[str, Any]:
        """Scores (:func:`vqa_scores`), settings and per-question predictions of ``model`` on the first
        ``limit`` (default: all ``n``) questions."""
        settings = self.settings(trainer)
        layout = settings.get("layout")
        questions = vqa_questions(self.n, self.split, self.seed, settings["max_objects"], layout)[:limit]
        assert all(q["question_id"] == sample_key(self.split, i) for i, q in enumerate(questions))
        predictions = self.answer(model, questions, settings, trainer)
        result = vqa_scores(questions, predictions, training_majority(self.seed, settings["max_objects"], layout))
        result["settings"] = {**settings, "max_new_tokens": self.max_new_tokens, "majority_from": "train"}
        result["predictions"] = [
            {**q, "prediction": p, "correct": normalize_answer(p) == normalize_answer(q["answer"])}
            for q, p in zip(questions, predictions)
        ]
        return result

    def run(self, trainer: Trainer, model: LightningModule, stage: str) -> dict[str, Any]:
        max_batches = self.max_batches(trainer)
        return self.evaluate(model, trainer, max_batches and max_batches * self.batch_size)

    def summary(self, result: dict[str, Any]) -> str:
        metrics = result["metrics"]
        parts = [f"accuracy {100 * metrics['accuracy']:.1f}% (majority {100 * metrics['majority_baseline']:.1f}%)"]
        parts += [
            f"{t} {100 * row['accuracy']:.1f}% ({100 * row['majority_baseline']:.1f}%, n {row['n']})"
            for t, row in result["types"].items()
        ]
        return ", ".join(parts)

    def _evaluate_and_log(self, trainer: Trainer, model: LightningModule, stage: str) -> None:
        if not callable(getattr(model, "generate", None)):
            if not self._warned:
                rank_zero_warn(f"VQAEvaluation: {type(model).__name__} has no generate(); VQA is skipped")
                self._warned = True
            return
        with trainer.strategy.precision_plugin.forward_context():
            result = self.run(trainer, model, stage)
        for metric, value in result["metrics"].items():
            model.log(f"{stage}/{self.name}/{metric}", value, rank_zero_only=True)
        rank_zero_info(f"{stage} {self.name} (epoch {trainer.current_epoch}): {self.summary(result)}")
        name = (self.output or "vqa_{stage}_epoch{epoch}.json").format(stage=stage, epoch=trainer.current_epoch)
        out = under_log_dir(trainer, name)
        if trainer.is_global_zero and out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2, default=str))
            self.written.append(out)


def merge_answers(parts: Sequence[Sequence[tuple[Any, Any, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Every rank's ``(dataloader, dataset index, row)`` triples as one list: in dataset order, each index
    once (a distributed sampler pads ranks with repeated samples), when all indices are known; else in rank
    order, as they came."""
    rows = [item for part in parts for item in part]
    if any(index is None for _, index, _ in rows):
        return [row for _, _, row in rows]
    unique = {(loader, index): row for loader, index, row in reversed(rows)}  # the first copy wins
    return [unique[key] for key in sorted(unique)]


def answer_record(row: dict[str, Any], model_id: str) -> dict[str, Any]:
    """One line of LLaVA's answer file from a ``predict_step`` row (a new random ``answer_id``, as LLaVA's)."""
    record = {key: row[key] for key in ("question_id", "prompt", "text")}
    return {**record, "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": row.get("metadata", {})}


class AnswerWriter(BasePredictionWriter):
    """Writes the answers of ``predict`` (:meth:`zoo.LLaVA.predict_step`: dicts ``question_id``, ``prompt``,
    ``text``) as LLaVA's answer file (what ``llava/eval/model_vqa.py`` writes and its scoring scripts read):
    JSON lines, one per question, in the questions' order::

        {"question_id": ..., "prompt": "<the question>", "text": "<the answer>",
         "answer_id": "<a random hex id>", "model_id": "<model_id>", "metadata": {}}

    Under DDP the answers of every rank are gathered (questions a distributed sampler repeated are written
    once) and rank zero writes the file at the end of predict.

    Args:
        output: the file; a relative path goes under the trainer's log dir.
        model_id: the ``model_id`` written; ``None``: the module's class name.
    """

    def __init__(self, output: str = "answers.jsonl", model_id: str | None = None) -> None:
        super().__init__("batch_and_epoch")
        self.output, self.model_id = output, model_id
        self.written: list[Path] = []
        self._rows: list[tuple[int, int | None, dict[str, Any]]] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = []

    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch_indices: Sequence[int] | None,
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:  # fmt: skip
        indices = list(batch_indices) if batch_indices else [None] * len(prediction)
        self._rows += [(dataloader_idx, index, row) for index, row in zip(indices, prediction, strict=True)]

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        rows = merge_answers(gather_objects(self._rows))
        out = under_log_dir(trainer, self.output)
        if not trainer.is_global_zero or out is None:
            return
        model_id = self.model_id or type(pl_module).__name__
        lines = [json.dumps(answer_record(row, model_id)) for row in rows]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(line + "\n" for line in lines))
        self.written.append(out)
        rank_zero_info(f"predict: wrote {len(lines)} answers to {out}")
