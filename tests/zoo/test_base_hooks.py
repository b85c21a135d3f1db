"""The generic machinery of ZooModule: no-decay rule by backbone, batch-size hook, gradient clipping and
leftover micro-batches under contrastive accumulation, accumulation state in checkpoints."""

import pytest
import torch
from torch import nn

import train
import zoo
from tests.conftest import tiny_model
from zoo.base import ZooModule, no_decay_by_module_type


class LlamaRMSNorm(nn.Module):  # a norm class outside torch.nn, named as transformers names it
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))


class TinyLM(ZooModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])
        self.norm = LlamaRMSNorm(4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.gate = nn.Parameter(torch.zeros(1))


def test_default_no_decay_rule_goes_by_module_type_not_by_name():
    model = TinyLM()
    exempt = model.no_weight_decay()
    assert exempt == no_decay_by_module_type(model)
    assert exempt == {
        "embed_tokens.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "norm.weight", "gate"
    }
    decay, no_decay = model.parameter_groups()
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4]), torch.Size([10, 4])]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 6


def test_clip_family_keeps_open_clips_rule(tiny_cfg):
    model = zoo.REACT(backbone={"model_name": "t", "model_cfg": tiny_cfg}, gated_layers=1)
    markers = ("bias", "ln", "norm", "bn", "embedding", "logit_scale", "logit_bias")
    expected = {n for n, p in model.named_parameters() if p.ndim < 2 or any(m in n for m in markers)}
    assert model.no_weight_decay() == expected
    assert "backbone.model.token_embedding.weight" in expected and "backbone.model.positional_embedding" in expected
    assert any("gated_attn_block.alpha_attn" in n for n in expected)
    assert not any(n.endswith("gated_attn_block.attn.in_proj_weight") for n in expected)


def test_batch_size_hook_names_the_keys_when_it_cannot_count():
    with pytest.raises(KeyError, match=r"override ZooModule.batch_size.*"):
        TinyLM().batch_size({"input_ids": torch.zeros(2, 3)})
    assert TinyLM().batch_size({"image": torch.zeros(5, 3, 2, 2)}) == 5


def _fit_accumulated(tmp_path, monkeypatch, *extra):
    monkeypatch.chdir(tmp_path)
    config = str(train.__file__).replace("train.py", "configs/clip.yaml")
    args = ["fit", "--config", config, "--model.init_args.contrastive_accumulation", "2"]
    args += ["--data.init_args.shapesworld.n_train", "80", "--data.init_args.batch_size", "16"]
    args += ["--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    args += ["--data.init_args.num_workers", "0", *extra]
    return train.main(args)


def test_accumulation_clips_gradients_and_drops_leftover_micro_batches_at_epoch_end(tmp_path, monkeypatch):
    norms = []

    def record(self, optimizer):  # runs inside optimizer.step(), after the module clipped
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())

    monkeypatch.setattr(zoo.CLIP, "on_before_optimizer_step", record)
    cli = _fit_accumulated(tmp_path, monkeypatch, "--trainer.max_epochs", "2", "--trainer.gradient_clip_val", "0.01")
    # 80 / 16 = 5 micro-batches per epoch: 2 steps of 2, the fifth dropped (never contrasted with epoch 2's first)
    assert cli.trainer.global_step == 4
    assert cli.model._dropped_micro_batches == 2 and cli.model._pending == []
    assert len(norms) == 4 and max(norms) <= 0.01 * (1 + 1e-4)
    checkpoint = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert checkpoint["accumulation"]["dropped_micro_batches"] == 2


def test_micro_batches_waiting_for_their_step_are_saved_and_restored(tiny_clip):
    batch = {"image": torch.randn(2, 3, 32, 32), "text": torch.ones(2, 16, dtype=torch.long), "caption": ["a", "b"]}
    model = tiny_model("CLIP", tiny_clip.hparams.backbone["model_cfg"], contrastive_accumulation=3)
    model._pending, model._dropped_micro_batches = [batch], 5
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    resumed = tiny_model("CLIP", tiny_clip.hparams.backbone["model_cfg"], contrastive_accumulation=3)
    resumed._trainer = object()  # resuming a fit, not only loading weights
    resumed.on_load_checkpoint(checkpoint)
    assert resumed._dropped_micro_batches == 5 and len(resumed._pending) == 1
    assert torch.equal(resumed._pending[0]["image"], batch["image"]) and resumed._pending[0]["caption"] == ["a", "b"]


def test_deepspeed_gets_the_clipping_in_its_own_config(tiny_cfg):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # DeepSpeed itself is not installed here
    strategy.config = {"zero_optimization": {"stage": 2}}
    trainer = SimpleNamespace(gradient_clip_val=0.5, gradient_clip_algorithm=None, strategy=strategy)
    model = tiny_model("CLIP", tiny_cfg, contrastive_accumulation=2)
    model._trainer = trainer
    assert model.configure_callbacks() == []
    assert strategy.config["gradient_clipping"] == 0.5  # DeepSpeed clips inside its step
    assert trainer.gradient_clip_val is None and model._gradient_clipping == (0.5, "norm")
