"""FileProgressLog: plain lines (and no bars, no carriage returns) when stdout is no terminal; nothing in one."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

import zoo
from callbacks import progress_log
from callbacks.progress_log import FileProgressLog, samples_in
from tests.callbacks.tiny_fit import BATCH_SIZE, TRAIN_BATCHES, Recorder, tiny_fit
from tests.conftest import TINY_MODEL_CFG

NUMBER = r"[-+.\de]+"


class Clock(Callback):
    """A fake clock: one second per training batch, ten per validation epoch (which must not count)."""

    def __init__(self) -> None:
        self.now = 0.0

    def on_train_batch_end(self, *args) -> None:
        self.now += 1.0

    def on_validation_epoch_end(self, *args) -> None:
        self.now += 10.0


def test_lines_every_n_steps_and_per_validation_epoch_without_bars(tmp_path, capfd, monkeypatch):
    clock, recorder = Clock(), Recorder()
    monkeypatch.setattr(progress_log.time, "monotonic", lambda: clock.now)
    # the clock's hooks run before the log's: it has ticked when the log reads it
    trainer, _, _ = tiny_fit(tmp_path, [clock, recorder, FileProgressLog(every_n_steps=2, force=True)])
    out, err = capfd.readouterr()
    assert "\r" not in out + err  # neither Lightning's bar nor the evaluation bars
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    steps = 2 * TRAIN_BATCHES
    train = [line for line in lines if " loss " in line]
    assert len(train) == 2
    for epoch, line in enumerate(train):
        expected = rf"epoch {epoch} step {2 * (epoch + 1)}/{steps} loss ({NUMBER}) lr ({NUMBER}) samples/s ({NUMBER})"
        match = re.fullmatch(expected, line)
        assert match, line
        assert float(match[3]) == pytest.approx(2 * BATCH_SIZE / 2.0)  # two batches of 4 in two seconds
    assert float(re.search(rf"loss ({NUMBER})", train[-1])[1]) == pytest.approx(
        float(trainer.callback_metrics["train/loss"]), abs=1e-4
    )
    validation = [line for line in lines if "val/loss" in line]
    assert len(validation) == 2
    for epoch, (line, figures) in enumerate(zip(validation, recorder.epochs, strict=True)):
        assert line.startswith(f"epoch {epoch} step {TRAIN_BATCHES * (epoch + 1)} val/loss {figures['val/loss']:.4f} ")
        assert f"val/retrieval/t2i_R@1 {figures['val/retrieval/t2i_R@1']:.4f}" in line
        assert "contrastive_loss" not in line


def test_silent_in_a_terminal_and_active_without_one(monkeypatch):
    model = zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG})
    for stdout_is_a_terminal in (True, False):
        monkeypatch.setattr(sys.stdout, "isatty", lambda value=stdout_is_a_terminal: value)
        trainer = Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False)
        log = FileProgressLog()
        log.setup(trainer, model, "fit")
        assert log.active is not stdout_is_a_terminal
        assert trainer.progress_bar_callback.is_enabled is stdout_is_a_terminal  # the bar stays in a terminal
    log = FileProgressLog(force=False)
    log.setup(trainer, model, "fit")
    assert not log.active


def test_samples_are_counted_by_the_module_hook_else_by_the_first_tensor():
    batch = {"text": torch.zeros(5, 16, dtype=torch.long), "image": torch.zeros(3, 3, 32, 32)}
    model = zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG})
    assert samples_in(batch, model) == 3  # ZooModule.batch_size counts images
    assert samples_in(batch, LightningModule()) == 5
    assert samples_in([torch.zeros(7, 2), torch.zeros(7)], LightningModule()) == 7


def test_token_batches_also_log_attended_tokens_per_second(monkeypatch, capsys):
    from types import SimpleNamespace

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(progress_log.time, "monotonic", lambda: clock.now)
    trainer = SimpleNamespace(estimated_stepping_batches=4, global_step=0, world_size=2, callback_metrics={},
                              optimizers=[], current_epoch=0, is_global_zero=True)  # fmt: skip
    log = FileProgressLog(every_n_steps=2, force=True)
    log.active = True
    log.on_train_start(trainer, None)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # 5 attended tokens of 8
    for step in (1, 2):
        clock.now, trainer.global_step = float(step), step
        log.on_train_batch_end(trainer, None, torch.tensor(1.0), {"attention_mask": mask}, step - 1)
    line = capsys.readouterr().out.strip()
    assert line.endswith("samples/s 4.0 tokens/s 10.0"), line  # 2 batches x 2 rows x 2 ranks; 2 x 5 x 2 tokens in 2 s
