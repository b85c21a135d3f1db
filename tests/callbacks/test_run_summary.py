"""RunSummary: after fit / test the printed block names files that exist and the figures the trainer logged."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.run_summary import RunSummary
from tests.callbacks.tiny_fit import Recorder, tiny_fit


def block(output: str, title: str) -> dict[str, str]:
    """The summary's rows ``label -> text`` after the line ``title``."""
    lines = output.splitlines()
    start = lines.index(title) + 1
    rows = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        label, text = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        rows[label] = text
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("summary")
    checkpoint, recorder = ModelCheckpoint(monitor="val/loss", save_last=True), Recorder()
    fit_out, test_out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(fit_out):
        trainer, model, data = tiny_fit(root, [checkpoint, recorder, RunSummary()])
    with contextlib.redirect_stdout(test_out):
        trainer.test(model, data)
    return SimpleNamespace(
        trainer=trainer,
        checkpoint=checkpoint,
        epochs=recorder.epochs,
        fit=block(fit_out.getvalue(), "fit done"),
        test=block(test_out.getvalue(), "test done"),
    )


def test_fit_summary_names_the_log_dir_and_the_checkpoints_on_disk(run):
    assert run.fit["log dir"] == run.trainer.log_dir and Path(run.trainer.log_dir).is_dir()
    assert run.fit["last"] == run.checkpoint.last_model_path and Path(run.fit["last"]).name == "last.ckpt"
    best_loss = min(epoch["val/loss"] for epoch in run.epochs)
    assert run.fit[f"best val/loss {best_loss:.4g}"] == run.checkpoint.best_model_path
    assert Path(run.fit["last"]).is_file() and Path(run.checkpoint.best_model_path).is_file()


def test_fit_summary_names_the_result_files_written(run):
    folder = Path(run.trainer.log_dir) / "retrieval"
    assert sorted(p.name for p in folder.iterdir()) == ["test-epoch2.json", "val-epoch0.json", "val-epoch1.json"]
    assert run.fit["results"] == f"{folder / 'val-epoch1.json'} (+1 earlier there)"


def test_fit_summary_gives_last_and_best_of_each_validation_figure(run):
    names = [name for name in run.epochs[-1] if not name.endswith("_loss")]
    assert "val/loss" in names and "val/retrieval/t2i_R@1" in names and len(run.epochs) == 2
    for name in names:
        values = [epoch[name] for epoch in run.epochs]
        best = (min if name == "val/loss" else max)(values)
        expected = f"last {values[-1]:.4f} (epoch 1)   best {best:.4f} (epoch {values.index(best)})"
        assert run.fit[name] == expected, name
    assert "val/contrastive_loss" not in run.fit  # a term of val/loss, not a headline


def test_test_summary_lists_only_the_files_of_the_test_run(run):
    assert run.test["results"] == str(Path(run.trainer.log_dir) / "retrieval" / "test-epoch2.json")
    assert run.test["test/loss"] == f"{float(run.trainer.callback_metrics['test/loss']):.4f}"
    assert not any(label.startswith(("last", "best", "val/")) for label in run.test)


def test_best_is_the_lowest_loss_and_the_highest_figure_at_their_first_epoch():
    summary = RunSummary()
    summary.history = {
        "val/loss": [(0, 2.0), (1, 1.0), (2, 1.0), (3, 1.5)],
        "val/retrieval/i2t_R@1": [(0, 0.2), (1, 0.5), (2, 0.5), (3, 0.3)],
    }
    trainer = SimpleNamespace(callback_metrics={})
    assert summary.figure_lines(trainer, "fit") == [
        ("val/loss", "last 1.5000 (epoch 3)   best 1.0000 (epoch 1)"),
        ("val/retrieval/i2t_R@1", "last 0.3000 (epoch 3)   best 0.5000 (epoch 1)"),
    ]
