from pathlib import Path

import pytest
import torch

from callbacks.neighbours import main
from datamodules import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.neighbours import nearest_neighbours, read_neighbour_table, write_neighbour_table

ROOT = Path(__file__).resolve().parents[2]


def test_nearest_neighbours_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [0.9, -0.436]])
    # row 4 duplicates row 0's image: never its neighbour
    ids = torch.tensor([0, 1, 2, 3, 0])
    assert nearest_neighbours(features, 2, ids, chunk_size=2) == [[1, 3], [3, 0], [3, 1], [1, 2], [1, 3]]
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(features, 5)


def test_table_round_trip_and_size_check(tmp_path):
    path = write_neighbour_table(tmp_path / "t.json", ["a", "b", "c"], [[1], [2], [0]])
    assert read_neighbour_table(path, 3) == [[1], [2], [0]]
    with pytest.raises(ValueError, match="built for 3 records, this split has 4"):
        read_neighbour_table(path, 4)


def test_command_writes_a_table_the_data_module_uses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = main(
        [
            "--config",
            str(ROOT / "configs" / "clip.yaml"),
            "--out",
            "nb.json",
            "--k",
            "2",
            "--data.init_args.shapesworld.n_train",
            "12",
            "--data.init_args.num_workers",
            "0",
        ]
    )
    table = read_neighbour_table(out, 12)
    assert all(len(row) == 2 and i not in row for i, row in enumerate(table))

    dm = ImageCaptionDataModule(
        batch_size=4,
        num_workers=0,
        hard_images=True,
        neighbours=str(out),
        shapesworld=ShapesWorldConfig(n_train=12, image_size=16),
    )
    to_tensor = lambda image: torch.zeros(3, 2, 2)  # noqa: E731
    dm.connect(tokenizer=lambda texts: torch.zeros(len(texts), 3), train_transform=to_tensor, eval_transform=to_tensor)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["key"]) == 8
    for original, neighbour in zip(batch["key"][:4], batch["key"][4:]):
        assert int(neighbour.split("-")[1]) in table[int(original.split("-")[1])]
