"""The suite's scorer interface for generative models: a LLaVA-family model scores the same benchmarks, through the
same loaders, protocols and JSON, as a CLIP-family model does by cosine.

A scorer turns (image, item texts) into one score per text, higher meaning a better match:

* ``cosine`` — CLIP-family embeddings (:class:`callbacks.protocols.Similarities`);
* ``vqascore`` — :meth:`zoo.LLaVA.vqa_score` of each (image, text);
* ``mc_letters`` / ``mc_full`` — :meth:`zoo.LLaVA.choice_scores` with the item's texts as the options of
  ``question`` (letters: the paper's MC setting; full options: the relaxed setting);
* ``generation`` — the greedy answer to the same prompt matched to an option (:func:`zoo.llava_scoring.match_option`):
  1 for the option it names, 0 elsewhere; an unmatched answer scores 0 everywhere (a tie: never right) and is
  counted in ``unmatched``.

Scores are computed per benchmark for each distinct (image, texts) once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.protocols import mean, picks, score
from datamodules.benchmarks import Benchmark, ImageFiles, Item, RetrievalSet

Scorer = Literal["cosine", "vqascore", "mc_letters", "mc_full", "generation"]
SCORERS: tuple[str, ...] = ("cosine", "vqascore", "mc_letters", "mc_full", "generation")
DEFAULT_QUESTION = "Which caption describes the image?"


@dataclass
class GenerativeScores:
    """Scores of a generative model, read by the protocols as :class:`~callbacks.protocols.Similarities` are:
    ``image_text(item, k)`` gives one score per text of ``item`` for its image ``k``.

    Attributes:
        scores: (image key, texts) → scores [len(texts)].
        scorer: what made them (see the module docstring).
        unmatched: generated answers that named no option (``generation``).
        image_features / image_index: optional unit image embeddings (e.g. the CLIP image space of the model's
            tower) for the pair protocols' image–image cosine.
    """

    scores: dict[tuple[str, tuple[str, ...]], torch.Tensor]
    scorer: str
    unmatched: int = 0
    image_features: torch.Tensor | None = None
    image_index: dict[str, int] = field(default_factory=dict)
    scores_texts: bool = False  # no text–text similarity (SugarCrepe++'s TOT is left out)
    image_to_text: bool = True  # MMVP as each image's question over the pair's statements (callbacks.protocols.mmvp)

    def image_text(self, item: Item, image: int) -> torch.Tensor:
        return self.scores[(item.images[image].key, tuple(item.texts))]

    def positive(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores as positive match strengths for ratio criteria: likelihood scores (−mean NLL) as exp(score),
        the length-normalised likelihood 1 / perplexity; VQAScore and generation's 0 / 1 as they are."""
        return scores.exp() if self.scorer.startswith("mc_") else scores


def _images(refs: list) -> dict[str, Any]:
    """PIL images (crops) of ``refs`` by key, each read once."""
    files = ImageFiles(refs, lambda image: image.convert("RGB"))
    return {ref.key: files[i] for i, ref in enumerate(refs)}


@torch.no_grad()
def generative_scores(
    model: LightningModule,
    benchmark: Benchmark,
    scorer: Scorer,
    batch_size: int = 16,
    question: str | None = None,
    generation_kwargs: dict[str, Any] | None = None,
) -> GenerativeScores:
    """:class:`GenerativeScores` of ``benchmark`` under ``scorer``; ``question`` (default: the benchmark's
    ``options["question"]``, else :data:`DEFAULT_QUESTION`) asks for the item's texts as options."""
    if scorer not in SCORERS or scorer == "cosine":
        raise ValueError(f"scorer {scorer!r}: a generative model scores by one of {SCORERS[1:]}")
    question = question or benchmark.options.get("question", DEFAULT_QUESTION)
    keys = list(dict.fromkeys((ref.key, tuple(item.texts)) for item in benchmark.items for ref in item.images))
    refs = {ref.key: ref for item in benchmark.items for ref in item.images}
    pictures = _images(list(refs.values()))
    images = [pictures[key] for key, _ in keys]
    out = GenerativeScores({}, scorer)
    if scorer == "vqascore":
        pairs = list(dict.fromkeys((key, text) for key, texts in keys for text in texts))
        values = model.vqa_score([pictures[k] for k, _ in pairs], [t for _, t in pairs], batch_size)
        found = dict(zip(pairs, values))
        out.scores = {(k, texts): torch.stack([found[(k, t)] for t in texts]) for k, texts in keys}
    elif scorer in ("mc_letters", "mc_full"):
        form = "letters" if scorer == "mc_letters" else "full"
        values = model.choice_scores(images, [question] * len(keys), [list(t) for _, t in keys], form, batch_size)
        out.scores = dict(zip(keys, values))
    else:
        choices, _ = model.choose_by_generation(
            images, [question] * len(keys), [list(t) for _, t in keys], **(generation_kwargs or {})
        )
        for key, choice in zip(keys, choices):
            one_hot = torch.zeros(len(key[1]))
            if choice is None:
                out.unmatched += 1
            else:
                one_hot[choice] = 1.0
            out.scores[key] = one_hot
    return out


