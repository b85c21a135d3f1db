"""DDP through the user's command line on two CPU processes (gloo): a webdataset run checkpointed
mid-epoch resumes with the uninterrupted run's losses, and its checkpoint loads in a new CPU-only
process and exports to open_clip ``local-dir:`` (FSDP and DeepSpeed need a GPU: tests/test_gpu.py)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules.shapesworld import write_shards
from tests.conftest import reload_in_fresh_process

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = (
    "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
    "init_args: {dirpath: %s, every_n_train_steps: 3, save_top_k: -1, save_last: true}}]"
)


def _fit(tmp_path, name, shards, *extra):
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "clip.yaml")]
    command += ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    command += ["--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1"]
    command += ["--trainer.callbacks", CHECKPOINT % (tmp_path / name), "--trainer.enable_progress_bar", "false"]
    command += [
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path / name)
    ]
    command += ["--data.init_args.source", "webdataset", "--data.init_args.train", shards]
    command += ["--data.init_args.batch_size", "8", "--data.init_args.shuffle_buffer", "16"]
    command += ["--model.init_args.lr_schedule", "constant", *extra]
    subprocess.run(command, cwd=tmp_path, check=True, timeout=600)
    (metrics,) = (tmp_path / name).glob("clip/*/metrics.csv")
    with metrics.open() as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}


@pytest.mark.slow
def test_ddp_webdataset_run_resumes_mid_epoch_and_its_checkpoint_exports(tmp_path):
    # 4 shards of 16: each rank reads 2, one per worker, 4 batches of 8 per rank
    write_shards(tmp_path / "shards", n=64, image_size=64, shard_size=16)
    shards = str(tmp_path / "shards" / "shapesworld-train-{000000..000003}.tar")
    straight = _fit(tmp_path, "straight", shards)
    assert sorted(straight) == [0, 1, 2, 3]
    resumed = _fit(tmp_path, "resumed", shards, "--ckpt_path", str(tmp_path / "straight" / "epoch=0-step=3.ckpt"))
    assert resumed == pytest.approx({3: straight[3]}, rel=1e-5)

    reloaded = reload_in_fresh_process(tmp_path / "resumed" / "last.ckpt", tmp_path / "exported")
    assert torch.equal(reloaded["exported_image"], reloaded["image"])
    assert torch.equal(reloaded["exported_text"], reloaded["text"])
    checkpoint = torch.load(tmp_path / "resumed" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4  # the resumed run's last weights, not the initial ones
