"""The harness of the two-process DDP equality tests: each rank trains a few steps on its own batch through
Lightning's own ``Trainer(strategy="ddp")`` and saves the first step's loss and gradients (after DDP's all-reduce);
the test compares them with one process over both batches. A test file is also the script each rank runs."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
STEPS = 2  # DDP finds a parameter that took no gradient when the next step starts


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class FirstStep(Callback):
    """The first step's loss and gradients (after DDP's all-reduce, before clipping and the optimiser)."""

    def on_train_start(self, trainer, module):
        ddp = trainer.strategy.model  # the wrapper Lightning trains (unwrapped again at teardown)
        self.wrapper = {"find_unused_parameters": ddp.find_unused_parameters, "wrapper": type(ddp).__name__}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == 0:
            self.grads = {name: p.grad.clone() for name, p in trainable(module).items() if p.grad is not None}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.loss = outputs["loss"].detach().clone()


def train_rank(model, batch: dict[str, Any], out: Path) -> None:
    """This rank's run: ``STEPS`` steps on ``batch``; writes ``out/rank{R}.pt``."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader

    first = FirstStep()
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=120)), max_steps=STEPS,
        use_distributed_sampler=False, callbacks=[first], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader([batch] * STEPS, batch_size=None))
    result = {"loss": first.loss, "grads": first.grads, "steps": trainer.global_step, **first.wrapper}
    torch.save(result, out / f"rank{trainer.global_rank}.pt")


def run_ranks(script: str | Path, out: Path, *args: str) -> list[dict[str, Any]]:
    """Run ``script out *args`` (Lightning starts rank 1 by running it again); each rank's saved result. Every rank
    ran the whole run on plain DDP without ``find_unused_parameters``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(Path(script).resolve()), str(out), *args]
    run = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-6000:]
    ranks = [torch.load(out / f"rank{rank}.pt") for rank in range(2)]
    for result in ranks:
        assert result["steps"] == STEPS and result["wrapper"] == "DistributedDataParallel"
        assert result["find_unused_parameters"] is False
    return ranks


def assert_ranks_equal_one_process(ranks: list[dict[str, Any]], loss: torch.Tensor, grads: dict) -> None:
    """The mean of the ranks' losses and every rank's (all-reduced) gradients equal one process's."""
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-5)
    for result in ranks:
        assert sorted(result["grads"]) == sorted(grads)  # every trainable tensor has a gradient on every rank
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: n + m)
