"""A frozen causal LM as CLIP's text tower (zoo.backbones.llm_text): pooling, padding, freezing, a fit through the
config, and a trainable-only checkpoint reloaded in a fresh process. The LMs are tiny random ones saved as
transformers folders and loaded by path, as a user's (``configs/llm_pretrain.yaml`` writes one)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

import train
import zoo
from tests.conftest import TINY_MODEL_CFG, negative_caption_batch
from zoo.backbones.llava.build import TINY_LLAMA, load_language_model, load_tokenizer
from zoo.backbones.llm_text import PAD, LLMCaptionTokenizer, LLMTextTower, masked_mean

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter", "ignore:Found .* module")
ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red circle", "two green triangles left of a blue square", "a cross"]


def _save_lm(folder: Path, model) -> Path:
    model.save_pretrained(folder)
    load_tokenizer(TINY_LLAMA).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    return _save_lm(tmp_path_factory.mktemp("lm") / "tiny-llama", load_language_model(TINY_LLAMA))


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A GPT-2: learned absolute positions, which left padding shifts unless positions count real tokens only
    (Llama's rotary positions are relative: a shift cannot show)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=585, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=2)
    return _save_lm(tmp_path_factory.mktemp("lm") / "tiny-gpt2", GPT2LMHeadModel(config))


def _clip(method: str, language_model: str, **backbone):
    torch.manual_seed(0)
    text_tower = {"language_model": language_model, "connector_hidden": 16}
    backbone = {"model_name": "t", "model_cfg": TINY_MODEL_CFG, "text_tower": text_tower, **backbone}
    return getattr(zoo, method)(backbone=backbone)


def test_masked_mean_is_the_mean_over_attended_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[-50.0, 7.0], [2.0, 0.0], [4.0, 2.0]]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert torch.equal(masked_mean(hidden, mask), torch.tensor([[2.0, 3.0], [3.0, 1.0]]))


def test_captions_are_bos_tokens_eos_cut_at_max_length_and_padded_with_minus_one(llama_folder):
    tokenizer = LLMCaptionTokenizer(load_tokenizer(str(llama_folder)), max_length=4)
    assert tokenizer.tokenizer("a red circle").input_ids == [1, 69, 399, 404]
    assert tokenizer(["a red circle", "a"]).tolist() == [[1, 69, 399, 2], [1, 69, 2, PAD]]


@pytest.mark.parametrize("lm", ["llama_folder", "gpt2_folder"])
def test_left_and_right_padding_embed_as_the_caption_alone(lm, request):
    tower = LLMTextTower(str(request.getfixturevalue(lm)), embed_dim=8)
    right = tower.tokenizer(CAPTIONS)
    mask = right != PAD
    left = torch.stack([torch.cat([row[~keep], row[keep]]) for row, keep in zip(right, mask)])
    assert (left[:, 0] == PAD).any() and (right[:, -1] == PAD).any()
    with torch.no_grad():
        alone = torch.cat([tower(tower.tokenizer([caption])) for caption in CAPTIONS])
        torch.testing.assert_close(tower(right), alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(tower(left), alone, atol=1e-5, rtol=0)


def test_a_fit_through_the_config_trains_the_connector_and_leaves_the_llm_frozen(llama_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs" / "clip_llm_text.yaml"), "--trainer.max_steps", "2"]
    args += ["--model.init_args.backbone.text_tower.language_model", str(llama_folder)]
    args += ["--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]", "--trainer.logger", "false"]
    args += ["--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0"]
    args += ["--data.init_args.shapesworld.n_train", "32", "--trainer.default_root_dir", str(tmp_path)]
    cli = train.main(args, run=False)
    tower = cli.model.backbone.text_tower
    before = {name: p.detach().clone() for name, p in tower.named_parameters()}
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 2 and cli.datamodule.tokenizer is tower.tokenizer
    assert not tower.decoder.training and tower.connector.training
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    for name, param in tower.decoder.named_parameters():
        assert not param.requires_grad and param.grad is None and id(param) not in optimised
        assert torch.equal(param, before[f"decoder.{name}"]), name
    for name, param in tower.connector.named_parameters():
        assert id(param) in optimised and not torch.equal(param, before[f"connector.{name}"]), name
    cli.model.train()
    assert not tower.decoder.training  # whatever train() asks: no dropout in the frozen LM


def test_negclip_encodes_hard_negatives_with_the_llm_tower(llama_folder):
    model = _clip("NegCLIP", str(llama_folder))
    negatives = [["a blue circle", None], [None, None], ["two red squares", "a green triangle above a square"]]
    batch = negative_caption_batch(model, CAPTIONS, negatives)
    features = model.features(batch)
    valid = ["a blue circle", "two red squares", "a green triangle above a square"]
    alone = torch.cat([model.encode_text(caption) for caption in valid])  # each unpadded
    torch.testing.assert_close(features["negatives"][batch["negative_mask"]], alone, atol=1e-5, rtol=0)
    assert torch.all(features["negatives"][~batch["negative_mask"]] == 0)
    model.loss_terms(features)["negclip_loss"].backward()
    assert model.backbone.text_tower.connector[0].weight.grad.abs().sum() > 0


def test_lock_text_freezes_the_connector_and_lora_adapts_the_image_tower_only(llama_folder):
    locked = _clip("CLIP", str(llama_folder), lock_text=True)
    assert not any(p.requires_grad for name, p in locked.named_parameters() if "text_tower" in name)
    lora = _clip("CLIP", str(llama_folder), lora_rank=2)
    adapted = [name for name, _ in lora.named_parameters() if "lora_" in name]
    assert adapted and all(name.startswith("backbone.model.visual.") for name in adapted)
    with pytest.raises(ValueError, match="lora_towers"):
        _clip("CLIP", str(llama_folder), lora_rank=2, lora_towers=["image", "text"])


def test_a_checkpoint_holds_the_connector_not_the_llm_and_reloads_in_a_fresh_process(
    llama_folder, tmp_path, monkeypatch
):
    monkeypatch.chdir(llama_folder.parent)
    model = _clip("CLIP", llama_folder.name)  # a relative folder: the checkpoint must name it absolutely
    with torch.no_grad():  # as if trained
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "llm_text.ckpt")
    checkpoint = torch.load(tmp_path / "llm_text.ckpt", weights_only=False)
    text_keys = {key for key in checkpoint["state_dict"] if "text_tower" in key}
    assert text_keys == {f"backbone.text_tower.connector.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    reference = checkpoint["frozen_base"]["reference"]["backbone.text_tower.language_model"]
    assert reference == str(llama_folder.resolve())
    assert model.backbone_config["text_tower"]["language_model"] == llama_folder.name  # the live config untouched
    script = (
        "import sys, torch, zoo\n"
        "model = zoo.CLIP.load_from_checkpoint(sys.argv[1], map_location='cpu').eval()\n"
        "with torch.no_grad():\n"
        "    torch.save(model.encode_text(sys.argv[3:]), sys.argv[2])\n"
    )
    args = [str(tmp_path / "llm_text.ckpt"), str(tmp_path / "out.pt"), *CAPTIONS]
    subprocess.run([sys.executable, "-c", script, *args], check=True, cwd=tmp_path, timeout=120)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), model.eval().encode_text(CAPTIONS))
