"""The tokenizer of the zoo's tiny LLM (``vlzoo-tiny-llama``): a byte-level BPE trained in-process with
``tokenizers`` on ShapesWorld text, shipped in ``zoo/backbones/model_configs/vlzoo_tiny_llama`` (as open_clip
ships model configs) so every LLaVA config builds offline. Rebuild it with
``python -m datamodules.shapesworld.tokenizer``; a test retrains it and compares."""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from zoo.backbones.llava.build import TINY_LLAMA_FOLDER
from zoo.backbones.llava.tokenizer import train_bpe_tokenizer

from .text import language_corpus

CORPUS_DOCUMENTS = 4096
VOCAB_SIZE = 1024


def shapesworld_tokenizer(documents: int = CORPUS_DOCUMENTS, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The BPE of ``vlzoo-tiny-llama``, trained on ``documents`` ShapesWorld texts (train split, seed 0)."""
    return train_bpe_tokenizer(language_corpus(documents, "train", 0), vocab_size)


def main(argv: list[str] | None = None) -> None:
    out = Path((argv if argv is not None else sys.argv[1:] or [str(TINY_LLAMA_FOLDER)])[0])
    tokenizer = shapesworld_tokenizer()
    tokenizer.save_pretrained(out)
    print(f"wrote the ShapesWorld BPE ({len(tokenizer)} tokens) to {out}")


if __name__ == "__main__":
    main()
