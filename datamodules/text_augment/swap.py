"""Span swaps: NegCLIP-style hard negatives and conjunct-swap hard positives."""

from __future__ import annotations

import random

from .analysis import Analysis, filter_spans
from .base import MAX_RETRIES, Generator, swap_spans

_NOUN_POS = ("NOUN", "PROPN")

Span = tuple[int, int]  # (start, end) token indices


def _glued(a: Analysis, i: int) -> bool:
    """Whether tokens ``i`` and ``i + 1`` are parts of one word ("can|not", "gon|na")."""
    return 0 <= i < len(a) - 1 and not a.whitespace(i) and a.words[i][-1:].isalnum() and a.words[i + 1][:1].isalnum()


def _trim(a: Analysis, start: int, end: int, punct: bool = False) -> Span:
    """``start:end`` without whitespace tokens (and, with ``punct``, punctuation) at either end."""

    def edge(i: int) -> bool:
        return a.is_space(i) or (punct and a.pos[i] == "PUNCT")

    while start < end and edge(start):
        start += 1
    while end > start and edge(end - 1):
        end -= 1
    return start, end


def _key(a: Analysis, span: Span) -> str:
    """A span's text compared case- and spacing-insensitively ("Large" and "large" are no swap)."""
    return " ".join(a.span_text(*span).split()).lower()


