import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from zoo.losses import contrastive_loss


def test_hand_computed_two_pairs():
    # orthogonal unit features, s = 1: logits = I, every row is CE([1, 0], 0) = log(1 + e^-1)
    features = torch.eye(2)
    loss = contrastive_loss(features, features, torch.tensor(1.0))["contrastive_loss"]
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_asymmetric_hand_computed():
    # images [e1, e1], texts [e1, e2], s = 2: image logits [[2, 0], [2, 0]]
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    i2t = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2  # rows: CE([2,0],0), CE([2,0],1)
    t2i = (math.log(2) + math.log(2)) / 2  # columns [2, 2] and [0, 0]: both uniform
    loss = contrastive_loss(images, texts, torch.tensor(2.0))["contrastive_loss"]
    assert loss.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)


def test_seeded_value_pinned():
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    texts = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    loss = contrastive_loss(images, texts, torch.tensor([14.285714]))["contrastive_loss"]
    assert loss.item() == pytest.approx(4.22906, abs=1e-4)


def test_matches_open_clip_forward_and_backward():
    torch.manual_seed(1)
    base_i = F.normalize(torch.randn(16, 32), dim=-1)
    base_t = F.normalize(torch.randn(16, 32), dim=-1)
    ours = [base_i.clone().requires_grad_(), base_t.clone().requires_grad_(), torch.tensor(2.5, requires_grad=True)]
    ref = [base_i.clone().requires_grad_(), base_t.clone().requires_grad_(), torch.tensor(2.5, requires_grad=True)]

    loss = contrastive_loss(ours[0], ours[1], ours[2].exp())["contrastive_loss"]
    ref_loss = open_clip.loss.ClipLoss()(ref[0], ref[1], ref[2].exp())
    loss.backward()
    ref_loss.backward()

    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for mine, theirs in zip(ours, ref):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-6)
