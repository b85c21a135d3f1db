import json
import subprocess
import sys

import open_clip
import pytest
import torch
from lightning.pytorch import Trainer

import zoo
from tests.conftest import tiny_model
from zoo.base import warmup_cosine


def _inputs(tiny_clip):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    tokens = tiny_clip.backbone.tokenize(["a red circle", "a blue square above a green star", "nothing"])
    return images, tokens


def test_public_api_is_consistent(tiny_clip):
    images, _ = _inputs(tiny_clip)
    texts = ["a red circle", "two blue squares"]
    sims = tiny_clip.similarity(images, texts)
    assert sims.shape == (3, 2)
    assert torch.allclose(sims, tiny_clip.encode_image(images) @ tiny_clip.encode_text(texts).T)
    assert torch.allclose(tiny_clip.encode_image(images).norm(dim=-1), torch.ones(3))


def test_dense_features_match_pooled_and_projection(tiny_clip):
    images, tokens = _inputs(tiny_clip)
    dense = tiny_clip.backbone.encode_dense(images, tokens)
    model = tiny_clip.backbone.model
    assert dense["patch_features"].shape == (3, 16, 32)  # (32 / 8)^2 patches, CLS dropped
    assert dense["token_features"].shape == (3, 16, 32)
    assert torch.allclose(dense["image_features"], tiny_clip.encode_image(images), atol=1e-6)
    assert torch.allclose(dense["text_features"], tiny_clip.encode_text(tokens), atol=1e-6)
    # the pooled text embedding is the EOT position of the dense tokens, normalised
    eot = tokens.argmax(dim=-1)
    pooled = dense["token_features"][torch.arange(3), eot]
    assert torch.allclose(torch.nn.functional.normalize(pooled, dim=-1), dense["text_features"], atol=1e-5)
    # patch features are ln_post(last-layer patch tokens) @ proj
    x = model.visual._embeds(images)
    x = model.visual.transformer(x)
    expected = model.visual.ln_post(x)[:, 1:] @ model.visual.proj
    assert torch.allclose(dense["patch_features"], expected, atol=1e-5)


def test_logit_scale_is_one_dimensional_and_clamped(tiny_clip):
    assert tiny_clip.backbone.model.logit_scale.shape == (1,)
    with torch.no_grad():
        tiny_clip.backbone.model.logit_scale.fill_(10.0)
    tiny_clip.backbone.clamp_logit_scale_()
    assert tiny_clip.backbone.logit_scale.item() == pytest.approx(100.0)


@pytest.mark.parametrize("lock_image, lock_text", [(True, False), (False, True)])
def test_locked_towers_get_no_gradient(tiny_cfg, lock_image, lock_text):
    model = tiny_model("CLIP", tiny_cfg, lock_image=lock_image, lock_text=lock_text)
    images, tokens = _inputs(model)
    model.losses({"image": images, "text": tokens})["contrastive_loss"].backward()
    visual = [p.grad for p in model.backbone.model.visual.parameters()]
    text = [p.grad for p in model.backbone.model.transformer.parameters()]
    assert all(g is None for g in (visual if lock_image else text))
    assert any(g is not None and g.abs().sum() > 0 for g in (text if lock_image else visual))


def test_weight_decay_groups(tiny_clip):
    decay, no_decay = tiny_clip.parameter_groups()
    names = {id(p): n for n, p in tiny_clip.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "backbone.model.visual.transformer.resblocks.0.attn.in_proj_weight" in decayed
    assert "backbone.model.visual.proj" in decayed
    for name in (
        "backbone.model.logit_scale",
        "backbone.model.token_embedding.weight",
        "backbone.model.positional_embedding",
        "backbone.model.visual.class_embedding",
        "backbone.model.ln_final.weight",
        "backbone.model.visual.transformer.resblocks.0.attn.in_proj_bias",
    ):
        assert name in skipped
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 20, 0.0) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_bad_model_cfg_is_rejected():
    with pytest.raises(ValueError, match="embed_dim"):
        zoo.CLIP(backbone={"model_cfg": {"vision_cfg": {}}})


