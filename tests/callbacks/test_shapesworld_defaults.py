"""The evaluation callbacks get ShapesWorld's benchmarks themselves: any data module (or none) will do,
and the files keep the names and bytes the image-caption data module used to write."""

from pathlib import Path
from types import SimpleNamespace

import torch

import zoo
from callbacks import CompositionalityEvaluation
from callbacks.suite import load_benchmarks
from datamodules import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.benchmarks.shapesworld import shapesworld_benchmark_file, shapesworld_settings
from datamodules.shapesworld import write_compositional_benchmark, write_retrieval_benchmark, write_spatial_benchmark
from tests.conftest import TINY_MODEL_CFG


def _trainer(datamodule):
    return SimpleNamespace(datamodule=datamodule, is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None))


def test_settings_come_from_arguments_then_the_data_module_then_defaults(tmp_path, vlzoo_cache):
    default = {"seed": 0, "image_size": 64, "benchmark_dir": vlzoo_cache / "shapesworld"}  # $VLZOO_CACHE (conftest)
    assert shapesworld_settings(None) == default
    dm = ImageCaptionDataModule(benchmark_dir=str(tmp_path), shapesworld=ShapesWorldConfig(seed=2, image_size=32))
    assert shapesworld_settings(dm) == {"seed": 2, "image_size": 32, "benchmark_dir": tmp_path}
    chosen = shapesworld_settings(dm, seed=5, benchmark_dir="b")
    assert chosen == {"seed": 5, "image_size": 32, "benchmark_dir": Path("b")}
    assert shapesworld_settings(object(), image_size=16)["image_size"] == 16


def test_files_are_the_writers_under_stable_names(tmp_path):
    where = {"seed": 3, "image_size": 24, "benchmark_dir": tmp_path / "fn"}
    settings = {"split": "test", "seed": 3, "image_size": 24}
    pairs = [
        (shapesworld_benchmark_file("compositional", 4, **where), "compositional-seed3-n4-px24/compositional.json",
         write_compositional_benchmark(tmp_path / "w" / "compositional-seed3-n4-px24", n=4, **settings)),
        (shapesworld_benchmark_file("spatial", 2, **where), "spatial-seed3-n2-px24/spatial.json",
         write_spatial_benchmark(tmp_path / "w" / "spatial-seed3-n2-px24", n=2, **settings)),
        (shapesworld_benchmark_file("retrieval", 3, **where), "retrieval-seed3-n3-px24/dataset_shapesworld.json",
         write_retrieval_benchmark(tmp_path / "w" / "retrieval-seed3-n3-px24", n=3, **settings)),
    ]
    for new, name, old in pairs:
        assert new == tmp_path / "fn" / name and new.read_bytes() == old.read_bytes()
        assert shapesworld_benchmark_file(name.split("-")[0], int(name.split("-n")[1].split("-")[0]), **where) == new
    root = shapesworld_benchmark_file("classification", 1, **where)
    assert root == tmp_path / "fn" / "classification-seed3-k1-px24" and (root / "DONE").is_file()


def test_compositionality_needs_no_benchmark_methods_on_the_data_module(tmp_path):
    plain = SimpleNamespace()  # e.g. an instruction data module: no ShapesWorld config, no writers
    callback = CompositionalityEvaluation(n=4, benchmark_dir=str(tmp_path))
    assert callback._benchmark(_trainer(plain)) == tmp_path / "compositional-seed0-n4-px64" / "compositional.json"
    dm = ImageCaptionDataModule(benchmark_dir=str(tmp_path), shapesworld=ShapesWorldConfig(seed=1, image_size=32))
    path = CompositionalityEvaluation(n=4)._benchmark(_trainer(dm))
    assert path == tmp_path / "compositional-seed1-n4-px32" / "compositional.json" and path.is_file()


def test_suite_runs_shapesworld_without_a_data_module(tmp_path):
    torch.manual_seed(0)
    transform = zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG}).data_transforms()["eval_transform"]
    spec = {"kind": "shapesworld", "n": 6, "n_spatial": 1, "per_class": 1, "benchmark_dir": str(tmp_path)}
    names = [b.name for b in load_benchmarks([spec], None, transform)]
    assert "shapesworld/retrieval" in names and "shapesworld/shape_classification" in names
    assert (tmp_path / "compositional-seed0-n6-px64" / "compositional.json").is_file()
    same = load_benchmarks([spec], SimpleNamespace(), transform)
    assert [b.name for b in same] == names
