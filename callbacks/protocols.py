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

    def image_text(self, item: Item, image: int) -> torch.Tensor:
        """s(item.images[image], t) for every text of the item."""
        v = self.image_features[self.image_index[item.images[image].key]]
        return self.text_features[[self.text_index[t] for t in item.texts]] @ v

    def text_text(self, a: str, b: str) -> float:
        return float(self.text_features[self.text_index[a]] @ self.text_features[self.text_index[b]])


def picks(scores: torch.Tensor, answer: int, tie_rule: str = "strict") -> bool:
    """Whether ``answer`` wins: strictly above every other score, or (``first_max``) the first maximum."""
    if tie_rule == "first_max":
        return int(scores.argmax()) == answer
    others = torch.cat([scores[:answer], scores[answer + 1 :]])
    return bool((scores[answer] > others).all())


def _mean(values: list[bool] | list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def multiple_choice(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """Accuracy of image→text multiple choice; with ``macro_over_groups`` also the mean over groups
    holding at least ``macro_min_items`` items and not in ``macro_exclude_groups`` (ARO's macro accuracy)."""
    tie_rule = benchmark.options.get("tie_rule", "strict")
    right = [picks(sims.image_text(item, 0), item.meta.get("answer", 0), tie_rule) for item in benchmark.items]
    figures = {"accuracy": _mean(right)}
    if benchmark.options.get("macro_over_groups"):
        groups: dict[str, list[bool]] = defaultdict(list)
        for item, ok in zip(benchmark.items, right):
            groups[item.group].append(ok)
        excluded = set(benchmark.options.get("macro_exclude_groups", ()))  # ARO's symmetric relations
        kept = [
            _mean(v)
            for g, v in groups.items()
            if len(v) >= benchmark.options.get("macro_min_items", 0) and g not in excluded
        ]
        figures["macro_accuracy"] = _mean(kept)
        figures["macro_groups"] = len(kept)
    return figures


def positive(similarity: torch.Tensor) -> torch.Tensor:
    """Cosine similarity made positive for ratio criteria: (1 + s) / 2, in [0, 1]."""
    return (1 + similarity) / 2


def whatsup(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """What'sUp: individual accuracy (4-way), pair accuracy (both images of a pair right), set-of-4
    accuracy, the relaxed pair criterion of Li et al. ("On erroneous agreements of CLIP image
    embeddings") and the mean cosine similarity between the two images of each pair.

    Relaxed pair: with caption c1 of image i1 and c2 of i2, the pair is right when
    p(i1, c1) / (p(i1, c1) + p(i1, c2)) > p(i2, c1) / (p(i2, c1) + p(i2, c2)), p = :func:`positive`.
    """
    right = {item.id: picks(sims.image_text(item, 0), item.meta["answer"]) for item in benchmark.items}
    figures = {"individual_accuracy": _mean(list(right.values()))}
    for grouping in ("pair", "set"):
        groups: dict[str, list[Item]] = defaultdict(list)
        for item in benchmark.items:
            if grouping in item.meta:
                groups[item.meta[grouping]].append(item)
        if groups:
            figures[f"{grouping}_accuracy"] = _mean([all(right[i.id] for i in members) for members in groups.values()])
        if grouping == "pair" and groups:
            relaxed, agreement = [], []
            for first, second in (members for members in groups.values() if len(members) == 2):
                c1, c2 = first.meta["caption_pair"]
                p1, p2 = positive(sims.image_text(first, 0)), positive(sims.image_text(second, 0))
                d1, d2 = second.meta["caption_pair"]  # the partner's own caption first
                relaxed.append(bool(p1[c1] / (p1[c1] + p1[c2]) > p2[d2] / (p2[d2] + p2[d1])))
                a = sims.image_features[sims.image_index[first.images[0].key]]
                b = sims.image_features[sims.image_index[second.images[0].key]]
                agreement.append(float(a @ b))
            figures["relaxed_pair_accuracy"] = _mean(relaxed)
            figures["pair_image_cosine"] = _mean(agreement)
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
    return {"text_score": _mean(text), "image_score": _mean(image), "group_score": _mean(group)}


def mmvp(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """MMVP-VLM (Tong et al., 2024), text→image: statement t0 must pick image i0 (s(i0,t0) > s(i1,t0))
    and t1 must pick i1 (s(i1,t1) > s(i0,t1)) for the pair to count. The official script lets a tie
    on t1 count as picking i1; ``options["tie_rule"] == "reference"`` reproduces that."""
    reference = benchmark.options.get("tie_rule") == "reference"
    right = []
    for item in benchmark.items:
        s0, s1 = sims.image_text(item, 0), sims.image_text(item, 1)  # s_k[j] = s(i_k, t_j)
        second = s1[1] >= s0[1] if reference else s1[1] > s0[1]
        right.append(bool(s0[0] > s1[0] and second))
    return {"pair_accuracy": _mean(right)}


def sugarcrepe_pp(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """SugarCrepe++ (Dumpala et al., 2024) with texts [p1, p2, n]: ITT (image-to-text) is right when
    s(i,p1) > s(i,n) and s(i,p2) > s(i,n); TOT (text-only) when s(p1,p2) > s(p1,n) and s(p2,p1) > s(p2,n)."""
    itt, tot = [], []
    for item in benchmark.items:
        s = sims.image_text(item, 0)
        itt.append(bool(s[0] > s[2] and s[1] > s[2]))
        p1, p2, n = item.texts
        tot.append(sims.text_text(p1, p2) > sims.text_text(p1, n) and sims.text_text(p2, p1) > sims.text_text(p2, n))
    return {"itt_accuracy": _mean(itt), "tot_accuracy": _mean(tot)}


def brittleness(benchmark: Benchmark, sims: Similarities) -> dict[str, float]:
    """Hard-positive brittleness, texts [positive, hard positive, negative]: the share of items where
    s(i, positive) > s(i, hard positive) > s(i, negative) fails."""
    failures = []
    for item in benchmark.items:
        s = sims.image_text(item, 0)
        failures.append(not bool(s[0] > s[1] > s[2]))
    return {"brittleness": _mean(failures)}


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
