"""vlzoo's command line: LightningCLI with model and data in subclass mode (the ``vlzoo`` console script;
``python train.py`` in the repository is the same command).

    vlzoo fit --config clip
    vlzoo fit --config clip --model.init_args.lr 1e-4 --trainer.max_epochs 3
    vlzoo validate --config clip --ckpt_path runs/clip/version_0/checkpoints/last.ckpt
    vlzoo fit --config clip --print_config

``--config`` takes a path, or the name of a config installed with the package (``clip``, ``fsc_clip/no_local``,
``strategy/ddp``, ``eval/suite``: :mod:`vlzoo_configs`) when no such file exists. Configs are read in OmegaConf
mode: a value may interpolate another (``default_root_dir: runs/lr-${model.init_args.lr}``). Each method config
logs under ``runs/<config name>/version_N/`` (TensorBoard, checkpoints in ``checkpoints/``).

``--ckpt_path`` is checked before model and data are built. ``fit --ckpt_path .../version_N/checkpoints/x.ckpt``
logs into that ``version_N`` (unless the logger's ``version`` is given); a checkpoint whose run is finished (its
epochs or steps reached ``max_epochs`` / ``max_steps``) trains nothing, so the command says so, with the
``--trainer.max_epochs`` that extends it, and stops. A run that fails before its first step or result removes
the ``version_N`` folder it created.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

import vlzoo_configs
from callbacks.progress_log import FileProgressLog
from callbacks.run_summary import RunSummary

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")  # Lightning resolves these names (and registry:...) itself
RESUMABLE_LOGGERS = ("TensorBoardLogger", "CSVLogger")  # loggers whose ``version`` is a version_N folder
BOOKKEEPING_FILES = ("config.yaml", "hparams.yaml")  # what a run writes before its first step or result


def resolve_config_arguments(args: list[str]) -> list[str]:
    """``args`` with each ``--config`` / ``-c`` value resolved by :func:`vlzoo_configs.resolve` (a path as
    given, else a packaged config's path); inline YAML and URLs pass through."""

    def resolve(value: str) -> str:
        if any(c in value for c in ":{}\n"):
            return value
        return str(vlzoo_configs.resolve(value))

    out: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        if arg in ("-c", "--config") and position + 1 < len(args):
            out += [arg, resolve(args[position + 1])]
            position += 2
            continue
        out.append("--config=" + resolve(arg[len("--config=") :]) if arg.startswith("--config=") else arg)
        position += 1
    return out


def finished_run_message(ckpt_path: Path, trainer_config: Namespace) -> str | None:
    """What to tell the user when ``fit`` resumes a checkpoint that already reached ``max_epochs`` /
    ``max_steps`` (Lightning would stop at once), else ``None``."""
    if not ckpt_path.is_file() or trainer_config.get("fast_dev_run"):
        return None
    try:  # only the counters are read: mmap leaves the weights on disk (weights_only: as LightningCLI reads it)
        checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    steps = int(checkpoint.get("global_step", 0))
    epochs = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epochs = epochs.get("processed")
    max_steps = trainer_config.get("max_steps")
    max_steps = -1 if max_steps is None else max_steps
    max_epochs = trainer_config.get("max_epochs")
    if max_epochs is None:  # Lightning's rule
        max_epochs = 1000 if max_steps == -1 and trainer_config.get("max_time") is None else -1
    reached, hints = [], []
    if max_steps != -1 and steps >= max_steps:
        reached.append(f"{_count(steps, 'step')} done, max_steps={max_steps}")
        hints.append(f"--trainer.max_steps {steps + max(steps, 1)} ({_count(max(steps, 1), 'more step')})")
    if epochs is not None and max_epochs != -1 and epochs >= max_epochs:
        reached.append(f"{_count(epochs, 'epoch')} done, max_epochs={max_epochs}")
        hints.append(f"--trainer.max_epochs {epochs + max(epochs, 1)} ({_count(max(epochs, 1), 'more epoch')})")
    if not hints:
        return None
    return (
        f"Nothing to train: {ckpt_path} is the end of a finished run ({'; '.join(reached)}), so fit would stop "
        f"at once. To train it further, raise the limit above what it has done: {' and '.join(hints)}."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def resume_in_checkpoint_log_dir(ckpt_path: Path, trainer_config: Namespace) -> Path | None:
    """For a checkpoint under ``<save_dir>/<name>/version_N/checkpoints/``: point each TensorBoard / CSV logger
    of ``trainer_config`` whose ``version`` is unset at that ``version_N``, so the resumed run logs where the
    run it continues did. Returns that folder when a logger was pointed at it."""
    version_dir = ckpt_path.resolve().parent.parent
    match = re.fullmatch(r"version_(\d+)", version_dir.name)
    if ckpt_path.resolve().parent.name != "checkpoints" or match is None:
        return None
    loggers = trainer_config.get("logger")
    moved = None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not isinstance(logger, Namespace) or str(logger.get("class_path")).split(".")[-1] not in RESUMABLE_LOGGERS:
            continue
        init = logger.get("init_args") or Namespace()
        if init.get("version") is not None:
            continue  # the user chose where to log
        root = Path(init.get("save_dir") or ".", init.get("name") or "").resolve()
        if root != version_dir.parent:
            init.save_dir, init.name = str(version_dir.parent.parent), version_dir.parent.name
        init.version = int(match[1])
        logger.init_args = init
        moved = version_dir
    return moved


def _log_dirs_before(trainer: Trainer) -> set[Path]:
    """The folders a failed run may not remove: each file-logger's save dir, root and versions as they are now."""
    found = set()
    for logger in trainer.loggers:
        if getattr(logger, "root_dir", None) is None:
            continue
        root = Path(logger.root_dir)
        found |= {folder for folder in (root.parent, root) if folder.exists()}
        found |= set(root.iterdir()) if root.is_dir() else set()
    return found


def remove_unwritten_log_dirs(trainer: Trainer, before: set[Path]) -> list[Path]:
    """After a failed run: remove each ``version_N`` it created that holds nothing but bookkeeping (config,
    hparams, TensorBoard's event files) when not a step was trained, and then the root / save dir it created if
    empty. Returns the removed folders."""
    removed = []
    for logger in trainer.loggers:
        if getattr(logger, "root_dir", None) is None or trainer.global_step:
            continue
        log_dir, root = Path(logger.log_dir), Path(logger.root_dir)
        if log_dir in before or not log_dir.is_dir():
            continue
        files = [path for path in log_dir.rglob("*") if path.is_file()]
        if any(f.name not in BOOKKEEPING_FILES and not f.name.startswith("events.out.tfevents.") for f in files):
            continue
        shutil.rmtree(log_dir)
        removed.append(log_dir)
        for folder in (root, root.parent):
            if folder not in before and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                removed.append(folder)
    return removed


class ZooCLI(LightningCLI):
    """LightningCLI whose YAML ``class_path`` is the registry; connects data to the model's preprocessing,
    resolves packaged config names and checks ``--ckpt_path`` before anything is built."""

    def parse_arguments(self, parser: Any, args: Any) -> None:
        if args is None or isinstance(args, (list, tuple)):
            try:
                resolved = resolve_config_arguments(list(sys.argv[1:] if args is None else args))
            except FileNotFoundError as error:
                parser.error(str(error))
            if args is None:  # from the command line: parse as LightningCLI would
                self.config = parser.parse_args(resolved)
                return
            args = resolved
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        name = str(ckpt_path or "")
        if not name or name.lower() in SPECIAL_CKPT_PATHS or name.lower().startswith("registry:") or "://" in name:
            return
        ckpt_path = Path(ckpt_path)
        if not ckpt_path.exists():
            self.parser.error(
                f"--ckpt_path {ckpt_path}: no such checkpoint (relative to {Path.cwd()}); nothing was built or run"
            )
        if self.subcommand != "fit":
            return
        message = finished_run_message(ckpt_path, config.trainer)
        if message is not None:
            rank_zero_only(print)(message, file=sys.stderr)
            raise SystemExit(0)
        version_dir = resume_in_checkpoint_log_dir(ckpt_path, config.trainer)
        if version_dir is not None:
            rank_zero_info(f"Resuming in {version_dir}, the log folder of the checkpoint's run")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if hasattr(self.datamodule, "connect"):
            self.datamodule.connect(**self.model.data_transforms())

    def _run_subcommand(self, subcommand: str) -> None:
        before = _log_dirs_before(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if self.trainer.is_global_zero:
                for folder in remove_unwritten_log_dirs(self.trainer, before):
                    print(f"removed {folder}: the failed run wrote nothing there", file=sys.stderr)
            raise


def main(args: list[str] | None = None, run: bool = True) -> ZooCLI:
    """Run the CLI (``run=False``: only build model, data and trainer from the config)."""
    return ZooCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "default_hp_metric": False},  # no meaningless hp_metric = -1
            },
            # every run: last.ckpt, a summary of where its results are, one log line per N steps without a terminal
            "callbacks": [ModelCheckpoint(save_last=True), RunSummary(), FileProgressLog()],
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},  # ${...} interpolation in configs (sweeps, shared values)
        args=args,
        run=run,
    )


def console() -> None:
    """The ``vlzoo`` console script (``vlzoo fit|validate|test|predict ...``)."""
    main()
