"""Visual instruction data for the LLaVA family: LLaVA's JSON format, webdataset shards of it (or ShapesWorld's
records, generated on the fly), tokenised with the model's conversation template, image placeholders expanded,
labels on the answers only."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from datamodules.base import Batch, Split, ZooDataModule
from datamodules.image_caption import ShapesWorldConfig
from datamodules.llava_json import LLaVAJsonRecords, LLaVASampleError, decode_llava_sample
from datamodules.shapesworld import generate_sample
from datamodules.shapesworld.instructions import caption_record, instruction_record, scene_image
from datamodules.shapesworld.small_objects import SmallObjectsLayout
from datamodules.sources import WebDatasetSource
from zoo.backbones.llava.conversation import InvalidSampleError, check_conversation, tokenize_conversation
from zoo.losses import IGNORE_INDEX


@dataclasses.dataclass
class ShapesWorldInstructions(ShapesWorldConfig):
    """Sizes of the generated ShapesWorld instruction data (stage 1: caption records; stage 2: multi-turn QA,
    detailed descriptions and some text-only records): :class:`ShapesWorldConfig` with smaller default splits
    and the fraction of text-only records.

    ``layout``: ``grid`` (1-``max_objects`` objects on a 3x3 grid, ``image_size`` px square) or ``small_objects``
    (``object_count`` shapes of distinct colours, ``object_size`` x the canvas height across, on a ``canvas``
    of (height, width) px, images at that native size; ``image_size`` and ``max_objects`` unused)."""

    n_train: int = 4096
    n_val: int = 256
    n_test: int = 256
    text_only_rate: float = 0.1
    layout: Literal["grid", "small_objects"] = "grid"
    canvas: tuple[int, int] = SmallObjectsLayout.canvas
    object_count: tuple[int, int] = SmallObjectsLayout.objects
    object_size: tuple[float, float] = SmallObjectsLayout.object_size

    def __post_init__(self) -> None:
        if self.layout not in ("grid", "small_objects"):
            raise ValueError(f"layout must be 'grid' or 'small_objects', got {self.layout!r}")
        self.canvas, self.object_count, self.object_size = (
            tuple(self.canvas), tuple(self.object_count), tuple(self.object_size)
        )  # fmt: skip
        self.scene_layout()  # validates the small-objects settings

    def scene_layout(self) -> SmallObjectsLayout | None:
        """The small-objects layout, or None for the grid."""
        if self.layout == "grid":
            return None
        return SmallObjectsLayout(self.canvas, self.object_count, self.object_size)


class ShapesWorldRecords(Dataset):
    """LLaVA-format records of ShapesWorld scenes, with the rendered image (``plain``: caption records)."""

    def __init__(self, split: Split, config: ShapesWorldInstructions, captions: bool) -> None:
        self.split, self.config, self.captions = split, config, captions
        self.n = getattr(config, f"n_{split}")

    def __len__(self) -> int:
        return self.n

    def text_record(self, index: int) -> dict[str, Any]:
        """Record ``index`` without its image (``image_file`` names it)."""
        c = self.config
        name = f"{self.split}-{index:08d}.png"
        layout = c.scene_layout()
        if self.captions:
            record = caption_record(index, self.split, c.seed, name, max_objects=c.max_objects, layout=layout)
        else:
            record = instruction_record(
                index, self.split, c.seed, name, c.text_only_rate, max_objects=c.max_objects, layout=layout
            )
        return {**record, "image": None, "image_file": record.get("image")}

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.text_record(index)
        if record["image_file"] is not None:
            c, layout = self.config, self.config.scene_layout()
            if layout is not None:
                record["image"] = scene_image(index, self.split, c.seed, layout=layout)
            else:
                record["image"] = generate_sample(index, self.split, c.seed, c.image_size, c.max_objects)["image"]
        return record


@dataclasses.dataclass
class Tokenized:
    """How a record's conversation becomes ``input_ids`` / ``labels`` (set by the model through ``connect``)."""

    tokenizer: Any
    template: str
    image_tokens: int
    max_length: int | None
    system_prompt: str | None

    def __call__(self, record: dict[str, Any]) -> dict[str, list[int]]:
        sample_id, has_image = str(record["id"]), record.get("image_file") is not None
        check_conversation(sample_id, record["conversations"], has_image)
        return tokenize_conversation(
            sample_id, record["conversations"], self.template, self.tokenizer, self.image_tokens, has_image,
            self.max_length, system=self.system_prompt,
        )  # fmt: skip


