"""Strategy configs stack on every method config; the FSDP preset wraps the blocks of both towers."""

from pathlib import Path

import pytest
import torch
import yaml

import train
from zoo.strategies import ZooFSDPStrategy

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted((ROOT / "configs").glob("*.yaml"))
STRATEGIES = sorted((ROOT / "configs" / "strategy").glob("*.yaml"))


def test_every_strategy_is_there():
    assert {p.stem for p in STRATEGIES} == {"ddp", "fsdp", "deepspeed_stage_2", "deepspeed_stage_3"}


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method", METHODS, ids=lambda p: p.stem)
def test_strategy_stacks_on_method(method, strategy, capsys):
    args = ["fit", "--config", str(method), "--config", str(strategy), "--trainer.devices", "8", "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    assert exit_info.value.code in (None, 0)
    config = yaml.safe_load(capsys.readouterr().out)
    expected = yaml.safe_load(strategy.read_text())["trainer"]["strategy"]
    got = config["trainer"]["strategy"]
    assert got == expected if isinstance(expected, str) else got["class_path"] == expected["class_path"]
    assert str(config["trainer"]["devices"]) == "8" and config["model"]["class_path"].startswith("zoo.")


def test_fsdp_wraps_the_blocks_the_method_names_or_the_ones_given(tiny_clip, monkeypatch):
    from lightning.pytorch.strategies import FSDPStrategy
    from open_clip.transformer import ResidualAttentionBlock

    monkeypatch.setattr(FSDPStrategy, "_setup_model", lambda self, model: model)  # no process group here
    strategy = ZooFSDPStrategy(activation_checkpointing=True)
    assert strategy.kwargs["use_orig_params"] is True
    strategy._setup_model(tiny_clip)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {ResidualAttentionBlock}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {ResidualAttentionBlock}
    plain = ZooFSDPStrategy()
    plain._setup_model(tiny_clip)
    assert not plain._activation_checkpointing_kwargs
    given = ZooFSDPStrategy(wrap_classes=["torch.nn.MultiheadAttention"])
    given._setup_model(tiny_clip)
    assert given.kwargs["auto_wrap_policy"]._module_classes == {torch.nn.MultiheadAttention}
    with pytest.raises(ValueError, match="torch.nn.NoSuchBlock"):
        ZooFSDPStrategy(wrap_classes=["torch.nn.NoSuchBlock"])


@pytest.mark.parametrize("lora", [None, {}])
def test_fsdp_shards_a_llava_by_decoder_and_vision_encoder_layers(lora, tmp_path_factory, monkeypatch):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from tests.zoo.llava_fixtures import tiny_llava

    monkeypatch.setattr(FSDPStrategy, "_setup_model", lambda self, model: model)  # no process group here
    model = tiny_llava(tmp_path_factory, lora=lora)
    strategy = ZooFSDPStrategy(activation_checkpointing=True)
    strategy._setup_model(model)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer, CLIPEncoderLayer}
    assert strategy.kwargs["use_orig_params"] is True  # frozen and trainable parameters in one unit
