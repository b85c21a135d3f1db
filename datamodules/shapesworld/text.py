"""Plain ShapesWorld text for training a tiny causal language model (the zoo's stand-in for Vicuna).

The corpus mixes the texts the LLaVA stages train on: short captions, long captions, question + answer,
and whole instruction records rendered in LLaVA's ``vicuna_v1`` chat format (without the ``<image>`` tag),
so the language model already knows the words and the template before visual instruction tuning.
"""

from __future__ import annotations

import random
from typing import Any

from .captions import long_caption
from .instructions import IMAGE_TOKEN, caption_record, instruction_record, scene_and_captions, short_answer_pool

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V1_ROLES = {"human": "USER", "gpt": "ASSISTANT"}
# kind of document -> weight in the mix
CORPUS_MIX: dict[str, float] = {"caption": 0.25, "long_caption": 0.15, "qa": 0.3, "chat": 0.3}


def vicuna_v1(conversations: list[dict[str, Any]]) -> str:
    """LLaVA's ``conv_vicuna_v1.get_prompt()``: system, then "USER: q ASSISTANT: a</s>" per round, the
    ``<image>`` tag (and the newline after it) removed."""
    text = VICUNA_V1_SYSTEM + " "
    for turn in conversations:
        value = turn["value"].replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()
        role = VICUNA_V1_ROLES[turn["from"]]
        text += f"{role}: {value}" + (" " if role == "USER" else "</s>")
    return text


def _document(kind: str, index: int, split: str, seed: int, rng: random.Random) -> str:
    """One document of ``kind`` about scene ``index``."""
    scene, captions = scene_and_captions(index, split, seed)
    if kind == "caption":
        return rng.choice(captions).text().capitalize() + "."
    if kind == "long_caption":
        return long_caption(scene)
    if kind == "qa":
        questions = [qa for pool in short_answer_pool(scene, rng).values() for qa in pool]
        qa = rng.choice(questions)
        return f"{qa['question']} {qa['answer']}"
    if rng.random() < 0.5:
        record = caption_record(index, split, seed, image_name="")
    else:
        record = instruction_record(index, split, seed, image_name="")
    return vicuna_v1(record["conversations"])


def language_corpus(n: int, split: str = "train", seed: int = 0) -> list[str]:
    """``n`` documents; document ``i`` depends only on (i, split, seed) (a longer corpus extends a shorter one).
    Chat documents hold LLaVA-1.5's short-answer suffix, newline included; no document holds ``<image>``."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    documents = []
    for index in range(n):
        rng = random.Random(f"shapesworld-text/{seed}/{split}/{index}")
        kind = rng.choices(list(CORPUS_MIX), weights=list(CORPUS_MIX.values()))[0]
        documents.append(_document(kind, index, split, seed, rng))
    return documents
