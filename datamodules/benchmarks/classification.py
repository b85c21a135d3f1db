"""Zero-shot classification sets: labelled images, class names and prompt templates.

Two image layouts, the ones clip_benchmark reads:

* an image folder in torchvision's ``ImageFolder`` layout, ``root/<class folder>/<image>``; labels are
  the indices of the sorted folder names (for ImageNet, sorted synset ids = the standard class order);
* webdataset shards with an image (``webp`` / ``png`` / ``jpg`` / ``jpeg``) and an integer label
  ``cls`` per sample, as clip_benchmark's ``wds/`` datasets (``clip_benchmark_export_wds``)::

      data_dir/
          test/nshards.txt          # number of shards N
          test/0.tar ... test/{N-1}.tar
          classnames.txt            # one class name per line (optional here)
          zeroshot_classification_templates.txt   # one template per line, "{c}" = class (optional)

Class names come from a list, a text file (one per line), the data dir's ``classnames.txt`` (wds) or
default to ImageNet's 1000; templates likewise (default: CLIP's 80 ImageNet templates).
Templates are ``str.format`` strings with ``{c}`` (clip_benchmark's form) or ``{}`` (open_clip's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchvision.datasets import ImageFolder

from datamodules.benchmarks.base import BenchmarkFormatError
from datamodules.benchmarks.imagenet import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from datamodules.sources import CorruptSampleError, SkipCounter, open_image

WDS_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


# ------------------------------------------------------------------------------------- text lists
def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file; a blank line before the last entry raises (it would
    shift every later index), trailing blank lines are ignored."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise BenchmarkFormatError(f"{path}: cannot read {what} ({error})") from error
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise BenchmarkFormatError(f"{path}: blank {what} line(s) {blank}")
    if not lines:
        raise BenchmarkFormatError(f"{path}: no {what}")
    return lines


def load_classnames(classnames: Sequence[str] | str | Path | None = None) -> list[str]:
    """Class names from a list, a text file (one per line) or, for None, ImageNet-1k's 1000."""
    if classnames is None:
        return list(IMAGENET_CLASSNAMES)
    if isinstance(classnames, (str, Path)):
        return read_lines(classnames, "class name")
    names = [str(name) for name in classnames]
    if not names or any(not name.strip() for name in names):
        raise BenchmarkFormatError(f"class names must be non-empty strings, got {names!r}")
    return names


def load_templates(templates: Sequence[str] | str | Path | None = None) -> list[str]:
    """Prompt templates from a list, a text file (one per line) or, for None, CLIP's 80 ImageNet ones.
    Each must hold the class placeholder ``{c}`` or ``{}``."""
    if templates is None:
        return list(OPENAI_IMAGENET_TEMPLATES)
    source = str(templates) if isinstance(templates, (str, Path)) else "templates"
    lines = read_lines(templates, "template") if isinstance(templates, (str, Path)) else [str(t) for t in templates]
    if not lines:
        raise BenchmarkFormatError(f"{source}: no templates")
    bad = [t for t in lines if "{c}" not in t and "{}" not in t]
    if bad:
        raise BenchmarkFormatError(f"{source}: template(s) without a '{{c}}' or '{{}}' class placeholder: {bad}")
    return lines


# ------------------------------------------------------------------------------------ the set
# ELEVATER's per-dataset zero-shot metrics (callbacks.zero_shot.elevater_metric computes them)
ELEVATER_METRICS = ("accuracy", "mean-per-class", "11point_mAP", "roc_auc")


