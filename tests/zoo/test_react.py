import math

import pytest
import torch

import zoo
from tests.conftest import tiny_model
from zoo.losses import contrastive_loss, unicl_loss
from zoo.react import GatedAttentionBlock, react_state_dict


def test_unicl_hand_computed_with_two_identical_captions():
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # captions 1 and 2 are the same
    e = math.e
    # logits = images @ texts.T (s = 1): rows [1, 1, 0], [.6, .6, .8], [0, 0, 1]; P(1) = P(2) = {1, 2}
    i2t = [math.log(2 * e + 1) - 1, math.log(2 * e**0.6 + e**0.8) - 0.6, math.log(2 + e) - 1]
    # columns: t1 = t2 = [1, .6, 0] with positives images {1, 2}; t3 = [0, .8, 1] with {3}
    t2i = [math.log(e + e**0.6 + 1) - 0.8] * 2 + [math.log(1 + e**0.8 + e) - 1]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    got = unicl_loss(images, texts, torch.tensor([1.0]), threshold=0.9)["unicl_loss"]
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # at γ = 1 identical captions are still positives of each other; distinct ones never are
    assert unicl_loss(images, texts, torch.tensor([1.0]), threshold=1.0)["unicl_loss"].item() == pytest.approx(
        expected, rel=1e-6
    )


def test_unicl_with_unique_captions_at_threshold_one_is_the_clip_loss():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor([14.3])
    clip = contrastive_loss(images, texts, scale)["contrastive_loss"]
    assert torch.allclose(unicl_loss(images, texts, scale, threshold=1.0)["unicl_loss"], clip, rtol=0, atol=1e-6)
    # a lower γ that admits other captions changes the loss
    assert not torch.allclose(unicl_loss(images, texts, scale, threshold=-1.0)["unicl_loss"], clip)


def _react(tiny_cfg, **kwargs):
    torch.manual_seed(0)
    return tiny_model("REACT", tiny_cfg, gated_layers=2, **kwargs)


def _inputs(model):
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32), model.backbone.tokenize(["a red circle", "a blue square", "a star", "a cross"])


def test_zero_gates_leave_the_image_tower_bit_identical(tiny_cfg):
    torch.manual_seed(0)
    clip = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}).eval()
    react = _react(tiny_cfg).eval()
    images, _ = _inputs(react)
    assert torch.equal(react.encode_image(images), clip.encode_image(images))
    blocks = [m for m in react.modules() if isinstance(m, GatedAttentionBlock)]
    assert len(blocks) == 2  # gated_layers = 2 of the tower's 2 blocks


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_only_gated_blocks_and_logit_scale_train(tiny_cfg, grad_checkpointing):
    model = _react(tiny_cfg, grad_checkpointing=grad_checkpointing).train()
    images, tokens = _inputs(model)
    model.losses({"image": images, "text": tokens})["unicl_loss"].backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".gated_attn_block." in n} | {"backbone.model.logit_scale"}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    # at α = 0 the blocks' outputs are multiplied by tanh(0) = 0: only the gates (and s) feel the loss
    nonzero = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    gates = {n for n in trainable if n.endswith(("alpha_attn", "alpha_dense"))}
    assert len(gates) == 4 and nonzero == gates | {"backbone.model.logit_scale"}
    # once the gates open, the blocks' weights get gradients too (through the frozen prefix)
    model.zero_grad()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in gates:
                param.fill_(0.5)
    model.losses({"image": images, "text": tokens})["unicl_loss"].backward()
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".gated_attn_block.attn." in n)


@pytest.mark.parametrize(
    ("tuning", "image_trains", "text_trains"),
    [("locked_text", True, False), ("locked_image", False, True), ("full", True, True)],
)
def test_tuning_rows(tiny_cfg, tuning, image_trains, text_trains):
    model = _react(tiny_cfg, tuning=tuning).backbone.model
    assert not any(isinstance(m, GatedAttentionBlock) for m in model.modules())
    assert all(p.requires_grad == image_trains for p in model.visual.parameters())
    text = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    assert all(p.requires_grad == text_trains for p in text)
    assert model.logit_scale.requires_grad
    with pytest.raises(ValueError, match="lock_text"):
        _react(tiny_cfg, tuning=tuning, lock_text=text_trains)  # contradicts the row


def test_released_checkpoint_names_load(tiny_cfg, tmp_path):
    source = _react(tiny_cfg)
    released = {f"module.{k}": v.clone() for k, v in source.backbone.open_clip_state_dict().items()}
    gate = "visual.transformer.resblocks.1.gated_attn_block.alpha_attn"
    assert f"module.{gate}" in released
    assert "module.visual.transformer.resblocks.1.gated_attn_block.mlp.c_fc.weight" in released
    released[f"module.{gate}"] = torch.tensor(0.7)  # released gates are 0-d
    torch.save({"state_dict": released}, tmp_path / "react.pt")
    loaded = _react(tiny_cfg, react_checkpoint=str(tmp_path / "react.pt"))
    assert loaded.backbone.model.get_parameter(gate).item() == pytest.approx(0.7)
    assert react_state_dict(str(tmp_path / "react.pt"))["logit_scale"].shape == (1,)
    images, _ = _inputs(loaded)
    assert not torch.equal(loaded.eval().encode_image(images), source.eval().encode_image(images))


def test_timm_augmentation_for_training_images(tiny_cfg):
    from PIL import Image

    model = _react(tiny_cfg, train_augmentation={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 1.0})
    transforms = model.data_transforms()
    text = repr(transforms["train_transform"])
    assert "RandAugment" in text and "RandomErasing" in text
    assert "RandAugment" not in repr(transforms["eval_transform"])
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    assert transforms["train_transform"](image).shape == transforms["eval_transform"](image).shape == (3, 32, 32)
