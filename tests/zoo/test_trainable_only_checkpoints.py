"""Runs that train adapters or new blocks save only those tensors plus a reference to their frozen base."""

import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Trainer

import zoo
from tests.conftest import tiny_model


def _save(model, path):
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return torch.load(path, weights_only=False)


@pytest.fixture
def base_weights(tiny_cfg, tmp_path):
    torch.manual_seed(7)
    zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}).export_open_clip(tmp_path / "base")
    return tmp_path / "base" / "open_clip_pytorch_model.bin"


def _tuned(tiny_cfg, pretrained, method="FSCCLIP", **kwargs):
    torch.manual_seed(0)
    model = tiny_model(method, tiny_cfg, pretrained=str(pretrained), **kwargs)
    with torch.no_grad():  # as if trained
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize(
    ("method", "kwargs", "trained"),
    [("FSCCLIP", {"lora_rank": 2}, "lora_"), ("REACT", {"gated_layers": 1}, "gated_attn_block")],
)
def test_checkpoint_holds_only_trained_tensors_and_reloads_in_a_fresh_process(
    tiny_cfg, base_weights, tmp_path, method, kwargs, trained
):
    model = _tuned(tiny_cfg, base_weights, method, **kwargs)
    checkpoint = _save(model, tmp_path / "tuned.ckpt")
    kept = set(checkpoint["state_dict"])
    assert kept == {f"{n}" for n, p in model.named_parameters() if p.requires_grad}
    assert all(trained in k or k.endswith("logit_scale") for k in kept)
    assert checkpoint["frozen_base"]["reference"]["backbone.pretrained"] == str(base_weights.resolve())
    full = sum(v.numel() for v in model.state_dict().values())
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) < full / 5
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(images, tmp_path / "images.pt")
    script = (
        "import sys, torch, zoo\n"
        f"model = zoo.{method}.load_from_checkpoint(sys.argv[1], map_location='cpu').eval()\n"
        "torch.save(model.encode_image(torch.load(sys.argv[2])), sys.argv[3])\n"
    )
    args = [str(tmp_path / "tuned.ckpt"), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")]
    subprocess.run([sys.executable, "-c", script, *args], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "out.pt"), model.encode_image(images))


def test_a_changed_base_is_refused(tiny_cfg, base_weights, tmp_path):
    _save(_tuned(tiny_cfg, base_weights, lora_rank=2), tmp_path / "tuned.ckpt")
    torch.manual_seed(8)
    tiny_model("CLIP", tiny_cfg).export_open_clip(base_weights.parent)  # other weights, same file
    with pytest.raises(RuntimeError, match="frozen base"):
        zoo.FSCCLIP.load_from_checkpoint(tmp_path / "tuned.ckpt", map_location="cpu")


def test_fully_trained_or_unreferenced_runs_keep_every_weight(tiny_cfg, base_weights, tmp_path):
    full = _save(_tuned(tiny_cfg, base_weights), tmp_path / "full.ckpt")  # everything trains
    assert "frozen_base" not in full and full["hyper_parameters"]["backbone"]["pretrained"] is None
    torch.manual_seed(0)
    scratch = tiny_model("FSCCLIP", tiny_cfg, lora_rank=2)  # LoRA on a random base: no reference
    saved = _save(scratch, tmp_path / "scratch.ckpt")
    assert "frozen_base" not in saved and saved["state_dict"].keys() == scratch.state_dict().keys()


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    """REACT's gated-image run from a pre-trained file: 2 epochs straight, or 1 epoch, a trainable-only
    checkpoint and a resumed second epoch (optimizer and RNG states restored; a constant learning rate,
    since a 1-epoch run's cosine schedule is not the first half of a 2-epoch one)."""
    import yaml

    import train

    monkeypatch.chdir(tmp_path)
    config = train.__file__.replace("train.py", "configs/react.yaml")
    model_cfg = yaml.safe_load(open(config))["model"]["init_args"]["backbone"]["model_cfg"]
    torch.manual_seed(3)
    zoo.CLIP(backbone={"model_name": "t", "model_cfg": model_cfg}).export_open_clip(tmp_path / "base")
    base = str(tmp_path / "base" / "open_clip_pytorch_model.bin")
    common = ["--config", config, "--model.init_args.backbone.pretrained", base]
    common += ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0"]
    common += ["--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0"]
    common += ["--data.init_args.shapesworld.n_train", "32", "--model.init_args.lr_schedule", "constant"]
    common += ["--trainer.enable_progress_bar", "false", "--model.init_args.lr", "1e-2"]

    def fit(name, epochs, *extra):
        args = ["fit", *common, "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", name, *extra]
        return train.main(args)

    straight = fit("straight", 2).model
    first = fit("first", 1)
    last = first.trainer.checkpoint_callback.last_model_path
    saved = torch.load(last, weights_only=False)["state_dict"]
    assert all("gated_attn_block" in k or k.endswith("logit_scale") for k in saved)
    resumed = fit("resumed", 2, "--ckpt_path", last).model
    trained = {n for n, p in straight.named_parameters() if p.requires_grad}
    diffs = {n: (straight.get_parameter(n) - resumed.get_parameter(n)).abs().max().item() for n in trained}
    assert trained and all(d <= 1e-7 for d in diffs.values())
    gate = "backbone.model.visual.transformer.resblocks.2.gated_attn_block.alpha_attn"
    assert not torch.equal(first.model.get_parameter(gate), straight.get_parameter(gate))
