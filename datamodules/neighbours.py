"""Hard images for NegCLIP: tables of each training image's nearest neighbours by backbone embedding.

A table ``{"k", "keys", "neighbours"}`` is computed by ``python -m callbacks.neighbours`` (it needs a
model) and read here (:func:`read_neighbour_table`, :class:`WithNeighbours`) when the data module gets
``neighbours: neighbours.json`` and ``hard_images: true``. NegCLIP's TSV brings its own table
(``neg_image``) instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset


def nearest_neighbours(
    features: torch.Tensor, k: int, image_ids: torch.Tensor | None = None, chunk_size: int = 1024
) -> list[list[int]]:
    """Indices of the ``k`` most similar rows of each row of ``features`` [N, D] (cosine of
    normalised rows), excluding the row itself and rows of the same image; scored in chunks."""
    if not 0 < k < len(features):
        raise ValueError(f"k must be in [1, {len(features) - 1}], got {k}")
    ids = image_ids if image_ids is not None else torch.arange(len(features))
    table = []
    for start in range(0, len(features), chunk_size):
        scores = features[start : start + chunk_size] @ features.T
        same = ids[start : start + chunk_size, None] == ids[None, :]
        same[torch.arange(len(scores)), torch.arange(start, start + len(scores))] = True
        scores = scores.masked_fill(same, float("-inf"))
        table.extend(scores.topk(k, dim=1).indices.tolist())
    return table


def write_neighbour_table(path: str | Path, keys: list[str], neighbours: list[list[int]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"k": len(neighbours[0]), "keys": keys, "neighbours": neighbours}))
    return path


def read_neighbour_table(path: str | Path, n: int) -> list[list[int]]:
    """The neighbour lists of a table written for a split of ``n`` records (checked)."""
    table = json.loads(Path(path).read_text())
    neighbours = table["neighbours"]
    if len(neighbours) != n or any(not 0 <= j < n for row in neighbours for j in row):
        raise ValueError(f"neighbour table {path} was built for {len(neighbours)} records, this split has {n}")
    return neighbours


class WithNeighbours(Dataset):
    """Adds ``neighbours`` (row indices) to the records of a map-style source."""

    def __init__(self, records: Dataset, neighbours: list[list[int]]) -> None:
        self.records, self.neighbours = records, neighbours

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        return None if record is None else {**record, "neighbours": self.neighbours[index]}


if __name__ == "__main__":  # the command needs a model, so it lives above the data layer
    raise SystemExit("computing a neighbour table moved: python -m callbacks.neighbours --config ... --out ...")
