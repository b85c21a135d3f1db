"""GPU checks of the CLIP family (``gpu`` marker: skipped without CUDA, run on the lent GPU machine)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

import train
from tests.conftest import reload_in_fresh_process

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]
METHODS = ["clip", "negclip", "fsc_clip", "fsc_clip_lora", "react"]
STRATEGIES = ["ddp", "fsdp"] + (["deepspeed_stage_2"] if importlib.util.find_spec("deepspeed") else [])


class LossHistory(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def _fit(method, strategy, tmp_path, *extra):
    args = ["--config", str(ROOT / "configs" / f"{method}.yaml")]
    args += ["--config", str(ROOT / "configs" / "strategy" / f"{strategy}.yaml"), "--trainer.devices", "1"]
    args += ["--trainer.overfit_batches", "1", "--trainer.max_epochs", "20", "--trainer.limit_val_batches", "0"]
    args += ["--trainer.default_root_dir", str(tmp_path), *extra]
    args += ["--model.init_args.warmup_steps", "0", "--model.init_args.lr_schedule", "constant"]
    return train.main(args, run=False)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("method", METHODS)
def test_twenty_steps_on_a_fixed_batch_lower_the_loss(method, strategy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _fit(method, strategy, tmp_path)
    history = LossHistory()
    cli.trainer.callbacks.append(history)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert len(history.losses) == 20 and all(map(torch.isfinite, torch.tensor(history.losses)))
    assert history.losses[-1] < history.losses[0]


@pytest.mark.parametrize("method", METHODS)
def test_bf16_loss_matches_cpu_fp32_at_step_zero(method):
    cli = train.main(["--config", str(ROOT / "configs" / f"{method}.yaml")], run=False)
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    model = cli.model.eval()
    cpu = float(sum(model.losses(batch).values()))
    gpu_batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu = float(sum(model.cuda().losses(gpu_batch).values()))
    assert gpu == pytest.approx(cpu, rel=2e-2)  # bf16 keeps 8 mantissa bits


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_checkpoint_reloads_on_cpu_with_identical_embeddings(strategy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _fit("clip", strategy, tmp_path, "--trainer.max_epochs", "2")
    cli.trainer.fit(cli.model, cli.datamodule)
    path = tmp_path / "final.ckpt"
    cli.trainer.save_checkpoint(path)
    if path.is_dir():  # a sharded DeepSpeed checkpoint: consolidate it as the README says
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        convert_zero_checkpoint_to_fp32_state_dict(path, tmp_path / "consolidated.ckpt")
        path = tmp_path / "consolidated.ckpt"
    reloaded = reload_in_fresh_process(path, tmp_path / "exported")
    model = cli.model.float().cpu().eval()
    with torch.no_grad():
        assert torch.allclose(reloaded["image"], model.backbone.model.encode_image(reloaded["images"]), atol=1e-5)
        assert torch.allclose(reloaded["text"], model.backbone.model.encode_text(reloaded["texts"]), atol=1e-5)
    assert torch.equal(reloaded["exported_image"], reloaded["image"])
