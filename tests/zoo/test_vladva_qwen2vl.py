"""VladVA on a Qwen2-VL backbone, chosen by configuration (a folder with ``model_type: qwen2_vl``): the patches
equal Qwen2VLImageProcessor's, the sequences equal Qwen2-VL's chat template + processor, the image tower equals
``Qwen2VLModel.forward`` (M-RoPE), padding never moves an embedding, the text tower runs no vision, the base's
greedy tokens behind the adapters, a training step and an adapter-only checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.zoo.llava_fixtures import one_thread, perturb_lora, picture, save
from tests.zoo.qwen2vl_fixtures import IMAGE_SIZE, IMAGE_TOKENS, qwen2vl_folder, tiny_qwen_vladva

__all__ = ["one_thread", "qwen2vl_folder"]  # fixtures, used by name
pytestmark = pytest.mark.usefixtures("one_thread")
SHORTS = ["a red square", "two blue circles left of a large green triangle", "a star", None]
LONGS = ["There is one object in the image.", None, "There are two objects. A small yellow star is in the centre.", "A"]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model(qwen2vl_folder):
    return perturb_lora(tiny_qwen_vladva(qwen2vl_folder, lora=LORA)).eval()


def processor(folder, pil: bool = False):
    from transformers import AutoProcessor, Qwen2VLImageProcessorPil

    loaded = AutoProcessor.from_pretrained(folder)
    if pil:  # the PIL backend, whatever transformers picks by default
        loaded.image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    return loaded


def hf_reference(folder, model, batch, pixels):
    """``Qwen2VLModel.forward``'s last_hidden_state on the zoo's image ids, transformers' own M-RoPE."""
    from zoo.vladva.qwen2_vl import image_inputs

    flat, grid = image_inputs(model.llava, pixels)
    ids, mask = batch["image_input_ids"], batch["image_attention_mask"]
    types = (ids == model.llava.config.image_token_id).int()
    with torch.no_grad(), model.adapters_disabled():
        return model.llava.model(
            input_ids=ids, attention_mask=mask, pixel_values=flat, image_grid_thw=grid, mm_token_type_ids=types
        ).last_hidden_state


def test_a_qwen2_vl_folder_builds_qwen2_vl_with_lora_on_the_llm_only(model):
    from transformers import Qwen2VLForConditionalGeneration

    assert isinstance(model.llava, Qwen2VLForConditionalGeneration) and model.backbone_type == "qwen2_vl"
    assert model.image_tokens == IMAGE_TOKENS == 4 and model.image_spec.image_size == IMAGE_SIZE
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert lora and all(".language_model." in n for n in lora)  # visual.blocks' qkv / proj stay bare
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == lora | {"soft_prompts.prompts.image", "soft_prompts.prompts.text", "log_logit_scale"}


@pytest.mark.parametrize("pil", [True, False], ids=["pil", "default_backend"])
def test_patches_equal_the_processors_pixel_values(qwen2vl_folder, model, pil):
    from zoo.llava import ImageTransform
    from zoo.vladva.qwen2_vl import image_inputs

    picture_ = picture((IMAGE_SIZE, IMAGE_SIZE), seed=3)  # already at the model's size: no resize either side
    pixels = ImageTransform(model.images)(picture_)
    assert pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    flat, grid = image_inputs(model.llava, torch.stack([pixels, pixels.flip(-1)]))
    reference = processor(qwen2vl_folder, pil).image_processor(
        [picture_, picture_.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], return_tensors="pt"
    )
    assert torch.equal(grid, reference["image_grid_thw"])
    torch.testing.assert_close(flat, reference["pixel_values"], atol=1e-5, rtol=0)
    # any other size is squashed to the one square: every image has the same number of visual tokens
    assert ImageTransform(model.images)(picture((70, 40), seed=4)).shape == pixels.shape


def test_sequences_are_qwen2_vls_chat_template_and_processor_ids(qwen2vl_folder, model):
    proc = processor(qwen2vl_folder)
    seq = model.sequences(["a red square"], ["There is one object."])
    prompts = model.sequences.prompts
    first = [{"type": "text", "text": prompts["image_prompt"]}, {"type": "image"}]
    conversation = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Describe the image in detail."},
        {"role": "assistant", "content": "There is one object."},
    ]
    expected = proc(
        text=[proc.apply_chat_template(conversation, tokenize=False)],
        images=[picture((IMAGE_SIZE, IMAGE_SIZE), 0)],
        return_tensors="pt",
    )
    ids = seq["image_input_ids"][0]
    assert ids.tolist() == expected["input_ids"][0, :-1].tolist()  # the template's trailing "\n" is not ours
    assert torch.equal((ids == model.llava.config.image_token_id).int(), expected["mm_token_type_ids"][0, :-1])
    generation = proc.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    summary = int(seq["image_summary_index"][0])
    assert ids[: summary + 1].tolist() == proc(text=[generation], images=[picture((56, 56), 0)])["input_ids"][0]
    assert generation.endswith("<|im_start|>assistant\n")  # the summary token: the "\n" that starts the answer
    tok = model.tokenizer
    labels = seq["labels"][0][seq["labels"][0] != -100].tolist()
    assert labels == tok("There is one object.<|im_end|>", add_special_tokens=False)["input_ids"]
    text = [{"role": "user", "content": prompts["text_prompt"] + " a red square"}]
    rendered = proc.apply_chat_template(text, tokenize=False, add_generation_prompt=True)
    assert seq["text_input_ids"][0].tolist() == tok(rendered, add_special_tokens=False)["input_ids"]