def test_checkpoint_round_trip_in_fresh_process(tiny_clip, tmp_path):
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(tiny_clip)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    images, _ = _inputs(tiny_clip)
    torch.save(images, tmp_path / "images.pt")
    expected_image = tiny_clip.encode_image(images)
    expected_text = tiny_clip.encode_text(["a small red circle"])
    script = (
        "import sys, torch, zoo\n"
        "model = zoo.CLIP.load_from_checkpoint(sys.argv[1], map_location='cpu').eval()\n"
        "images = torch.load(sys.argv[2])\n"
        "text = model.encode_text(['a small red circle'])\n"
        "torch.save({'image': model.encode_image(images), 'text': text}, sys.argv[3])\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "model.ckpt"),
            str(tmp_path / "images.pt"),
            str(tmp_path / "out.pt"),
        ],
        check=True,
        cwd=tmp_path,
    )
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out["image"], expected_image.detach())
    assert torch.equal(out["text"], expected_text.detach())


def test_saved_hparams_do_not_refetch_pretrained(tiny_clip, tmp_path):
    weights = tiny_clip.export_open_clip(tmp_path / "export")
    model = tiny_model("CLIP", tiny_clip.hparams.backbone["model_cfg"], pretrained=str(weights))
    checkpoint = {"hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"]["backbone"]["pretrained"] is None


def test_open_clip_export_round_trip(tiny_clip, tmp_path):
    with torch.no_grad():
        tiny_clip.backbone.model.logit_scale.fill_(3.0)
    images, tokens = _inputs(tiny_clip)
    weights = tiny_clip.export_open_clip(tmp_path / "export")
    assert torch.load(weights)["logit_scale"].shape == ()  # open_clip's own layout

    # 1) open_clip's local-dir schema
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
    # 2) a registered architecture name + pretrained=<file>, as for built-in models
    config = json.loads((tmp_path / "export" / "open_clip_config.json").read_text())
    (tmp_path / "vlzoo-export-test.json").write_text(json.dumps(config["model_cfg"]))
    open_clip.add_model_config(tmp_path / "vlzoo-export-test.json")
    by_name = open_clip.create_model("vlzoo-export-test", pretrained=str(weights)).eval()

    for model in (loaded, by_name):
        assert torch.equal(model.encode_image(images, normalize=True), tiny_clip.encode_image(images))
        assert torch.equal(model.encode_text(tokens, normalize=True), tiny_clip.encode_text(tokens))
        assert model.logit_scale.item() == pytest.approx(3.0)
    # and back into the zoo from the exported file
    again = tiny_model("CLIP", tiny_clip.hparams.backbone["model_cfg"], pretrained=str(weights))
    assert torch.equal(again.encode_image(images), tiny_clip.encode_image(images))


def test_gradient_checkpointing_keeps_loss_and_gradients(tiny_cfg):
    images = torch.randn(4, 3, 32, 32)
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg, "grad_checkpointing": checkpointing})
        tokens = model.backbone.tokenize(["a", "b c", "d e f", "g"])
        loss = model.losses({"image": images, "text": tokens})["contrastive_loss"]
        loss.backward()
        results.append((loss.detach(), model.backbone.model.visual.conv1.weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_cosine_schedule_refuses_a_run_without_length(tiny_clip):
    from types import SimpleNamespace

    tiny_clip._trainer = SimpleNamespace(estimated_stepping_batches=float("inf"))  # a streaming source
    with pytest.raises(ValueError, match="max_steps"):
        tiny_clip.configure_optimizers()
    tiny_clip._trainer = SimpleNamespace(estimated_stepping_batches=40)
    schedule = tiny_clip.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert schedule.lr_lambdas[0](20) == pytest.approx(0.5) and schedule.lr_lambdas[0](40) == pytest.approx(0.0)


def test_compiled_towers_keep_names_and_outputs(tiny_cfg):
    torch.manual_seed(0)
    eager = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}).eval()
    torch.manual_seed(0)
    compiled = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}, compile={"backend": "eager"}).eval()
    assert compiled.backbone.model.visual._compiled_call_impl is not None
    assert compiled.backbone.model.transformer._compiled_call_impl is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    images, tokens = _inputs(eager)
    assert torch.allclose(compiled.encode_image(images), eager.encode_image(images), atol=1e-6)
    assert torch.allclose(compiled.encode_text(tokens), eager.encode_text(tokens), atol=1e-6)