class TokenizedRecords(Dataset):
    """The valid records of a source, tokenised. Every conversation is checked and tokenised once, up front
    (text only): an invalid sample raises :class:`InvalidSampleError` naming its id, or with ``skip_invalid`` is
    left out and counted (``skipped``: id → reason). ``lengths`` are the token counts (for length grouping)."""

    def __init__(self, records: Dataset, tokenize: Tokenized, skip_invalid: bool, text_of: Callable) -> None:
        self.records, self.tokenize = records, tokenize
        self.left_out: dict[str, str] = {}
        self.indices: list[int] = []
        self.lengths: list[int] = []
        for index in range(len(records)):
            record = text_of(index)
            if record is None:  # left out by the source itself (skip_invalid), counted there
                continue
            try:
                self.lengths.append(len(tokenize(record)["input_ids"]))
                self.indices.append(index)
            except InvalidSampleError as error:
                if not skip_invalid:
                    raise
                self.left_out[error.sample_id] = error.reason

    @property
    def skipped(self) -> dict[str, str]:
        """Invalid samples by id, with the reason: those left out (the source's and the tokeniser's) and those
        whose image could not be read (replaced; counted in this process only)."""
        return {**getattr(self.records, "skipped", {}), **self.left_out}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[self.indices[index]]
        if record is None:  # an unreadable image, skipped by the source (skip_invalid): substituted
            return None
        return {**record, **self.tokenize(record), "key": str(record["id"])}


@dataclasses.dataclass
class TokenizedSamples:
    """The ``decode`` of a :class:`~datamodules.sources.WebDatasetSource` over LLaVA shards: a raw sample →
    :func:`~datamodules.llava_json.decode_llava_sample` → tokenised (a stream has no "up front"). Every problem,
    the tokeniser's included, raises :class:`~datamodules.llava_json.LLaVASampleError` naming the sample id: a
    corrupt sample to the source, which raises it or (``skip_corrupt``) replaces it by a good sample of the same
    stream. ``skipped`` (id → reason) keeps them, in this process (each DataLoader worker its own)."""

    tokenize: Tokenized
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        try:
            record = decode_llava_sample(sample)
            return {**record, **self.tokenize(record), "key": record["id"]}
        except InvalidSampleError as error:
            self.skipped[error.sample_id] = error.reason
            if isinstance(error, LLaVASampleError):
                raise
            where = f"{sample.get('__url__', '?')} (key {sample.get('__key__', '?')})"
            raise LLaVASampleError(error.sample_id, f"{where}: {error.reason}") from error


@dataclasses.dataclass
class InstructionRecipe:
    """A tokenised record → a sample: the image through the model's transform (a zero image for text-only
    samples, whose placeholders the collator masks)."""

    transform: Callable
    image_size: int
    seed: int = 0

    def build(self, records: Any, record: dict[str, Any], index: int, epoch: int) -> dict[str, Any]:
        image = record.get("image")
        return {
            "key": record["key"],
            "has_image": image is not None,
            "pixel_values": self.transform(image) if image is not None else torch.zeros(3, *[self.image_size] * 2),
            "input_ids": record["input_ids"],
            "labels": record["labels"],
        }


