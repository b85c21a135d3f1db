import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import zoo
from callbacks.suite import evaluate_suite, load_benchmarks, main, to_markdown
from datamodules import ImageCaptionDataModule
from tests.conftest import TINY_MODEL_CFG, free_port


def _model():
    torch.manual_seed(0)
    return zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG}).eval()


def _benchmarks(root):
    dm = ImageCaptionDataModule(benchmark_dir=str(root))
    transform = _model().data_transforms()["eval_transform"]
    return load_benchmarks([{"kind": "shapesworld", "n": 24, "n_spatial": 4, "per_class": 2}], dm, transform)


def _worker(rank, port, root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = evaluate_suite(_model(), _benchmarks(root), batch_size=5, num_workers=0)
    with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()



@pytest.mark.slow
def test_one_and_two_processes_give_identical_figures(tmp_path):
    benchmarks = _benchmarks(tmp_path)  # written once before the workers read it
    single = evaluate_suite(_model(), benchmarks, batch_size=5, num_workers=0)
    categories = ("replace_attribute", "replace_object", "replace_relation", "swap_attribute", "swap_object")
    counterparts = ("spatial", "winoground", "mmvp", "order", "brittleness", "retrieval", "shape_classification")
    assert set(single) == {f"shapesworld/{c}" for c in categories + counterparts}
    assert single["shapesworld/shape_classification"]["items"] == 16 and single["shapesworld/retrieval"]["items"] == 24
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        # accuracies are identical; a mean cosine may differ in the 8th digit (batch composition)
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == single.keys()
        for name, figures in single.items():
            assert got[name] == pytest.approx(figures, rel=1e-6)


def test_stand_alone_on_an_exported_open_clip_folder(tmp_path, monkeypatch):
    model = _model()
    model.export_open_clip(tmp_path / "export")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "trainer:\n  callbacks:\n    - class_path: callbacks.EvaluationSuite\n      init_args:\n"
        "        benchmarks:\n          - {kind: shapesworld, n: 12, n_spatial: 2, per_class: 1}\n"
    )
    monkeypatch.chdir(tmp_path)
    report = main(
        [
            "--model",
            f"local-dir:{tmp_path / 'export'}",
            "--benchmarks",
            str(suite),
            "--out",
            "r.json",
            "--num-workers",
            "0",
        ]
    )
    direct = evaluate_suite(
        model,
        load_benchmarks(
            [{"kind": "shapesworld", "n": 12, "n_spatial": 2, "per_class": 1}],
            ImageCaptionDataModule(),
            model.data_transforms()["eval_transform"],
        ),
        num_workers=0,
    )
    assert report["benchmarks"] == direct  # the exported weights score exactly like the zoo model
    saved = json.loads((tmp_path / "r.json").read_text())
    assert (
        saved["model"]["preprocess"]["size"] == [32, 32] and saved["model"]["preprocess"]["interpolation"] == "bicubic"
    )
    assert saved["model"]["quick_gelu"] is False and saved["model"]["context_length"] == 16
    assert "| shapesworld/swap_object |" in to_markdown(direct)


def test_compare_writes_a_table_and_a_chart_per_family(tmp_path):
    a = {
        "benchmarks": {
            "sugarcrepe/swap_att": {"accuracy": 0.5, "items": 2, "skipped": 0},
            "winoground": {"text_score": 0.25, "image_score": 0.0, "group_score": 0.0, "items": 4},
        }
    }
    b = {"benchmarks": {"sugarcrepe/swap_att": {"accuracy": 0.75, "items": 2, "skipped": 0}}}
    (tmp_path / "clip.json").write_text(json.dumps(a))
    (tmp_path / "negclip.json").write_text(json.dumps(b))
    main(["compare", str(tmp_path / "clip.json"), str(tmp_path / "negclip.json"), "--out", str(tmp_path / "cmp")])
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| benchmark | metric | clip | negclip |" in table
    assert "| sugarcrepe/swap_att | accuracy | 50.0 | 75.0 |" in table
    assert "| winoground | text_score | 25.0 | – |" in table
    assert sorted(p.name for p in (tmp_path / "cmp").glob("*.png")) == ["sugarcrepe.png", "winoground.png"]


SPEC_ERRORS = [
    (
        {"kind": "clasification", "root": "x"},
        r"suite spec 1: unknown benchmark kind 'clasification' \(did you mean 'classification'\?\).*'brittleness'",
    ),
    (
        {"kind": "classification", "root": "x", "class_names": ["a"]},
        r"suite spec 1 \(kind 'classification'\): unknown argument 'class_names' \(did you mean 'classnames'\?\); "
        r"accepted arguments: \['root', 'split', 'classnames'",
    ),
    ({"kind": "winoground"}, r"suite spec 1 \(kind 'winoground'\): missing required argument"),
    (
        {"kind": "shapesworld", "per_klass": 2},
        r"suite spec 1 \(kind 'shapesworld'\): unknown argument 'per_klass' \(did you mean 'per_class'\?\)",
    ),
    ({"root": "x"}, r"suite spec 1: unknown benchmark kind None"),
]


@pytest.mark.parametrize(("spec", "message"), SPEC_ERRORS)
def test_spec_errors_name_the_entry_the_accepted_keys_and_the_closest_match(spec, message, tmp_path):
    fine = {"kind": "shapesworld", "n": 4, "n_spatial": 1, "per_class": 1, "benchmark_dir": str(tmp_path)}
    with pytest.raises(ValueError, match=message):
        load_benchmarks([fine, spec], None, lambda image: image)
    assert not any(tmp_path.iterdir())  # checked before anything is generated
