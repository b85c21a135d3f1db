"""Scoring protocols of the evaluation suite, on precomputed similarities.

Every protocol reads similarities through :class:`Similarities` (each unique image crop and each
unique text embedded once) and returns figures as fractions in [0, 1]. Ties count as failures
everywhere (a right answer must score strictly higher), except where a benchmark asks for its
reference implementation's tie rule (``options["tie_rule"] == "first_max"``: ARO's ``argmax``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from datamodules.benchmarks import Benchmark, Item


@dataclass
class Similarities:
    """Cosine similarities between embedded images and texts, looked up by image key / text."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    image_index: dict[str, int]
    text_index: dict[str, int]
    scores_texts: bool = True  # text–text similarities exist (SugarCrepe++'s TOT)
    image_to_text: bool = False  # MMVP as MMVP-VLM: a statement picks an image (see :func:`mmvp`)

    def image_text(self, item: Item, image: int) -> torch.Tensor:
        """s(item.images[image], t) for every text of the item."""
        v = self.image_features[self.image_index[item.images[image].key]]
        return self.text_features[[self.text_index[t] for t in item.texts]] @ v

    def text_text(self, a: str, b: str) -> float:
        return float(self.text_features[self.text_index[a]] @ self.text_features[self.text_index[b]])

    def positive(self, similarity: torch.Tensor) -> torch.Tensor:
        """Cosine similarity as a positive match strength for ratio criteria: (1 + s) / 2, in [0, 1]."""
        return (1 + similarity) / 2


def picks(scores: torch.Tensor, answer: int, tie_rule: str = "strict") -> bool:
    """Whether ``answer`` wins: strictly above every other score, or (``first_max``) the first maximum."""
    if tie_rule == "first_max":
        return int(scores.argmax()) == answer
    others = torch.cat([scores[:answer], scores[answer + 1 :]])
    return bool((scores[answer] > others).all())


def tied(scores: torch.Tensor, answer: int) -> bool:
    """Whether ``answer``'s score equals the best other score (a tie: never counted right)."""
    others = torch.cat([scores[:answer], scores[answer + 1 :]])
    return bool(scores[answer] == others.max())


