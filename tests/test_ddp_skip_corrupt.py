"""``skip_corrupt: true`` under DDP: a broken image is replaced by a seeded substitute, so both ranks keep
batches of the same size and the gathered contrastive loss runs (it aborted in gloo when a skipped sample
shrank one rank's batch). ``train.py`` on two CPU processes, clip.yaml's tiny model, 4 steps."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_run_with_a_broken_image_trains_every_step(tmp_path):
    rows = []
    for i in range(32):  # 2 ranks x 4 steps x 4 rows: every record is used, the broken one included
        name = f"{i}.png"
        if i == 13:
            (tmp_path / name).write_bytes(b"\x89PNG broken")
        else:
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), (8 * i, 255 - 8 * i, 0)).save(buffer, format="PNG")
            (tmp_path / name).write_bytes(buffer.getvalue())
        rows.append({"image": name, "caption": f"a square of colour {i}"})
    (tmp_path / "train.json").write_text(json.dumps(rows))

    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "clip.yaml")]
    command += ["--model.init_args.lr_schedule", "constant"]  # clip.yaml's model is already tiny
    command += ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    command += ["--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1"]
    command += ["--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path)]
    command += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    command += ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path)]
    command += ["--data.init_args.source", "manifest", "--data.init_args.train", str(tmp_path / "train.json")]
    command += ["--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"]
    command += ["--data.init_args.skip_corrupt", "true"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    assert "13.png (key 13.png): cannot read image" in run.stderr  # named, counted and replaced
    assert "skipped so far in this process" in run.stderr
    assert "replaced skipped sample 13 (epoch 0) by sample" in run.stderr
    (metrics,) = tmp_path.glob("clip/*/metrics.csv")
    with metrics.open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert steps == [0, 1, 2, 3]
