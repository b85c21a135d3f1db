"""WordNet replacements: SugarCrepe REPLACE-style hard negatives and synonym hard positives."""

from __future__ import annotations

import random
from typing import NamedTuple

from .analysis import Analysis
from .base import MAX_RETRIES, Generator
from .lexicon import WORDNET_POS, Candidates, Lexicon, inflect, match_case
from .scene_graph import parse_scene_graph

_EMPTY = Candidates([])


class Slot(NamedTuple):
    """A replaceable unit: char range, Penn tag to inflect to ("" for prepositions), candidates."""

    start: int
    end: int
    tag: str
    candidates: Candidates


def _token_slot(a: Analysis, i: int, lexicon: Lexicon) -> Slot:
    wn_pos = WORDNET_POS.get(a.pos[i])
    table = lexicon.replacements(a.words[i], wn_pos) if wn_pos else _EMPTY
    return Slot(a.idx[i], a.end(i), a.tag[i], table)


def replace_slots(a: Analysis, lexicon: Lexicon) -> list[Slot] | None:
    """Scene-graph elements as slots (entity roots, modifiers, relations), or None when the caption
    fails FSC-CLIP's filter (fewer than 2 entities, or neither a relation nor a modifier)."""
    graph = parse_scene_graph(a, lexicon.is_phrasal_verb)
    if not graph.has_two_entities_and_a_compound:
        return None
    slots = [_token_slot(a, root, lexicon) for _, _, root in graph.entities]
    slots += [_token_slot(a, i, lexicon) for i in graph.modifiers]
    for start, end in graph.relations:
        root = a.span_root(start, end)
        if a.pos[root] == "ADP":  # the whole (possibly multi-word) preposition is replaced
            slots.append(Slot(a.idx[start], a.end(end - 1), "", lexicon.prepositions(a.span_text(start, end))))
        else:
            slots.append(_token_slot(a, root, lexicon))
    return slots


def _weighted_slots(a: Analysis, lexicon: Lexicon) -> tuple[tuple[Slot, ...], tuple[int, ...]] | None:
    """Slots with candidates and the cumulative weights min(2, #candidates); None if there are none."""
    slots = [slot for slot in replace_slots(a, lexicon) or () if len(slot.candidates)]
    if not slots:
        return None
    cum, total = [], 0
    for slot in slots:
        total += min(2, len(slot.candidates))
        cum.append(total)
    return tuple(slots), tuple(cum)


class Replace(Generator):
    """SugarCrepe REPLACE-style hard negative: one entity, modifier or relation swapped for a WordNet
    antonym / co-hyponym (or another preposition), inflected to the original tag, casing kept.

    Follows FSC-CLIP's ``_generate_hard_negatives_like_replace`` (SugarCrepe published no generation
    code; their negatives come from ChatGPT): per scene-graph element up to 2 candidates drawn by weight
    without replacement, then one of all drawn candidates uniformly. Here the element is chosen first,
    with probability proportional to its number of draws (min(2, #candidates)), then one of its draws:
    the same distribution, without sampling the other elements. det / nummod modifiers have no WordNet
    part of speech and are never replaced (as in FSC-CLIP), but they satisfy the "modifier" filter.
    Differences: lemminflect instead of pyinflect (same rules and tables), multi-word replacements
    inflect their head word, a capital initial is carried over instead of ``str.title()``, and a draw
    that reproduces the caption is redrawn (up to ``MAX_RETRIES`` times).
    """

    name = "replace"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        lexicon = self.lexicon
        weighted = a.cached("replace", lambda a: _weighted_slots(a, lexicon))
        if weighted is None:
            return None
        slots, cum_weights = weighted
        for _ in range(1 + MAX_RETRIES):
            slot = rng.choices(slots, cum_weights=cum_weights)[0]
            drawn = slot.candidates.draw_distinct(rng, 2)
            name = slot.candidates.names[drawn[rng.randrange(len(drawn))]]
            new = match_case(inflect(name, slot.tag), a.text[slot.start : slot.end])
            out = self.differs(a.text[: slot.start] + new + a.text[slot.end :], caption)
            if out is not None:
                return out
        return None


def _with_article(a: Analysis, i: int, new: str) -> tuple[int, str]:
    """(start char, text) replacing token ``i`` by ``new``, with a preceding "a"/"an" made to agree."""
    if i > 0 and a.words[i - 1].lower() in ("a", "an") and a.end(i - 1) + 1 == a.idx[i]:
        article = match_case("an" if new[:1].lower() in "aeiou" else "a", a.words[i - 1])
        return a.idx[i - 1], f"{article} {new}"
    return a.idx[i], new


def synonym_options(a: Analysis, i: int, lexicon: Lexicon, same_sense: bool = True) -> list[tuple[int, str, int]]:
    """(start char, replacement, weight) for each synonym of token ``i`` (``Lexicon.synonyms``): inflected,
    casing kept, a preceding article made to agree; those that reproduce the token are dropped."""
    p = a.pos[i]
    if p not in ("NOUN", "ADJ", "VERB"):
        return []
    table = lexicon.synonyms(a.words[i], WORDNET_POS[p], a.lemma[i], same_sense)
    prev, options = 0, []
    for name, cum in zip(table.names, table.cum_weights):
        new = match_case(inflect(name, a.tag[i]), a.words[i])
        if new.lower() != a.words[i].lower():
            start, text = _with_article(a, i, new)
            options.append((start, text, cum - prev))
        prev = cum
    return options


def synonym_tokens(a: Analysis, lexicon: Lexicon) -> tuple[tuple[int, ...], bool]:
    """(Tokens with a synonym in the caption's sense; whether any token had a synonym before that
    restriction, i.e. the call is an attempt)."""
    tokens = tuple(i for i in range(len(a)) if synonym_options(a, i, lexicon))
    return tokens, bool(tokens) or any(synonym_options(a, i, lexicon, same_sense=False) for i in range(len(a)))


class SynonymReplace(Generator):
    """Hard positive: one noun, adjective or verb (uniformly among those that have one) replaced by
    another lemma of its sense (``Lexicon.synonyms``: WordNet's first sense of the tagged part of
    speech, when it is the word's majority sense; lemmas tagged in that sense, whose own first sense
    it is), drawn by lemma count, inflected to the token's tag, casing kept, and "a"/"an" before it
    made to agree ("an automobile"). ``counts`` records the calls on captions with a first-sense
    synonym (``attempts``) and those where the sense restriction refused them all (``refused``).
    vlzoo's own rule (no reference implementation)."""

    name = "synonym"

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        a = self.analyze(caption)
        lexicon = self.lexicon
        tokens, attempted = a.cached("synonym", lambda a: synonym_tokens(a, lexicon))
        self.record(attempted, not tokens)
        if not tokens:
            return None
        i = tokens[rng.randrange(len(tokens))]
        options = synonym_options(a, i, lexicon)
        start, new, _ = rng.choices(options, weights=[w for _, _, w in options])[0]
        return self.differs(a.text[:start] + new + a.text[a.end(i) :], caption)
