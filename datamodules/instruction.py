"""Visual instruction data for the LLaVA family: LLaVA's JSON format, webdataset shards of it (or ShapesWorld's
records, generated on the fly), tokenised with the model's conversation template, image placeholders expanded,
labels on the answers only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from datamodules.base import Batch, Split, ZooDataModule
from datamodules.instruction_images import batch_pixels, image_count, one_image_per_row, sample_pixels
from datamodules.instruction_sources import (
    QuestionRecords,
    ShapesWorldInstructions,
    ShapesWorldRecords,
    collate_questions,
)
from datamodules.llava_json import LLaVAJsonRecords, LLaVASampleError, decode_llava_sample
from datamodules.packing import PackingCollator
from datamodules.sources import WebDatasetSource
from zoo.backbones.llava.conversation import InvalidSampleError, check_conversation, tokenize_conversation
from zoo.losses import IGNORE_INDEX


@dataclasses.dataclass
class Tokenized:
    """How a record's conversation becomes ``input_ids`` / ``labels`` (set by the model through ``connect``).

    ``high_res`` (a :class:`~zoo.backbones.llava.high_res.HighRes`: AnyRes / HD): an image's token count depends on
    its size, so a record with an image is tokenised with ONE placeholder and no ``max_length`` cut; :meth:`expand`
    makes it the image's count once the size is known (the recipe; up front where the size is cheap).

    A record with a list of images (``image_file`` a list) has one tag per image, each expanded in place
    (high-res: refused, one image per row)."""

    tokenizer: Any
    template: str
    image_tokens: int
    max_length: int | None
    system_prompt: str | None
    high_res: Any = None

    def __call__(self, record: dict[str, Any]) -> dict[str, list[int]]:
        sample_id, images = str(record["id"]), image_count(record)
        one_image_per_row(sample_id, images, self.high_res)
        check_conversation(sample_id, record["conversations"], images > 0, max(images, 1))
        later = images > 0 and self.high_res is not None
        return tokenize_conversation(
            sample_id, record["conversations"], self.template, self.tokenizer, 1 if later else self.image_tokens,
            images > 0, None if later else self.max_length, system=self.system_prompt, images=max(images, 1),
        )  # fmt: skip

    def expand(
        self, sample_id: str, input_ids: list[int], labels: list[int], image_hw: tuple[int, int]
    ) -> tuple[list[int], list[int]]:
        """High-res: the one placeholder → the image's :meth:`HighRes.tokens` (over ``max_visual_tokens``: a
        :class:`~zoo.backbones.llava.high_res.VisualTokenBudgetError`), then ``max_length`` (never inside the image
        span: an :class:`InvalidSampleError` naming the sample)."""
        from zoo.backbones.llava.high_res import expand_image_span

        count = self.high_res.check_budget(sample_id, image_hw)
        image_id = self.tokenizer.image_token_id
        return expand_image_span(sample_id, input_ids, labels, image_id, count, self.max_length)


def image_file_size(source: LLaVAJsonRecords, record: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) of a record's image from its file header (where :meth:`LLaVAJsonRecords.image_path` finds
    its ``image_file``), or None when it cannot be read (the read in ``__getitem__`` will say why)."""
    from PIL import Image

    path = source.image_path({"image": record["image_file"]})
    try:
        with Image.open(path) as image:  # reads the header only
            return image.height, image.width
    except (OSError, ValueError):
        return None


