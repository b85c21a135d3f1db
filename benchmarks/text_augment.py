"""Throughput of the rule-based text engine (``datamodules.text_augment``), single process.

    python benchmarks/text_augment.py [--n 10000] [--cold-n 1000] [--seed 0]

Builds ``--n`` realistic captions (a COCO-like template grammar, COCO itself cannot be downloaded
here, plus ShapesWorld captions) and prints captions/s per worker for every generator:

* cold: empty analysis cache and empty WordNet lookup tables, so each caption is parsed with spaCy
  one at a time, as a dataloader worker does on its first epoch (on ``--cold-n`` captions);
* cached: analyses and WordNet tables cached (later epochs, or after ``engine.warm``), on all captions;

then the 3 training generators together (negclip, replace, bigram_shuffle) and the time for a batch of
256 captions with 3 negatives each. Targets: >= 5,000 captions/s for the 3 together once cached, and
<= 50 ms per 256-caption batch. ``outputs`` is the share of captions that get an output; for the hard
positives (synonym, conjunct_swap), ``refused`` is the share of captions with candidates (a first-sense
synonym, a noun coordination) where the generator refused them all (``Generator.refused_share``).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.text_augment import (  # noqa: E402
    GENERATORS,
    HARD_POSITIVE_GENERATORS,
    TRAINING_GENERATORS,
    Analyzer,
    HardNegativeEngine,
    Lexicon,
    load_spacy,
    load_wordnet,
)

PEOPLE = ["man", "woman", "boy", "girl", "child", "person", "skier", "surfer", "player", "chef", "couple"]
ANIMALS = ["dog", "cat", "horse", "bird", "cow", "sheep", "elephant", "giraffe", "zebra", "bear"]
THINGS = [
    "frisbee",
    "kite",
    "surfboard",
    "skateboard",
    "umbrella",
    "pizza",
    "sandwich",
    "laptop",
    "bicycle",
    "motorcycle",
    "train",
    "bus",
    "truck",
    "boat",
    "clock",
    "vase",
    "cake",
    "bench",
]
PLACES = [
    "the grass",
    "a field",
    "the beach",
    "the ocean",
    "a street",
    "the snow",
    "a kitchen",
    "a table",
    "the water",
    "a park",
    "the sidewalk",
    "a living room",
    "a city street",
    "the sky",
]
ADJECTIVES = [
    "black",
    "white",
    "red",
    "large",
    "small",
    "young",
    "old",
    "brown",
    "wooden",
    "tall",
    "green",
    "blue",
    "yellow",
    "little",
    "big",
    "empty",
    "busy",
    "colorful",
]
VERBS = {  # -ing form: objects it takes
    "riding": ["horse", "surfboard", "skateboard", "bicycle", "motorcycle", "wave", "elephant"],
    "holding": ["umbrella", "kite", "frisbee", "laptop", "sandwich", "pizza", "cake"],
    "eating": ["pizza", "sandwich", "cake", "banana", "hot dog"],
    "flying": ["kite"],
    "throwing": ["frisbee", "ball"],
    "watching": ["train", "boat", "bus"],
    "carrying": ["surfboard", "umbrella", "bag"],
    "looking at": ["laptop", "clock", "cake", "phone"],
}
PREPOSITIONS = ["on", "in", "next to", "near", "on top of", "in front of", "under", "behind", "beside", "at"]
NUMBERS = ["two", "three", "four", "several", "a group of", "a couple of"]


def _plural(noun: str) -> str:
    if noun in ("sheep", "person"):
        return "people" if noun == "person" else noun
    if noun == "child":
        return "children"
    return noun + ("es" if noun.endswith(("s", "ch", "sh")) else "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(rng: random.Random, nouns: list[str], adjective: float = 0.5) -> str:
    noun = rng.choice(nouns)
    words = f"{rng.choice(ADJECTIVES)} {noun}" if rng.random() < adjective else noun
    return f"{_article(words)} {words}"


def coco_like_caption(rng: random.Random) -> str:
    """One caption from a small template grammar in the style of COCO."""
    verb = rng.choice(list(VERBS))
    obj = rng.choice(VERBS[verb])
    subject = _np(rng, PEOPLE + ANIMALS[:2])
    where = f"{rng.choice(PREPOSITIONS)} {rng.choice(PLACES)}"
    many = rng.choice(NUMBERS)
    template = rng.randrange(9)
    if template == 0:
        text = f"{subject} {verb} {_article(obj)} {obj} {where}"
    elif template == 1:
        text = f"{many} {_plural(rng.choice(ANIMALS))} are standing {where}"
    elif template == 2:
        text = f"{subject} is {verb} {_article(obj)} {obj} while standing {where}"
    elif template == 3:
        text = f"{_np(rng, ANIMALS)} and {_np(rng, THINGS)} {where}"
    elif template == 4:
        text = f"there is {_np(rng, THINGS)} {rng.choice(PREPOSITIONS)} {_np(rng, THINGS, 0.3)}"
    elif template == 5:
        text = f"{subject} with {_np(rng, THINGS)} {verb} {_article(obj)} {obj}"
    elif template == 6:
        text = f"a close up of {_np(rng, THINGS, 0.8)} on {_np(rng, THINGS, 0.2)}"
    elif template == 7:
        text = f"{many} {_plural(rng.choice(PEOPLE))} are {verb} {_plural(obj)} {where}"
    else:
        text = f"{_np(rng, ANIMALS, 0.7)} laying {rng.choice(PREPOSITIONS)} {_np(rng, THINGS)} in {rng.choice(PLACES)}"
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + ("." if rng.random() < 0.3 else "")


def build_captions(n: int, seed: int = 0, shapesworld_fraction: float = 0.2) -> list[str]:
    """``n`` captions: COCO-like ones and a ``shapesworld_fraction`` of ShapesWorld captions, shuffled."""
    from datamodules.shapesworld import generate_sample

    rng = random.Random(seed)
    n_shapes = int(n * shapesworld_fraction)
    captions: list[str] = []
    index = 0
    while len(captions) < n_shapes:
        captions.extend(generate_sample(index, seed=seed, image_size=16)["captions"])
        index += 1
    captions = captions[:n_shapes] + [coco_like_caption(rng) for _ in range(n - n_shapes)]
    rng.shuffle(captions)
    return captions


def _cold_lexicon() -> Lexicon:
    """A lexicon with empty lookup tables over a WordNet reader with an empty synset cache."""
    reader = load_wordnet()
    getattr(reader, "_synset_offset_cache", {}).clear()  # NLTK's internal per-reader cache
    return Lexicon()


def _rate(engine: HardNegativeEngine, captions: list[str], epoch: int) -> tuple[float, int]:
    produced = 0
    start = time.perf_counter()
    for index, caption in enumerate(captions):
        produced += sum(out is not None for out in engine(caption, index, epoch))
    return len(captions) / (time.perf_counter() - start), produced


def _bytes_per_analysis(captions: list[str]) -> float:
    analyzer = Analyzer()
    analyzer.warm(captions[:50])  # spaCy's own lazily grown state, not counted
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    analyzer.warm(captions[50:])
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / max(1, len(analyzer) - 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--cold-n", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    captions = build_captions(args.n, args.seed)
    start = time.perf_counter()
    load_spacy()
    spacy_s = time.perf_counter() - start
    start = time.perf_counter()
    load_wordnet()
    wordnet_s = time.perf_counter() - start
    print(f"{len(captions)} captions, e.g. {captions[:3]}")
    print(f"load: spaCy {spacy_s:.2f} s, WordNet {wordnet_s:.2f} s (once per process)")

    warm = Analyzer()
    start = time.perf_counter()
    parsed = warm.warm(captions)
    print(f"warm (nlp.pipe): {parsed / (time.perf_counter() - start):,.0f} captions/s ({parsed} unique)")
    per_caption = _bytes_per_analysis(captions[:2000])
    print(f"memory: ~{per_caption:,.0f} bytes per cached analysis (before memoised candidates)")
    lexicon = Lexicon()

    cold_set = captions[: args.cold_n]
    print(f"\n{'generator':30s} {'cold/s':>10s} {'cached/s':>10s} {'outputs':>8s} {'refused':>8s}")
    for names in [[name] for name in GENERATORS] + [list(TRAINING_GENERATORS)]:
        cold_engine = HardNegativeEngine(names, seed=args.seed, analyzer=Analyzer(), lexicon=_cold_lexicon())
        cold, _ = _rate(cold_engine, cold_set, 0)
        engine = HardNegativeEngine(names, seed=args.seed, analyzer=warm, lexicon=lexicon)
        _rate(engine, captions, 0)  # first cached pass: memoises candidate sets, fills WordNet tables
        cached, produced = _rate(engine, captions, 1)
        share = produced / len(names) / len(captions)
        refused = f"{engine.generators[0].refused_share:8.1%}" if names[0] in HARD_POSITIVE_GENERATORS else ""
        print(f"{'+'.join(names):30s} {cold:10,.0f} {cached:10,.0f} {share:8.1%} {refused}")

    batches = []
    for epoch in range(2, 5):
        for start_index in range(0, len(captions) - 255, 256):
            start = time.perf_counter()
            for index in range(start_index, start_index + 256):
                engine(captions[index], index, epoch)
            batches.append(time.perf_counter() - start)
    print(
        f"\n256-caption batch, 3 negatives each (cached): median {1e3 * statistics.median(batches):.1f} ms, "
        f"max {1e3 * max(batches):.1f} ms over {len(batches)} batches (target <= 50 ms)"
    )
    print(f"3 training generators cached: {cached:,.0f} captions/s (target >= 5,000)")


if __name__ == "__main__":
    main()