@dataclasses.dataclass
class InstructionCollator:
    """Right-pads a batch (``pad_id``; labels −100; attention mask 0). A text-only sample gets a zero image whose
    ``image_tokens`` placeholders sit after its text, masked and unsupervised: every batch runs the vision tower
    and projector on every rank (DDP without ``find_unused_parameters``; sharded strategies never hang), and
    the loss and the LM's gradients are those of the text alone."""

    pad_id: int
    image_token_id: int
    image_tokens: int

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        rows = []
        for s in samples:
            ids, labels, mask = list(s["input_ids"]), list(s["labels"]), [1] * len(s["input_ids"])
            if not s["has_image"]:
                ids += [self.image_token_id] * self.image_tokens
                labels += [IGNORE_INDEX] * self.image_tokens
                mask += [0] * self.image_tokens
            rows.append((ids, labels, mask))
        width = max(len(ids) for ids, _, _ in rows)
        pad = [width - len(ids) for ids, _, _ in rows]
        batch: Batch = {
            "key": [s["key"] for s in samples],
            "input_ids": torch.tensor([ids + [self.pad_id] * p for (ids, _, _), p in zip(rows, pad)]),
            "labels": torch.tensor([labels + [IGNORE_INDEX] * p for (_, labels, _), p in zip(rows, pad)]),
            "attention_mask": torch.tensor([mask + [0] * p for (_, _, mask), p in zip(rows, pad)]),
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        }
        if "stream_position" in samples[0]:  # a stream's batch comes from one worker, in order (resume)
            batch["stream_position"] = samples[-1]["stream_position"]
        return batch


def _collate_questions(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: [s[key] for s in samples] for key in ("question_ids", "questions", "images")}


class QuestionRecords(Dataset):
    """LLaVA's evaluation questions (``[{"question_id", "image"?, "text"}]``, JSON or JSON lines), images opened."""

    def __init__(self, path: str, image_root: str | None) -> None:
        text = Path(path).read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        self.questions = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in lines]
        self.root = Path(image_root) if image_root else Path(path).parent

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from datamodules.sources import open_image

        q = self.questions[index]
        qid = q.get("question_id", index)
        image = open_image(self.root / q["image"], f"question {qid}") if q.get("image") else None
        return {"question_ids": qid, "questions": q.get("text", q.get("question")), "images": image}


