"""The offline byte-level BPE: fixed special ids, BOS like Llama, exact round trips, determinism, the vicuna_v1
chat template, and a save/reload that changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from zoo.backbones.llava.conversation import VICUNA_V1_SYSTEM
from zoo.backbones.llava.tokenizer import SPECIAL_TOKENS, train_bpe_model, train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[2]
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "gray")
SHAPES = ("square", "circle", "triangle", "rectangle", "cross", "ellipse")
RELATIONS = ("left of", "right of", "above", "below")


def tiny_corpus() -> list[str]:
    """A few hundred ShapesWorld-like sentences, questions and the vicuna_v1 scaffolding."""
    texts = [VICUNA_V1_SYSTEM, "USER: ASSISTANT:", "Describe the image. What is it? Color? Shape? Is there a"]
    for colour, shape in product(COLOURS, SHAPES):
        texts += [f"a {colour} {shape}", f"What colour is the {shape}?", f"Is there a {colour} {shape}? yes no"]
    for (c1, s1), relation, c2 in product(zip(COLOURS, SHAPES), RELATIONS, COLOURS[:3]):
        texts.append(f"a {c1} {s1} {relation} a {c2} {SHAPES[-1]}.")
    return texts


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(tiny_corpus(), vocab_size=400)


def test_special_ids_are_fixed_and_bos_is_prepended(tok) -> None:
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert (tok.image_token, tok.image_token_id) == ("<image>", 4)
    assert tok("<image>")["input_ids"] == [1, 4]
    ids = tok("a red square")["input_ids"]
    assert ids[0] == 1 and 2 not in ids  # BOS, no EOS
    assert tok("a red square", add_special_tokens=False)["input_ids"] == ids[1:]


def test_special_tags_in_text_are_single_ids(tok) -> None:
    ids = tok("a red square</s>USER: <image>\nhi", add_special_tokens=False)["input_ids"]
    assert ids.count(2) == 1 and ids.count(4) == 1
    assert ids[ids.index(2) - 1] != 2 and tok.decode(ids[: ids.index(2)]) == "a red square"


@pytest.mark.parametrize("text", ["a red square left of a blue circle", "  two  spaces\n\nand\ttabs ", "été 漢字 🙂"])
def test_decoding_round_trips(tok, text: str) -> None:
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids  # every byte is in the alphabet
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<s>" + text


def test_save_and_reload_changes_nothing(tok, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    texts = [*tiny_corpus()[:20], "USER: <image>\nWhat is it? ASSISTANT: a red square</s>", "été 🙂"]
    assert [again(t)["input_ids"] for t in texts] == [tok(t)["input_ids"] for t in texts]
    names = ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "image_token_id", "image_token")
    assert [getattr(again, n) for n in names] == [getattr(tok, n) for n in names] == [0, 1, 2, 3, 4, "<image>"]
    assert again.chat_template == tok.chat_template
    assert len(again) == len(tok)


def _fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def test_training_is_deterministic_in_and_across_processes() -> None:
    first, second = train_bpe_model(tiny_corpus(), 400), train_bpe_model(tiny_corpus(), 400)
    assert first.get_vocab() == second.get_vocab()
    assert first.to_str() == second.to_str()  # merges included
    # other processes (other hash seeds) import the tokenizer module alone, not the whole zoo
    code = (
        "import hashlib, json, sys, types\n"
        "for name in ('zoo', 'zoo.backbones', 'zoo.backbones.llava'):\n"
        "    sys.modules[name] = module = types.ModuleType(name)\n"
        f"    module.__path__ = [{str(ROOT)!r} + '/' + name.replace('.', '/')]\n"
        "from zoo.backbones.llava.tokenizer import train_bpe_model\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(hashlib.sha256(train_bpe_model(texts, 400).to_str().encode()).hexdigest())\n"
    )
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(tiny_corpus()),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert done.stdout.strip() == _fingerprint(first)


def test_a_different_corpus_gives_different_merges() -> None:
    assert _fingerprint(train_bpe_model(tiny_corpus(), 400)) != _fingerprint(train_bpe_model(tiny_corpus()[:40], 400))


def test_chat_template_renders_vicuna_v1(tok) -> None:
    messages = [
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": "a red square"},
        {"role": "user", "content": "Color?"},
        {"role": "assistant", "content": "red"},
    ]
    turns = "USER: <image>\nWhat is it? ASSISTANT: a red square</s>USER: Color? ASSISTANT: red</s>"
    expected = f"<s>{VICUNA_V1_SYSTEM} {turns}"
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    prompt = tok.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
    assert prompt == expected[: expected.rindex(" red</s>")] and prompt.endswith("USER: Color? ASSISTANT:")
    system = [{"role": "system", "content": "Be brief."}, messages[0]]
    assert tok.apply_chat_template(system, tokenize=False) == "<s>Be brief. USER: <image>\nWhat is it? "
    listed = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}]}]
    assert (
        tok.apply_chat_template(listed, tokenize=False, add_generation_prompt=True)
        == expected[: expected.index(" a red")]
    )
    ids = tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert ids == tok(expected, add_special_tokens=False)["input_ids"] and ids.count(1) == 1


def test_a_llava_processor_renders_and_expands_with_one_bos(tok) -> None:
    """An exported processor's ``apply_chat_template``: the template writes BOS, so none is added again."""
    from PIL import Image
    from transformers import LlavaProcessor
    from transformers.models.llava import LlavaImageProcessorPil

    size = {"shortest_edge": 28}, {"height": 28, "width": 28}  # 2 x 2 patches of 14 px: 4 image tokens
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessorPil(size=size[0], crop_size=size[1]),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    image = Image.new("RGB", (40, 30), "red")
    content = [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]
    out = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    expected = f"<s>{VICUNA_V1_SYSTEM} USER: {'<image>' * 4}\nWhat is it? ASSISTANT:"
    assert out["input_ids"][0] == tok(expected, add_special_tokens=False)["input_ids"]
    assert out["input_ids"][0].count(1) == 1 and out["input_ids"][0].count(4) == 4
