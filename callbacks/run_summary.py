"""Where a run's results went: a short block printed at the end of every fit / validate / test.

    fit done
      log dir      runs/lightning_logs/version_3
      last         runs/lightning_logs/version_3/checkpoints/last.ckpt
      checkpoint   runs/lightning_logs/version_3/checkpoints/epoch=1-step=312.ckpt
      results      runs/lightning_logs/version_3/retrieval/val-epoch1.json (+1 earlier there)
      val/loss     last 1.2345 (epoch 1)   best 1.1000 (epoch 0)

Checkpoints are every :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s ``last_model_path`` and
``best_model_path`` that exist; result files are those the evaluation callbacks list in their
``written`` attribute (:class:`callbacks.embedding.EpochEndEvaluation`) during this run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


def figures(metrics: Mapping[str, Any], stage: str) -> dict[str, float]:
    """The headline figures of a stage among logged metrics, ``{stage}/loss`` first, then the others in logging
    order: every ``{stage}/...`` scalar but the loss terms (``{stage}/*_loss``) that ``{stage}/loss`` sums."""
    found = {}
    for name, value in metrics.items():
        if name.startswith(f"{stage}/") and not name.endswith("_loss"):
            try:
                found[name] = float(value)
            except (TypeError, ValueError, RuntimeError):  # not a scalar
                continue
    return dict(sorted(found.items(), key=lambda item: item[0] != f"{stage}/loss"))


def lower_is_better(name: str) -> bool:
    """Losses go down; the evaluation figures (recalls, accuracies) go up."""
    return name.endswith("loss")


def say(trainer: Trainer, text: str) -> None:
    """Print on the global-zero process, flushed (stdout to a file is block-buffered)."""
    if trainer.is_global_zero:
        print(text, flush=True)


def local_log_dir(trainer: Trainer) -> str | None:
    """``trainer.log_dir`` as this process sees it, without its broadcast: teardown hooks run after the
    strategy's teardown, where a collective can abort a DDP run at exit (rank zero's value is the run's)."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    return getattr(logger, "log_dir", None) or logger.save_dir


class RunSummary(Callback):
    """At the end of ``fit`` / ``validate`` / ``test``, print where the results are: log directory,
    checkpoints, JSON result files written during the run and the stage's figures (after ``fit``: the
    last and best value of each validation figure over the validation epochs, with their epochs).

    Args:
        max_figures: figures printed at most (the others are in the log and the JSON files).
    """

    def __init__(self, max_figures: int = 16) -> None:
        self.max_figures = max_figures
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._written_before: dict[int, int] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.history = {}
        self._written_before = {id(cb): len(getattr(cb, "written", [])) for cb in trainer.callbacks}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, value in figures(trainer.callback_metrics, "val").items():
            self.history.setdefault(name, []).append((trainer.current_epoch, value))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        if stage in ("fit", "validate", "test") and trainer.is_global_zero:
            say(trainer, self.report(trainer, stage, local_log_dir(trainer)))

    # ----------------------------------------------------------------------------------- report
    def checkpoints(self, trainer: Trainer) -> list[tuple[str, str]]:
        """``(label, path)`` of the checkpoints on disk: ``last``, ``best (monitor value)`` or plain
        ``checkpoint`` (a ModelCheckpoint without ``monitor`` keeps the latest)."""
        found: list[tuple[str, str]] = []
        for callback in trainer.checkpoint_callbacks:
            last, best = getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")
            if last and Path(last).exists():
                found.append(("last", last))
            if best and Path(best).exists() and best != last:
                score = getattr(callback, "best_model_score", None)
                monitor = getattr(callback, "monitor", None)
                label = f"best {monitor} {float(score):.4g}" if monitor and score is not None else "checkpoint"
                found.append((label, best))
        return list(dict.fromkeys(found))

    def results(self, trainer: Trainer) -> list[str]:
        """The latest JSON file of each folder the evaluation callbacks wrote to during this run."""
        files: list[Path] = []
        for callback in trainer.callbacks:
            files += [Path(p) for p in getattr(callback, "written", [])[self._written_before.get(id(callback), 0) :]]
        by_folder: dict[Path, list[Path]] = {}
        for path in files:
            by_folder.setdefault(path.parent, []).append(path)
        return [
            f"{paths[-1]}" + (f" (+{len(paths) - 1} earlier there)" if len(paths) > 1 else "")
            for paths in by_folder.values()
        ]

    def figure_lines(self, trainer: Trainer, stage: str) -> list[tuple[str, str]]:
        if stage != "fit":
            prefix = "val" if stage == "validate" else stage
            return [(name, f"{value:.4f}") for name, value in figures(trainer.callback_metrics, prefix).items()]
        lines = []
        for name, values in self.history.items():
            epoch, value = values[-1]
            pick = min if lower_is_better(name) else max
            best_epoch, best = pick(values, key=lambda item: item[1])
            lines.append((name, f"last {value:.4f} (epoch {epoch})   best {best:.4f} (epoch {best_epoch})"))
        return lines

    def report(self, trainer: Trainer, stage: str, log_dir: str | None) -> str:
        rows: list[tuple[str, str]] = []
        if log_dir is not None:
            rows.append(("log dir", str(log_dir)))
        if stage != "fit" and trainer.ckpt_path:
            rows.append(("evaluated", str(trainer.ckpt_path)))
        if stage == "fit":
            rows += self.checkpoints(trainer)
        rows += [("results", line) for line in self.results(trainer)]
        shown = self.figure_lines(trainer, stage)
        rows += shown[: self.max_figures]
        if len(shown) > self.max_figures:
            rows.append(("", f"... and {len(shown) - self.max_figures} more in the log and the JSON results"))
        width = max((len(label) for label, _ in rows), default=0)
        return "\n".join([f"{stage} done", *(f"  {label:<{width}}  {text}" for label, text in rows)])
