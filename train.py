"""vlzoo's command line: LightningCLI with model and data in subclass mode.

python train.py fit --config configs/clip.yaml
python train.py fit --config configs/clip.yaml --model.init_args.lr 1e-4 --trainer.max_epochs 3
python train.py validate --config configs/clip.yaml --ckpt_path runs/clip/.../last.ckpt
python train.py fit --config configs/clip.yaml --print_config

Configs are read in OmegaConf mode: a value may interpolate another (``default_root_dir: runs/${model.init_args.lr}``).
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI


class ZooCLI(LightningCLI):
    """LightningCLI whose YAML ``class_path`` is the registry; connects data to the model's preprocessing."""

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if hasattr(self.datamodule, "connect"):
            self.datamodule.connect(**self.model.data_transforms())


def main(args: list[str] | None = None, run: bool = True) -> ZooCLI:
    """Run the CLI (``run=False``: only build model, data and trainer from the config)."""
    return ZooCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
            "callbacks": [ModelCheckpoint(save_last=True)],
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},  # ${...} interpolation in configs (sweeps, shared values)
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
