"""Conversation templates and segment-wise labels: exact strings, supervised text decoded run by run, image
slots, truncation, and one test per guard against unusable samples."""

from __future__ import annotations

import copy

import pytest

from tests.zoo.test_tokenizer import tiny_corpus
from zoo.backbones.llava.conversation import (
    IGNORE_INDEX,
    VICUNA_V1_SYSTEM,
    ChatTemplateError,
    InvalidSampleError,
    check_conversation,
    conversation_segments,
    inference_prompt,
    prompt_add_special_tokens,
    tokenize_conversation,
)
from zoo.backbones.llava.tokenizer import train_bpe_tokenizer

N_IMAGE = 5
TWO_ROUNDS = [
    {"from": "human", "value": "What is it?\n<image>"},  # the tag moves to the front, as LLaVA does
    {"from": "gpt", "value": "a red square"},
    {"from": "human", "value": "Color?"},
    {"from": "gpt", "value": "red"},
]
VICUNA_TWO_ROUNDS = (
    f"{VICUNA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: a red square</s>USER: Color? ASSISTANT: red</s>"
)
CHATML = (
    "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(tiny_corpus(), vocab_size=400)


@pytest.fixture(scope="module")
def chatml_tok(tok):
    chatml = copy.deepcopy(tok)
    chatml.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chatml.chat_template = CHATML
    return chatml


def supervised_runs(tokenizer, out: dict[str, list[int]]) -> list[str]:
    """Each maximal run of supervised labels, decoded on its own."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in out["labels"]:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def tokenize(tok, conversations=TWO_ROUNDS, template="vicuna_v1", has_image=True, **kwargs):
    return tokenize_conversation("s1", conversations, template, tok, N_IMAGE, has_image, **kwargs)


def test_vicuna_v1_string_is_byte_exact() -> None:
    segments = conversation_segments(TWO_ROUNDS, "vicuna_v1", has_image=True)
    assert "".join(text for text, _ in segments) == VICUNA_TWO_ROUNDS
    assert [text for text, supervised in segments if supervised] == [" a red square</s>", " red</s>"]
    assert ("<image>", False) in segments
    assert all(text.endswith("ASSISTANT:") for text, _ in segments[segments.index(("<image>", False)) + 1 :: 2])
    text_only = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    joined = "".join(t for t, _ in conversation_segments(text_only, "vicuna_v1", False, system="S."))
    assert joined == "S. USER: Hi ASSISTANT: Hello</s>"


def test_vicuna_v1_supervises_answers_with_their_space_and_eos(tok) -> None:
    out = tokenize(tok)
    assert supervised_runs(tok, out) == [" a red square</s>", " red</s>"]
    assert out["input_ids"][0] == tok.bos_token_id and out["labels"][0] == IGNORE_INDEX
    assert len(out["input_ids"]) == len(out["labels"])
    supervised = [i for i, label in enumerate(out["labels"]) if label != IGNORE_INDEX]
    assert [out["input_ids"][i] for i in supervised] == [out["labels"][i] for i in supervised]  # not shifted


@pytest.mark.parametrize("has_image", [True, False])
def test_segment_ids_equal_whole_string_ids(tok, has_image: bool) -> None:
    conversations = (
        TWO_ROUNDS if has_image else [{**t, "value": t["value"].replace("\n<image>", "")} for t in TWO_ROUNDS]
    )
    out = tokenize_conversation("s1", conversations, "vicuna_v1", tok, 1, has_image)
    text = "".join(t for t, _ in conversation_segments(conversations, "vicuna_v1", has_image))
    assert out["input_ids"] == tok(text)["input_ids"]


def test_image_slots_are_expanded_and_ignored(tok) -> None:
    out = tokenize(tok)
    slots = [i for i, token in enumerate(out["input_ids"]) if token == tok.image_token_id]
    assert len(slots) == N_IMAGE and slots == list(range(slots[0], slots[0] + N_IMAGE))
    assert all(out["labels"][i] == IGNORE_INDEX for i in slots)
    assert tok.decode(out["input_ids"][slots[-1] + 1 : slots[-1] + 3]).startswith("\nWhat")


def test_plain_supervises_caption_and_newline_only(tok) -> None:
    segments = conversation_segments(TWO_ROUNDS, "plain", has_image=True)
    assert segments == [("<image>", False), ("a red square\n", True)]  # the human text is dropped
    out = tokenize(tok, template="plain")
    caption = tok("a red square\n", add_special_tokens=False)["input_ids"]
    assert out["input_ids"] == [tok.bos_token_id] + [tok.image_token_id] * N_IMAGE + caption
    assert out["labels"] == [IGNORE_INDEX] * (1 + N_IMAGE) + caption
    assert supervised_runs(tok, out) == ["a red square\n"]


def test_chat_template_supervises_contents_and_end_of_turn(chatml_tok) -> None:
    out = tokenize(chatml_tok, template="chat_template")
    assert supervised_runs(chatml_tok, out) == ["a red square<|im_end|>", "red<|im_end|>"]
    assert chatml_tok.bos_token_id not in out["input_ids"]  # this template writes no BOS and none is added
    assert out["input_ids"].count(chatml_tok.image_token_id) == N_IMAGE
    text = "".join(t for t, _ in conversation_segments(TWO_ROUNDS, "chat_template", True, chatml_tok))
    assert text == chatml_tok.apply_chat_template(
        [
            {"role": r, "content": c}
            for r, c in zip(["user", "assistant"] * 2, ["<image>\nWhat is it?", "a red square", "Color?", "red"])
        ],
        tokenize=False,
    )


def test_vicuna_chat_template_gives_the_vicuna_v1_labels(tok) -> None:
    """The tiny tokenizer's own template (BOS written by the template) equals the built-in vicuna_v1."""
    assert tokenize(tok, template="chat_template") == tokenize(tok)


def test_chat_template_that_is_not_prefix_stable_is_a_template_error(chatml_tok) -> None:
    broken = copy.deepcopy(chatml_tok)
    broken.chat_template = "{{ messages | length }}" + CHATML
    with pytest.raises(ChatTemplateError, match="not a prefix"):
        tokenize(broken, template="chat_template")


def test_chat_template_dropping_string_contents_is_a_template_error(chatml_tok) -> None:
    """llava-hf's templates render only list contents and silently drop strings."""
    lists_only = copy.deepcopy(chatml_tok)
    lists_only.chat_template = (
        "{%- for m in messages -%}{{ m['role'] + ': ' }}{%- if m['content'] is not string -%}"
        "{{ m['content'][0]['text'] }}{%- endif -%}{{ '\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}"
    )
    with pytest.raises(ChatTemplateError, match="does not render turn 1's content"):
        tokenize(lists_only, template="chat_template")


def test_inference_prompts(tok, chatml_tok) -> None:
    assert inference_prompt("What is it?", "plain", True) == "<image>"
    prompt = inference_prompt("What is it?<image>", "vicuna_v1", True)
    assert prompt == f"{VICUNA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:"
    history = TWO_ROUNDS[:2]
    assert inference_prompt("Color?", "vicuna_v1", True, history=history) == VICUNA_TWO_ROUNDS.removesuffix(" red</s>")
    rendered = inference_prompt("What is it?", "chat_template", True, tok)
    assert rendered == "<s>" + prompt and not prompt_add_special_tokens(rendered, tok)
    assert prompt_add_special_tokens(prompt, tok)
    chatml = inference_prompt("Hi", "chat_template", False, chatml_tok)
    assert chatml == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_truncation_in_the_text_tail_keeps_a_prefix(tok) -> None:
    full = tokenize(tok)
    cut = tokenize(tok, max_length=len(full["input_ids"]) - 2)
    assert cut == {key: value[:-2] for key, value in full.items()}
    assert supervised_runs(tok, cut)[0] == " a red square</s>"


@pytest.mark.parametrize("kept", [0, 2, N_IMAGE - 1])
def test_truncation_into_the_image_span_raises(tok, kept: int) -> None:
    start = tokenize(tok)["input_ids"].index(tok.image_token_id)
    with pytest.raises(InvalidSampleError, match=f"'s1'.*max_length {start + kept} cuts into the image span"):
        tokenize(tok, max_length=start + kept)


def test_truncation_right_after_the_image_span_is_not_an_image_cut(tok) -> None:
    end = tokenize(tok)["input_ids"].index(tok.image_token_id) + N_IMAGE
    with pytest.raises(InvalidSampleError, match="no supervised token left"):
        tokenize(tok, max_length=end)


def test_truncation_leaving_no_supervised_token_raises(tok) -> None:
    labels = tokenize(tok)["labels"]
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    with pytest.raises(InvalidSampleError, match=f"no supervised token left \\({first} tokens"):
        tokenize(tok, max_length=first)


def test_image_tag_in_an_answer_raises(tok) -> None:
    sneaky = [TWO_ROUNDS[0], {"from": "gpt", "value": "it is <image>"}]
    with pytest.raises(InvalidSampleError, match=f"'s1'.*{N_IMAGE + 1} image token ids, expected {N_IMAGE}"):
        tokenize(tok, sneaky)


def test_image_tag_in_a_text_only_sample_raises(tok) -> None:
    with pytest.raises(InvalidSampleError, match=f"'s1'.*{N_IMAGE} image token ids, expected 0"):
        tokenize(tok, has_image=False)


def test_vicuna_v1_refuses_a_tokenizer_with_another_eos(chatml_tok) -> None:
    other = copy.deepcopy(chatml_tok)
    other.eos_token = "<|im_end|>"
    with pytest.raises(ValueError, match="use template 'chat_template'"):
        tokenize(other)


def test_malformed_conversation_raises_when_tokenised(tok) -> None:
    with pytest.raises(InvalidSampleError, match="'s1'.*turn 1"):
        tokenize(tok, [TWO_ROUNDS[0], TWO_ROUNDS[2]])
    with pytest.raises(InvalidSampleError, match="plain.*gpt turn"):
        tokenize(tok, TWO_ROUNDS[:1], template="plain")


def human(value: str) -> dict[str, str]:
    return {"from": "human", "value": value}


def gpt(value: str) -> dict[str, str]:
    return {"from": "gpt", "value": value}


def test_check_accepts_a_good_sample() -> None:
    check_conversation("s1", TWO_ROUNDS, has_image=True)
    check_conversation("s1", [human("Hi"), gpt("Hello")], has_image=False)


@pytest.mark.parametrize(
    ("conversations", "has_image", "message"),
    [
        ([], False, "empty conversation"),
        ([human("<image>\nHi"), {"from": "bot", "value": "x"}], True, "turn 1: unknown role 'bot'"),
        ([gpt("<image>\nHi")], True, "turn 0: the first turn is not human"),
        ([human("<image>\nHi"), human("Again")], True, "turn 1: two human turns in a row"),
        ([human("<image>\nHi"), gpt("a"), gpt("b")], True, "turn 2: two gpt turns in a row"),
        ([human("<image>\nHi"), gpt("  \n")], True, "turn 1: empty answer"),
        ([human("Hi"), gpt("a"), human("<image> too")], False, "turn 2: <image> tag in a sample without an image"),
        ([human("Hi"), gpt("a"), human("<image>")], True, "turn 0: the sample has an image but no <image> tag"),
    ],
    ids=["empty", "unknown-role", "first-not-human", "two-human", "two-gpt", "empty-answer", "tag-no-image", "no-tag"],
)
def test_check_rejects(conversations, has_image: bool, message: str) -> None:
    with pytest.raises(InvalidSampleError, match=f"sample 'bad-7': {message}") as raised:
        check_conversation("bad-7", conversations, has_image)
    assert raised.value.sample_id == "bad-7"