class InstructionDataModule(ZooDataModule):
    """Visual instruction tuning data (LLaVA's JSON, or webdataset shards of it; ShapesWorld by default).

    Batches (:class:`~datamodules.base.Batch`): ``input_ids``, ``labels`` (−100 outside the answers and the
    ``</s>`` closing each; not shifted), ``attention_mask`` [B, L], right-padded; ``pixel_values`` [B, 3, S, S]
    (one image per row; a zero image for text-only rows); ``key``. The template, tokenizer, image transform and
    image-token count come from the model through :meth:`connect`.

    Args:
        source: ``shapesworld`` (generated on the fly; stage 1 gets caption records when the model's template is
            ``plain``), ``json`` (LLaVA JSON files ``train`` / ``val`` / ``test`` with images under ``image_root``,
            default: each file's folder) or ``webdataset`` (``train`` / ``val`` / ``test`` are shard URLs or brace
            patterns of :func:`~datamodules.llava_json.write_llava_shards`: a ``json`` record and its image per
            sample; tokenised as they stream, resumable mid-epoch, split across ranks and workers).
        predict: a JSON (lines) file of questions ``{"question_id", "image", "text"}`` for ``predict``.
        skip_invalid: instead of raising on an invalid sample (an :class:`InvalidSampleError` naming its id), leave
            it out and count it (:attr:`skipped_invalid`); an unreadable image, and any invalid sample of a stream,
            is replaced by another sample, so every rank keeps its batch size.
        shuffle_buffer: webdataset sample shuffle buffer for training.
        shapesworld: sizes of the generated ShapesWorld data.
    """

    def __init__(
        self,
        source: Literal["shapesworld", "json", "webdataset"] = "shapesworld",
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        predict: str | None = None,
        image_root: str | None = None,
        shapesworld: ShapesWorldInstructions = ShapesWorldInstructions(),
        skip_invalid: bool = False,
        shuffle_buffer: int = 1000,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, skip_corrupt=skip_invalid, seed=seed)
        if isinstance(shapesworld, dict):
            shapesworld = ShapesWorldInstructions(**shapesworld)
        self.save_hyperparameters()
        self.hparams["shapesworld"] = dataclasses.asdict(shapesworld)
        if source != "shapesworld" and not (train or val or test):
            raise ValueError(f"source={source!r} needs at least one of train / val / test (LLaVA JSON files / shards)")
        self.source, self.paths, self.image_root = source, {"train": train, "val": val, "test": test}, image_root
        self.predict_path, self.shapesworld, self.skip_invalid = predict, shapesworld, skip_invalid
        self.shuffle_buffer = shuffle_buffer
        self.tokenized: Tokenized | None = None
        self.image_size = 0
        self._records: dict[str, TokenizedRecords | WebDatasetSource] = {}

    def connect(self, tokenizer: Any, train_transform: Callable, eval_transform: Callable, **kwargs: Any) -> None:
        super().connect(tokenizer, train_transform, eval_transform)
        missing = {"template", "image_tokens", "image_size"} - set(kwargs)
        if missing:
            raise TypeError(f"InstructionDataModule needs a LLaVA-family model; data_transforms lack {sorted(missing)}")
        self.tokenized = Tokenized(
            tokenizer, kwargs["template"], kwargs["image_tokens"], kwargs.get("max_length"), kwargs.get("system_prompt")
        )
        self.image_size = kwargs["image_size"]
        self._records = {}

    @property
    def skipped_invalid(self) -> dict[str, str]:
        """Invalid samples skipped so far (``skip_invalid``), by id, with the reason: those left out, and those
        replaced (unreadable images; a stream's invalid samples) when read in this process (``num_workers: 0``)."""
        found: dict[str, str] = {}
        for records in self._records.values():
            found.update(records.decode.skipped if isinstance(records, WebDatasetSource) else records.skipped)
        return found

    def records(self, split: Split) -> Dataset | IterableDataset:
        """The tokenised records of a split (map-style: checked and tokenised when first asked for; a stream:
        as it is read)."""
        if split in self._records:
            return self._records[split]
        if self.tokenized is None:
            raise RuntimeError("InstructionDataModule is not connected: datamodule.connect(**model.data_transforms())")
        if self.source == "webdataset":
            if self.paths[split] is None:
                raise ValueError(f"no {split} shards: set --data.init_args.{split} to shard URLs (brace patterns)")
            shuffle = self.shuffle_buffer if split == "train" else 0
            decode = TokenizedSamples(self.tokenized)
            stream = WebDatasetSource(self.paths[split], shuffle, self.skip_invalid, self.seed, decode=decode)
            self._records[split] = stream
            return stream
        if self.source == "shapesworld":
            source = ShapesWorldRecords(split, self.shapesworld, captions=self.tokenized.template == "plain")
        else:
            if self.paths[split] is None:
                raise ValueError(f"no {split} file: set --data.init_args.{split} to a LLaVA JSON file")
            source = LLaVAJsonRecords(self.paths[split], self.image_root, skip_invalid=self.skip_invalid)
        records = TokenizedRecords(source, self.tokenized, self.skip_invalid, source.text_record)
        if records.skipped:
            rank_zero_warn(
                f"{split}: left out {len(records.skipped)} invalid sample(s) of {len(source)} (skip_invalid): "
                + "; ".join(f"{k}: {v}" for k, v in list(records.skipped.items())[:5])
            )
        self._records[split] = records
        return records

    def recipe(
        self, split: Split, records: Dataset | IterableDataset, train: bool, tokenize: bool
    ) -> InstructionRecipe:
        return InstructionRecipe(self.transforms["train" if train else "eval"], self.image_size, self.seed)

    def collator(self, split: Split, tokenize: bool) -> InstructionCollator:
        tok = self.tokenizer
        return InstructionCollator(tok.pad_token_id, tok.image_token_id, self.tokenized.image_tokens)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            raise ValueError("predict needs --data.init_args.predict: a JSON file of questions")
        questions = QuestionRecords(self.predict_path, self.image_root)
        return DataLoader(questions, batch_size=self.eval_batch_size, collate_fn=_collate_questions)