class TokenizedRecords(Dataset):
    """The valid records of a source, tokenised. Every conversation is checked and tokenised once, up front
    (text only): an invalid sample raises :class:`InvalidSampleError` naming its id, or with ``skip_invalid`` is
    left out and counted (``skipped``: id → reason). ``lengths`` are the token counts, image tokens included (for
    length grouping; every image's), ``has_image`` whether each record has an image.

    High-res (``tokenize.high_res``): an image's tokens depend on its size; ``image_size_of(index, record)``
    gives it cheaply ((h, w); None: unknown, counted as one square tile's image), and the sample's expansion
    is checked up front (``max_visual_tokens``, ``max_length``)."""

    def __init__(
        self,
        records: Dataset,
        tokenize: Tokenized,
        skip_invalid: bool,
        text_of: Callable,
        image_size_of: Callable | None = None,
    ) -> None:
        self.records, self.tokenize = records, tokenize
        self.left_out: dict[str, str] = {}
        self.indices: list[int] = []
        self.lengths: list[int] = []
        self.has_image: list[bool] = []
        high_res = tokenize.high_res
        for index in range(len(records)):
            record = text_of(index)
            if record is None:  # left out by the source itself (skip_invalid), counted there
                continue
            try:
                tokens, has_image = tokenize(record), image_count(record) > 0
                length = len(tokens["input_ids"])
                if high_res is not None and has_image:
                    size = image_size_of(index, record) if image_size_of is not None else None
                    if size is None:
                        length += high_res.tokens((high_res.tile, high_res.tile)) - 1
                    else:
                        sample_id = str(record["id"])
                        length = len(tokenize.expand(sample_id, tokens["input_ids"], tokens["labels"], size)[0])
                self.lengths.append(length)
                self.has_image.append(has_image)
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
    samples, whose placeholders the collator masks; a list of images: each, [k, 3, S, S]).

    High-res (``tokenized.high_res``): the transform gives the image's views and size; the sample's one
    placeholder becomes the image's visual tokens (:meth:`Tokenized.expand`); a text-only sample gets a black
    image's views and ``image_tokens`` (its count), masked by the collator."""

    transform: Callable
    image_size: int
    seed: int = 0
    tokenized: Tokenized | None = None

    def build(self, records: Any, record: dict[str, Any], index: int, epoch: int) -> dict[str, Any]:
        image = record.get("image")
        if self.tokenized is not None and self.tokenized.high_res is not None:
            return self.build_high_res(record, image[0] if isinstance(image, list) else image)  # one, checked
        return {
            "key": record["key"],
            "has_image": image is not None,
            "pixel_values": sample_pixels(self.transform, image, self.image_size),
            "input_ids": record["input_ids"],
            "labels": record["labels"],
        }

    def build_high_res(self, record: dict[str, Any], image: Any) -> dict[str, Any]:
        from PIL import Image

        size = self.image_size
        views = self.transform(image if image is not None else Image.new("RGB", (size, size)))
        ids, labels = record["input_ids"], record["labels"]
        if image is not None:
            ids, labels = self.tokenized.expand(str(record["key"]), ids, labels, views["image_size"])
        return {
            "key": record["key"],
            "has_image": image is not None,
            "pixel_values": views["pixel_values"],
            "image_size": views["image_size"],
            "image_tokens": self.tokenized.high_res.tokens(views["image_size"]),
            "input_ids": ids,
            "labels": labels,
        }


@dataclasses.dataclass
class InstructionCollator:
    """Right-pads a batch (``pad_id``; labels −100; attention mask 0). A text-only sample gets a zero image whose
    ``image_tokens`` placeholders sit after its text, masked and unsupervised: every batch runs the vision tower
    and projector on every rank (DDP without ``find_unused_parameters``; sharded strategies never hang), and
    the loss and the LM's gradients are those of the text alone.

    ``pixel_values``: every row's images in row order [N, 3, S, S], ``images_per_row`` [B] their count (a
    text-only row: 1, its zero image). High-res samples (with ``image_size``): ``pixel_values`` are all views
    concatenated [N, 3, T, T], ``tiles_per_image`` [B] their count per row, ``image_sizes`` [B, 2] (h, w); a
    text-only row's masked placeholders are its black image's ``image_tokens``."""

    pad_id: int
    image_token_id: int
    image_tokens: int

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        rows = []
        for s in samples:
            ids, labels, mask = list(s["input_ids"]), list(s["labels"]), [1] * len(s["input_ids"])
            if not s["has_image"]:
                count = s.get("image_tokens", self.image_tokens)
                ids += [self.image_token_id] * count
                labels += [IGNORE_INDEX] * count
                mask += [0] * count
            rows.append((ids, labels, mask))
        width = max(len(ids) for ids, _, _ in rows)
        pad = [width - len(ids) for ids, _, _ in rows]
        batch: Batch = {
            "key": [s["key"] for s in samples],
            "input_ids": torch.tensor([ids + [self.pad_id] * p for (ids, _, _), p in zip(rows, pad)]),
            "labels": torch.tensor([labels + [IGNORE_INDEX] * p for (_, labels, _), p in zip(rows, pad)]),
            "attention_mask": torch.tensor([mask + [0] * p for (_, _, mask), p in zip(rows, pad)]),
        }
        if "image_size" in samples[0]:  # high-res: each row's views, one after the other
            batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
            batch["tiles_per_image"] = torch.tensor([len(s["pixel_values"]) for s in samples])
            batch["image_sizes"] = torch.tensor([list(s["image_size"]) for s in samples])
        else:
            batch["pixel_values"], batch["images_per_row"] = batch_pixels(samples)
        if "stream_position" in samples[0]:  # a stream's batch comes from one worker, in order (resume)
            batch["stream_position"] = samples[-1]["stream_position"]
        return batch


