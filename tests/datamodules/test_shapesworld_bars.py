"""ShapesWorld's file writers show tqdm bars in a terminal only: a log file (nohup, SLURM) gets no carriage returns."""

from __future__ import annotations

import sys

import pytest

from datamodules.shapesworld.benchmark import write_compositional_benchmark
from datamodules.shapesworld.evaluation_files import write_classification_benchmark, write_retrieval_benchmark
from datamodules.shapesworld.shards import write_shards
from datamodules.shapesworld.spatial import write_spatial_benchmark

WRITERS = {
    "compositional": lambda out: write_compositional_benchmark(out, n=2, image_size=16),
    "retrieval": lambda out: write_retrieval_benchmark(out, n=2, image_size=16),
    "classification": lambda out: write_classification_benchmark(out, per_class=1, image_size=16),
    "shards": lambda out: write_shards(out, n=2, image_size=16),
    "spatial": lambda out: write_spatial_benchmark(out, n=1, image_size=16),
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("terminal", [False, True], ids=["file", "terminal"])
def test_bars_only_in_a_terminal(writer, terminal, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    WRITERS[writer](tmp_path / "out")
    assert ("\r" in capfd.readouterr().err) is terminal