def test_the_image_tower_equals_transformers_qwen2vlmodel_with_m_rope(qwen2vl_folder):
    model = tiny_qwen_vladva(qwen2vl_folder, lora=LORA).eval()  # soft prompts at init; adapters off below
    batch = model.sequences(SHORTS, LONGS)
    pixels = images(len(SHORTS))
    mask = batch["image_attention_mask"].bool()
    assert len(set(mask.sum(1).tolist())) > 1  # mixed lengths: right padding is exercised
    with torch.no_grad(), model.adapters_disabled():
        ours = model.sequence_states(
            "image", batch["image_input_ids"], mask.long(), batch["image_soft_mask"], pixels
        )  # fmt: skip
    reference = hf_reference(qwen2vl_folder, model, batch, pixels)
    torch.testing.assert_close(ours[mask], reference[mask], atol=1e-5, rtol=1e-5)
    # the text tower (right padding: transformers' default positions are the real tokens' there)
    with torch.no_grad(), model.adapters_disabled():
        ours = model._tower("text", batch)[0]
        plain = model.llava.model(input_ids=batch["text_input_ids"], attention_mask=batch["text_attention_mask"])
    text_mask = batch["text_attention_mask"].bool()
    torch.testing.assert_close(ours[text_mask], plain.last_hidden_state[text_mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_an_items_embedding_alone_equals_it_in_a_padded_batch(qwen2vl_folder, padding_side):
    model = perturb_lora(tiny_qwen_vladva(qwen2vl_folder, lora=LORA, padding_side=padding_side)).eval()
    pixels = images(3, seed=1)
    shorts, longs = SHORTS[:3], [LONGS[0], None, LONGS[2]]
    with torch.no_grad():
        batch = model.sequences(shorts, longs)
        assert len(set(batch["image_attention_mask"].sum(1).tolist())) == 3
        assert len(set(batch["text_attention_mask"].sum(1).tolist())) == 3
        together = model._tower("image", batch, pixels)[1], model._tower("text", batch)[1]
        for i in range(3):
            alone = model.sequences(shorts[i : i + 1], longs[i : i + 1])
            torch.testing.assert_close(model._tower("image", alone, pixels[i : i + 1])[1][0], together[0][i],
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            torch.testing.assert_close(model._tower("text", alone)[1][0], together[1][i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_text(shorts[:3]), torch.cat([model.encode_text(s) for s in shorts]))


def test_the_text_tower_never_calls_the_visual_encoder(model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the visual encoder ran for text")

    monkeypatch.setattr(model.llava.model.visual, "forward", refuse)
    model.encode_text(["a red square", "a star"])
    with pytest.raises(AssertionError, match="visual encoder ran"):
        model.encode_image(images(1))


def test_adapters_off_and_soft_prompts_at_init_generate_the_base_qwen2_vls_tokens(qwen2vl_folder, model):
    from transformers import Qwen2VLForConditionalGeneration

    base = Qwen2VLForConditionalGeneration.from_pretrained(qwen2vl_folder).eval()
    proc = processor(qwen2vl_folder, pil=True)
    proc.tokenizer.padding_side = "left"
    image = picture((IMAGE_SIZE, IMAGE_SIZE), seed=5)
    questions = ["What shape is it?", "What colour is the sky?"]
    contents = [[{"type": "image"}, {"type": "text", "text": questions[0]}], questions[1]]
    texts = [proc.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
             for c in contents]  # fmt: skip
    inputs = proc(text=texts, images=[image], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = base.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id)
    eos = proc.tokenizer.eos_token_id
    expected = [row[: row.index(eos)] if eos in row else row for row in out[:, inputs["input_ids"].shape[1] :].tolist()]
    assert any(expected)
    with model.adapters_disabled():
        assert model.generate([image, None], questions, return_ids=True, max_new_tokens=8) == expected
    assert model.generate([image, None], questions, return_ids=True, max_new_tokens=8) != expected


def test_a_training_step_gives_finite_losses_and_gradients_only_to_the_adapters(qwen2vl_folder):
    from datamodules import ShortLongCaptionDataModule
    from datamodules.image_caption import ShapesWorldConfig

    model = perturb_lora(tiny_qwen_vladva(qwen2vl_folder, lora=LORA)).train()
    data = ShortLongCaptionDataModule(batch_size=4, num_workers=0, shapesworld=ShapesWorldConfig(image_size=64))
    data.connect(**model.data_transforms())
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)  # the zoo's data path, squashed to 56 px
    terms = model.losses(batch)
    assert set(terms) == {"contrastive_loss", "ar_loss"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"soft_prompts.prompts.image", "soft_prompts.prompts.text", "log_logit_scale"} <= with_grad
    assert any("lora_A" in n for n in with_grad) and any("lora_B" in n for n in with_grad)
    assert all("lora_" in n or n.startswith(("soft_prompts", "log_logit_scale")) for n in with_grad)
    # a switch trains the merger (the projector) too
    merger = tiny_qwen_vladva(qwen2vl_folder, trainable={"projector": True})
    assert {n for n, p in merger.named_parameters() if p.requires_grad and "visual" in n} == {
        n for n, _ in merger.named_parameters() if "visual.merger" in n
    }


def test_an_adapter_only_checkpoint_reloads_with_identical_embeddings(qwen2vl_folder, model, tmp_path):
    import zoo

    with torch.no_grad():
        model.soft_prompts["image"].add_(0.05)
    try:
        saved = save(model, tmp_path / "qwen.ckpt")
        assert all("lora_" in n or n.startswith(("soft_prompts", "log_logit_scale")) for n in saved["state_dict"])
        reloaded = zoo.VladVA.load_from_checkpoint(tmp_path / "qwen.ckpt", map_location="cpu").eval()
        pixels = images(2, seed=7)
        with torch.no_grad():
            assert torch.equal(reloaded.encode_image(pixels), model.encode_image(pixels))
            assert torch.equal(reloaded.encode_text(SHORTS[:3]), model.encode_text(SHORTS[:3]))
        assert reloaded.sequences.prompts == model.sequences.prompts and reloaded.image_spec == model.image_spec
    finally:
        with torch.no_grad():
            model.soft_prompts["image"].sub_(0.05)


def test_an_export_embeds_in_plain_transformers_as_the_zoo_does(model, tmp_path):
    """Merged weights + the processor + vladva.json: soft prompt spliced into inputs_embeds, M-RoPE positions."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    folder = model.export_hf(tmp_path / "export")
    recipe = json.loads((folder / "vladva.json").read_text())
    assert recipe["image_spec"]["image_size"] == IMAGE_SIZE and not (folder / "adapter").exists()
    hf = Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    proc = AutoProcessor.from_pretrained(folder)
    image = picture((70, 40), seed=8).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)  # squash first
    entry = recipe["image"]
    pixels = proc.image_processor(image, return_tensors="pt")
    ids = torch.tensor([entry["before_ids"] + entry["prompt_ids"] + entry["after_ids"]])
    image_id = hf.config.image_token_id
    assert int((ids == image_id).sum()) == int(pixels["image_grid_thw"].prod()) // 4  # one span of the right size
    with torch.no_grad():
        embeds = hf.get_input_embeddings()(ids)
        start = len(entry["before_ids"])
        embeds[0, start : start + len(entry["prompt_ids"])] = torch.tensor(entry["soft_prompt"])
        types = (ids == image_id).int()
        positions = hf.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=pixels["image_grid_thw"])[0]
        out = hf.model(inputs_embeds=embeds, position_ids=positions, **pixels).last_hidden_state[0, -1]
        torch.testing.assert_close(out, model.encode_image([image], normalize=False)[0], atol=1e-4, rtol=1e-4)


def test_an_unsupported_model_type_is_refused_naming_the_folder_and_the_types(tmp_path):
    import zoo

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=rf"{tmp_path}.*'bert'.*'llava', 'qwen2_vl'"):
        zoo.VladVA(model_name_or_path=str(tmp_path))


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_the_config_trains_a_qwen2_vl_folder_through_the_cli(qwen2vl_folder, tmp_path, monkeypatch):
    """configs/vladva/qwen2vl.yaml on configs/vladva.yaml, pointed at a local folder (no weights offline)."""
    import train

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).resolve().parents[2] / "configs"
    args = ["--config", str(configs / "vladva.yaml"), "--config", str(configs / "vladva" / "qwen2vl.yaml")]
    args += ["--model.init_args.model_name_or_path", str(qwen2vl_folder), "--model.init_args.image_spec",
             f"{{image_size: {IMAGE_SIZE}}}", "--model.init_args.lora", "{r: 4, alpha: 8}",
             "--trainer.precision", "32-true", "--trainer.fast_dev_run", "1", "--trainer.callbacks", "[]",
             "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
             "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
             "--data.init_args.shapesworld.n_train", "8", "--data.init_args.shapesworld.n_val", "4"]  # fmt: skip
    cli = train.main(args, run=False)
    assert cli.model.backbone_type == "qwen2_vl" and cli.model.image_tokens == IMAGE_TOKENS
    before = {n: p.detach().clone() for n, p in cli.model.named_parameters()}
    cli.trainer.fit(cli.model, cli.datamodule)
    changed = {n for n, p in cli.model.named_parameters() if not torch.equal(p, before[n])}
    assert {"soft_prompts.prompts.image", "soft_prompts.prompts.text", "log_logit_scale"} <= changed
    assert any("lora_B" in n for n in changed)
    assert all("lora_" in n or n.startswith(("soft_prompts", "log_logit_scale")) for n in changed)
    losses = {k: v for k, v in cli.trainer.logged_metrics.items() if k.endswith("loss")}
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
