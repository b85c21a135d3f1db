"""open_clip ViT → transformers CLIPVisionModel: same maths as open_clip, every load path round-trips."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context
from open_clip.transformer import VisionTransformer
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

import zoo
from zoo.backbones import OpenCLIPBackbone
from zoo.backbones.llava.clip_vision import ImageSpec, load_vision_tower, open_clip_to_hf_vision

TINY = "vlzoo-tiny-vit"  # the zoo's own config: 64 px, patch 8, width 128, 3 blocks


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(size: int = 64) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _randomise_vectors(visual: nn.Module) -> nn.Module:
    """Random layer-norm scales / shifts and biases (open_clip starts them at 1 / 0), so that a swapped
    norm or bias changes the output."""
    generator = torch.Generator().manual_seed(2)
    for name, param in visual.named_parameters():
        if param.ndim == 1 and name != "class_embedding":
            base = 1.0 if "ln" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.2 * torch.randn(param.shape, generator=generator))
    return visual


def _tiny_visual(**cfg_changes) -> nn.Module:
    """The image tower of the tiny open_clip model with ``cfg_changes`` (``quick_gelu``, vision_cfg keys)."""
    cfg = copy.deepcopy(open_clip.get_model_config(TINY))
    cfg["quick_gelu"] = cfg_changes.pop("quick_gelu", False)
    cfg["vision_cfg"].update(cfg_changes)
    torch.manual_seed(0)
    return _randomise_vectors(OpenCLIPBackbone(model_name=TINY, model_cfg=cfg).model.visual.eval())


@torch.no_grad()
def _open_clip_reference(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate-block patch tokens and the pooled feature before ``proj``, by open_clip's own modules."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # [B, grid², width]
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    assert visual.transformer.batch_first
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    headless = copy.deepcopy(visual)
    headless.proj = None  # open_clip's forward: embed, blocks, its pooling for this config, no projection
    return x[:, 1:], headless(images)


@torch.no_grad()
def _features(tower: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA's features (layer -2, CLS dropped) and the pooled output of a CLIPVisionModel."""
    out = tower(pixel_values=images, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:], out.pooler_output