def negclip_sets(a: Analysis) -> tuple[tuple[tuple[Span, Span], ...], ...]:
    """Per span set, its swappable pairs (``swappable_pairs``); sets without one dropped.

    Sets as FSC-CLIP's ``_generate_hard_negatives_like_negclip``: noun chunks longer than 2 tokens,
    verb phrases (VERB? ADV* AUX* VERB+), single NN, single NNS, single ADV, single ADJ tokens, each
    set passed through ``filter_spans``. Whitespace tokens are trimmed off the spans, and spans glued
    to a neighbouring word ("can|not") are left out.
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
        items = [_trim(a, s, e) for s, e in filter_spans(spans)]
        items = [(s, e) for s, e in items if e > s and not _glued(a, s - 1) and not _glued(a, e - 1)]
        pairs = swappable_pairs(a, items)
        if pairs:
            result.append(tuple(pairs))
    return tuple(result)


def swappable_pairs(a: Analysis, items: list[Span]) -> list[tuple[Span, Span]]:
    """All pairs of distinct spans (in order) whose texts differ beyond case and spacing."""
    keys = [_key(a, span) for span in items]
    return [(x, y) for i, x in enumerate(items) for j, y in enumerate(items[i + 1 :], i + 1) if keys[i] != keys[j]]


class NegClipSwap(Generator):
    """NegCLIP hard negative: swap two spans of the same kind, rebuilt from the tokens (``swap_spans``).

    Follows FSC-CLIP (``ytaek-oh/fsc-clip``, adapted from NegCLIP's gist by M. Yuksekgonul): one pair
    per span set, then one of those pairs uniformly. Deliberate differences: a set's pair is drawn
    uniformly among its pairs with different texts, where FSC-CLIP draws two spans and drops the set
    when their texts happen to be equal ("a dog and a dog and a cat"); texts equal up to case and
    spacing count as equal ("Large elephant ... a large tree" has no ADJ pair); the swapped caption is
    rebuilt from spaCy tokens and their whitespace instead of ``str.replace``/character offsets, so a
    double space or a whitespace token never merges two words.
    """

    name = "negclip"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        sets = a.cached("negclip", negclip_sets)
        if not sets:
            return None
        for _ in range(1 + MAX_RETRIES):
            pairs = sets[rng.randrange(len(sets))]
            x, y = pairs[rng.randrange(len(pairs))]
            out = self.differs(swap_spans(a, x, y), caption)
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


# A clause in the first conjunct makes the coordination ambiguous: the second conjunct may belong inside
# it ("a woman holding an umbrella and a bag").
_CLAUSES = ("acl", "relcl")
# A noun phrase's own head at the top of a caption: no higher phrase the coordination may belong to.
_TOP = ("ROOT", "nsubj", "nsubjpass")


def _coordinations(a: Analysis) -> list[tuple[int, int]]:
    """(X, Y) for every noun Y conjoined (dep ``conj``) to an earlier noun X: the candidates."""
    return [
        (a.head[y], y)
        for y in range(len(a))
        if a.dep[y] == "conj" and a.head[y] < y and a.pos[y] in _NOUN_POS and a.pos[a.head[y]] in _NOUN_POS
    ]


def _conjuncts(a: Analysis, x: int, y: int, edges: list, children: list, chunk_of: dict) -> tuple[Span, Span] | None:
    """The two complete conjuncts of ``X cc Y`` as token spans, or None (refused); see ``conjunct_pairs``."""
    if x not in chunk_of or y not in chunk_of:
        return None
    ccs = [k for k in children[x] if a.dep[k] == "cc"]
    conjs = [k for k in children[x] if a.dep[k] == "conj"]
    if conjs != [y] or len(ccs) != 1 or not x < ccs[0] < y or a.words[ccs[0]].lower() not in ("and", "or"):
        return None
    cc = ccs[0]
    if any(a.dep[k] in ("conj", "cc") for k in children[y]):
        return None
    # X's conjunct: its whole subtree before the conjunction, which must hold no clause
    first = _trim(a, edges[x][0], cc, punct=True)
    own = [k for k in children[x] if x < k < cc and a.pos[k] != "PUNCT"]
    if edges[x][0] != chunk_of[x][0] or first[1] <= first[0] or any(a.dep[k] in _CLAUSES for k in own):
        return None
    # Y's conjunct: its noun chunk right after the conjunction, plus its "of" complements
    start = _trim(a, cc + 1, len(a))[0]
    if chunk_of[y][0] != start:
        return None
    end = chunk_of[y][1]
    for k in sorted(children[y]):
        if k == end and a.dep[k] == "prep" and a.words[k].lower() == "of":
            end = edges[k][1] + 1
    # a noun chunk ending in a participle misparsed as a noun: "his dog playing", "a zebra standing"
    for head in (x, y):
        if any(
            a.dep[k] == "compound" and any(a.dep[j] in ("det", "poss", "nummod") for j in children[k])
            for k in children[head]
        ):
            return None
    after = [k for k in children[y] if k >= end and a.pos[k] != "PUNCT"]
    shared = after + [k for k in children[x] if k > y and a.pos[k] != "PUNCT"]
    modified = [k for k in own if a.dep[k] == "prep" and a.words[k].lower() != "of"]
    if modified:  # "a boy in a red shirt and a girl in a blue dress": Y's own modifiers move with it
        if not any(a.dep[k] == "prep" for k in after) or any(k > y for k in children[x] if a.pos[k] != "PUNCT"):
            return None  # "a man with glasses and a beard": Y may belong inside X's prepositional phrase
        end = _trim(a, start, edges[y][1] + 1, punct=True)[1]
        shared = []
    next_word = _trim(a, end, len(a))[0]
    if next_word < len(a) and a.words[next_word].lower() == "of":
        return None  # "plates of food and glasses of wine": the coordination is inside an "of" phrase
    if shared and a.dep[x] not in _TOP:
        return None  # "a man with a hat and a woman sitting": Y may join a higher phrase
    return first, (start, end)


def conjunct_pairs(a: Analysis) -> tuple[tuple[tuple[Span, Span], ...], int]:
    """(Token spans of two complete noun-phrase conjuncts joined by "and"/"or", safe to swap; the number
    of noun coordinations seen, refused ones included).

    ``X cc Y``: Y has dep ``conj`` with head X (both nouns and noun-chunk roots), X has no other
    conjunct and one ``cc`` child "and"/"or" before Y, Y none (two-way coordinations only). X's
    conjunct is its whole subtree before the conjunction ("a bowl of soup"); it may not hold a clause.
    Y's conjunct is its noun chunk plus its "of" complements ("a cup of coffee"). Modifiers after Y
    are shared by both conjuncts and stay in place ("a dog and a frisbee on the grass" -> "a frisbee
    and a dog on the grass"), unless X has a prepositional modifier of its own: then Y's modifiers
    are its own and move with it ("a boy in a red shirt and a girl in a blue dress"). Refused: a
    coordination inside an "of" phrase, one whose shared modifiers could belong to a higher phrase
    (X not the caption's head), a conjunct whose compound modifier carries the determiner (a
    participle parsed as a noun), and a first conjunct with a prepositional modifier when Y has none.
    """
    edges = _subtree_edges(a)
    chunk_of = {root: (start, end) for start, end, root in a.noun_chunks}
    children: list[list[int]] = [[] for _ in range(len(a))]
    for j, h in enumerate(a.head):
        if h != j:
            children[h].append(j)
    candidates = _coordinations(a)
    pairs = [p for p in (_conjuncts(a, x, y, edges, children, chunk_of) for x, y in candidates) if p]
    return tuple(pairs), len(candidates)


class ConjunctSwap(Generator):
    """Hard positive: "the black cat and the carpeted floor" -> "the carpeted floor and the black cat".

    vlzoo's own rule (no reference implementation); only two complete conjuncts are swapped (see
    ``conjunct_pairs``), and ``counts`` records the calls on captions with a noun coordination
    (``attempts``) and those where every coordination was refused (``refused``). A sentence-initial
    capital moves with the position: "A cat and the dog" -> "The dog and a cat" (unless the first word
    is a proper noun or "I"). Rebuilt from tokens like ``negclip``.
    """

    name = "conjunct_swap"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        pairs, seen = a.cached("conjunct_swap", conjunct_pairs)
        self.record(seen > 0, not pairs)
        if not pairs:
            return None
        (s1, e1), (s2, e2) = pairs[rng.randrange(len(pairs))]
        words = list(a.words)
        first, second = words[s1], words[s2]
        if a.idx[s1] == len(a.text) - len(a.text.lstrip()) and first[:1].isupper() and second[:1].islower():
            if a.pos[s1] != "PROPN" and first != "I":
                words[s1], words[s2] = first[:1].lower() + first[1:], second[:1].upper() + second[1:]
        return self.differs(swap_spans(a, (s1, e1), (s2, e2), words), caption)
