import math

import pytest
import torch
import torch.nn.functional as F

from zoo.losses.fsc import calibrated_hard_negative_loss, local_score


def test_focal_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, False]])  # K' = 2: the second negative is excluded from the softmax
    loss = calibrated_hard_negative_loss(logits, mask, gamma=2.0, beta=0.1)
    p0, p1 = math.exp(2) / (math.exp(2) + math.e), math.e / (math.exp(2) + math.e)
    y0, y1 = 0.9 + 0.05, 0.05
    expected = -(y0 * (1 - p0) ** 2 * math.log(p0) + y1 * (1 - p1) ** 2 * math.log(p1))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gamma_and_beta_zero_is_cross_entropy_and_rows_without_negatives_are_left_out():
    torch.manual_seed(0)
    logits = torch.randn(4, 4, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, True], [False, False, False], [True, True, True]])
    loss = calibrated_hard_negative_loss(logits, mask, gamma=0.0, beta=0.0)
    masked = logits.masked_fill(~torch.cat([torch.ones(4, 1, dtype=torch.bool), mask], 1), float("-inf"))
    rows = [0, 1, 3]
    expected = F.cross_entropy(masked[rows], torch.zeros(3, dtype=torch.long))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad[2] == 0)
    assert torch.all(logits.grad[1, 2] == 0)  # an excluded negative gets no gradient


def test_focal_gradient_flows_through_the_focal_factor():
    logits = torch.tensor([[1.0, 0.5]], requires_grad=True)
    calibrated_hard_negative_loss(logits, torch.tensor([[True]]), gamma=2.0, beta=0.0).backward()
    z = logits.detach().clone().requires_grad_()
    p = torch.softmax(z, -1)[0, 0]
    (-((1 - p) ** 2) * torch.log(p)).backward()  # focal factor differentiated, as in the paper
    assert torch.allclose(logits.grad, z.grad)


def _toy():
    # 2-d features, 3 patches; caption = SOT + 2 tokens (the second is EOT) + PAD
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    tokens = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
    mask = torch.tensor([[False, True, True, False]])
    return tokens, mask, patches


def test_local_score_by_hand():
    tokens, mask, patches = _toy()
    s = 2.0
    # token (1, 0): r = [1, 0, 1] -> min-max [1, 0, 1] -> weights [1/2, 0, 1/2] -> v̂ = norm(1, 0.5)
    v1 = torch.tensor([1.0, 0.5]) / math.sqrt(1.25)
    s1 = float(v1[0])  # cos with (1, 0)
    # token (0, 2): r = [0, 2, 2] -> [0, 1, 1] -> [0, 1/2, 1/2] -> v̂ = norm(0.5, 1)
    v2 = torch.tensor([0.5, 1.0]) / math.sqrt(1.25)
    s2 = float(v2[1])
    expected = math.log(math.exp(s * s1) + math.exp(s * s2))  # SOT and PAD excluded, EOT kept
    assert local_score(tokens, mask, patches, torch.tensor(s)).item() == pytest.approx(expected, abs=1e-6)


def test_local_score_guards_equal_relevance():
    tokens = torch.tensor([[[1.0, -1.0]]])
    patches = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])  # both dot products are 0: max = min
    score = local_score(tokens, torch.tensor([[True]]), patches, torch.tensor(1.0))
    # uniform weights: v̂ = norm(1.5, 1.5), cos with (1, -1) = 0
    assert torch.isfinite(score) and score.item() == pytest.approx(0.0, abs=1e-6)


def test_local_weights_are_under_stop_gradient():
    tokens, mask, patches = _toy()
    patches = patches.clone().requires_grad_()
    local_score(tokens, mask, patches, torch.tensor(2.0)).backward()
    detached = patches.grad.clone()

    # the same computation without the stop-gradient sends a different gradient to the patches
    p = patches.detach().clone().requires_grad_()
    r = torch.einsum("nld,npd->nlp", tokens, p)
    low, high = r.min(-1, keepdim=True).values, r.max(-1, keepdim=True).values
    w = (r - low) / (high - low)
    w = w / w.sum(-1, keepdim=True)
    v = F.normalize(torch.einsum("nlp,npd->nld", w, p), dim=-1)
    t = (F.normalize(tokens, dim=-1) * v).sum(-1)
    torch.logsumexp((2.0 * t).masked_fill(~mask, float("-inf")), -1).sum().backward()
    assert not torch.allclose(detached, p.grad)
