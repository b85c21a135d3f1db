"""Shared fixtures: a tiny open_clip architecture built from a config, never downloaded."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from zoo.backbones import OpenCLIPConfig

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session", autouse=True)
def vlzoo_cache(tmp_path_factory) -> Iterator[Path]:
    """Generated files (ShapesWorld benchmarks, the WordNet copy) go to a session folder, never the user's
    ``~/.cache/vlzoo``: ``$VLZOO_CACHE``, inherited by the commands tests start."""
    folder = tmp_path_factory.mktemp("vlzoo-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLZOO_CACHE", str(folder))
        yield folder


@pytest.fixture
def tiny_cfg() -> dict:
    return copy.deepcopy(TINY_MODEL_CFG)


@pytest.fixture
def tiny_clip(tiny_cfg):
    import zoo

    torch.manual_seed(0)
    return zoo.CLIP(backbone={"model_name": "vlzoo-test-tiny", "model_cfg": tiny_cfg})


BACKBONE_KEYS = set(OpenCLIPConfig.__annotations__)


def tiny_model(method: str, tiny_cfg: dict, **kwargs):
    """``zoo.<method>`` over the tiny architecture; backbone arguments among ``kwargs`` go to ``backbone``."""
    import zoo

    given = {key: kwargs.pop(key) for key in list(kwargs) if key in BACKBONE_KEYS}
    backbone = {"model_name": "t", "model_cfg": tiny_cfg, **given}
    return getattr(zoo, method)(backbone=backbone, **kwargs)


def negative_caption_batch(model, captions: list[str], negatives: list[list[str | None]], image_ids=None) -> dict:
    """A training batch of random 32 px images with captions and hard negatives (``None``: no negative in
    that slot), collated by the data module's own :class:`~datamodules.samples.CaptionCollator`."""
    from datamodules.samples import CaptionCollator

    generator = torch.Generator().manual_seed(1)
    samples = [
        {
            "key": str(i),
            "image": torch.randn(3, 32, 32, generator=generator),
            "captions": [caption],
            "caption": caption,
            "negatives": row,
            "image_id": i if image_ids is None else image_ids[i],
        }
        for i, (caption, row) in enumerate(zip(captions, negatives, strict=True))
    ]
    return CaptionCollator(model.backbone.tokenize)(samples)


def assert_stream_resumes_at_every_stop(datamodule, whole: list[tuple[list[str], tuple[int, int]]]) -> None:
    """For every prefix of ``whole`` (a training pass as ``(keys, stream_position)`` per batch, two workers), a
    loader resumed from the positions that prefix recorded yields exactly the rest of the pass."""
    from datamodules.samples import StreamPosition

    for stop in range(1, len(whole)):
        positions = [0, 0]
        for _, (share, position) in whole[:stop]:
            positions[share] = position
        loader = datamodule.train_dataloader()
        loader.dataset.resume = StreamPosition(epoch=0, positions=positions, last_share=whole[stop - 1][1][0])
        assert [batch["key"] for batch in loader] == [keys for keys, _ in whole[stop:]], stop


def free_port() -> int:
    """A free TCP port on localhost for a 2-process gloo test."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RELOAD_AND_EXPORT = """
import sys
import open_clip, torch, zoo
checkpoint, module, out = sys.argv[1:]
assert not torch.cuda.is_available()
model = getattr(zoo, module).load_from_checkpoint(checkpoint, map_location="cpu").eval()
exported = open_clip.create_model("local-dir:" + str(model.export_open_clip(out).parent)).eval()
size = model.backbone.image_size
images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
texts = model.backbone.tokenize(["a red circle", "two blue squares"])
with torch.no_grad():
    embeddings = {
        "image": model.backbone.model.encode_image(images), "text": model.backbone.model.encode_text(texts),
        "exported_image": exported.encode_image(images), "exported_text": exported.encode_text(texts),
    }
torch.save({"images": images, "texts": texts, **embeddings}, out + "/embeddings.pt")
"""


def reload_in_fresh_process(checkpoint: str | Path, out_dir: str | Path, module: str = "CLIP") -> dict:
    """Load a checkpoint with ``load_from_checkpoint`` in a new Python process that sees no GPU, export it to
    open_clip ``local-dir:`` there, and return the probe ``images`` / ``texts`` with the embeddings of the
    reloaded model (``image``, ``text``) and of its export (``exported_image``, ``exported_text``)."""
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-c", _RELOAD_AND_EXPORT, str(checkpoint), module, str(out_dir)]
    subprocess.run(command, check=True, env=environment, cwd=ROOT, timeout=600)
    return torch.load(Path(out_dir) / "embeddings.pt")


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests skip cleanly on machines without CUDA (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
