"""VladVA's prompt analysis (callbacks/prompts.py): the summary-token entropy against transformers' logits, the
explained variance of a planted low-rank matrix, the summary token's attention share on image tokens against
``output_attentions``, and the report / plots of :func:`analyse` and the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from callbacks.prompts import (
    TRAINED,
    analyse,
    components_for,
    eager_attention,
    explained_variance,
    load_prompts,
    main,
    tower_pass,
)
from datamodules.shapesworld import ShapesWorld
from tests.zoo.llava_fixtures import IMAGE_SIZE, llava_vision_folder, one_thread, perturb_lora, save, tiny_vladva

__all__ = ["llava_vision_folder", "one_thread"]  # fixtures, used by name
pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = [
    {"name": "paper", "image_prompt": "Summarize the provided image in one word:",
     "text_prompt": "Summarize the provided text in one word:"},
    {"name": "describe", "image_prompt": "Describe the image:", "text_prompt": "Describe the text:"},
]  # fmt: skip
PNGS = ("entropy_vs_retrieval.png", "explained_variance.png", "attention_density.png")


@pytest.fixture
def model(llava_vision_folder):
    return perturb_lora(tiny_vladva(llava_vision_folder, lora={"r": 4, "alpha": 8, "dropout": 0.0})).eval()


def records(n: int = 8) -> tuple[list, list[list[str]]]:
    data = [ShapesWorld(n, split="val", image_size=IMAGE_SIZE)[i] for i in range(n)]
    return [r["image"] for r in data], [r["captions"] for r in data]


def test_summary_entropy_equals_the_entropy_of_llava_logits_at_the_last_position(model):
    caption = "a large red star above a small blue circle"
    with torch.no_grad():
        model.llava.lm_head.weight.mul_(40.0)  # peaked distributions: positions differ in entropy
    with model.handcrafted(), eager_attention(model):
        entropy = tower_pass(model, "text", texts=[caption])["entropy"]
        seq = model.sequences.texts([caption])
    with torch.no_grad():
        logits = model.llava(input_ids=seq["text_input_ids"], attention_mask=seq["text_attention_mask"]).logits
    assert logits.shape[-1] == model.llava.config.text_config.vocab_size  # the full vocabulary
    p = torch.softmax(logits[0, -2:].double(), dim=-1)
    by_hand = -(p * p.log()).sum(-1).float()
    assert abs(float(by_hand[1] - by_hand[0])) > 1e-2 and float(by_hand[1]) < 0.9 * math.log(logits.shape[-1])
    torch.testing.assert_close(entropy, by_hand[1:], atol=1e-4, rtol=1e-4)


def test_two_components_explain_a_matrix_spanning_two_directions():
    generator = torch.Generator().manual_seed(0)
    directions = torch.linalg.qr(torch.randn(16, 2, generator=generator))[0].T  # two orthonormal rows
    coefficients = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    coefficients = torch.linalg.qr(coefficients - coefficients.mean(0))[0]  # centred, orthonormal columns
    planted = (coefficients * torch.tensor([3.0, 1.0]).sqrt()).float() @ directions + 5.0  # variance 3 : 1, offset
    curve = explained_variance(planted)
    assert components_for(curve) == 2
    torch.testing.assert_close(curve[:2], torch.tensor([0.75, 1.0], dtype=curve.dtype), atol=1e-5, rtol=0)
    assert curve[-1].item() == pytest.approx(1.0) and bool((curve.diff() >= -1e-12).all())
    assert components_for(explained_variance(torch.randn(200, 16, generator=generator))) > 8  # isotropic: many


def test_attention_density_is_the_summary_tokens_attention_mass_on_image_tokens(model):
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with eager_attention(model):
        density = tower_pass(model, "image", images=pixels)["attention"]  # [layers, B]
        text = tower_pass(model, "text", texts=["a red square", "two blue circles left of a green star"])
        seq = model.sequences.images(2)
        with torch.no_grad():  # transformers' LLaVA on the same ids (the soft prompts start as these tokens)
            attentions = model.llava(
                input_ids=seq["image_input_ids"], attention_mask=seq["image_attention_mask"], pixel_values=pixels,
                output_attentions=True,
            ).attentions  # fmt: skip
    assert model.llava.model.language_model.config._attn_implementation == "sdpa"  # restored
    layers = len(model.llava.model.language_model.layers)
    assert density.shape == (layers, 2) and len(attentions) == layers
    assert bool(((density >= 0) & (density <= 1)).all()) and bool((density > 0).all())
    image = seq["image_input_ids"][0] == model.llava.config.image_token_id
    summary = int(seq["image_summary_index"][0])
    for layer in (0, layers - 1):
        for row in range(2):
            by_hand = attentions[layer][row, :, summary, image].sum(-1).mean()
            torch.testing.assert_close(density[layer, row], by_hand, atol=1e-5, rtol=1e-5)
    assert torch.equal(text["attention"], torch.zeros(layers, 2))  # no image tokens in a text sequence


def test_analyse_writes_every_figure_per_prompt_and_state_and_three_plots(model, tmp_path, capsys):
    images, captions = records(8)
    report = analyse(model, PROMPTS, images, captions, tmp_path / "out", batch_size=5)
    written = json.loads((tmp_path / "out" / "prompt_analysis.json").read_text())
    assert written == json.loads(json.dumps(report)) and written["n_captions"] == sum(map(len, captions))
    results = written["results"]
    assert list(results) == ["paper", "describe", TRAINED]
    assert all(list(results[p["name"]]) == ["before", "after"] for p in PROMPTS) and list(results[TRAINED]) == ["after"]
    layers = len(model.llava.model.language_model.layers)
    for states in results.values():
        for figures in states.values():
            assert set(figures) == {"entropy", "explained_variance", "retrieval", "attention_density"}
            assert set(figures["retrieval"]) == {"i2t_R@1", "t2i_R@1", "mean_R@1"}
            for modality, n in (("image", 8), ("text", sum(map(len, captions)))):
                assert figures["entropy"][modality] > 0
                variance = figures["explained_variance"][modality]
                assert variance["curve"][-1] == pytest.approx(1.0) and len(variance["curve"]) <= n
                assert 1 <= variance["components_90"] <= len(variance["curve"])
            assert len(figures["attention_density"]["per_layer"]) == layers
            assert 0 < figures["attention_density"]["mean"] < 1
    # before = the base model (LoRA off), after = LoRA on, both with the entry's wording; the trained soft prompts
    # start as the paper's tokens: the model as trained equals the paper's prompt after fine-tuning
    wording = {k: PROMPTS[1][k] for k in ("image_prompt", "text_prompt")}
    with model.handcrafted(wording), eager_attention(model):
        after = tower_pass(model, "image", images=images)["attention"].mean()
        with model.adapters_disabled():
            before = tower_pass(model, "image", images=images)["attention"].mean()
    assert abs(float(after - before)) > 1e-3
    assert results["describe"]["before"]["attention_density"]["mean"] == pytest.approx(float(before), rel=1e-5)
    assert results["describe"]["after"]["attention_density"]["mean"] == pytest.approx(float(after), rel=1e-5)
    paper, trained = results["paper"]["after"], results[TRAINED]["after"]
    assert paper["attention_density"]["mean"] == pytest.approx(trained["attention_density"]["mean"], rel=1e-5)
    assert paper["retrieval"] == trained["retrieval"]
    for png in PNGS:
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "prompt 'describe'" in out and "the model as trained" in out and "i2t@1" in out


def test_a_prompt_file_with_a_missing_key_is_refused_naming_the_file_and_entry(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text('- {name: ok, image_prompt: "a:", text_prompt: "b:"}\n- {name: broken, image_prompt: "a:"}\n')
    with pytest.raises(ValueError, match=r"prompts\.yaml: entry 1 \('broken'\).*text_prompt"):
        load_prompts(path)
    path.write_text('- {name: ok, image_prompt: "a:", text_prompt: "b:"}\n')
    assert load_prompts(path) == [{"name": "ok", "image_prompt": "a:", "text_prompt": "b:"}]


def test_main_analyses_a_saved_checkpoint_end_to_end(model, tmp_path, capsys):
    checkpoint = tmp_path / "run" / "last.ckpt"
    checkpoint.parent.mkdir()
    save(model, checkpoint)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(json.dumps(PROMPTS[1:]))  # JSON is YAML
    report = main(["--checkpoint", str(checkpoint), "--prompts", str(prompts), "--n", "4", "--batch-size", "3",
                   "--device", "cpu"])  # fmt: skip
    out = checkpoint.parent / "prompt_analysis"
    written = json.loads((out / "prompt_analysis.json").read_text())
    assert written["checkpoint"] == str(checkpoint) and written["n_images"] == 4
    assert list(written["results"]) == ["describe", TRAINED] and report["results"] == written["results"]
    assert all((out / png).is_file() for png in PNGS)
    prompts.write_text('[{"name": "half", "text_prompt": "b:"}]')
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint), "--prompts", str(prompts)])
    assert "entry 0 ('half')" in capsys.readouterr().err
