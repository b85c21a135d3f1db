"""Multimodal sequence packing: several instruction samples in one row, each attending only to itself.

A packed batch has no attention mask for the model; each sample's ``position_ids`` restart at 0, and transformers
(5.x ``masking_utils.find_packed_sequence_indices``) turns a restart into a block of a block-diagonal causal mask,
for SDPA and eager attention on CPU and GPU as for flash attention: a sample sees its own tokens only, at the
positions it has alone, so its logits, loss and gradients are those of the unpacked sample (tested at 1e-5).
Images are spliced per sample: ``pixel_values`` hold the batch's images in the order of their placeholders
(row by row, sample by sample), which is the order transformers' LLaVA fills them in. Labels are unchanged (−100
on prompts, images and padding), so the loss's global token normalisation is too.

Text-only samples carry no stand-in image (a packed row cannot mask one); a batch without any image gets one zero
image as a segment of its own at the end of a row, unsupervised, so the vision tower and projector run on every
rank for every batch (DDP without ``find_unused_parameters``; sharded strategies never hang).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from datamodules.instruction_images import image_stack
from zoo.losses import IGNORE_INDEX


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row: each sample, in order, goes to the first row with room for it (a sample longer than
    ``capacity`` gets a row of its own). Deterministic: the same samples give the same rows."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        row = next((r for r, free in enumerate(room) if free >= length), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= length
    return rows


def _images(sample: dict[str, Any]) -> torch.Tensor:
    """The sample's images [k, 3, S, S] (k = 0 for text only: its zero stand-in is left out)."""
    images = image_stack(sample["pixel_values"])
    return images if sample["has_image"] else images[:0]


@dataclasses.dataclass
class PackingCollator:
    """Packs a batch's samples into rows of at most ``capacity`` tokens (:func:`first_fit`, in order).

    Batch: ``input_ids``, ``labels``, ``position_ids`` (restarting per sample; padding is a segment of its own),
    ``attention_mask`` (1 on sample tokens, 0 on padding: bookkeeping only, the model drops it when
    ``position_ids`` are given), ``pixel_values`` [N, 3, S, S] in placeholder order, ``samples_per_row``, ``key``.
    LLaVA-1.5 samples only (a high-res sample's views and sizes are refused by name)."""

    pad_id: int
    image_token_id: int
    image_tokens: int
    capacity: int

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if any("image_size" in s for s in samples):
            raise ValueError("packing: high-res (AnyRes / HD) samples are not packed; set pack_length: null")
        segments = [(list(s["input_ids"]), list(s["labels"]), _images(s)) for s in samples]
        if not any(len(images) for _, _, images in segments):  # every batch runs the vision path
            stand_in = samples[0]["pixel_values"].new_zeros((1, *samples[0]["pixel_values"].shape[-3:]))
            segments.append(([self.image_token_id] * self.image_tokens, [IGNORE_INDEX] * self.image_tokens, stand_in))
        rows = first_fit([len(ids) for ids, _, _ in segments], self.capacity)
        width = max(sum(len(segments[i][0]) for i in row) for row in rows)
        ids, labels, positions, mask, pixels = [], [], [], [], []
        for row in rows:
            row_ids, row_labels, row_positions = [], [], []
            for i in row:
                sample_ids, sample_labels, images = segments[i]
                row_ids += sample_ids
                row_labels += sample_labels
                row_positions += list(range(len(sample_ids)))
                pixels.append(images)
            fill = width - len(row_ids)
            ids.append(row_ids + [self.pad_id] * fill)
            labels.append(row_labels + [IGNORE_INDEX] * fill)
            positions.append(row_positions + list(range(fill)))
            mask.append([1] * len(row_ids) + [0] * fill)
        return {
            "key": [s["key"] for s in samples],
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
            "attention_mask": torch.tensor(mask),
            "pixel_values": torch.cat(pixels),
            "samples_per_row": torch.tensor([len(row) for row in rows]),
        }
