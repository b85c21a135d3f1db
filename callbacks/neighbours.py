"""Hard images for NegCLIP: each training image's nearest neighbours by backbone embedding.

    vlzoo-neighbours --config negclip --out neighbours.json --k 3 \\
        [--ckpt_path last.ckpt] [--split train] [any vlzoo override, e.g. --data.init_args.batch_size 256]

(``python -m callbacks.neighbours`` in the repository; ``--config`` is a path or a packaged config's name.)

embeds the data module's split once with the configured model (or a checkpoint), writes the table
``{"k", "keys", "neighbours"}`` (:func:`datamodules.neighbours.write_neighbour_table`) and is used with
``data.init_args.neighbours: neighbours.json`` and ``hard_images: true``. NegCLIP's TSV brings its own
table (``neg_image``) instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from callbacks.embedding import embed_images
from datamodules.neighbours import nearest_neighbours, write_neighbour_table


def main(args: list[str] | None = None, prog: str | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, action="append", help="vlzoo / train.py config(s)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--ckpt_path", default=None, help="weights to embed with (default: the config's model)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parsed, overrides = parser.parse_known_args(args)  # the rest goes to the config, e.g. --data.init_args.batch_size

    from callbacks.cli import main as cli_main  # the command line builds model and data exactly as training does

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


def console() -> None:
    """The ``vlzoo-neighbours`` console script."""
    main(prog="vlzoo-neighbours")


if __name__ == "__main__":
    main()
