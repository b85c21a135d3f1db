import math

import pytest
import torch
import torch.nn.functional as F

from zoo.losses import contrastive_loss, negclip_loss

E = torch.eye(3)


def _lse(*values):
    return math.log(sum(math.exp(v) for v in values))


def test_hand_computed_two_images_two_negatives():
    images = torch.stack([E[0], E[1]])
    texts = torch.stack([E[0], E[1]])
    r = 1 / math.sqrt(2)
    negatives = torch.stack([torch.stack([(E[0] + E[2]) * r, E[2]]), torch.stack([E[2], E[0]])])
    mask = torch.tensor([[True, True], [True, False]])  # the second image's second negative is missing
    loss = negclip_loss(images, texts, negatives, mask, torch.tensor(2.0))["negclip_loss"]
    s = 2.0
    # image 1 sees texts [t1, t2, n11, n12, n21, (n22 masked)] = cosines [1, 0, r, 0, 0]
    i2t_1 = _lse(s, 0, s * r, 0, 0) - s
    # image 2: cosines [0, 1, 0, 0, 0]
    i2t_2 = _lse(0, s, 0, 0, 0) - s
    # text->image over originals only: [1, 0] and [0, 1]
    t2i = _lse(s, 0) - s
    expected = ((i2t_1 + i2t_2) / 2 + t2i) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_masked_negatives_contribute_nothing():
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    negatives = F.normalize(torch.randn(4, 3, 8), dim=-1).requires_grad_()
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True], [False, True, False]])
    loss = negclip_loss(images, texts, negatives, mask, torch.tensor(10.0))["negclip_loss"]
    loss.backward()
    assert torch.all(negatives.grad[~mask] == 0) and torch.all(negatives.grad[mask].abs().sum(-1) > 0)
    # the same as giving only the valid negatives (as K = 1 rows with the rest masked is awkward: compare values)
    moved = negatives.detach().clone()
    moved[~mask] = torch.randn(int((~mask).sum()), 8)
    again = negclip_loss(images, texts, moved, mask, torch.tensor(10.0))["negclip_loss"]
    assert torch.allclose(loss, again)
    # all negatives masked: exactly the CLIP loss
    none = negclip_loss(images, texts, negatives, torch.zeros_like(mask), torch.tensor(10.0))["negclip_loss"]
    assert torch.allclose(none, contrastive_loss(images, texts, torch.tensor(10.0))["contrastive_loss"])


def test_same_image_captions_are_not_negatives():
    # texts 0 and 1 are two captions of image A (rows 0 and 1 both show A)
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(2, 8), dim=-1)
    images = torch.stack([a, a, b])
    texts = F.normalize(torch.randn(3, 8), dim=-1)
    ids = torch.tensor([7, 7, 9])
    loss = contrastive_loss(images, texts, torch.tensor(5.0), image_ids=ids)["contrastive_loss"]
    logits = 5.0 * images @ texts.T
    # row 0 must not see text 1 as a negative, row 1 not text 0; columns likewise
    i2t = [
        _lse(logits[0, 0], logits[0, 2]) - logits[0, 0],
        _lse(logits[1, 1], logits[1, 2]) - logits[1, 1],
        _lse(*logits[2]) - logits[2, 2],
    ]
    t2i = [
        _lse(logits[0, 0], logits[2, 0]) - logits[0, 0],
        _lse(logits[1, 1], logits[2, 1]) - logits[1, 1],
        _lse(*logits[:, 2]) - logits[2, 2],
    ]
    expected = (sum(float(v) for v in i2t) / 3 + sum(float(v) for v in t2i) / 3) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # without ids the duplicate is a (false) negative and the loss is higher
    assert contrastive_loss(images, texts, torch.tensor(5.0))["contrastive_loss"].item() > loss.item()
