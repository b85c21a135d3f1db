import json

import open_clip
import pytest
import torch

import zoo
from tests.conftest import tiny_model
from zoo.backbones.openclip import lora_targets


def _model(tiny_cfg, **kwargs):
    torch.manual_seed(0)
    return tiny_model("FSCCLIP", tiny_cfg, lora_rank=4, lora_alpha=1.0, **kwargs)


def _inputs(model):
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32), model.backbone.tokenize(["a red circle", "two blue squares", "a green star"])


def _adapters(model):
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def test_adapters_leave_the_model_exactly_unchanged_at_step_0(tiny_cfg):
    torch.manual_seed(0)
    base = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}).eval()
    model = _model(tiny_cfg).eval()
    images, tokens = _inputs(model)
    assert torch.equal(model.encode_image(images), base.encode_image(images))
    assert torch.equal(model.encode_text(tokens), base.encode_text(tokens))


def test_adapters_are_placed_by_tower_path(tiny_cfg):
    text_only = _adapters(_model(tiny_cfg, lora_towers=["text"]))
    image_only = _adapters(_model(tiny_cfg, lora_towers=["image"]))
    assert text_only and not any(n.startswith("backbone.model.visual.") for n in text_only)
    assert image_only and all(n.startswith("backbone.model.visual.") for n in image_only)
    # attention (q/k/v in_proj + out_proj) and both MLP layers of each of the 2 blocks: 4 A/B pairs each
    assert len(image_only) == len(text_only) == 2 * 4 * 2
    with pytest.raises(ValueError, match="subset"):
        lora_targets(_model(tiny_cfg).backbone.model, ["vision"])


def test_parameter_table_counts_adapters_per_tower(tiny_cfg):
    table = _model(tiny_cfg).backbone.parameter_table()
    # width 32, MLP 128, r = 4 per block: in_proj 4·32 + 96·4, out_proj 4·32 + 32·4,
    # c_fc 4·32 + 128·4, c_proj 4·128 + 32·4 = 2,048; two blocks per tower
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in table.splitlines()[1:-1]}
    assert rows[("image", "LoRA")] == ["4,096", "4,096"]
    assert rows[("text", "LoRA")] == ["4,096", "4,096"]
    assert rows[("temperature", "CLIP")] == ["0", "1"]  # the logit scale is frozen
    assert all(trainable == "0" for (_, kind), (trainable, _) in rows.items() if kind != "LoRA")


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_only_adapters_train_and_every_adapter_moves(tiny_cfg, grad_checkpointing):
    model = _model(tiny_cfg, grad_checkpointing=grad_checkpointing, weight_decay=0.0, lr=1e-2)
    model.train()
    adapters = _adapters(model)
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-2)
    images, tokens = _inputs(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def step():
        optimizer.zero_grad()
        loss = model.losses({"image": images, "text": tokens, **_negatives(model)})
        sum(loss.values()).backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == set(adapters)
        optimizer.step()

    step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # B = 0 at step 0, so ∂L/∂A = s·Bᵀ·∂L/∂h·xᵀ is exactly zero: only the B matrices move first
    assert changed == {n for n in adapters if "lora_B" in n}
    step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(adapters)


def _negatives(model):
    tokens = model.backbone.tokenize(["a circle red", "squares two blue", "a star green"])
    return {"negatives": tokens[:, None], "negative_mask": torch.ones(3, 1, dtype=torch.bool)}


def test_merged_export_loads_in_plain_open_clip(tiny_cfg, tmp_path):
    model = _model(tiny_cfg)
    with torch.no_grad():  # trained-looking adapters: B = 0 would make the merge trivial
        for param in _adapters(model).values():
            param.normal_(std=0.2)
    model.eval()
    images, tokens = _inputs(model)
    weights = model.export_open_clip(tmp_path / "export")
    assert not any("lora_" in key or "base_layer" in key for key in torch.load(weights))
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
    report = json.loads((tmp_path / "export" / "lora_merge.json").read_text())["max_abs_embedding_diff"]
    for tower, ours, theirs in [
        ("image", model.encode_image(images), plain.encode_image(images, normalize=True)),
        ("text", model.encode_text(tokens), plain.encode_text(tokens, normalize=True)),
    ]:
        assert (ours - theirs).abs().max().item() <= max(report[tower], 1e-6) * 10
        assert report[tower] < 1e-5
    torch.manual_seed(0)
    base = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}).eval()
    assert (base.encode_image(images) - model.encode_image(images)).abs().max() > 1e-3  # adapters mattered


def test_checkpoint_round_trip_rebuilds_the_adapters(tiny_cfg):
    model = _model(tiny_cfg, lora_towers=["image"])
    with torch.no_grad():
        for param in _adapters(model).values():
            param.normal_(std=0.2)
    clone = zoo.FSCCLIP(**model.hparams)
    clone.load_state_dict(model.state_dict())  # strict: the same adapters exist after a rebuild
    images, tokens = _inputs(model)
    assert torch.equal(clone.eval().encode_image(images), model.eval().encode_image(images))


def test_plain_open_clip_weights_load_as_the_frozen_base(tiny_cfg):
    torch.manual_seed(5)
    plain = zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}).eval()
    model = _model(tiny_cfg).eval()  # other random base weights
    images, tokens = _inputs(model)
    model.backbone.load_open_clip_state_dict(plain.backbone.open_clip_state_dict())
    assert torch.equal(model.encode_image(images), plain.encode_image(images))
    assert torch.equal(model.encode_text(tokens), plain.encode_text(tokens))
    with pytest.raises(RuntimeError, match="do not fit"):
        model.backbone.load_open_clip_state_dict({"visual.no_such_weight": torch.zeros(1)})
