"""VladVA's wiring: summary-token pooling under padding, the text tower without vision, soft prompts at their
initial value, which parameters train, the next-token labels, the base model behind the adapters, contrastive
accumulation, and a checkpoint reloaded in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.zoo.llava_fixtures import (
    IMAGE_SIZE,
    llava_vision_folder,
    one_thread,
    perturb,
    perturb_lora,
    save,
    tiny_llava,
    tiny_vladva,
)

__all__ = ["llava_vision_folder", "one_thread"]  # fixtures, used by name
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
SHORTS = ["a red square", "two blue circles left of a large green triangle", "a star", None]
LONGS = [
    "There is one object in the image. A red square is in the top left.",
    None,
    "There are two objects in the image. A small yellow star is in the centre. A circle is below it.",
    "There is one object in the image.",
]


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def batch_of(model, shorts=SHORTS, longs=LONGS, seed: int = 0) -> dict:
    return {**model.sequences(list(shorts), list(longs)), "pixel_values": images(len(shorts), seed)}


@pytest.fixture
def model(llava_vision_folder):
    return tiny_vladva(llava_vision_folder, lora={"r": 4, "alpha": 8, "dropout": 0.0}).eval()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_an_items_embedding_alone_equals_it_in_a_padded_batch_of_mixed_lengths(
    llava_vision_folder,
    one_thread,
    padding_side,
):
    model = tiny_vladva(llava_vision_folder, padding_side=padding_side, lora={"r": 4, "dropout": 0.0}).eval()
    perturb_lora(model)
    texts = ["a star", "two blue circles left of a large green triangle below a red square", "a red circle"]
    with torch.no_grad():
        batched = model.encode_text(texts)
        alone = torch.cat([model.encode_text(text) for text in texts])
        lengths = model.sequences.texts(texts)["text_attention_mask"].sum(1)
        assert len(set(lengths.tolist())) == 3  # mixed lengths: padding is exercised
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
        # the summary is the hidden state at the last real token (the ":" of "ASSISTANT:"), after the final norm
        seq = model.sequences.texts(texts)
        states = model.sequence_states("text", seq["text_input_ids"], seq["text_attention_mask"], seq["text_soft_mask"])
        last = (
            seq["text_attention_mask"].sum(1) - 1 if padding_side == "right" else torch.full((3,), states.shape[1] - 1)
        )
        torch.testing.assert_close(seq["text_summary_index"], last)
        torch.testing.assert_close(model.encode_text(texts, normalize=False), states[torch.arange(3), last])
        # after the final norm: the model's own hidden_states[-1] (tied to last_hidden_state in transformers 5)
        ids = model.sequences.texts(texts[:1])["text_input_ids"]
        reference = model.llava.model.language_model(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(model.encode_text(texts[0], normalize=False)[0], reference, atol=1e-5, rtol=1e-5)


def test_the_text_tower_never_calls_the_vision_tower(model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the vision tower ran for text")

    monkeypatch.setattr(model.llava.model.vision_tower, "forward", refuse)
    model.encode_text(["a red square", "a star"])
    batch = model.sequences(["a red square"], [None])
    model._tower("text", batch)
    with pytest.raises(AssertionError, match="vision tower ran"):
        model.encode_image(images(1))


def test_soft_prompts_at_init_give_exactly_the_handcrafted_prompt(llava_vision_folder):
    soft = tiny_vladva(llava_vision_folder).eval()
    hard = tiny_vladva(llava_vision_folder, soft_prompts=False).eval()
    batch = batch_of(soft)
    for modality, pixels in (("image", batch["pixel_values"]), ("text", None)):
        ids = batch[f"{modality}_input_ids"]
        mask = batch[f"{modality}_soft_mask"]
        embeds = soft.llava.get_input_embeddings()(ids)
        assert torch.equal(soft.soft_prompts.splice(embeds, mask, modality), embeds)
        # the slots are the prompt's tokens: never an image slot, never initialised from <image>
        prompt_ids = soft.sequences.prompt_ids(modality)
        assert ids[mask].view(len(ids), -1).tolist() == [prompt_ids] * len(ids)
        assert not (mask & (ids == soft.llava.config.image_token_id)).any()
        args = (modality, ids, batch[f"{modality}_attention_mask"], mask, pixels)
        with torch.no_grad():
            assert torch.equal(soft.sequence_states(*args), hard.sequence_states(*args))
    # read back as text: at init, the handcrafted prompt itself
    assert soft.soft_prompt_words()["text"] == hard.tokenizer.decode(hard.sequences.prompt_ids("text"))
    # a moved soft prompt changes the embedding (the splice is live); handcrafted() turns it off again
    with torch.no_grad():
        soft.soft_prompts["text"].add_(0.1)
        assert not torch.allclose(soft.encode_text("a star"), hard.encode_text("a star"))
        with soft.handcrafted():
            assert torch.equal(soft.encode_text("a star"), hard.encode_text("a star"))
        with soft.handcrafted({"text_prompt": "Describe the text in one word:"}):
            assert not torch.allclose(soft.encode_text("a star"), hard.encode_text("a star"))
        assert soft.soft_prompts is not None


def test_only_soft_prompts_lora_and_the_temperature_get_gradients(model):
    model.train()
    perturb_lora(model)  # LoRA's A takes no gradient while B is zero (peft's start)
    loss = sum(model.losses(batch_of(model)).values())
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    assert {"soft_prompts.prompts.image", "soft_prompts.prompts.text", "log_logit_scale"} <= with_grad
    assert all(
        "lora_" in n for n in trainable - {"soft_prompts.prompts.image", "soft_prompts.prompts.text", "log_logit_scale"}
    )
    assert any("lora_A" in n for n in with_grad)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in trainable)
    # a switch trains the projector too
    assert any(
        "multi_modal_projector" in n
        for n, p in tiny_vladva(model.hparams.vision_tower, trainable={"projector": True}).named_parameters()
        if p.requires_grad
    )


def test_ar_labels_cover_the_long_caption_and_eos_only_and_the_summary_ignores_the_second_turn(model):
    tokenizer = model.tokenizer
    batch = batch_of(model)
    for row, long in enumerate(LONGS):
        supervised = batch["labels"][row][batch["labels"][row] != -100].tolist()
        expected = (
            tokenizer(" " + long, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] if long else []
        )
        assert supervised == expected
        if long:  # the supervised tokens sit right after "ASSISTANT:" of the detail turn, at the sequence's end
            end = int(batch["image_attention_mask"][row].sum())
            assert batch["labels"][row][end - len(expected) : end].tolist() == expected
    one_turn = model.sequences([s for s in SHORTS], [None] * len(SHORTS))
    assert torch.equal(one_turn["image_summary_index"], batch["image_summary_index"])
    assert (one_turn["labels"] == -100).all()
    with torch.no_grad():
        two = model._tower("image", batch, batch["pixel_values"])[1]
        one = model._tower("image", one_turn, batch["pixel_values"])[1]
    torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-5)
    # the AR term: the mean CE over exactly those tokens (the model's own lm_head, transformers' shift)
    features = model.features(batch)
    logits = model.llava.lm_head(model._tower("image", batch, batch["pixel_values"])[0])
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    torch.testing.assert_close(model.loss_terms(features)["ar_loss"], reference * model.hparams.ar_weight)


def test_without_the_ar_loss_the_image_sequence_stops_after_the_first_turn(llava_vision_folder):
    model = tiny_vladva(llava_vision_folder, ar_weight=0.0).eval()
    batch = batch_of(model)
    one_turn = model.sequences(list(SHORTS), [None] * len(SHORTS))
    for key in ("image_input_ids", "image_attention_mask", "labels"):
        assert torch.equal(batch[key], one_turn[key]), key  # no long caption appended: no compute for nothing
    assert batch["has_long"].tolist() == [long is not None for long in LONGS]  # what the data held
    with model.handcrafted():
        assert torch.equal(model.sequences(list(SHORTS), list(LONGS))["image_input_ids"], one_turn["image_input_ids"])
    features = model.features(batch)
    assert "ar_nll" not in features and set(model.loss_terms(features)) == {"contrastive_loss"}
    with_ar = tiny_vladva(llava_vision_folder).sequences(list(SHORTS), list(LONGS))
    assert with_ar["image_input_ids"].shape[1] > batch["image_input_ids"].shape[1]


def test_an_image_without_a_short_caption_is_left_out_of_the_contrastive_loss(model):
    from zoo.losses import contrastive_loss

    features = model.features(batch_of(model))
    keep = torch.tensor([s is not None for s in SHORTS])
    expected = contrastive_loss(features["image"][keep], features["text"][keep], model.logit_scale())
    torch.testing.assert_close(model.loss_terms(features)["contrastive_loss"], expected["contrastive_loss"])
    everything = contrastive_loss(features["image"], features["text"], model.logit_scale())["contrastive_loss"]
    assert not torch.allclose(everything, expected["contrastive_loss"])


def test_adapters_off_and_soft_prompts_at_init_generate_the_base_llavas_tokens(llava_vision_folder):
    from PIL import Image

    from tests.zoo.llava_fixtures import QA

    base = tiny_llava(llava_vision_folder).eval()
    vladva = tiny_vladva(llava_vision_folder, lora={"r": 4, "alpha": 8}).eval()
    perturb_lora(vladva)
    pictures = [Image.new("RGB", size, color) for (_, _, size), color in zip(QA[:1], ["red"])] + [None]
    prompts = ["What shape is it?", "What colour is the sky?"]
    expected = base.generate(pictures, prompts, return_ids=True, max_new_tokens=8)
    with vladva.adapters_disabled():
        assert vladva.generate(pictures, prompts, return_ids=True, max_new_tokens=8) == expected
    assert vladva.generate(pictures, prompts, return_ids=True, max_new_tokens=8) != expected  # adapters on: not base


def test_contrastive_accumulation_equals_one_batch_in_loss_and_gradients(llava_vision_folder):
    def run(k: int):
        model = tiny_vladva(llava_vision_folder, lora={"r": 4, "dropout": 0.0}, contrastive_accumulation=k).train()
        perturb_lora(model)
        batch = batch_of(model)
        if k == 1:
            terms = model.losses(batch)
            sum(terms.values()).backward()
        else:
            half = len(SHORTS) // 2
            parts = [
                batch_of(model, SHORTS[i : i + half], LONGS[i : i + half])
                | {"pixel_values": batch["pixel_values"][i : i + half]}
                for i in (0, half)
            ]
            terms = model.accumulated_losses(parts)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return {k: v.detach() for k, v in terms.items()}, grads

    one, one_grads = run(1)
    two, two_grads = run(2)
    assert set(one) == {"contrastive_loss", "ar_loss"}
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-5)
    assert sorted(one_grads) == sorted(two_grads) and "log_logit_scale" in one_grads
    for name, grad in one_grads.items():
        torch.testing.assert_close(two_grads[name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: n + m)


def test_prompt_token_ids_are_pinned_and_segments_tokenise_as_the_whole_string(model):
    sequences = model.sequences
    tokenizer = model.tokenizer
    ids, soft, start = sequences.first_turn("text", "a red square")
    whole = sequences.prompts["text_template"].replace("{prompt}", sequences.prompts["text_prompt"])
    whole = whole.replace("{caption}", "a red square")
    assert ids == tokenizer(whole)["input_ids"]
    assert tokenizer.decode(ids[start:]) == " a red square ASSISTANT:"
    assert tokenizer.convert_ids_to_tokens(ids[-2:]) == ["ĠASSISTANT", ":"]
    assert model.hparams.prompts["image_prompt"] == "Summarize the provided image in one word:"
    with pytest.raises(ValueError, match="lacks"):
        type(sequences)(tokenizer, 9, {"image_template": "USER: <image> ASSISTANT:"})


def test_an_adapter_only_checkpoint_reloads_in_a_fresh_process_with_identical_embeddings(
    llava_vision_folder,
    one_thread,
    tmp_path,
):
    model = tiny_vladva(llava_vision_folder, lora={"r": 4, "alpha": 8})
    perturb_lora(model)
    with torch.no_grad():
        model.soft_prompts["image"].add_(0.05)
    path = tmp_path / "vladva.ckpt"
    saved = save(model, path)["state_dict"]
    assert all("lora_" in n or n.startswith(("soft_prompts", "log_logit_scale")) for n in saved)
    assert sum(v.numel() for v in saved.values()) < sum(p.numel() for p in model.parameters()) / 5
    model.eval()
    pixels = images(2, seed=3)
    torch.save({"images": model.encode_image(pixels), "texts": model.encode_text(SHORTS[:3]), "pixels": pixels},
               tmp_path / "expected.pt")  # fmt: skip
    script = (
        "import torch, zoo; torch.set_num_threads(1)\n"
        f"m = zoo.VladVA.load_from_checkpoint({str(path)!r}, map_location='cpu').eval()\n"
        f"e = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "assert torch.equal(m.encode_image(e['pixels']), e['images'])\n"
        f"assert torch.equal(m.encode_text({SHORTS[:3]!r}), e['texts'])\n"
        "print('identical')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert run.returncode == 0 and "identical" in run.stdout, run.stderr[-3000:]


def test_nothing_to_train_is_refused_by_name(llava_vision_folder):
    model = tiny_vladva(llava_vision_folder, soft_prompts=False, learn_temperature=False)
    with pytest.raises(ValueError, match="nothing to train"):
        model.configure_optimizers()


def test_the_evaluation_suite_scores_a_vladva_checkpoint_unchanged(llava_vision_folder, tmp_path, monkeypatch):
    from callbacks.suite.cli import main

    monkeypatch.setenv("VLZOO_CACHE", str(tmp_path / "cache"))
    save(tiny_vladva(llava_vision_folder, lora={"r": 4}), tmp_path / "vladva.ckpt")
    argv = ["--checkpoint", str(tmp_path / "vladva.ckpt"), "--module", "zoo.VladVA", "--out", str(tmp_path / "s.json")]
    report = main([*argv, "--batch-size", "64", "--num-workers", "0"])
    figures = report["benchmarks"]
    assert report["model"]["class"] == "VladVA"
    assert 0 <= figures["shapesworld/retrieval"]["i2t_R@1"] <= 1 and "accuracy" in figures["shapesworld/swap_object"]


def test_wise_ft_from_the_base_interpolates_adapters_and_soft_prompts(llava_vision_folder, tmp_path, monkeypatch):
    from callbacks import wise_ft

    model = perturb(tiny_vladva(llava_vision_folder, lora={"r": 4, "alpha": 8}), seed=2).eval()
    save(model, tmp_path / "vladva.ckpt")
    base = tiny_vladva(llava_vision_folder, lora={"r": 4, "alpha": 8}).eval()
    pixels = images(2, seed=4)
    with torch.no_grad():
        expected = {0.0: (base.encode_image(pixels), base.encode_text(SHORTS[:3]))}
        expected[1.0] = (model.encode_image(pixels), model.encode_text(SHORTS[:3]))
    seen = {}

    def fake_suite(module, benchmarks, **kwargs):  # the suite's view of the model at each α
        with torch.no_grad():
            seen[len(seen)] = (module.encode_image(pixels), module.encode_text(SHORTS[:3]))
        return {"fake": {"accuracy": 0.5, "i2t_R@1": 0.5}}

    monkeypatch.setattr(wise_ft, "evaluate_suite", fake_suite)
    monkeypatch.setattr(wise_ft, "suite_benchmarks", lambda config, model: [])
    argv = ["--module", "zoo.VladVA", "--zeroshot", "base", "--finetuned", str(tmp_path / "vladva.ckpt")]
    wise_ft.main([*argv, "--alphas", "0", "1", "--out", str(tmp_path / "wise"), "--num-workers", "0"])
    for index, alpha in enumerate((0.0, 1.0)):
        for got, want in zip(seen[index], expected[alpha]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (tmp_path / "wise" / "wise_ft.png").exists()
