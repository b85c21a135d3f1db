"""Two gloo processes x B samples must equal one process x 2B samples: loss and gradients."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from zoo.losses import contrastive_loss

B, D_IN, D = 4, 12, 8


def _problem():
    torch.manual_seed(0)  # identical data and towers in every process
    images, texts = torch.randn(2 * B, D_IN), torch.randn(2 * B, D_IN)
    image_tower, text_tower = torch.nn.Linear(D_IN, D), torch.nn.Linear(D_IN, D)
    logit_scale = torch.nn.Parameter(torch.tensor([2.0]))
    return images, texts, [image_tower, text_tower, logit_scale]


def _loss_and_grads(images, texts, params):
    image_tower, text_tower, logit_scale = params
    loss = contrastive_loss(
        F.normalize(image_tower(images), dim=-1), F.normalize(text_tower(texts), dim=-1), logit_scale.exp()
    )["contrastive_loss"]
    loss.backward()
    grads = [p.grad for m in params[:2] for p in m.parameters()] + [logit_scale.grad]
    return loss.detach(), grads


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    images, texts, params = _problem()
    rows = slice(rank * B, (rank + 1) * B)
    loss, grads = _loss_and_grads(images[rows], texts[rows], params)
    for grad in grads:  # what DDP does with the gradients
        dist.all_reduce(grad)
        grad /= 2
    torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    images, texts, params = _problem()
    loss, grads = _loss_and_grads(images, texts, params)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["loss"], loss, atol=1e-6)
        for got, expected in zip(result["grads"], grads):
            assert torch.allclose(got, expected, atol=1e-6)
