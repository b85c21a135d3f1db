import json

import pytest
import torch
from lightning.pytorch import Trainer

import zoo
from callbacks.suite import evaluate_suite, suite_benchmarks
from callbacks.wise_ft import axis_value, interpolate, load_backbone, main
from tests.conftest import TINY_MODEL_CFG, tiny_model


def test_interpolate_is_the_weight_space_ensemble():
    theta0 = {"w": torch.tensor([0.0, 2.0]), "ids": torch.tensor([1, 2])}
    theta1 = {"w": torch.tensor([2.0, 4.0]), "ids": torch.tensor([1, 2])}
    out = interpolate(theta0, theta1, 0.25)
    assert torch.equal(out["w"], torch.tensor([0.5, 2.5])) and torch.equal(out["ids"], theta0["ids"])
    assert torch.equal(interpolate(theta0, theta1, 0.0)["w"], theta0["w"])
    assert torch.equal(interpolate(theta0, theta1, 1.0)["w"], theta1["w"])
    with pytest.raises(ValueError, match="non-float"):
        interpolate(theta0, {**theta1, "ids": torch.tensor([1, 3])}, 0.5)
    with pytest.raises(ValueError, match="architecture"):
        interpolate(theta0, {**theta1, "w": torch.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match="differ in weights"):
        interpolate(theta0, {"w": theta1["w"]}, 0.5)


def test_axis_value_averages_the_matching_figures():
    results = {
        "sugarcrepe/replace_att": {"accuracy": 0.8, "items": 10},
        "shapesworld/order": {"accuracy": 0.4, "items": 5},
        "coco/retrieval": {"i2t_R@1": 0.3, "t2i_R@1": 0.5, "i2t_R@5": 0.9},
    }
    assert axis_value(results, ["*/accuracy"]) == pytest.approx(0.6)
    assert axis_value(results, ["*/i2t_R@1", "*/t2i_R@1"]) == pytest.approx(0.4)
    assert axis_value(results, ["*/top1"]) is None


def _suite_yaml(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n    - class_path: callbacks.EvaluationSuite\n      init_args:\n"
        "        benchmarks:\n          - {kind: shapesworld, n: 12, n_spatial: 2, per_class: 1}\n"
    )
    return path


@pytest.mark.slow
def test_end_to_end_from_an_export_and_a_lora_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    base = zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG}).eval()
    base.export_open_clip(tmp_path / "theta0")
    tuned = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG, "lora_rank": 4})
    tuned.backbone.load_open_clip_state_dict(base.backbone.open_clip_state_dict())
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_" in name:
                param.normal_(std=0.3)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(tuned)
    trainer.save_checkpoint(tmp_path / "theta1.ckpt")
    suite = _suite_yaml(tmp_path)
    args = ["--zeroshot", f"local-dir:{tmp_path / 'theta0'}", "--finetuned", str(tmp_path / "theta1.ckpt")]
    report = main([*args, "--benchmarks", str(suite), "--alphas", "0", "0.5", "1", "--num-workers", "0"])

    assert [p["alpha"] for p in report["points"]] == [0.0, 0.5, 1.0]
    written = json.loads((tmp_path / "wise_ft" / "wise_ft.json").read_text())
    assert written["points"][1]["benchmarks"] == report["points"][1]["benchmarks"]
    assert (tmp_path / "wise_ft" / "wise_ft.png").read_bytes()[:4] == b"\x89PNG"
    # the end points are the two models themselves, scored by the suite directly
    benchmarks = suite_benchmarks(suite, base)
    for point, model in [(report["points"][0], base), (report["points"][2], tuned.eval())]:
        direct = evaluate_suite(model, benchmarks, batch_size=128, num_workers=0)
        for name, figures in direct.items():
            assert point["benchmarks"][name] == pytest.approx(figures, abs=1e-6), name
    # the midpoint is a different model from both
    assert report["points"][1]["benchmarks"] != report["points"][0]["benchmarks"]


def test_checkpoint_backbone_merges_lora(tmp_path):
    torch.manual_seed(0)
    tuned = tiny_model("FSCCLIP", TINY_MODEL_CFG, lora_rank=2, lora_towers=["text"])
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(tuned)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    backbone = load_backbone(str(tmp_path / "m.ckpt"))
    state = backbone.open_clip_state_dict()
    assert not any("lora_" in k or "parametrizations" in k for k in state)
    assert state.keys() == tiny_model("CLIP", TINY_MODEL_CFG).backbone.open_clip_state_dict().keys()
