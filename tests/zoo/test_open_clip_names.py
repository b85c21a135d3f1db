"""Exports of the zoo's own architecture load by name in plain open_clip once zoo is imported, as well as
through local-dir:."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import zoo
from zoo.backbones.openclip import MODEL_CONFIGS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def init_args(config: Path) -> dict:
    return yaml.safe_load(config.read_text())["model"]["init_args"]


@pytest.mark.parametrize("config", [c for c in CONFIGS if "backbone" in init_args(c)], ids=lambda p: p.stem)
def test_registered_architecture_is_the_configs_own(config):
    backbone = init_args(config)["backbone"]
    registered = MODEL_CONFIGS / f"{backbone['model_name']}.json"
    assert registered.is_file(), f"{config.name}: {backbone['model_name']} is not registered with open_clip"
    assert json.loads(registered.read_text()) == backbone["model_cfg"]


@pytest.mark.parametrize("config", [c for c in CONFIGS if "vision_tower" in init_args(c)], ids=lambda p: p.stem)
def test_llava_configs_name_a_registered_open_clip_tower(config):
    tower = init_args(config)["vision_tower"]
    assert tower.startswith("open_clip:"), f"{config.name}: the offline default tower is an open_clip name"
    assert (MODEL_CONFIGS / f"{tower.removeprefix('open_clip:')}.json").is_file()


def test_export_loads_by_name_with_a_pretrained_file_in_a_fresh_process(tmp_path):
    cfg = json.loads((MODEL_CONFIGS / "vlzoo-tiny-vit.json").read_text())
    torch.manual_seed(0)
    model = zoo.CLIP(backbone={"model_name": "vlzoo-tiny-vit", "model_cfg": cfg}).eval()
    weights = model.export_open_clip(tmp_path / "export")
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.save(images, tmp_path / "images.pt")
    script = (
        "import sys, torch, open_clip, zoo\n"  # importing zoo registers its architectures
        "clip = open_clip.create_model('vlzoo-tiny-vit', pretrained=sys.argv[1]).eval()\n"
        "torch.save(clip.encode_image(torch.load(sys.argv[2]), normalize=True), sys.argv[3])\n"
    )
    args = [str(weights), str(tmp_path / "images.pt"), str(tmp_path / "out.pt")]
    subprocess.run([sys.executable, "-c", script, *args], check=True, cwd=ROOT, timeout=300)
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "out.pt"), model.encode_image(images), atol=1e-6)