@dataclass
class ClassificationSet:
    """A labelled image set for zero-shot classification.

    Attributes:
        name: e.g. ``"imagenet1k/val"``.
        dataset: yields ``(image tensor, int label)`` pairs (a map-style dataset for folders, an
            iterable one for webdataset shards).
        classnames: ``classnames[label]`` names class ``label``.
        templates: prompt templates (``"a photo of a {c}."``).
        source: the folder or shards read.
        metric: the dataset's ELEVATER metric (``accuracy``, ``mean-per-class``, ``11point_mAP``,
            ``roc_auc``), reported beside top-1 / top-5 / mean per-class recall.
    """

    name: str
    dataset: Dataset | IterableDataset
    classnames: list[str]
    templates: list[str] = field(default_factory=lambda: list(OPENAI_IMAGENET_TEMPLATES))
    source: str = ""
    metric: str = "accuracy"

    @property
    def skipped(self) -> int:
        """Samples skipped as corrupt in this process (webdataset with ``skip_corrupt``)."""
        counter = getattr(self.dataset, "skipped", None)
        return counter.count if isinstance(counter, SkipCounter) else 0

    def dataloader(self, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
        """``(images [B, 3, H, W], labels [B])`` batches in a fixed order (clip_benchmark's batch shape)."""
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _load_rgb(path: str) -> Any:
    return open_image(path, path)


def image_folder_classification(
    root: str | Path,
    transform: Callable,
    classnames: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] | str | Path | None = None,
    name: str | None = None,
) -> ClassificationSet:
    """A :class:`ClassificationSet` over an ``ImageFolder`` tree (``root/<class>/<image>``).

    Raises:
        BenchmarkFormatError: no class folders / a class folder without images, or a number of class
            names different from the number of class folders (naming ``root``). Unreadable images raise
            :class:`datamodules.sources.CorruptSampleError` naming the file when read.
    """
    root = Path(root)
    names = load_classnames(classnames)
    try:
        dataset = ImageFolder(str(root), transform=transform, loader=_load_rgb)
    except (FileNotFoundError, OSError) as error:
        raise BenchmarkFormatError(f"{root}: not an image folder tree root/<class>/<image> ({error})") from error
    if len(dataset.classes) != len(names):
        default = " (the ImageNet-1k default; pass classnames)" if classnames is None else ""
        raise BenchmarkFormatError(
            f"{root}: {len(dataset.classes)} class folders but {len(names)} class names{default}"
        )
    return ClassificationSet(
        name=name or root.name,
        dataset=dataset,
        classnames=names,
        templates=load_templates(templates),
        source=str(root),
    )


def _every_shard(src: Any) -> Any:
    """Node splitter that gives every rank all shards (each rank evaluates the full set, as clip_benchmark)."""
    return src