def mean(values: list[bool] | list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def multiple_choice(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """Accuracy of image→text multiple choice; with ``macro_over_groups`` also the mean over groups
    holding at least ``macro_min_items`` items and not in ``macro_exclude_groups`` (ARO's macro accuracy)."""
    tie_rule = benchmark.options.get("tie_rule", "strict")
    scores = [(sims.image_text(item, 0), item.meta.get("answer", 0)) for item in benchmark.items]
    right = [picks(s, answer, tie_rule) for s, answer in scores]
    figures = {"accuracy": mean(right), "ties": sum(tied(s, answer) for s, answer in scores)}
    if benchmark.options.get("macro_over_groups"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for item, ok in zip(benchmark.items, right):
            groups[item.group].append(ok)
        excluded = set(benchmark.options.get("macro_exclude_groups", ()))  # ARO's symmetric relations
        kept = [
            mean(v)
            for g, v in groups.items()
            if len(v) >= benchmark.options.get("macro_min_items", 0) and g not in excluded
        ]
        figures["macro_accuracy"] = mean(kept)
        figures["macro_groups"] = len(kept)
    return figures


def relaxed_pair(p11: float, p12: float, p21: float, p22: float) -> bool:
    """The relaxed pair criterion of Li et al. ("On erroneous agreements of CLIP image embeddings"): image i1
    with caption c1, image i2 with c2, ``p_kj`` the positive match strength (higher: better) of image k and caption
    j. Right when i1 gives c1 a larger share than i2 does: p11 / (p11 + p12) > p21 / (p21 + p22), i.e.
    p11·p22 > p12·p21: the matching (i1, c1), (i2, c2) beats the swapped one. Chance is 50 %.

    The paper prints it with perplexities, ppl(i1,c1)/(ppl(i1,c1)+ppl(i1,c2)) > ppl(i2,c1)/(ppl(i2,c1)+ppl(i2,c2)),
    but a lower perplexity is a better match, so that form prefers the swapped matching; here p is the likelihood
    1 / ppl (``GenerativeScores.positive``), and for CLIP the cosine made positive, (1 + cos) / 2
    (``Similarities.positive``), which keeps the order of cosines and the meaning of the criterion. A zero
    denominator (generation's 0 / 1 scores with neither caption named) is never right."""
    if p11 + p12 <= 0 or p21 + p22 <= 0:
        return False
    return bool(p11 / (p11 + p12) > p21 / (p21 + p22))


def whatsup(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """What'sUp: individual accuracy (4-way), pair accuracy (both images of a pair right), set-of-4
    accuracy, the relaxed pair criterion (:func:`relaxed_pair`), the mean cosine similarity between the two
    images of each pair (when the scores come with image embeddings) and the ties (never counted right)."""
    scores = {item.id: sims.image_text(item, 0) for item in benchmark.items}
    right = {item.id: picks(scores[item.id], item.meta["answer"]) for item in benchmark.items}
    figures = {"individual_accuracy": mean(list(right.values()))}
    figures["ties"] = sum(tied(scores[item.id], item.meta["answer"]) for item in benchmark.items)
    for grouping in ("pair", "set"):
        groups: dict[str, list[Item]] = defaultdict(list)
        for item in benchmark.items:
            if grouping in item.meta:
                groups[item.meta[grouping]].append(item)
        if groups:
            figures[f"{grouping}_accuracy"] = mean([all(right[i.id] for i in members) for members in groups.values()])
        if grouping == "pair" and groups:
            relaxed, agreement = [], []
            for first, second in (members for members in groups.values() if len(members) == 2):
                c1, c2 = first.meta["caption_pair"]  # own caption, then the partner's, in each item's options
                d2, d1 = second.meta["caption_pair"]
                p1, p2 = sims.positive(scores[first.id]), sims.positive(scores[second.id])
                relaxed.append(relaxed_pair(float(p1[c1]), float(p1[c2]), float(p2[d1]), float(p2[d2])))
                if sims.image_features is not None:
                    a = sims.image_features[sims.image_index[first.images[0].key]]
                    b = sims.image_features[sims.image_index[second.images[0].key]]
                    agreement.append(float(a @ b))
            figures["relaxed_pair_accuracy"] = mean(relaxed)
            if agreement:
                figures["pair_image_cosine"] = mean(agreement)
    return figures


def winoground(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """Winoground (Thrush et al., 2022): text score s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1);
    image score s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0); group score both."""
    text, image, group = [], [], []
    for item in benchmark.items:
        s0, s1 = sims.image_text(item, 0), sims.image_text(item, 1)  # s_k[j] = s(c_j, i_k)
        t = bool(s0[0] > s0[1] and s1[1] > s1[0])
        i = bool(s0[0] > s1[0] and s1[1] > s0[1])
        text.append(t), image.append(i), group.append(t and i)
    return {"text_score": mean(text), "image_score": mean(image), "group_score": mean(group)}


def mmvp(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """MMVP pairs, ``question_accuracy`` over the questions and ``pair_accuracy`` over the pairs (both right),
    always both (published numbers confuse the two by a factor of two), and ``ties``.

    Embeddings (MMVP-VLM, Tong et al., 2024; text→image): statement t0 must pick image i0 (s(i0,t0) > s(i1,t0)) and
    t1 must pick i1 (s(i1,t1) > s(i0,t1)); the official script lets a tie on t1 count as picking i1
    (``options["tie_rule"] == "reference"``). A generative model (scores with ``image_to_text``; MMVP's own
    protocol for LVLMs): each image is a question over the pair's two statements, right when its own statement
    scores higher (s(i_k, t_k) > s(i_k, t_1-k)): a model that answers the same for both images gets half the
    questions and no pair."""
    reference = benchmark.options.get("tie_rule") == "reference"
    questions, pairs, ties = [], [], 0
    for item in benchmark.items:
        s0, s1 = sims.image_text(item, 0), sims.image_text(item, 1)  # s_k[j] = s(i_k, t_j)
        if sims.image_to_text:
            first, second = bool(s0[0] > s0[1]), bool(s1[1] > s1[0])
            ties += int(s0[0] == s0[1]) + int(s1[1] == s1[0])
        else:
            first = bool(s0[0] > s1[0])
            second = bool(s1[1] >= s0[1] if reference else s1[1] > s0[1])
            ties += int(s0[0] == s1[0]) + int(s1[1] == s0[1])
        questions += [first, second]
        pairs.append(first and second)
    return {"question_accuracy": mean(questions), "pair_accuracy": mean(pairs), "ties": ties}


def sugarcrepe_pp(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """SugarCrepe++ (Dumpala et al., 2024) with texts [p1, p2, n]: ITT (image-to-text) is right when
    s(i,p1) > s(i,n) and s(i,p2) > s(i,n); TOT (text-only) when s(p1,p2) > s(p1,n) and s(p2,p1) > s(p2,n)."""
    itt, tot = [], []
    for item in benchmark.items:
        s = sims.image_text(item, 0)
        itt.append(bool(s[0] > s[2] and s[1] > s[2]))
        if not sims.scores_texts:  # a generative scorer has no text-text similarity
            continue
        p1, p2, n = item.texts
        tot.append(sims.text_text(p1, p2) > sims.text_text(p1, n) and sims.text_text(p2, p1) > sims.text_text(p2, n))
    return {"itt_accuracy": mean(itt), **({"tot_accuracy": mean(tot)} if tot else {})}


def brittleness(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """Hard-positive brittleness, texts [positive, hard positive, negative]: the share of items where
    s(i, positive) > s(i, hard positive) > s(i, negative) fails."""
    failures = []
    for item in benchmark.items:
        s = sims.image_text(item, 0)
        failures.append(not bool(s[0] > s[1] > s[2]))
    return {"brittleness": mean(failures)}


PROTOCOLS: dict[str, Callable[[Benchmark, Similarities], dict[str, float]]] = {
    "multiple_choice": multiple_choice,
    "whatsup": whatsup,
    "winoground": winoground,
    "mmvp": mmvp,
    "sugarcrepe_pp": sugarcrepe_pp,
    "brittleness": brittleness,
}


def score(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """Figures of ``benchmark`` by its protocol, plus how many items they cover."""
    if benchmark.protocol not in PROTOCOLS:
        raise ValueError(f"{benchmark.name}: unknown protocol {benchmark.protocol!r}; known: {sorted(PROTOCOLS)}")
    figures = PROTOCOLS[benchmark.protocol](benchmark, sims)
    return {**figures, "items": len(benchmark.items), "skipped": benchmark.skipped}
