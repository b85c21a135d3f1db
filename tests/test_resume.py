"""A run interrupted mid-epoch and resumed gives the same losses as an uninterrupted one."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

import train
from datamodules.shapesworld import write_shards

ROOT = Path(__file__).resolve().parents[1]


class Record(Callback):
    """Per-step training losses; with ``stop_at``, a checkpoint there and a stop (an interruption)."""

    def __init__(self, stop_at: int | None = None, path: Path | None = None) -> None:
        self.losses: list[float] = []
        self.stop_at, self.path = stop_at, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        if trainer.global_step == self.stop_at:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _run(tmp_path, name, record, *extra, data=(), config="negclip.yaml"):
    args = ["--config", str(ROOT / "configs" / config), "--trainer.max_epochs", "1", *data]
    args += ["--data.init_args.shapesworld.n_train", "64", "--data.init_args.batch_size", "8"]
    args += ["--data.init_args.num_workers", "2"]
    args += ["--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]"]
    args += ["--model.init_args.lr_schedule", "constant", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.default_root_dir", str(tmp_path / name)]
    cli = train.main(args, run=False)
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=extra[0] if extra else None)
    return cli


@pytest.mark.slow
@pytest.mark.parametrize("source", ["shapesworld", "webdataset"])
def test_mid_epoch_resume_continues_the_same_batches(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ()
    if source == "webdataset":  # 3 shards for one worker, 2 for the other: stop in the round robin
        write_shards(tmp_path / "shards", n=80, image_size=32, shard_size=16)
        data = ("--data.init_args.source", "webdataset", "--data.init_args.shuffle_buffer", "16")
        data += ("--data.init_args.train", str(tmp_path / "shards" / "shapesworld-train-{000000..000004}.tar"))
    straight = Record()
    whole = _run(tmp_path, "straight", straight, data=data)
    assert len(straight.losses) == (8 if source == "shapesworld" else 10)  # 64 scenes / 8; 48 / 8 + 32 / 8
    interrupted = Record(stop_at=3, path=tmp_path / "mid.ckpt")
    _run(tmp_path, "first", interrupted, data=data)
    assert interrupted.losses == straight.losses[:3]
    # interrupted again one batch later: a worker that gave no batch since the resume keeps its place
    again = Record(stop_at=4, path=tmp_path / "mid2.ckpt")
    _run(tmp_path, "second", again, str(tmp_path / "mid.ckpt"), data=data)
    assert again.losses == pytest.approx(straight.losses[3:4], rel=1e-6)
    resumed = Record()
    rest = _run(tmp_path, "resumed", resumed, str(tmp_path / "mid2.ckpt"), data=data)
    assert resumed.losses == pytest.approx(straight.losses[4:], rel=1e-6)
    for name, param in whole.model.named_parameters():
        assert torch.allclose(param, rest.model.get_parameter(name), atol=1e-6), name


@pytest.mark.slow
def test_vladva_resumes_from_an_adapter_only_checkpoint_with_the_same_losses(tmp_path, monkeypatch):
    """Soft prompts, LoRA, temperature and their optimiser states come back from a checkpoint that holds only them."""
    monkeypatch.chdir(tmp_path)
    data = ("--data.init_args.num_workers", "0", "--model.init_args.language_model_config", "{num_hidden_layers: 2}")
    straight = Record()
    _run(tmp_path, "straight", straight, data=data, config="vladva.yaml")
    assert len(straight.losses) == 8
    interrupted = Record(stop_at=3, path=tmp_path / "mid.ckpt")
    _run(tmp_path, "first", interrupted, data=data, config="vladva.yaml")
    saved = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    assert "frozen_base" in saved
    assert all("lora_" in k or "soft_prompts" in k or "logit" in k for k in saved["state_dict"])
    resumed = Record()
    _run(tmp_path, "resumed", resumed, str(tmp_path / "mid.ckpt"), data=data, config="vladva.yaml")
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-5)
