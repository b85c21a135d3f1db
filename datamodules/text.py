"""Plain text for causal-LM training (the zoo's small LLM): ShapesWorld's language, or a text file."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from datamodules.base import Batch, Split, ZooDataModule
from datamodules.shapesworld.text import language_corpus
from zoo.losses import IGNORE_INDEX


class TextRecords(Dataset):
    """Texts as records ``{"key", "text"}``."""

    def __init__(self, texts: list[str], split: str) -> None:
        self.texts, self.split = texts, split

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"key": f"{self.split}-{index}", "text": self.texts[index]}


@dataclasses.dataclass
class TextRecipe:
    """A text → its token ids (BOS as the tokenizer adds it, then EOS), cut at ``max_length``."""

    tokenizer: Any
    max_length: int
    seed: int = 0

    def build(self, records: Any, record: dict[str, Any], index: int, epoch: int) -> dict[str, Any]:
        ids = self.tokenizer(record["text"]).input_ids + [self.tokenizer.eos_token_id]
        return {"key": record["key"], "input_ids": ids[: self.max_length]}


@dataclasses.dataclass
class TextCollator:
    """Right padding; every real token is a target (labels = ids, −100 on padding)."""

    pad_id: int

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        width = max(len(s["input_ids"]) for s in samples)
        ids = [s["input_ids"] + [self.pad_id] * (width - len(s["input_ids"])) for s in samples]
        mask = [[1] * len(s["input_ids"]) + [0] * (width - len(s["input_ids"])) for s in samples]
        input_ids, attention = torch.tensor(ids), torch.tensor(mask)
        return {
            "key": [s["key"] for s in samples],
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": input_ids.masked_fill(attention == 0, IGNORE_INDEX),
        }


@dataclasses.dataclass
class ShapesWorldText:
    """Sizes of the generated ShapesWorld text: scenes per split (each gives one document)."""

    n_train: int = 4096
    n_val: int = 128
    seed: int = 0


class TextDataModule(ZooDataModule):
    """Text for a causal LM: ShapesWorld's captions, long captions, question-answer text and chat-formatted
    turns (``source: shapesworld``), or one text per line of ``train`` / ``val`` files (``source: lines``).

    Args:
        shapesworld: ShapesWorld sizes (documents per split) and seed.

    Texts are cut at the model's ``max_length`` (given through ``connect``; 512 without one).
    """

    def __init__(
        self,
        source: Literal["shapesworld", "lines"] = "shapesworld",
        train: str | None = None,
        val: str | None = None,
        shapesworld: ShapesWorldText = ShapesWorldText(),
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed=seed)
        if isinstance(shapesworld, dict):  # as saved in a checkpoint's hyper-parameters
            shapesworld = ShapesWorldText(**shapesworld)
        self.save_hyperparameters()
        self.hparams["shapesworld"] = dataclasses.asdict(shapesworld)
        self.source, self.paths, self.shapesworld = source, {"train": train, "val": val}, shapesworld
        self.max_length = 512

    def connect(self, tokenizer: Any, train_transform: Callable, eval_transform: Callable, **kwargs: Any) -> None:
        super().connect(tokenizer, train_transform, eval_transform)
        self.max_length = kwargs.get("max_length") or self.max_length

    def records(self, split: Split) -> Dataset:
        if self.source == "shapesworld":
            n = self.shapesworld.n_train if split == "train" else self.shapesworld.n_val
            return TextRecords(language_corpus(n, split, self.shapesworld.seed), split)
        path = self.paths.get(split)
        if path is None:
            raise ValueError(f"no {split} text file: set --data.init_args.{split}")
        return TextRecords([line for line in Path(path).read_text().splitlines() if line.strip()], split)

    def recipe(self, split: Split, records: Dataset, train: bool, tokenize: bool) -> TextRecipe:
        return TextRecipe(self.tokenizer, self.max_length, self.seed)

    def collator(self, split: Split, tokenize: bool) -> TextCollator:
        return TextCollator(self.tokenizer.pad_token_id)
