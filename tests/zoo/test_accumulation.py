"""Contrastive accumulation: k micro-batches of B/k give the loss and gradients of one batch of B."""

import pytest
import torch

import train
from tests.conftest import negative_caption_batch, tiny_model

CAPTIONS = ["a red circle", "a blue square", "a red circle", "two green stars", "a cross", "a yellow hexagon"]
NEGATIVES = [["a blue circle", "circle red a"], ["a red square", None], [None, None],
             ["two red stars", "stars green two"], ["a crosses", None], ["a purple hexagon", "hexagon a yellow"]]


def _batch(model):
    return negative_caption_batch(model, CAPTIONS, NEGATIVES, image_ids=[0, 1, 0, 3, 4, 5])  # image 0 twice


def _split(batch, k):
    size = len(batch["image"]) // k
    return [{key: value[i * size : (i + 1) * size] for key, value in batch.items()} for i in range(k)]


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("CLIP", {}),
        ("NegCLIP", {}),
        ("FSCCLIP", {}),
        ("FSCCLIP", {"lora_rank": 2}),
        ("REACT", {"gated_layers": 1, "unicl_threshold": 0.9}),
    ],
    ids=["clip", "negclip", "fsc_clip", "fsc_clip_lora", "react"],
)
@pytest.mark.parametrize("k", [2, 3])
def test_micro_batches_equal_one_batch(tiny_cfg, method, kwargs, k):
    torch.manual_seed(0)
    model = tiny_model(method, tiny_cfg, **kwargs)
    if method == "REACT":  # open the gates so the new blocks take part
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "alpha" in name:
                    param.fill_(0.3)
    batch = _batch(model)
    terms = model.losses(batch)
    torch.stack(list(terms.values())).sum().backward()
    expected = _grads(model)
    model.zero_grad()
    accumulated = model.accumulated_losses(_split(batch, k))
    got = _grads(model)
    assert accumulated.keys() == terms.keys()
    for name in terms:
        assert torch.allclose(accumulated[name], terms[name].detach(), atol=1e-6), name
    assert got.keys() == expected.keys()
    assert ("backbone.model.logit_scale" in got) == (not kwargs.get("lora_rank"))  # LoRA freezes the temperature
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-5, rtol=1e-4), name


def test_training_steps_once_per_k_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(train.__file__).replace("train.py", "configs/clip.yaml")
    args = ["fit", "--config", config, "--model.init_args.contrastive_accumulation", "2"]
    args += ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--data.init_args.batch_size", "16"]
    args += ["--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0"]
    cli = train.main(args)
    assert cli.trainer.global_step == 2
    assert cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4  # 2 micro-batches per step
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
