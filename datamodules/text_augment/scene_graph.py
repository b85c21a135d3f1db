"""Dependency-based scene graph of a caption (entities, modifiers, relations) for REPLACE.

A port of FSC-CLIP's ``CustomSpacyParser`` (``ytaek-oh/fsc-clip``, ``spacy_parser.py``), itself
adapted from SceneGraphParser (``vacancy/SceneGraphParser``), working on ``Analysis`` arrays instead of
spaCy objects. Entities are noun chunks; modifiers are det / nummod / amod children (amod conjuncts
included) of the chunk root and of its compounds; relations link two entities through a verb or a
preposition, following the same ordered rules. Deliberate differences:

* pronoun chunks ("it", "he") are not entities: SceneGraphParser skips lemma ``-PRON-``, which
  spaCy 3 no longer produces, so FSC-CLIP counts them; the spec asks for noun entities;
* "verb + preposition" is a phrasal verb when WordNet has the verb ``verb_prep`` ("look_at"), standing
  in for SceneGraphParser's phrasal-verb list; complex prepositions come from ``PHRASAL_PREPOSITIONS``;
* the unreachable ``dep_ == "VERB"`` rule is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .analysis import Analysis
from .prepositions import PHRASAL_PREPOSITIONS


@dataclass(frozen=True)
class SceneGraph:
    """``entities``: (start, end, root) noun chunks; ``modifiers``: token indices per entity, in order;
    ``relations``: (start, end) token spans, one per (subject, object) pair (so may repeat)."""

    entities: tuple[tuple[int, int, int], ...]
    modifiers: tuple[int, ...]
    relations: tuple[tuple[int, int], ...]

    @property
    def has_two_entities_and_a_compound(self) -> bool:
        """FSC-CLIP's filter: at least 2 entities, and a relation or a modifier."""
        return len(self.entities) > 1 and bool(self.relations or self.modifiers)


def _collect_modifiers(node: int, children: list[list[int]], dep: list[str], out: list[int], seen: set[int]) -> None:
    """SceneGraphParser's entity DFS: det / nummod / amod (+ its conjuncts, relabelled amod) children,
    recursing into compounds in place."""
    if node in seen:
        return
    seen.add(node)
    for x in children[node]:
        if dep[x] in ("det", "nummod"):
            out.append(x)
        elif dep[x] == "amod":
            for y in [x] + [c for c in children[x] if dep[c] == "conj"]:
                dep[y] = dep[x]
                out.append(y)
        elif dep[x] == "compound":
            _collect_modifiers(x, children, dep, out, seen)


def parse_scene_graph(a: Analysis, is_phrasal_verb: Callable[[str, str], bool]) -> SceneGraph:
    """Scene graph of ``a``; ``is_phrasal_verb(verb_lemma, prep_lemma)`` decides phrasal verbs."""
    n, head, pos, lemma = len(a), a.head, a.pos, a.lemma
    dep = list(a.dep)  # amod conjuncts are relabelled "amod", as the reference mutates the doc
    children: list[list[int]] = [[] for _ in range(n)]
    for j, h in enumerate(head):
        if h != j:
            children[h].append(j)

    def conjuncts(i: int) -> list[int]:
        return [i] + [c for c in children[i] if dep[c] == "conj"]

    # Step 1: entities and their modifiers.
    entities: list[tuple[tuple[int, int, int], list[int]]] = []
    for chunk in a.noun_chunks:
        if pos[chunk[2]] == "PRON":
            continue
        modifiers: list[int] = []
        _collect_modifiers(chunk[2], children, dep, modifiers, set())
        entities.append((chunk, modifiers))

    # Step 2: the subject of each verb (by token position).
    subject: dict[int, int] = {}
    for i in range(n):
        if dep[i] == "nsubj":
            subject[head[i]] = i
        elif dep[i] == "acl":
            subject[i] = head[i]
        elif dep[i] == "pobj" and dep[head[i]] == "agent" and pos[head[head[i]]] == "VERB":
            subject[head[head[i]]] = i

    # Step 3: relations between noun chunks.
    relations: list[tuple[int, int, tuple[int, int]]] = []
    fake_nouns: set[int] = set()
    for _, _, root in a.noun_chunks:
        h = head[root]
        hh = head[h]
        rel = None
        if dep[root] in ("dobj", "attr") and h in subject:
            rel = (subject[h], root, (h, h + 1))  # a woman is [playing] the piano
        elif dep[root] == "pobj":
            if dep[h] == "agent":
                pass
            elif pos[hh] == "VERB" and hh + 1 == h and hh in subject and is_phrasal_verb(lemma[hh], lemma[h]):
                rel = (subject[hh], root, (h - 1, h + 1))  # a woman [looking at] a piano
            elif (pos[hh] == "VERB" or dep[hh] == "acl") and hh in subject:
                rel = (subject[hh], root, (h, h + 1))  # a woman playing the piano [in] the room
            elif dep[hh] == "pobj" and head[hh] <= h and a.span_text(head[hh], h + 1).lower() in PHRASAL_PREPOSITIONS:
                fake_nouns.add(hh)
                rel = (head[head[hh]], root, (head[hh], h + 1))  # a woman [in front of] a piano
            elif pos[hh] == "NOUN":
                rel = (hh, root, (h, h + 1))  # a piano [in] the room
            elif dep[hh] in ("amod", "advmod") and pos[head[hh]] == "NOUN":
                rel = (head[hh], root, (hh, h + 1))  # a piano [next to] a woman
            elif dep[hh] in ("amod", "advmod") and pos[head[hh]] == "VERB" and head[hh] in subject:
                rel = (subject[head[hh]], root, (hh, h + 1))  # a woman standing [next to] a piano
            elif pos[hh] == "AUX" and hh in subject:
                rel = (subject[hh], root, (h, h + 1))  # a piano is [in] the room
        elif dep[root] == "nsubjpass" and h in subject:
            rel = (subject[h], root, (h, h + 1))  # the piano is [played] by a woman
        if rel is not None:
            relations.append(rel)

    kept = [(chunk, mods) for chunk, mods in entities if chunk[2] not in fake_nouns]
    chunks = [chunk for chunk, _ in kept]

    def locate(i: int) -> int | None:
        for j, (start, end, _) in enumerate(chunks):
            if start <= i < end:
                return j
        return None

    spans = tuple(
        span
        for subj, obj, span in relations
        for x in conjuncts(subj)
        for y in conjuncts(obj)
        if locate(x) is not None and locate(y) is not None
    )
    return SceneGraph(tuple(chunks), tuple(m for _, mods in kept for m in mods), spans)
