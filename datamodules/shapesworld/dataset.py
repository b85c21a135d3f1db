"""Map-style torch Dataset generating ShapesWorld samples on the fly."""

from __future__ import annotations

import operator
from typing import Any

from torch.utils.data import Dataset

from .generate import generate_sample
from .scene import SPLITS
from .vocabulary import GRID_SIZE


class ShapesWorld(Dataset):
    """``n`` samples of one split; item ``i`` is ``generate_sample(i, split, seed, image_size, max_objects)``."""

    def __init__(self, n: int, split: str = "train", seed: int = 0, image_size: int = 64, max_objects: int = 4) -> None:
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 1 <= max_objects <= GRID_SIZE * GRID_SIZE:
            raise ValueError(f"max_objects must be in [1, {GRID_SIZE * GRID_SIZE}], got {max_objects}")
        self.n, self.split, self.seed, self.image_size, self.max_objects = n, split, seed, image_size, max_objects

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = operator.index(index)
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for ShapesWorld of length {self.n}")
        return generate_sample(index, self.split, self.seed, self.image_size, self.max_objects)
