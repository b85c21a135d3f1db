"""vlzoo's command line in the repository; installed, the same command is the ``vlzoo`` console script.

python train.py fit --config configs/clip.yaml                  (or --config clip: a packaged config's name)
python train.py fit --config configs/clip.yaml --model.init_args.lr 1e-4 --trainer.max_epochs 3
python train.py validate --config configs/clip.yaml --ckpt_path runs/clip/version_0/checkpoints/last.ckpt
python train.py fit --config configs/clip.yaml --print_config

A run of configs/clip.yaml logs under runs/clip/version_N/ (checkpoints in runs/clip/version_N/checkpoints/).
Configs are read in OmegaConf mode: a value may interpolate another (``default_root_dir: runs/${model.init_args.lr}``).
See :mod:`callbacks.cli` (config names, resume).
"""

from __future__ import annotations

from callbacks.cli import ZooCLI, main

__all__ = ["ZooCLI", "main"]

if __name__ == "__main__":
    main()
