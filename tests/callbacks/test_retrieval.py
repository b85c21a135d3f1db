import math

import pytest
import torch

from callbacks import multiple_choice_accuracy, retrieval_chance, retrieval_recall
from callbacks.retrieval import pessimistic_rank


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


# ------------------------------------------------------------------- the tie rule (pessimistic rank)
def reference_rank(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """The pessimistic rank by sorting: scores descending, negatives before positives among equal
    scores; the rank is the position of the first positive (gallery + 1 when there is none)."""
    ranks = []
    for row, pos in zip(scores.tolist(), positive.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], pos[j]))
        ranks.append(next((r + 1 for r, j in enumerate(order) if pos[j]), len(row) + 1))
    return torch.tensor(ranks)


def test_pessimistic_rank_by_hand():
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.9, 0.1],  # positive 0 ties negative 2 at the top: rank 2
            [0.7, 0.7, 0.2, 0.1],  # positives 0 and 1 tie at the top: rank 1 (no negative at >= 0.7)
            [0.3, 0.3, 0.3, 0.3],  # all tied, one positive: rank 4
            [0.1, 0.2, 0.3, 0.4],  # no positive: gallery + 1
            [0.5, float("nan"), 0.4, 0.1],  # a NaN negative counts against the query: rank 2
        ]
    )
    positive = torch.tensor(
        [
            [True, False, False, False],
            [True, True, False, False],
            [False, False, True, False],
            [False, False, False, False],
            [True, False, False, False],
        ]
    )
    assert pessimistic_rank(scores, positive).tolist() == [2, 1, 4, 5, 2]
    assert reference_rank(scores[:4], positive[:4]).tolist() == [2, 1, 4, 5]


def test_duplicate_captions_tie_is_a_failure_for_both_images():
    # captions 1 and 2 are the same sentence of images 0 and 1: identical embeddings, exact ties
    images = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    texts = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    text_to_image = torch.tensor([0, 0, 1, 2])  # image 0: texts 0, 1; image 1: text 2; image 2: text 3
    metrics = retrieval_recall(images, texts, text_to_image, ks=(1, 2))
    # image 0: best positive text 1 (1.0) ties negative text 2 -> rank 2; image 1: text 0 (1.0) beats
    # its own text 2 (0.6), which ties text 1 -> rank 3; image 2: rank 1
    assert metrics["i2t_R@1"] == pytest.approx(1 / 3)
    assert metrics["i2t_R@2"] == pytest.approx(2 / 3)
    # text queries are rows over images: the duplicate captions tie no image with another
    # text 0: image 1 (1.0) above its image 0 (0.6); text 2: image 0 (1.0) above its image 1 (0.6)
    assert metrics["t2i_R@1"] == pytest.approx(2 / 4)
    assert metrics["t2i_R@2"] == pytest.approx(4 / 4)


def test_duplicate_images_tie_is_a_failure_for_both_captions():
    # images 0 and 1 are the same picture (identical embeddings), each with its own caption
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    text_to_image = torch.tensor([0, 1, 2])
    metrics = retrieval_recall(images, texts, text_to_image, ks=(1, 2))
    assert metrics["t2i_R@1"] == pytest.approx(1 / 3)  # texts 0 and 1 tie images 0 and 1: rank 2
    assert metrics["t2i_R@2"] == pytest.approx(3 / 3)
    # image queries: images 0 and 1 both rank text 0 (1.0) above text 1 (0.8): image 1 at rank 2
    assert metrics["i2t_R@1"] == pytest.approx(2 / 3)


def test_ties_between_positives_cost_nothing():
    # image 0's two captions are the same sentence and tie each other at the top
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    metrics = retrieval_recall(images, texts, torch.tensor([0, 0, 1]), ks=(1,))
    assert metrics == {"i2t_R@1": 1.0, "t2i_R@1": 1.0}


def tied_retrieval_set(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coarse integer embeddings (many exact ties), duplicate captions and a duplicate image."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 3, (12, 4), generator=generator).float()
    images[7] = images[2]
    text_to_image = torch.cat([torch.arange(12).repeat_interleave(3), torch.randint(0, 12, (5,), generator=generator)])
    texts = torch.randint(0, 3, (len(text_to_image), 4), generator=generator).float()
    texts[4] = texts[9]  # the same caption for images 1 and 3
    return images, texts, text_to_image


@pytest.mark.parametrize("seed", range(3))
def test_recall_never_depends_on_gallery_order(seed):
    images, texts, text_to_image = tied_retrieval_set(seed)
    ks = (1, 2, 3, 5, 10)
    expected = retrieval_recall(images, texts, text_to_image, ks)
    # equal to the rank by sorting (negatives first among ties) ...
    scores = texts @ images.T
    t2i = reference_rank(scores, text_to_image[:, None] == torch.arange(12))
    i2t = reference_rank(scores.T, torch.arange(12)[:, None] == text_to_image[None, :])
    for k in ks:
        assert expected[f"t2i_R@{k}"] == pytest.approx(float((t2i <= k).float().mean()))
        assert expected[f"i2t_R@{k}"] == pytest.approx(float((i2t <= k).float().mean()))
    # ... and unchanged by any order of images and captions, and by chunking
    generator = torch.Generator().manual_seed(100 + seed)
    for _ in range(5):
        image_order, text_order = (
            torch.randperm(12, generator=generator),
            torch.randperm(len(texts), generator=generator),
        )
        new_index = torch.empty_like(image_order)
        new_index[image_order] = torch.arange(12)
        permuted = retrieval_recall(images[image_order], texts[text_order], new_index[text_to_image[text_order]], ks, 5)
        assert permuted == pytest.approx(expected)


class BatchNoiseTextModel:
    """Texts by word (a, c: [0, 0, 1]; b: [1, 1, 0]) plus 1e-3 x the position in the batch on the first
    axis: the rounding by which a batched forward can make two copies of a caption differ."""

    words = {"a": [0.0, 0.0, 1.0], "b": [1.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}

    def encode_text(self, texts):
        out = torch.tensor([self.words[t] for t in texts])
        out[:, 0] += 1e-3 * torch.arange(len(texts))
        return out


def test_the_suite_embeds_a_repeated_caption_once_so_it_ties_exactly(monkeypatch):
    from callbacks.suite import scoring
    from datamodules.benchmarks import RetrievalSet

    images = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    monkeypatch.setattr(scoring, "embed_sharded_images", lambda *args, **kwargs: images)
    data = RetrievalSet("tiny", ["0.png", "1.png"], [["a", "b"], ["b", "c"]])  # "b" describes both images
    # embedded one by one, the two copies of "b" would sit at batch positions 1 and 0 and image 0's would win
    figures = scoring.evaluate_retrieval_set(BatchNoiseTextModel(), data, transform=None, batch_size=2)
    assert figures["i2t_R@1"] == 0.0  # each image's best caption ties the other image's copy: both fail
    assert figures["i2t_R@5"] == 1.0
