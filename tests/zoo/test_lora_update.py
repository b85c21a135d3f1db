"""The LoRA update is exactly W + (α/r)·B·A, read through the module, in its output and in the export.

r = 4, α = 2: α/r = 0.5 differs from 1 (an unscaled update) and from α (scaling by α alone). A and B
are set to random values (B is zero at initialisation, which hides every scaling bug); the expected
weights are computed by hand from the weights of the same seeded model built without LoRA.
"""

import torch
from torch.nn.utils import parametrize

import zoo
from tests.conftest import tiny_model
from zoo.backbones.lora import merged_state_dict

RANK, ALPHA = 4, 2.0
SCALE = 0.5  # α / r, written out: the test must not read it back from the adapter


def _models(tiny_cfg):
    torch.manual_seed(0)
    base = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}).eval()
    torch.manual_seed(0)
    adapted = tiny_model("CLIP", tiny_cfg, lora_rank=RANK, lora_alpha=ALPHA).eval()
    generator = torch.Generator().manual_seed(3)
    expected = {}  # open_clip weight name -> W + (α/r)·B·A
    base_weights = base.backbone.model.state_dict()
    with torch.no_grad():
        for name, module in adapted.backbone.model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for weight, chain in module.parametrizations.items():
                (adapter,) = chain
                adapter.lora_A.copy_(torch.randn(adapter.lora_A.shape, generator=generator))
                adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator))
                key = f"{name}.{weight}"
                expected[key] = base_weights[key] + SCALE * adapter.lora_B @ adapter.lora_A
    return base, adapted, expected


def test_adapted_weight_is_w_plus_alpha_over_r_ba(tiny_cfg):
    _, adapted, expected = _models(tiny_cfg)
    model = adapted.backbone.model
    # both towers, attention (read directly by nn.MultiheadAttention) and MLP
    assert {"visual.transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.1.mlp.c_fc.weight"} <= set(
        expected
    )
    for key, value in expected.items():
        module, _, weight = key.rpartition(".")
        torch.testing.assert_close(getattr(model.get_submodule(module), weight), value, atol=1e-6, rtol=0, msg=key)


def test_module_outputs_use_the_adapted_weight(tiny_cfg):
    base, adapted, expected = _models(tiny_cfg)
    x = torch.randn(5, 2, 32, generator=torch.Generator().manual_seed(4))
    linear = adapted.backbone.model.transformer.resblocks[1].mlp.c_fc
    want = x @ expected["transformer.resblocks.1.mlp.c_fc.weight"].T + linear.bias
    torch.testing.assert_close(linear(x), want, atol=1e-5, rtol=0)
    # attention reads in_proj_weight / out_proj.weight itself: a plain copy with the expected weights agrees
    prefix = "visual.transformer.resblocks.0.attn"
    plain = base.backbone.model.get_submodule(prefix)
    with torch.no_grad():
        plain.in_proj_weight.copy_(expected[f"{prefix}.in_proj_weight"])
        plain.out_proj.weight.copy_(expected[f"{prefix}.out_proj.weight"])
    attention = adapted.backbone.model.get_submodule(prefix)
    torch.testing.assert_close(attention(x, x, x)[0], plain(x, x, x)[0], atol=1e-5, rtol=0)


def test_merged_export_weights_are_w_plus_alpha_over_r_ba(tiny_cfg):
    base, adapted, expected = _models(tiny_cfg)
    merged = merged_state_dict(adapted.backbone.model)
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, atol=1e-6, rtol=0, msg=key)
    # the plain model loaded with the merged weights computes what the adapted model computes
    base.backbone.model.load_state_dict(merged)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    tokens = base.backbone.tokenize(["a red circle", "two blue squares"])
    with torch.no_grad():
        torch.testing.assert_close(adapted.encode_image(images), base.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(adapted.encode_text(tokens), base.encode_text(tokens), atol=1e-5, rtol=0)
