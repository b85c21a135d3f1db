"""Two gloo processes x B samples must equal one process x 2B samples: loss and gradients."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import free_port
from zoo.losses import contrastive_loss, negclip_loss, unicl_loss
from zoo.losses.fsc import fsc_hard_negative_losses

B, K, D_IN, D = 4, 2, 12, 8


def _problem():
    torch.manual_seed(0)  # identical data and towers in every process
    data = {
        "images": torch.randn(2 * B, D_IN),
        "texts": torch.randn(2 * B, D_IN),
        "negatives": torch.randn(2 * B, K, D_IN),
        "mask": torch.rand(2 * B, K) > 0.3,
        "ids": torch.tensor([0, 1, 2, 3, 0, 5, 6, 3]),  # images 0 and 3 appear on both ranks
    }
    # rank 0 keeps a single row with negatives: a mean of per-rank means would differ from the global mean
    data["fsc_mask"] = data["mask"].clone()
    data["fsc_mask"][:3] = False
    data["fsc_mask"][3] = True
    # UniCL: caption 5 (rank 1) repeats caption 0 (rank 0): positives across ranks
    data["repeated_texts"] = data["texts"].clone()
    data["repeated_texts"][5] = data["texts"][0]
    image_tower, text_tower = torch.nn.Linear(D_IN, D), torch.nn.Linear(D_IN, D)
    logit_scale = torch.nn.Parameter(torch.tensor([2.0]))
    return data, [image_tower, text_tower, logit_scale]


def _loss_and_grads(loss_name, data, params):
    image_tower, text_tower, logit_scale = params
    images = F.normalize(image_tower(data["images"]), dim=-1)
    texts = F.normalize(text_tower(data["texts"]), dim=-1)
    if loss_name == "clip":
        loss = contrastive_loss(images, texts, logit_scale.exp())["contrastive_loss"]
    elif loss_name == "negclip":
        negatives = F.normalize(text_tower(data["negatives"]), dim=-1)
        loss = negclip_loss(images, texts, negatives, data["mask"], logit_scale.exp(), data["ids"])["negclip_loss"]
    elif loss_name == "unicl":
        texts = F.normalize(text_tower(data["repeated_texts"]), dim=-1)
        loss = unicl_loss(images, texts, logit_scale.exp(), threshold=0.9)["unicl_loss"]
    else:  # FSC-CLIP: CLIP over the originals + the calibrated hard-negative loss, exact global mean
        negatives = F.normalize(text_tower(data["negatives"]), dim=-1)
        hn = fsc_hard_negative_losses(images, texts, negatives, data["fsc_mask"], logit_scale.exp())
        hn = hn["global_hn_loss"]
        loss = contrastive_loss(images, texts, logit_scale.exp())["contrastive_loss"] + 0.5 * hn
    loss.backward()
    grads = [p.grad for m in params[:2] for p in m.parameters()] + [logit_scale.grad]
    return loss.detach(), grads


def _worker(rank, loss_name, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    data, params = _problem()
    local = {k: v[rank * B : (rank + 1) * B] for k, v in data.items()}
    loss, grads = _loss_and_grads(loss_name, local, params)
    for grad in grads:  # what DDP does with the gradients
        dist.all_reduce(grad)
        grad /= 2
    torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()



@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["clip", "negclip", "fsc", "unicl"])
def test_two_processes_equal_one(loss_name, tmp_path):
    mp.spawn(_worker, args=(loss_name, free_port(), str(tmp_path)), nprocs=2, join=True)
    data, params = _problem()
    loss, grads = _loss_and_grads(loss_name, data, params)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["loss"], loss, atol=1e-6)
        for got, expected in zip(result["grads"], grads):
            assert torch.allclose(got, expected, atol=1e-6)
