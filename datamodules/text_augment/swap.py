"""Span swaps: NegCLIP-style hard negatives and conjunct-swap hard positives."""

from __future__ import annotations

import random

from .analysis import Analysis, filter_spans
from .base import MAX_RETRIES, Generator, differs, swap_chars

_NOUN_POS = ("NOUN", "PROPN")

Chars = tuple[int, int]  # (start_char, end_char)


def negclip_sets(a: Analysis) -> tuple[tuple[Chars, ...], ...]:
    """Per span set, its spans as char ranges; sets without two spans of different texts dropped.

    Sets as FSC-CLIP's ``_generate_hard_negatives_like_negclip``: noun chunks longer than 2 tokens,
    verb phrases (VERB? ADV* AUX* VERB+), single NN, single NNS, single ADV, single ADJ tokens, each
    set passed through ``filter_spans``.
    """
    sets = (
        [(s, e) for s, e, _ in a.noun_chunks if e - s > 2],
        list(a.verb_phrases),
        [(i, i + 1) for i, t in enumerate(a.tag) if t == "NN"],
        [(i, i + 1) for i, t in enumerate(a.tag) if t == "NNS"],
        [(i, i + 1) for i, p in enumerate(a.pos) if p == "ADV"],
        [(i, i + 1) for i, p in enumerate(a.pos) if p == "ADJ"],
    )
    result = []
    for spans in sets:
        items = tuple((a.idx[s], a.end(e - 1)) for s, e in filter_spans(spans))
        if len({a.text[x:y] for x, y in items}) > 1:
            result.append(items)
    return tuple(result)


def swappable_pairs(text: str, items: tuple[Chars, ...]) -> list[tuple[Chars, Chars]]:
    """All pairs of distinct spans (in order) whose texts differ."""
    return [(x, y) for i, x in enumerate(items) for y in items[i + 1 :] if text[x[0] : x[1]] != text[y[0] : y[1]]]


class NegClipSwap(Generator):
    """NegCLIP hard negative: swap two spans of the same kind, by character offsets (spacing kept).

    Follows FSC-CLIP (``ytaek-oh/fsc-clip``, adapted from NegCLIP's gist by M. Yuksekgonul): one pair
    per span set, then one of those pairs uniformly. Deliberate difference: a set's pair is drawn
    uniformly among its pairs with different texts, where FSC-CLIP draws two spans and drops the set
    when their texts happen to be equal ("a dog and a dog and a cat").
    """

    name = "negclip"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        sets = a.cached("negclip", negclip_sets)
        if not sets:
            return None
        text = a.text
        for _ in range(1 + MAX_RETRIES):
            pairs = swappable_pairs(text, sets[rng.randrange(len(sets))])
            x, y = pairs[rng.randrange(len(pairs))]
            out = differs(swap_chars(text, x, y, text[y[0] : y[1]], text[x[0] : x[1]]), caption)
            if out is not None:
                return out
        return None


def _subtree_edges(a: Analysis) -> list[tuple[int, int]]:
    """(left_edge, right_edge) of every token's subtree."""
    edges = [[i, i] for i in range(len(a))]
    for j in range(len(a)):
        i, steps = j, 0
        while a.head[i] != i and steps <= len(a):
            i, steps = a.head[i], steps + 1
            edges[i][0] = min(edges[i][0], j)
            edges[i][1] = max(edges[i][1], j)
    return [(lo, hi) for lo, hi in edges]


def _trim_punct(a: Analysis, start: int, end: int) -> tuple[int, int]:
    while end > start and a.pos[end - 1] == "PUNCT":
        end -= 1
    return start, end


def conjunct_pairs(a: Analysis) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Token spans of two noun phrases joined by "and"/"or", safe to swap.

    ``X cc Y``: Y has dep ``conj`` with head X (both nouns), X has exactly one conjunct and one ``cc``
    child "and"/"or" right before Y's noun chunk. X's phrase is its noun chunk plus any prepositional
    phrases up to the ``cc`` ("a bowl of soup"); Y's phrase is its noun chunk, whose trailing
    prepositional phrases stay where they are ("a dog and a frisbee on the grass" -> "a frisbee and a
    dog on the grass"). Skipped when Y has conjuncts of its own or a clausal modifier ("a man with a
    hat and a woman sitting on a bench": the parse may join "hat" and "woman"), or when X has
    dependents after Y (they would change phrase).
    """
    edges = _subtree_edges(a)
    chunk_of = {root: (start, end) for start, end, root in a.noun_chunks}
    children: list[list[int]] = [[] for _ in range(len(a))]
    for j, h in enumerate(a.head):
        if h != j:
            children[h].append(j)
    pairs = []
    for y in range(len(a)):
        x = a.head[y]
        if a.dep[y] != "conj" or x >= y or x not in chunk_of or y not in chunk_of:
            continue
        if a.pos[x] not in _NOUN_POS or a.pos[y] not in _NOUN_POS:
            continue
        ccs = [k for k in children[x] if a.dep[k] == "cc" and x < k < y]
        if len(ccs) != 1 or a.words[ccs[0]].lower() not in ("and", "or"):
            continue
        cc = ccs[0]
        x_chunk, y_chunk = chunk_of[x], chunk_of[y]
        x_right = [k for k in children[x] if k > x and k not in (cc, y) and a.pos[k] != "PUNCT"]
        y_right = [k for k in children[y] if k > y and a.pos[k] != "PUNCT"]
        if (
            edges[x][0] != x_chunk[0]
            or y_chunk[0] != cc + 1
            or any(k > y or a.dep[k] != "prep" for k in x_right)
            or any(a.dep[k] != "prep" for k in y_right if k >= y_chunk[1])
            or any(a.dep[k] == "conj" for k in children[y])
        ):
            continue
        first = _trim_punct(a, x_chunk[0], cc)
        if first[1] > first[0]:
            pairs.append((first, y_chunk))
    return pairs


class ConjunctSwap(Generator):
    """Hard positive: "the black cat and the carpeted floor" -> "the carpeted floor and the black cat".

    vlzoo's own rule (no reference implementation). A sentence-initial capital moves with the position:
    "A cat and the dog" -> "The dog and a cat" (unless the first word is a proper noun or "I").
    """

    name = "conjunct_swap"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        pairs = a.cached("conjunct_swap", conjunct_pairs)
        if not pairs:
            return None
        (s1, e1), (s2, e2) = pairs[rng.randrange(len(pairs))]
        first, second = a.span_text(s1, e1), a.span_text(s2, e2)
        if a.idx[s1] == 0 and first[:1].isupper() and second[:1].islower():
            if a.pos[s1] != "PROPN" and a.words[s1] != "I":
                first, second = first[:1].lower() + first[1:], second[:1].upper() + second[1:]
        span1, span2 = (a.idx[s1], a.end(e1 - 1)), (a.idx[s2], a.end(e2 - 1))
        return differs(swap_chars(a.text, span1, span2, second, first), caption)
