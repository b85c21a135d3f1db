"""zoo.LLaVA on a tiny model (42 px images, 14 px patches, width 32): which parts train at which learning rate,
the frozen tower's no_grad, the loss against transformers' own, text-only rows, accumulation, stage-1 → stage-2
initialisation, trainable-only checkpoints, the transformers export and batched generation."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.conftest import ROOT
from tests.zoo.llava_fixtures import (
    IMAGE_SIZE,
    IMAGE_TOKENS,
    QA,
    collate,
    concatenate,
    llava_vision_folder,
    logits,
    one_thread,
    perturb,
    picture,
    save,
    tiny_llava,
    tiny_vision_folder,
    trainable,
    under,
)
from zoo.backbones.llava.build import image_processor
from zoo.backbones.llava.clip_vision import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageSpec
from zoo.backbones.llava.conversation import inference_prompt

__all__ = ["llava_vision_folder", "one_thread"]  # fixtures, used by name
pytestmark = pytest.mark.usefixtures("one_thread")
PROJECTOR = "model.model.multi_modal_projector"
TOWER = "model.model.vision_tower"
LORA_PROJECTOR = "model.base_model.model.model.multi_modal_projector"


def groups_at(groups: list[dict], lr: float) -> set[int]:
    return {id(p) for g in groups if g.get("lr") == lr for p in g["params"]}


# ------------------------------------------------------------------------------------------ parts and groups
def test_each_stage_trains_its_parts(llava_vision_folder):
    pretrain = tiny_llava(llava_vision_folder, stage="pretrain")
    assert trainable(pretrain) == {f"{PROJECTOR}.linear_{i}.{k}" for i in (1, 2) for k in ("weight", "bias")}

    finetune = tiny_llava(llava_vision_folder)
    expected = under(finetune, PROJECTOR) | under(finetune, "model.model.language_model") | {"model.lm_head.weight"}
    assert trainable(finetune) == expected
    assert not trainable(finetune) & under(finetune, TOWER)

    lora = tiny_llava(llava_vision_folder, lora={})
    adapters = {n for n in trainable(lora) if ".lora_" in n}
    assert trainable(lora) == under(lora, LORA_PROJECTOR) | adapters
    modules = {n.split(".lora_")[0] for n, _ in lora.named_parameters() if ".lora_" in n}
    assert len(modules) == 2 * 7  # q k v o gate up down of both layers
    assert all(".model.language_model.layers." in m for m in modules)
    assert not any(part in m for m in modules for part in ("vision_tower", "lm_head", "multi_modal_projector"))
    q_proj = lora.get_submodule("model.base_model.model.model.language_model.layers.0.self_attn.q_proj")
    assert q_proj.lora_A["default"].weight.shape == (128, 32) and q_proj.scaling["default"] == 2.0  # r 128, α 256
    # with LoRA, the language model part is its adapters: off in stage 1 or when switched off
    for kwargs in ({"stage": "pretrain"}, {"trainable": {"language_model": False}}):
        projector_only = tiny_llava(llava_vision_folder, lora={"r": 2}, **kwargs)
        assert trainable(projector_only) == under(projector_only, LORA_PROJECTOR), kwargs

    linear = tiny_llava(llava_vision_folder, stage="pretrain", projector="linear")
    assert trainable(linear) == {f"{PROJECTOR}.linear_1.weight", f"{PROJECTOR}.linear_1.bias"}
    second = linear.llava.model.multi_modal_projector.linear_2
    assert torch.equal(second.weight, torch.eye(32)) and not second.bias.any()


def test_parts_at_their_own_learning_rates(llava_vision_folder):
    model = tiny_llava(llava_vision_folder, trainable={"vision_tower": 2e-6}, lr_schedule="constant")
    # the layers after vision_feature_layer (−2: the last of 2) and the post-layernorm never get a gradient
    whole = under(model, TOWER)
    unused = under(model, f"{TOWER}.encoder.layers.1") | under(model, f"{TOWER}.post_layernorm")
    assert unused and trainable(model) & whole == whole - unused
    tower = {id(model.get_parameter(n)) for n in whole - unused}
    optimizer = model.configure_optimizers()["optimizer"]
    assert groups_at(optimizer.param_groups, 2e-6) == tower
    assert {id(p) for g in optimizer.param_groups if g["lr"] == 2e-5 for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad and id(p) not in tower
    }

    lora = tiny_llava(llava_vision_folder, lora={"r": 4}, projector_lr=2e-5, lr=2e-4)
    groups = lora.parameter_groups()
    projector = {id(p) for p in lora.llava.model.multi_modal_projector.parameters()}
    assert groups_at(groups, 2e-5) == projector
    assert {id(p) for g in groups if "lr" not in g for p in g["params"]} == {
        id(p) for n, p in lora.named_parameters() if ".lora_" in n
    }
    with pytest.raises(ValueError, match="visual"):
        tiny_llava(llava_vision_folder, trainable={"visual": True})


def test_frozen_tower_runs_without_a_graph(llava_vision_folder):
    seen = {}

    def hooks(model):
        inner = model.llava.model
        inner.vision_tower.register_forward_hook(lambda m, i, out: seen.update(tower=out.hidden_states[-2]))
        inner.multi_modal_projector.register_forward_hook(lambda m, i, out: seen.update(projector=out))

    # pixels that require a gradient: without no_grad, autograd would record the frozen tower's graph for them
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, requires_grad=True)
    frozen = tiny_llava(llava_vision_folder)
    hooks(frozen)
    frozen.image_features(pixels)
    assert seen["tower"].grad_fn is None and not seen["tower"].requires_grad
    assert seen["projector"].grad_fn is not None
    tuned = tiny_llava(llava_vision_folder, trainable={"vision_tower": 1e-5})
    hooks(tuned)
    tuned.image_features(pixels)
    assert seen["tower"].grad_fn is not None


@pytest.mark.parametrize(
    "kwargs",
    [{"stage": "pretrain"}, {}, {"lora": {"r": 2}}, {"trainable": {"vision_tower": True}, "projector": "linear"}],
)
def test_every_trainable_tensor_gets_a_gradient(llava_vision_folder, kwargs):
    """DDP without find_unused_parameters: a mixed batch and a text-only batch reach every trainable tensor."""
    model = tiny_llava(llava_vision_folder, **kwargs)
    for batch in (collate(model), collate(model, QA[1:2])):
        model.zero_grad(set_to_none=True)
        model.losses(batch)["lm_loss"].backward()
        assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


# --------------------------------------------------------------------------------------------------- loss
def test_loss_equals_transformers_loss(llava_vision_folder):
    model = perturb(tiny_llava(llava_vision_folder), seed=1)
    batch = collate(model)
    assert (batch["input_ids"] == model.tokenizer.image_token_id).sum() == 3 * IMAGE_TOKENS
    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    expected = model.llava(**{k: batch[k] for k in keys}).loss
    torch.testing.assert_close(model.losses(batch)["lm_loss"], expected, rtol=1e-5, atol=1e-5)


def test_a_text_only_row_is_its_text_alone_with_the_projector_in_the_graph(llava_vision_folder):
    model = perturb(tiny_llava(llava_vision_folder), seed=2)
    batch = collate(model, QA[1:2])
    row = batch["input_ids"][0]
    text = int(batch["attention_mask"][0].sum())
    assert (row[text:] == model.tokenizer.image_token_id).all() and len(row) == text + IMAGE_TOKENS
    assert (batch["labels"][0, text:] == -100).all()
    alone = {k: batch[k][:, :text] for k in ("input_ids", "labels", "attention_mask")}

    loss = model.losses(batch)["lm_loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    expected = model.losses(alone)["lm_loss"]
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    for name, param in model.named_parameters():
        if name.startswith(PROJECTOR):
            assert grads[name] is not None and not grads[name].any(), name  # in the graph, at zero
        elif param.requires_grad:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-6)


def test_loss_decreases_on_a_fixed_batch(llava_vision_folder):
    torch.manual_seed(0)
    model = tiny_llava(llava_vision_folder, lr=1e-3)
    batch = collate(model)
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.losses(batch)["lm_loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0 and max(losses[-10:]) < min(losses[:10]), losses


def test_two_micro_batches_equal_one_batch(llava_vision_folder):
    model = perturb(tiny_llava(llava_vision_folder, micro_batches=2), seed=3)
    first, second = collate(model, QA[:2]), collate(model, QA[2:], first=2)
    supervised = [int((b["labels"][:, 1:] != -100).sum()) for b in (first, second)]
    assert supervised[0] != 2 * supervised[1]  # per-micro-batch means would weight them differently
    losses = model.accumulated_losses([first, second])
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    whole = model.losses(concatenate(model, first, second))["lm_loss"]
    whole.backward()
    torch.testing.assert_close(losses["lm_loss"], whole.detach(), rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(accumulated[name], param.grad, rtol=1e-5, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------- init_from
def test_stage_one_initialises_stage_two(llava_vision_folder, tmp_path):
    stage1 = perturb(tiny_llava(llava_vision_folder, stage="pretrain"), seed=4)
    save(stage1, tmp_path / "stage1.ckpt")
    reference = tiny_llava(llava_vision_folder)
    for lora in (None, {"r": 4}):
        stage2 = tiny_llava(llava_vision_folder, init_from=str(tmp_path / "stage1.ckpt"), lora=lora)
        for name, tensor in stage1.llava.model.multi_modal_projector.state_dict().items():
            assert torch.equal(stage2.llava.model.multi_modal_projector.state_dict()[name], tensor), name
        for name, tensor in reference.llava.model.language_model.state_dict().items():
            assert torch.equal(stage2.llava.model.language_model.get_parameter(name), tensor), name
    # the stage-2 checkpoint is complete without the stage-1 file
    perturb(stage2, seed=5)
    assert save(stage2, tmp_path / "stage2.ckpt")["hyper_parameters"]["init_from"] is None
    (tmp_path / "stage1.ckpt").unlink()
    reloaded = zoo.LLaVA.load_from_checkpoint(tmp_path / "stage2.ckpt", map_location="cpu")
    batch = collate(stage2)
    assert torch.equal(logits(reloaded.eval(), batch), logits(stage2.eval(), batch))

    # init_from that writes frozen tensors (LoRA over a fine-tuned stage 2): its checkpoints need the file
    full = perturb(tiny_llava(llava_vision_folder), seed=10)
    save(full, tmp_path / "full.ckpt")
    tuned = perturb(tiny_llava(llava_vision_folder, lora={"r": 2}, init_from=str(tmp_path / "full.ckpt")), seed=11)
    assert torch.equal(tuned.llava.lm_head.weight, full.llava.lm_head.weight)
    checkpoint = save(tuned, tmp_path / "tuned.ckpt")
    assert checkpoint["hyper_parameters"]["init_from"] == str((tmp_path / "full.ckpt").resolve())
    reloaded = zoo.LLaVA.load_from_checkpoint(tmp_path / "tuned.ckpt", map_location="cpu")
    assert torch.equal(logits(reloaded.eval(), batch), logits(tuned.eval(), batch))

    torch.save({"state_dict": {"something.else": torch.zeros(3)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no tensor"):
        tiny_llava(llava_vision_folder, init_from=str(tmp_path / "other.ckpt"))


# -------------------------------------------------------------------- fresh-process reloads and exports
_FRESH = """
import sys
import torch
torch.set_num_threads(1)
from transformers import LlavaForConditionalGeneration, LlavaProcessor
import zoo
jobs, results = torch.load(sys.argv[1], weights_only=False), {}
for name, job in jobs.items():
    if "checkpoint" in job:
        model = zoo.LLaVA.load_from_checkpoint(job["checkpoint"], map_location="cpu").eval()
        with torch.no_grad():
            results[name] = model.llava(**job["inputs"]).logits
        continue
    model = LlavaForConditionalGeneration.from_pretrained(job["export"]).eval()
    if job["adapter"]:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, job["export"] + "/adapter").eval()
    processor = LlavaProcessor.from_pretrained(job["export"], backend="pil")
    inputs = processor(text=job["prompt"], images=job["image"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    default = LlavaProcessor.from_pretrained(job["export"])  # transformers' default backend: torchvision
    default = default(text=job["prompt"], images=job["image"], return_tensors="pt")
    results[name] = {
        "input_ids": inputs["input_ids"][0].tolist(),
        "pixel_values": inputs["pixel_values"],
        "default_pixel_values": default["pixel_values"],
        "tokens": out[0, inputs["input_ids"].shape[1]:].tolist(),
    }
torch.save(results, sys.argv[2])
"""


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Checkpoints and exports of tiny models, loaded back in one new process (one import for all of them):
    ``(expected, results, paths)``."""
    folder = tmp_path_factory.mktemp("llava-fresh")
    vision = tiny_vision_folder(folder / "clip", seed=11)
    expected, jobs = {}, {}
    batch = collate(tiny_llava(vision))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    for name, kwargs in {"stage1": {"stage": "pretrain"}, "lora": {"lora": {"r": 4}}}.items():
        model = perturb(tiny_llava(vision, **kwargs), seed=6).eval()
        expected[name] = {"logits": logits(model, batch), "checkpoint": save(model, folder / f"{name}.ckpt")}
        expected[name]["model"] = model
        jobs[name] = {"checkpoint": str(folder / f"{name}.ckpt"), "inputs": inputs}
    image, question = picture((61, 37), 7), "What shape is it?"
    prompt = inference_prompt(question, "vicuna_v1", True)
    full = perturb(tiny_llava(vision), seed=8, scale=0.2)
    lora = perturb(tiny_llava(vision, lora={"r": 4, "dropout": 0.5}), seed=9, scale=0.2)
    for name, model, merge in (("full", full, True), ("merged", lora, True), ("adapter", lora, False)):
        model.export_hf(folder / name, merge_lora=merge)
        expected[name] = {"tokens": model.generate(image, question, return_ids=True, max_new_tokens=8)[0]}
        expected[name]["model"] = model
        jobs[name] = {"export": str(folder / name), "adapter": not merge, "prompt": prompt, "image": image}
    torch.save(jobs, folder / "jobs.pt")
    command = [sys.executable, "-c", _FRESH, str(folder / "jobs.pt"), str(folder / "results.pt")]
    subprocess.run(command, check=True, cwd=ROOT, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return expected, torch.load(folder / "results.pt", weights_only=False), {"folder": folder, "image": image}


def test_stage_one_checkpoint_is_the_projector_and_reloads_in_a_fresh_process(fresh):
    expected, results, paths = fresh
    checkpoint = expected["stage1"]["checkpoint"]
    assert set(checkpoint["state_dict"]) == {f"{PROJECTOR}.linear_{i}.{k}" for i in (1, 2) for k in ("weight", "bias")}
    assert set(checkpoint["frozen_base"]) == {"reference", "checksum"}
    assert checkpoint["frozen_base"]["reference"]["vision_tower"] == str(paths["folder"] / "clip")
    assert torch.equal(results["stage1"], expected["stage1"]["logits"])


def test_lora_checkpoint_is_adapters_and_projector_and_reloads_in_a_fresh_process(fresh):
    expected, results, _ = fresh
    kept = set(expected["lora"]["checkpoint"]["state_dict"])
    assert kept == trainable(expected["lora"]["model"])
    assert all(".lora_" in k or k.startswith(LORA_PROJECTOR) for k in kept) and any(".lora_" in k for k in kept)
    assert torch.equal(results["lora"], expected["lora"]["logits"])


def test_a_changed_base_is_refused(tmp_path):
    vision = tiny_vision_folder(tmp_path / "clip", seed=11)
    model = perturb(tiny_llava(vision, stage="pretrain"), seed=6)
    save(model, tmp_path / "stage1.ckpt")
    tiny_vision_folder(tmp_path / "clip", seed=12)  # other weights at the same path
    with pytest.raises(RuntimeError, match="frozen base"):
        zoo.LLaVA.load_from_checkpoint(tmp_path / "stage1.ckpt", map_location="cpu")


@pytest.mark.parametrize("name", ["full", "merged", "adapter"])
def test_export_generates_the_zoo_tokens_in_transformers(fresh, name):
    expected, results, paths = fresh
    model, result = expected[name]["model"], results[name]
    assert result["input_ids"] == model.prompt_ids(["What shape is it?"], [True])[0]
    ours = model.images(paths["image"], return_tensors="pt")["pixel_values"]
    assert torch.equal(result["pixel_values"], ours)  # the PIL backend: LLaVA's own preprocessing
    # transformers' default (torchvision) backend resizes slightly differently
    assert (result["default_pixel_values"] - ours).abs().max() < 0.02
    tokens = result["tokens"]
    eos = model.tokenizer.eos_token_id
    tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
    assert tokens == expected[name]["tokens"]
    assert len(set(tokens)) > 2  # not a degenerate answer


def test_an_export_loads_back_into_the_zoo(fresh):
    expected, _, paths = fresh
    model = zoo.LLaVA(model_name_or_path=str(paths["folder"] / "full"))
    assert model.image_spec == expected["full"]["model"].image_spec
    tokens = model.generate(paths["image"], "What shape is it?", return_ids=True, max_new_tokens=8)[0]
    assert tokens == expected["full"]["tokens"]


def test_batched_generation_equals_one_prompt_at_a_time(fresh):
    expected, _, _ = fresh
    model = expected["full"]["model"]
    images = [picture(QA[0][2], 0), None, picture(QA[2][2], 2)]
    questions = [q.replace("<image>\n", "") for q, _, _ in QA]
    batched = model.generate(images, questions, return_ids=True, max_new_tokens=6)
    alone = [model.generate(image, q, return_ids=True, max_new_tokens=6)[0] for image, q in zip(images, questions)]
    assert batched == alone
    assert all(len(row) > 0 for row in alone)


# ------------------------------------------------------------------------------------ image processing
def reference_pixels(image: Image.Image, size: int, pad: bool) -> torch.Tensor:
    """LLaVA-1.5 by hand: expand2square with the mean colour, CLIP's shortest-edge bicubic resize, centre
    crop, rescale and normalise."""
    if pad:
        width, height = image.size
        side = max(width, height)
        square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in OPENAI_CLIP_MEAN))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    image = image.resize((size, new_long) if width <= height else (new_long, size), Image.BICUBIC)
    top, left = (image.height - size) // 2, (image.width - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]) / torch.tensor(OPENAI_CLIP_STD)[:, None, None]


@pytest.mark.parametrize("size", [(90, 50), (37, 64)])
def test_image_processor_is_llava_preprocessing(size):
    from transformers.models.llava import LlavaImageProcessor

    image = picture(size, 3)
    spec = ImageSpec(image_size=IMAGE_SIZE)
    padded = image_processor(spec, pad=True)(image, return_tensors="pt")["pixel_values"][0]
    assert (int(255 * OPENAI_CLIP_MEAN[0]), int(255 * OPENAI_CLIP_MEAN[1])) == (122, 116)
    torch.testing.assert_close(padded, reference_pixels(image, IMAGE_SIZE, pad=True), rtol=0, atol=1e-6)
    torchvision = LlavaImageProcessor(
        do_pad=True, size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE, image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD, resample=3,
    )(image, return_tensors="pt")["pixel_values"][0]  # fmt: skip
    # transformers' default backend: close, not equal (one uint8 step after its resize: 1 / 255 / std ≈ 0.015)
    assert 0 < (torchvision - padded).abs().max() < 0.02
    cropped = image_processor(spec, pad=False)(image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(cropped, reference_pixels(image, IMAGE_SIZE, pad=False), rtol=0, atol=1e-6)
    assert not torch.allclose(cropped, padded, atol=0.1)