def both_images_pairs(
    model: LightningModule, benchmark: Benchmark, scorer: Scorer = "mc_letters", batch_size: int = 16
) -> dict[str, float]:
    """What'sUp-style pairs with both images in one prompt (LLaVA sees the pair at once): for each image k of a
    pair, ``"Image 1: <image>\\nImage 2: <image>\\n"`` + "Which caption describes image k?" over the item's texts,
    scored by ``scorer`` (``mc_letters`` / ``mc_full``; ties never right). Figures: individual and pair accuracy."""
    if scorer not in ("mc_letters", "mc_full"):
        raise ValueError(f"both-images pairs are scored by mc_letters or mc_full, not {scorer!r}")
    pairs: dict[str, list[Item]] = defaultdict(list)
    for item in benchmark.items:
        if "pair" in item.meta:
            pairs[item.meta["pair"]].append(item)
    pairs = {k: v for k, v in pairs.items() if len(v) == 2}
    refs = {item.images[0].key: item.images[0] for members in pairs.values() for item in members}
    pictures = _images(list(refs.values()))
    images, questions, options, answers = [], [], [], []
    for first, second in pairs.values():
        both = [pictures[first.images[0].key], pictures[second.images[0].key]]
        for k, item in enumerate((first, second), start=1):
            images.append(both)
            questions.append(f"Image 1: <image>\nImage 2: <image>\nWhich caption describes image {k}?")
            options.append(item.texts)
            answers.append(item.meta.get("answer", 0))
    form = "letters" if scorer == "mc_letters" else "full"
    scores = model.choice_scores(images, questions, options, form, batch_size)
    right = [picks(s, a) for s, a in zip(scores, answers)]
    pair_right = [right[i] and right[i + 1] for i in range(0, len(right), 2)]
    return {"both_images_individual_accuracy": mean(right), "both_images_pair_accuracy": mean(pair_right)}


def evaluate_generative(
    model: LightningModule,
    benchmarks: list,
    scorer: Scorer,
    batch_size: int = 16,
    generation_kwargs: dict[str, Any] | None = None,
    both_images: bool = False,
    image_space: tuple[torch.Tensor, dict[str, int]] | None = None,
    reranker: LightningModule | None = None,
) -> dict[str, dict]:
    """Figures of every item benchmark under a generative ``scorer``; retrieval sets by reranking when a CLIP-family
    ``reranker`` is given and the scorer is ``vqascore`` (:mod:`callbacks.suite.rerank`); otherwise retrieval sets
    and zero-shot classification need embeddings and are left out, with a warning naming them. ``both_images``:
    What'sUp-style pair benchmarks also get :func:`both_images_pairs` (``mc_letters`` / ``mc_full`` only; another
    scorer, or a ``reranker`` without ``vqascore``, is refused).
    ``image_space``: unit image embeddings and their index by image key (e.g. of the CLIP whose image encoder the
    model uses), for the pair protocols' image–image cosine."""
    if reranker is not None and scorer != "vqascore":
        raise ValueError(f"reranking retrieval uses VQAScore: give scorer 'vqascore', not {scorer!r}")
    if both_images and scorer not in ("mc_letters", "mc_full"):
        raise ValueError(f"both-images pairs are scored by mc_letters or mc_full, not {scorer!r}")
    rerank = reranker is not None
    results: dict[str, dict] = {}
    if rerank:
        from callbacks.suite.rerank import vqascore_reranked_retrieval

        for data in (b for b in benchmarks if isinstance(b, RetrievalSet)):
            results[data.name] = vqascore_reranked_retrieval(model, reranker, data, batch_size=batch_size)
    left_out = [b.name for b in benchmarks if not isinstance(b, Benchmark) and b.name not in results]
    if left_out:
        rank_zero_warn(f"scorer {scorer!r} scores item benchmarks (and, reranking a CLIP, retrieval sets) only; "
                       f"left out: {left_out}")  # fmt: skip
    for benchmark in (b for b in benchmarks if isinstance(b, Benchmark)):
        scores = generative_scores(model, benchmark, scorer, batch_size, generation_kwargs=generation_kwargs)
        if image_space is not None:
            scores.image_features, scores.image_index = image_space
        results[benchmark.name] = score(benchmark, scores)
        if scorer == "generation":
            results[benchmark.name]["unmatched"] = scores.unmatched
        if both_images and benchmark.protocol == "whatsup" and any("pair" in i.meta for i in benchmark.items):
            results[benchmark.name].update(both_images_pairs(model, benchmark, scorer, batch_size))
    return results
