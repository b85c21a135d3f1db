"""The evaluation callbacks get ShapesWorld's benchmarks themselves: any data module (or none) will do,
and the files are those the image-caption data module writes."""

from pathlib import Path
from types import SimpleNamespace

import torch

import zoo
from callbacks import CompositionalityEvaluation
from callbacks.suite import load_benchmarks
from datamodules import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.benchmarks.shapesworld import shapesworld_benchmark_file, shapesworld_settings
from tests.conftest import TINY_MODEL_CFG


def _trainer(datamodule):
    return SimpleNamespace(datamodule=datamodule, is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None))


def test_settings_come_from_arguments_then_the_data_module_then_defaults(tmp_path):
    assert shapesworld_settings(None) == {"seed": 0, "image_size": 64, "benchmark_dir": Path("data/shapesworld")}
    dm = ImageCaptionDataModule(benchmark_dir=str(tmp_path), shapesworld=ShapesWorldConfig(seed=2, image_size=32))
    assert shapesworld_settings(dm) == {"seed": 2, "image_size": 32, "benchmark_dir": tmp_path}
    chosen = shapesworld_settings(dm, seed=5, benchmark_dir="b")
    assert chosen == {"seed": 5, "image_size": 32, "benchmark_dir": Path("b")}
    assert shapesworld_settings(object(), image_size=16)["image_size"] == 16


def test_files_are_the_data_modules(tmp_path):
    config = ShapesWorldConfig(seed=3, image_size=24)
    dm = ImageCaptionDataModule(benchmark_dir=str(tmp_path / "dm"), shapesworld=config)
    where = {"seed": 3, "image_size": 24, "benchmark_dir": tmp_path / "fn"}
    pairs = [
        (dm.compositional_benchmark(4), shapesworld_benchmark_file("compositional", 4, **where)),
        (dm.spatial_benchmark(2), shapesworld_benchmark_file("spatial", 2, **where)),
        (dm.retrieval_benchmark(3), shapesworld_benchmark_file("retrieval", 3, **where)),
        (dm.classification_benchmark(1), shapesworld_benchmark_file("classification", 1, **where)),
    ]
    for old, new in pairs:
        assert old.relative_to(tmp_path / "dm") == new.relative_to(tmp_path / "fn")
        root_old, root_new = (old, new) if old.is_dir() else (old.parent, new.parent)
        files = sorted(p.relative_to(root_old) for p in root_old.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(root_new) for p in root_new.rglob("*") if p.is_file())
        assert all((root_old / f).read_bytes() == (root_new / f).read_bytes() for f in files)
    assert pairs[0][1].name == "compositional.json" and pairs[0][1].parent.name == "compositional-seed3-n4-px24"


def test_compositionality_needs_no_benchmark_methods_on_the_data_module(tmp_path):
    plain = SimpleNamespace()  # e.g. an instruction data module: no ShapesWorld config, no writers
    callback = CompositionalityEvaluation(n=4, benchmark_dir=str(tmp_path))
    assert callback._benchmark(_trainer(plain)) == tmp_path / "compositional-seed0-n4-px64" / "compositional.json"
    dm = ImageCaptionDataModule(benchmark_dir=str(tmp_path), shapesworld=ShapesWorldConfig(seed=1, image_size=32))
    path = CompositionalityEvaluation(n=4)._benchmark(_trainer(dm))
    assert path == dm.compositional_benchmark(4)


def test_suite_runs_shapesworld_without_a_data_module(tmp_path):
    torch.manual_seed(0)
    transform = zoo.CLIP(model_name="t", model_cfg=TINY_MODEL_CFG).data_transforms()["eval_transform"]
    spec = {"kind": "shapesworld", "n": 6, "n_spatial": 1, "per_class": 1, "benchmark_dir": str(tmp_path)}
    names = [b.name for b in load_benchmarks([spec], None, transform)]
    assert "shapesworld/retrieval" in names and "shapesworld/shape_classification" in names
    assert (tmp_path / "compositional-seed0-n6-px64" / "compositional.json").is_file()
    same = load_benchmarks([spec], SimpleNamespace(), transform)
    assert [b.name for b in same] == names
