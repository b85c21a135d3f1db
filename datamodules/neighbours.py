"""Hard images for NegCLIP: each training image's nearest neighbours by backbone embedding.

    python -m datamodules.neighbours --config configs/negclip.yaml --out neighbours.json --k 3 \\
        [--ckpt_path last.ckpt] [--split train] [any train.py override, e.g. --data.init_args.batch_size 256]

embeds the data module's split once with the configured model (or a checkpoint), writes the table
``{"k", "keys", "neighbours"}`` and is used with ``data.init_args.neighbours: neighbours.json`` and
``hard_images: true``. NegCLIP's TSV brings its own table (``neg_image``) instead.
"""

from __future__ import annotations

import argparse
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


def main(args: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append", help="train.py config(s)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--ckpt_path", default=None, help="weights to embed with (default: the config's model)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parsed, overrides = parser.parse_known_args(args)  # the rest goes to the config, e.g. --data.init_args.batch_size

    from callbacks.embedding import embed_images
    from train import main as cli_main

    cli = cli_main([arg for config in parsed.config for arg in ("--config", config)] + overrides, run=False)
    model, datamodule = cli.model.eval(), cli.datamodule
    if parsed.ckpt_path:
        model.load_state_dict(torch.load(parsed.ckpt_path, map_location="cpu", weights_only=False)["state_dict"])
    keys: list[str] = []
    ids: list[torch.Tensor] = []

    def images():
        for batch in datamodule.retrieval_dataloader(parsed.split):
            keys.extend(batch["key"])
            ids.append(batch["image_id"])
            yield batch["image"]

    features = embed_images(model, images(), desc=f"embedding {parsed.split} images")
    table = nearest_neighbours(features.cpu(), parsed.k, torch.cat(ids))
    out = write_neighbour_table(parsed.out, keys, table)
    print(f"wrote the {parsed.k} nearest neighbours of {len(keys)} images to {out}")
    return out


if __name__ == "__main__":
    main()
