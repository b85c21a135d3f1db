"""A VladVA export embeds in plain transformers, in a fresh process, through the README's own recipe (the code block
is read from README.md and run), as the zoo module does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from tests.zoo.llava_fixtures import llava_vision_folder, one_thread, perturb, tiny_vladva

__all__ = ["llava_vision_folder", "one_thread"]  # fixtures, used by name
ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["a red square", "two blue circles left of a large green triangle"]


def readme_recipe() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Embedding with plain transformers from that folder") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_recipe_embeds_an_export_as_the_zoo_module_does(llava_vision_folder, one_thread, tmp_path):
    model = perturb(tiny_vladva(llava_vision_folder, lora={"r": 4, "alpha": 8}), seed=3).eval()
    folder = model.export_hf(tmp_path / "export")
    recipe = json.loads((folder / "vladva.json").read_text())
    assert recipe["prompts"]["image_prompt"] == "Summarize the provided image in one word:"
    assert len(recipe["text"]["soft_prompt"]) == len(recipe["text"]["prompt_ids"])
    assert not (folder / "adapter").exists()  # merged: a plain LLaVA
    pictures = [Image.new("RGB", (50, 70), "red"), Image.new("RGB", (64, 40), "blue")]
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"{i}.png")
    with torch.no_grad():
        expected = {"images": model.encode_image(pictures), "texts": model.encode_text(TEXTS)}
    code = readme_recipe().replace('folder = "exports/vladva"', f"folder = {str(folder)!r}")
    code += (
        "\nfrom PIL import Image\n"
        f"images = torch.stack([vladva_embedding(image=Image.open(f'{tmp_path}/{{i}}.png')) for i in range(2)])\n"
        f"texts = torch.stack([vladva_embedding(text=t) for t in {TEXTS!r}])\n"
        f"torch.save({{'images': images, 'texts': texts}}, {str(tmp_path / 'plain.pt')!r})\n"
    )
    env = {"PYTHONPATH": "", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", code]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    plain = torch.load(tmp_path / "plain.pt")
    for name in ("images", "texts"):
        torch.testing.assert_close(plain[name], expected[name], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain["texts"][0], plain["texts"][1])
