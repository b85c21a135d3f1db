import math

import pytest
import torch

from callbacks import multiple_choice_accuracy, retrieval_chance, retrieval_recall


def test_recall_on_hand_built_similarities():
    # similarity matrix designed directly: S[i, t] = image i . text t
    images = torch.eye(4)
    sims = torch.tensor(  # rows: texts, columns: images
        [
            [0.9, 0.1, 0.0, 0.0],  # text 0 -> image 0 rank 1
            [0.5, 0.8, 0.1, 0.0],  # text 1 -> image 0 rank 2
            [0.1, 0.2, 0.3, 0.4],  # text 2 -> image 1 rank 3
            [0.0, 0.1, 0.2, 0.7],  # text 3 -> image 3 rank 1
        ]
    )
    text_to_image = torch.tensor([0, 0, 1, 3])
    # image 2 has no caption here; give it one that ranks it 4th
    sims = torch.cat([sims, torch.tensor([[0.4, 0.3, 0.05, 0.2]])])
    text_to_image = torch.cat([text_to_image, torch.tensor([2])])
    metrics = retrieval_recall(images, sims, text_to_image, ks=(1, 2, 3), chunk_size=2)
    assert metrics["t2i_R@1"] == pytest.approx(2 / 5)
    assert metrics["t2i_R@2"] == pytest.approx(3 / 5)
    assert metrics["t2i_R@3"] == pytest.approx(4 / 5)
    # image queries (columns): image 0 -> texts by score: t0 .9, t1 .5, t4 .4 -> R@1 right
    # image 1 -> t1 .8, t4 .3, t2 .2 -> own text t2 at rank 3
    # image 2 -> t2 .3, t3 .2, t1 .1 -> own t4 (.05) rank 5
    # image 3 -> t3 .7, t2 .4, t4 .2 -> rank 1
    assert metrics["i2t_R@1"] == pytest.approx(2 / 4)
    assert metrics["i2t_R@2"] == pytest.approx(2 / 4)
    assert metrics["i2t_R@3"] == pytest.approx(3 / 4)


def test_chunking_does_not_change_results():
    torch.manual_seed(0)
    images, texts = torch.randn(37, 8), torch.randn(111, 8)
    text_to_image = torch.randint(0, 37, (111,))
    full = retrieval_recall(images, texts, text_to_image, chunk_size=10_000)
    assert retrieval_recall(images, texts, text_to_image, chunk_size=7) == full


def test_chance_level():
    chance = retrieval_chance([5] * 100, ks=(1, 5))
    assert chance["t2i_R@1"] == pytest.approx(1 / 100)
    assert chance["t2i_R@5"] == pytest.approx(5 / 100)
    assert chance["i2t_R@1"] == pytest.approx(5 / 500)
    miss = math.comb(495, 5) / math.comb(500, 5)
    assert chance["i2t_R@5"] == pytest.approx(1 - miss)


def test_multiple_choice_counts_ties_as_failures():
    positive = torch.tensor([0.9, 0.5, 0.3, 0.2])
    negative = torch.tensor([0.1, 0.5, 0.4, 0.1])
    accuracy = multiple_choice_accuracy(positive, negative, ["swap", "swap", "replace", "replace"])
    assert accuracy == {"replace": 0.5, "swap": 0.5, "mean": 0.5}
    accuracy = multiple_choice_accuracy(positive, negative, ["a", "b", "b", "b"])
    assert accuracy["a"] == 1.0 and accuracy["b"] == pytest.approx(1 / 3)
    assert accuracy["mean"] == pytest.approx((1 + 1 / 3) / 2)
