"""bf16 weights (``bf16-true``, as DeepSpeed's bf16 mode casts them): every tensor a method makes in its
step follows the weight dtype, on the CPU too, for every method config (found by glob)."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

import train

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_method_trains_with_bf16_weights(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(config), "--trainer.precision", "bf16-true", "--trainer.max_steps", "3"]
    args += ["--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]"]
    args += ["--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0"]
    args += ["--data.init_args.shapesworld.n_train", "64"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    cli = train.main(args, run=False)
    steps = StepLosses()
    cli.trainer.callbacks.append(steps)
    cli.trainer.fit(cli.model, cli.datamodule)
    trainable = [p for p in cli.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.bfloat16 for p in trainable)
    assert len(steps.losses) == 3
    assert all(torch.isfinite(loss) for loss in steps.losses)