def decode_classification_sample(sample: dict[str, Any], num_classes: int) -> tuple[Any, int]:
    """A raw webdataset sample -> (RGB PIL image, label); errors name the shard and key."""
    where = f"{sample.get('__url__', '?')} (key {sample.get('__key__', '?')})"
    image_key = next((key for key in WDS_IMAGE_KEYS if key in sample), None)
    if image_key is None:
        raise CorruptSampleError(f"{where}: no image among {sorted(k for k in sample if not k.startswith('__'))}")
    if "cls" not in sample:
        raise CorruptSampleError(f"{where}: no 'cls' label")
    raw = sample["cls"]
    try:
        label = int(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise CorruptSampleError(f"{where}: 'cls' is not an integer ({raw!r})") from error
    if not 0 <= label < num_classes:
        raise CorruptSampleError(f"{where}: label {label} outside [0, {num_classes}) of the class names")
    return open_image(sample[image_key], where), label


class WebDatasetClassification(IterableDataset):
    """``(image tensor, label)`` pairs from webdataset shards (image + ``cls``), decoded in the
    loader's workers, shards split across workers (not across ranks), in shard order.

    Bad samples raise :class:`datamodules.sources.CorruptSampleError` naming shard and key, or with
    ``skip_corrupt`` are skipped and counted in ``skipped``."""

    def __init__(self, urls: str | list[str], transform: Callable, num_classes: int, skip_corrupt: bool = False):
        self.urls, self.transform, self.num_classes = urls, transform, num_classes
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        pipeline = wds.WebDataset(
            self.urls,
            shardshuffle=False,
            nodesplitter=_every_shard,
            workersplitter=wds.split_by_worker,
            empty_check=False,
        )
        for sample in pipeline:
            try:
                image, label = decode_classification_sample(sample, self.num_classes)
            except CorruptSampleError as error:
                if not self.skip_corrupt:
                    raise
                self.skipped.skip(error)
                continue
            yield self.transform(image), label


def wds_shards(data_dir: str | Path, split: str = "test") -> str:
    """The brace pattern ``data_dir/split/{0..N-1}.tar`` of a clip_benchmark wds layout (N from ``nshards.txt``)."""
    nshards_file = Path(data_dir) / split / "nshards.txt"
    try:
        nshards = int(nshards_file.read_text().strip())
    except (OSError, ValueError) as error:
        raise BenchmarkFormatError(f"{nshards_file}: cannot read the number of shards ({error})") from error
    if nshards < 1:
        raise BenchmarkFormatError(f"{nshards_file}: {nshards} shards")
    pattern = "0.tar" if nshards == 1 else f"{{0..{nshards - 1}}}.tar"
    return str(Path(data_dir) / split / pattern)


def wds_classification(
    data: str | Path | list[str],
    transform: Callable,
    split: str = "test",
    classnames: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] | str | Path | None = None,
    name: str | None = None,
    skip_corrupt: bool = False,
) -> ClassificationSet:
    """A :class:`ClassificationSet` over webdataset shards.

    Args:
        data: a clip_benchmark wds folder (``split/nshards.txt`` inside), or shard URLs / a brace pattern.
        split: the sub-folder of a wds folder.
        classnames, templates: explicit lists or files; if None, the wds folder's ``classnames.txt`` /
            ``zeroshot_classification_templates.txt`` when present, else the ImageNet defaults.
        skip_corrupt: skip (and count) samples with a bad image or label instead of raising.
    """
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        folder: Path | None = Path(data)
        urls: str | list[str] = wds_shards(folder, split)
    else:
        folder, urls = None, data if isinstance(data, list) else str(data)
    if classnames is None and folder is not None and (folder / CLASSNAMES_FILE).is_file():
        classnames = folder / CLASSNAMES_FILE
    if templates is None and folder is not None and (folder / TEMPLATES_FILE).is_file():
        templates = folder / TEMPLATES_FILE
    names = load_classnames(classnames)
    source = str(folder) if folder is not None else str(urls)
    if name is None:
        name = (
            f"{folder.name}/{split}"
            if folder is not None
            else Path(str(urls if isinstance(urls, str) else urls[0])).stem
        )
    return ClassificationSet(
        name=name,
        dataset=WebDatasetClassification(urls, transform, len(names), skip_corrupt=skip_corrupt),
        classnames=names,
        templates=load_templates(templates),
        source=source,
    )


def load_classification(
    root: str | Path | list[str],
    transform: Callable,
    split: str = "test",
    classnames: Sequence[str] | str | Path | None = None,
    templates: Sequence[str] | str | Path | None = None,
    name: str | None = None,
    metric: str = "accuracy",
) -> ClassificationSet:
    """Either layout: a wds folder (``root/split/nshards.txt``) or shard URLs (``.tar`` / brace pattern)
    go to :func:`wds_classification`, any other folder to :func:`image_folder_classification`.
    ``metric`` is the dataset's ELEVATER metric (see :class:`ClassificationSet`)."""
    if metric not in ELEVATER_METRICS:
        raise ValueError(f"unknown ELEVATER metric {metric!r}; known: {ELEVATER_METRICS}")
    is_dir = isinstance(root, (str, Path)) and Path(root).is_dir()
    if (
        isinstance(root, list)
        or (is_dir and (Path(root) / split / "nshards.txt").is_file())
        or (not is_dir and ".tar" in os.fspath(root))
    ):
        data = wds_classification(root, transform, split, classnames, templates, name)
    else:
        data = image_folder_classification(root, transform, classnames, templates, name)
    data.metric = metric
    return data


__all__ = [
    "ELEVATER_METRICS",
    "ClassificationSet",
    "WebDatasetClassification",
    "decode_classification_sample",
    "image_folder_classification",
    "load_classification",
    "load_classnames",
    "load_templates",
    "read_lines",
    "wds_classification",
    "wds_shards",
]