def _assert_same_features(tower: nn.Module, source: nn.Module, atol: float = 1e-6) -> None:
    images = _images()
    for got, expected in zip(_features(tower, images), _features(source, images), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def _tiny_clip(method: str = "CLIP") -> zoo.CLIP:
    torch.manual_seed(0)
    model = getattr(zoo, method)(backbone={"model_name": TINY})
    _randomise_vectors(model.backbone.model.visual)
    return model.eval()


def _save_checkpoint(model: zoo.CLIP, path) -> None:
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


@pytest.mark.parametrize(
    "cfg_changes, hidden_act",
    [({}, "gelu"), ({"quick_gelu": True}, "quick_gelu"), ({"final_ln_after_pool": True}, "gelu")],
    ids=["gelu", "quick_gelu", "final_ln_after_pool"],
)
def test_converted_tower_computes_what_open_clip_does(cfg_changes, hidden_act):
    visual = _tiny_visual(**cfg_changes)
    tower = open_clip_to_hf_vision(visual)
    assert tower.config.hidden_act == hidden_act and tower.config.layer_norm_eps == 1e-5
    assert (tower.config.image_size, tower.config.patch_size, tower.config.num_hidden_layers) == (64, 8, 3)
    assert not tower.training and tower.dtype == torch.float32
    images = _images()
    patches, pooled = _features(tower, images)
    expected_patches, expected_pooled = _open_clip_reference(visual, images)
    assert patches.shape == (2, 64, 128)  # (64 / 8)² patches, CLS dropped
    torch.testing.assert_close(patches, expected_patches, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=1e-5)


def test_converted_weights_are_copies():
    visual = _tiny_visual()
    tower = open_clip_to_hf_vision(visual)
    source = {p.untyped_storage().data_ptr() for p in visual.parameters()}
    assert not source & {p.untyped_storage().data_ptr() for p in tower.parameters()}


def test_random_open_clip_tower_is_seeded_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    first, spec = load_vision_tower(f"open_clip:{TINY}")
    second, _ = load_vision_tower(f"open_clip:{TINY}")
    assert torch.equal(torch.get_rng_state(), state)
    assert spec == ImageSpec(image_size=64)  # open_clip's defaults: OpenAI mean / std, bicubic, shortest
    weights = second.state_dict()
    assert all(torch.equal(value, weights[key]) for key, value in first.state_dict().items())


def test_local_dir_export_round_trip(tmp_path):
    model = _tiny_clip()
    model.export_open_clip(tmp_path / "export")
    tower, spec = load_vision_tower(f"local-dir:{tmp_path / 'export'}")
    _assert_same_features(tower, open_clip_to_hf_vision(model.backbone.model.visual))
    assert spec.image_size == 64 and spec.interpolation == "bicubic"


@pytest.mark.parametrize("method, class_path", [("CLIP", None), ("NegCLIP", None), ("FSCCLIP", "zoo.fsc_clip.FSCCLIP")])
def test_lightning_checkpoint_round_trip(tmp_path, method, class_path):
    """A plain ``Trainer.save_checkpoint`` (the class found from the hyper-parameters) or a model built as
    LightningCLI builds it (its hyper-parameters name the class in ``_class_path``)."""
    if class_path is None:
        model = _tiny_clip(method)
    else:
        hparams = {"_class_path": class_path, "backbone": {"model_name": TINY}}
        with _given_hyperparameters_context(hparams=hparams, instantiator="lightning.pytorch.cli.instantiate_module"):
            model = _tiny_clip(method)
        assert model.hparams["_class_path"] == class_path
    _save_checkpoint(model, tmp_path / "model.ckpt")
    tower, spec = load_vision_tower(str(tmp_path / "model.ckpt"))
    _assert_same_features(tower, open_clip_to_hf_vision(model.backbone.model.visual))
    assert spec.image_size == 64


def test_transformers_folder_round_trip(tmp_path):
    source = open_clip_to_hf_vision(_tiny_visual(quick_gelu=True))
    source.save_pretrained(tmp_path / "vision")
    tower, spec = load_vision_tower(str(tmp_path / "vision"))
    _assert_same_features(tower, source)
    assert tower.config.hidden_act == "quick_gelu"
    assert spec == ImageSpec(image_size=64)  # no preprocessor_config.json: OpenAI CLIP's

    processor = CLIPImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=[0.5] * 3,
        image_std=[0.25] * 3, resample=2,
    )
    processor.save_pretrained(tmp_path / "vision")
    _, spec = load_vision_tower(str(tmp_path / "vision"))
    assert spec == ImageSpec(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", "shortest")


def test_full_clip_model_folder_gives_its_vision_tower(tmp_path):
    source = open_clip_to_hf_vision(_tiny_visual())
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    full = CLIPModel(CLIPConfig(vision_config=source.config.to_dict(), text_config=text))
    full.vision_model.load_state_dict(source.state_dict())
    full.save_pretrained(tmp_path / "clip")
    tower, _ = load_vision_tower(str(tmp_path / "clip"))
    _assert_same_features(tower, source)


@pytest.mark.parametrize(
    "settings, feature",
    [
        ({"ls_init_value": 0.1}, "layer scale"),
        ({"no_ln_pre": True}, "no ln_pre"),
        ({"attentional_pool": True}, "attentional pooling"),
        ({"pool_type": "avg"}, "pool_type 'avg'"),
        ({"patch_size": (8, 4)}, "non-square patch size"),
        ({"image_size": (32, 16)}, "non-square image size"),
        ({"qk_norm": True}, "qk-norm"),
        ({"scale_fc": True}, "CustomResidualAttentionBlock"),
        ({"act_layer": nn.SiLU}, "activation SiLU"),
        ({"norm_layer": nn.RMSNorm}, "ln_pre is not a LayerNorm"),
    ],
)
def test_unsupported_open_clip_features_are_refused_by_name(settings, feature):
    arguments = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "mlp_ratio": 2.0}
    visual = VisionTransformer(**{**arguments, **settings})
    with pytest.raises(ValueError, match=feature):
        open_clip_to_hf_vision(visual)


def test_unsupported_export_names_the_spec_and_the_feature(tmp_path):
    cfg = copy.deepcopy(open_clip.get_model_config(TINY))
    cfg["vision_cfg"]["ls_init_value"] = 0.1
    zoo.CLIP(backbone={"model_name": TINY, "model_cfg": cfg}).export_open_clip(tmp_path / "layer-scale")
    spec = f"local-dir:{tmp_path / 'layer-scale'}"
    with pytest.raises(ValueError, match="layer scale") as error:
        load_vision_tower(spec)
    assert spec in str(error.value)


def test_react_gated_blocks_are_refused(tmp_path):
    torch.manual_seed(0)
    react = zoo.REACT(backbone={"model_name": TINY}, gated_layers=1)
    with pytest.raises(ValueError, match="gated blocks"):
        open_clip_to_hf_vision(react.backbone.model.visual)
    _save_checkpoint(react, tmp_path / "react.ckpt")
    with pytest.raises(ValueError, match="gated blocks"):
        load_vision_tower(str(tmp_path / "react.ckpt"))


@pytest.mark.parametrize(
    "spec", ["local-dir:{tmp}/missing", "{tmp}/missing.ckpt", "{tmp}/missing-folder", "open_clip:no-such-model"]
)
def test_missing_sources_name_the_spec(tmp_path, spec):
    spec = spec.format(tmp=tmp_path)
    with pytest.raises((FileNotFoundError, ValueError)) as error:
        load_vision_tower(spec)
    assert spec in str(error.value)