class InstructionDataModule(ZooDataModule):
    """Visual instruction tuning data (LLaVA's JSON, or webdataset shards of it; ShapesWorld by default).

    Batches (:class:`~datamodules.base.Batch`): ``input_ids``, ``labels`` (−100 outside the answers and the
    ``</s>`` closing each; not shifted), ``attention_mask`` [B, L], right-padded; ``pixel_values`` [N, 3, S, S]
    (every row's images in row order: N = B with one image per row; a zero image for a text-only row) and
    ``images_per_row`` [B]; ``key``. A LLaVA JSON ``"image"`` list is several images, one tag each. With a
    high-res model (AnyRes / HD; one image per row): ``pixel_values`` [N, 3, T, T] (every row's views),
    ``tiles_per_image`` [B], ``image_sizes`` [B, 2] (h, w).
    The template, tokenizer, image transform and image-token count come from the model through :meth:`connect`.

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
        group_by_length: train on batches of similar length (text + visual tokens), one modality per step
            (:mod:`datamodules.length_grouped`; map-style sources: not ``webdataset``).
        pack_length: pack each training batch's samples into rows of at most this many tokens, each sample
            attending to itself only (:mod:`datamodules.packing`; LLaVA-1.5, not high-res); ``None``: one per row.
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
        group_by_length: bool = False,
        pack_length: int | None = None,
    ) -> None:
        super().__init__(
            batch_size, eval_batch_size, num_workers, skip_corrupt=skip_invalid, seed=seed,
            group_by_length=group_by_length,
        )  # fmt: skip
        if isinstance(shapesworld, dict):
            shapesworld = ShapesWorldInstructions(**shapesworld)
        self.save_hyperparameters()
        self.hparams["shapesworld"] = dataclasses.asdict(shapesworld)
        if source != "shapesworld" and not (train or val or test):
            raise ValueError(f"source={source!r} needs at least one of train / val / test (LLaVA JSON files / shards)")
        self.source, self.paths, self.image_root = source, {"train": train, "val": val, "test": test}, image_root
        self.predict_path, self.shapesworld, self.skip_invalid = predict, shapesworld, skip_invalid
        self.shuffle_buffer, self.pack_length = shuffle_buffer, pack_length
        self.tokenized: Tokenized | None = None
        self.image_size = 0
        self._records: dict[str, TokenizedRecords | WebDatasetSource] = {}

    def connect(self, tokenizer: Any, train_transform: Callable, eval_transform: Callable, **kwargs: Any) -> None:
        super().connect(tokenizer, train_transform, eval_transform)
        missing = {"template", "image_tokens", "image_size"} - set(kwargs)
        if missing:
            raise TypeError(f"InstructionDataModule needs a LLaVA-family model; data_transforms lack {sorted(missing)}")
        self.tokenized = Tokenized(
            tokenizer, kwargs["template"], kwargs["image_tokens"], kwargs.get("max_length"),
            kwargs.get("system_prompt"), kwargs.get("high_res"),
        )  # fmt: skip
        self.image_size = kwargs["image_size"]
        self._records = {}
        if self.pack_length is not None and kwargs.get("high_res") is not None:
            raise ValueError("pack_length: high-res (AnyRes / HD) batches are not packed; set pack_length: null")

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
            size_of = source.image_size
        else:
            if self.paths[split] is None:
                raise ValueError(f"no {split} file: set --data.init_args.{split} to a LLaVA JSON file")
            source = LLaVAJsonRecords(self.paths[split], self.image_root, skip_invalid=self.skip_invalid)
            size_of = lambda index, record: image_file_size(source, record)  # noqa: E731
        records = TokenizedRecords(source, self.tokenized, self.skip_invalid, source.text_record, size_of)
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
        transform = self.transforms["train" if train else "eval"]
        return InstructionRecipe(transform, self.image_size, self.seed, self.tokenized)

    def collator(self, split: Split, tokenize: bool) -> InstructionCollator | PackingCollator:
        tok, count = self.tokenizer, self.tokenized.image_tokens
        if split == "train" and self.pack_length is not None:
            return PackingCollator(tok.pad_token_id, tok.image_token_id, count, self.pack_length)
        return InstructionCollator(tok.pad_token_id, tok.image_token_id, count)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_path is None:
            raise ValueError("predict needs --data.init_args.predict: a JSON file of questions")
        questions = QuestionRecords(self.predict_path, self.image_root)
        return DataLoader(questions, batch_size=self.eval_batch_size, collate_fn=collate_questions)
