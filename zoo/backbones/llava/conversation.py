"""Conversation templates and labels for LLaVA-style instruction tuning.

A record's ``conversations`` is LLaVA's JSON list ``[{"from": "human"|"gpt", "value": str}, ...]``. A
conversation is serialised as ``(text, supervised)`` segments; labels come from tokenising each segment on its
own and marking the supervised ones, never from re-counting tokens in the whole string (the reference's
``preprocess_v1`` silently masks whole samples whenever its count is off by one).

Templates (the reference is haotian-liu/LLaVA ``conversation.py``):

- ``plain`` (stage 1): ``"<image>" + caption + "\\n"``; the human turn is dropped; caption + "\\n" is supervised.
- ``vicuna_v1``: ``"{system} USER: <image>\\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>"``; each answer
  is supervised with its leading space and its ``</s>``, so with a byte-level BPE the segment-wise ids equal the
  ids of the whole string.
- ``chat_template``: the tokenizer's own Jinja template (Llama-3, Qwen, ...); the supervised text of each
  assistant turn is the difference between the conversation rendered up to it with the generation prompt and
  rendered up to and including it (trailing whitespace after the turn stays unsupervised).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
TEMPLATES = ("plain", "vicuna_v1", "chat_template")
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V1_EOS = "</s>"  # the reference's sep2, written literally whatever the tokenizer
ROLES = {"human": "user", "gpt": "assistant"}

Turns = Sequence[Mapping[str, str]]
Segments = list[tuple[str, bool]]


class InvalidSampleError(ValueError):
    """A training sample that cannot be used as it is; the message names the sample id and the reason."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot give segment-wise labels (a configuration error, not a bad sample)."""


def check_conversation(sample_id: str, conversations: Turns, has_image: bool, images: int = 1) -> None:
    """Raise :class:`InvalidSampleError` naming the sample and the turn index when ``conversations`` is unusable.
    Several ``images``: the human turns must hold one ``<image>`` tag per image (anywhere in them)."""
    if not conversations:
        raise InvalidSampleError(sample_id, "empty conversation")
    for index, turn in enumerate(conversations):
        role, value = turn.get("from"), turn.get("value")
        if role not in ROLES:
            raise InvalidSampleError(sample_id, f"turn {index}: unknown role {role!r} (expected 'human' or 'gpt')")
        if not isinstance(value, str):
            raise InvalidSampleError(sample_id, f"turn {index}: value is {type(value).__name__}, not a string")
        expected = "human" if index % 2 == 0 else "gpt"
        if role != expected:
            reason = "the first turn is not human" if index == 0 else f"two {role} turns in a row"
            raise InvalidSampleError(sample_id, f"turn {index}: {reason}")
        if role == "gpt" and not value.strip():
            raise InvalidSampleError(sample_id, f"turn {index}: empty answer")
        if IMAGE_TOKEN in value and not has_image:
            raise InvalidSampleError(sample_id, f"turn {index}: {IMAGE_TOKEN} tag in a sample without an image")
    if has_image and images > 1:
        tags = sum(turn["value"].count(IMAGE_TOKEN) for turn in conversations[::2])
        if tags != images:
            reason = f"{images} images but {tags} {IMAGE_TOKEN} tags in the human turns (one tag per image)"
            raise InvalidSampleError(sample_id, reason)
    elif has_image and IMAGE_TOKEN not in conversations[0]["value"]:
        raise InvalidSampleError(sample_id, f"turn 0: the sample has an image but no {IMAGE_TOKEN} tag")


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; expected one of {TEMPLATES}")


def _normalised_turns(conversations: Turns, has_image: bool, images: int = 1) -> list[tuple[str, str]]:
    """``(role, value)`` with roles user/assistant; with one image, every tag is taken out of the human turns
    and one is put back, followed by "\\n", at the start of the first (LLaVA's ``preprocess_multimodal``).
    With several ``images``, the human turns must hold exactly that many tags, and they stay where they are
    (image k goes to the k-th tag). Tags in answers, or in a sample without an image, stay, so the image-count
    check catches them."""
    multi = has_image and images > 1
    if multi:
        tags = sum(t.get("value", "").count(IMAGE_TOKEN) for i, t in enumerate(conversations) if i % 2 == 0)
        if tags != images:
            raise ValueError(f"{images} images but {tags} {IMAGE_TOKEN} tags in the human turns (one tag per image)")
    turns = []
    for index, turn in enumerate(conversations):
        role = ROLES.get(turn.get("from", ""))
        if role is None or role != ("user" if index % 2 == 0 else "assistant"):
            raise ValueError(f"turn {index}: role {turn.get('from')!r} breaks human/gpt alternation")
        value = turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"turn {index}: value is {type(value).__name__}, not a string")
        if has_image and not multi and role == "user" and IMAGE_TOKEN in value:
            value = value.replace(IMAGE_TOKEN, "").strip()
        turns.append((role, value))
    if has_image and not multi and turns:
        turns[0] = ("user", f"{IMAGE_TOKEN}\n{turns[0][1]}")
    return turns


def _append(segments: Segments, text: str, supervised: bool) -> None:
    """Add text, merging it into the previous segment of the same kind; ``<image>`` always stands alone."""
    if not text:
        return
    if segments and segments[-1][1] == supervised and IMAGE_TOKEN not in (text, segments[-1][0]):
        segments[-1] = (segments[-1][0] + text, supervised)
    else:
        segments.append((text, supervised))


def _split_image(segments: Segments, text: str, supervised: bool) -> None:
    """Append text with every ``<image>`` of an unsupervised piece made a segment of its own."""
    if supervised:
        _append(segments, text, supervised)
        return
    for index, piece in enumerate(text.split(IMAGE_TOKEN)):
        if index:
            _append(segments, IMAGE_TOKEN, False)
        _append(segments, piece, False)


def _vicuna_segments(turns: list[tuple[str, str]], system: str, open_end: bool) -> Segments:
    """vicuna_v1 with each answer's leading space in its supervised segment; ``open_end`` leaves the last
    question asking for an answer ("ASSISTANT:"), else an unanswered last question ends with " " as in TWO style."""
    segments: Segments = []
    _append(segments, system + " ", False)
    for index, (role, value) in enumerate(turns):
        if role == "user":
            tail = " ASSISTANT:" if open_end or index + 1 < len(turns) else " "
            _split_image(segments, f"USER: {value}{tail}", False)
        else:
            _append(segments, f" {value}{VICUNA_V1_EOS}", True)
    return segments


def _messages(turns: list[tuple[str, str]], system: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": role, "content": value} for role, value in turns]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ChatTemplateError(f"template 'chat_template' needs a tokenizer with a chat_template; {tokenizer!r}")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _chat_template_segments(
    tokenizer: PreTrainedTokenizerBase, turns: list[tuple[str, str]], system: str | None
) -> Segments:
    """Segments from renderings of growing prefixes, each of which must extend the one before."""
    messages = _messages(turns, system)
    head = len(messages) - len(turns)
    segments: Segments = []
    done = ""

    def extend(text: str, supervised: bool, what: str) -> None:
        nonlocal done
        if not text.startswith(done):
            raise ChatTemplateError(
                f"the tokenizer's chat_template does not render {what} as an extension of the text before it, so "
                f"labels cannot be built segment by segment:\n{done!r}\nis not a prefix of\n{text!r}"
            )
        piece = text[len(done) :]
        if supervised:  # whitespace after the turn's end marker is never generated: it stays unsupervised
            piece = piece.rstrip()
            _append(segments, piece, True)
            done += piece
        else:
            _split_image(segments, piece, False)
            done = text

    for index, (role, value) in enumerate(turns):
        if role == "assistant":
            prompt = _render(tokenizer, messages[: head + index], generation=True)
            extend(prompt, False, f"the generation prompt before turn {index}")
            extend(_render(tokenizer, messages[: head + index + 1], generation=False), True, f"turn {index}")
            if value.strip() not in segments[-1][0] or not segments[-1][1]:  # e.g. llava-hf's drops str content
                raise ChatTemplateError(f"the tokenizer's chat_template does not render turn {index}'s content")
    extend(_render(tokenizer, messages, generation=False), False, "the whole conversation")
    return segments


def conversation_segments(
    conversations: Turns,
    template: str,
    has_image: bool,
    tokenizer: PreTrainedTokenizerBase | None = None,
    system: str | None = None,
    images: int = 1,
) -> Segments:
    """``(text, supervised)`` pieces in order; ``"".join`` of the texts is the serialised conversation and
    ``"<image>"`` is a segment of its own. ``system=None``: vicuna_v1 uses :data:`VICUNA_V1_SYSTEM`, a chat
    template its own default (a string is passed as a system message). ``images``: images of the sample (several:
    one tag each, kept in place)."""
    _check_template(template)
    turns = _normalised_turns(conversations, has_image, images)
    if template == "plain":
        captions = [value for role, value in turns if role == "assistant"]
        if not captions:
            raise ValueError("template 'plain' needs a gpt turn holding the caption")
        segments: Segments = [(IMAGE_TOKEN, False)] if has_image else []
        _append(segments, captions[0] + "\n", True)
        return segments
    if template == "vicuna_v1":
        return _vicuna_segments(turns, VICUNA_V1_SYSTEM if system is None else system, open_end=False)
    if tokenizer is None:
        raise ValueError("template 'chat_template' needs the tokenizer whose chat_template it renders")
    return _chat_template_segments(tokenizer, turns, system)


def inference_prompt(
    question: str,
    template: str,
    has_image: bool,
    tokenizer: PreTrainedTokenizerBase | None = None,
    system: str | None = None,
    history: Turns = (),
    images: int = 1,
) -> str:
    """The prompt a model answers; ``history`` holds earlier LLaVA turns (human first, answered).

    plain: ``"<image>"``; vicuna_v1: ``"{system} USER: <image>\\n{question} ASSISTANT:"`` (no trailing space);
    chat_template: the template's rendering with the generation prompt. Encode it with
    :func:`prompt_add_special_tokens` so that BOS is neither missing nor doubled. Several ``images``: the
    question holds one ``<image>`` tag per image, where each image goes.
    """
    _check_template(template)
    if template == "plain":
        return IMAGE_TOKEN * images if has_image else ""
    turns = _normalised_turns([*history, {"from": "human", "value": question}], has_image, images)
    if template == "vicuna_v1":
        system = VICUNA_V1_SYSTEM if system is None else system
        return "".join(text for text, _ in _vicuna_segments(turns, system, open_end=True))
    if tokenizer is None:
        raise ValueError("template 'chat_template' needs the tokenizer whose chat_template it renders")
    return _render(tokenizer, _messages(turns, system), generation=True)


def prompt_add_special_tokens(prompt: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """``add_special_tokens`` for encoding ``prompt``: False when it already starts with BOS (a chat template
    that writes BOS), as ``processor.apply_chat_template`` decides."""
    bos = tokenizer.bos_token
    return not (bos and prompt.startswith(bos))


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that marks image slots: ``tokenizer.image_token_id``, else the id of ``"<image>"``."""
    found = getattr(tokenizer, "image_token_id", None)
    if found is None:
        found = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if found is None or found == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token; add it as a special token")
    return int(found)


def _cut_reason(max_length: int, image_ends: list[int], count: int, length: int) -> str:
    """Why ``max_length`` cannot cut a sample whose image spans end at ``image_ends``: it cuts one of them (or,
    with several images, leaves one out)."""
    if len(image_ends) == 1:
        end, tail = image_ends[0], f"the sample has {length} tokens"
        return f"max_length {max_length} cuts into the image span (its {count} tokens end at {end}; {tail})"
    k = next(k for k, end in enumerate(image_ends) if end > max_length)
    start = image_ends[k] - count
    how = "cuts into" if max_length > start else "leaves out"
    return (
        f"max_length {max_length} {how} the image span {k + 1} of {len(image_ends)} (tokens {start} to "
        f"{image_ends[k]}; the sample has {length} tokens)"
    )


def tokenize_conversation(
    sample_id: str,
    conversations: Turns,
    template: str,
    tokenizer: PreTrainedTokenizerBase,
    image_token_count: int,
    has_image: bool,
    max_length: int | None = None,
    system: str | None = None,
    images: int = 1,
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (not shifted: transformers shifts) for one conversation.

    Each segment is tokenised without special tokens; BOS is prepended for plain and vicuna_v1 (a chat template
    writes its own); each ``<image>`` segment becomes ``image_token_count`` copies of the image token id, the
    slots transformers' LLaVA fills with image features. Labels are the ids of supervised segments, -100
    elsewhere. ``max_length`` cuts the tail, never inside or before an image span. Several ``images`` (not with
    ``plain``): one tag per image in the human turns, each expanded where it stands. A bad sample raises
    :class:`InvalidSampleError`, a tokenizer that does not fit the template ``ValueError``/:class:`ChatTemplateError`.
    """
    if template == "vicuna_v1" and tokenizer.eos_token != VICUNA_V1_EOS:
        raise ValueError(
            f"vicuna_v1 ends answers with {VICUNA_V1_EOS!r}, but the tokenizer's EOS is "
            f"{tokenizer.eos_token!r}: use template 'chat_template' for this LLM"
        )
    if has_image and images > 1 and template == "plain":
        raise InvalidSampleError(sample_id, f"{images} images: the plain template (stage 1) takes one per sample")
    try:
        segments = conversation_segments(conversations, template, has_image, tokenizer, system, images)
    except ChatTemplateError:
        raise
    except ValueError as error:
        raise InvalidSampleError(sample_id, str(error)) from error
    image_id = image_token_id(tokenizer)
    bos = tokenizer.bos_token_id
    input_ids: list[int] = [bos] if template != "chat_template" and bos is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    image_ends: list[int] = []  # where each image span ends
    for text, supervised in segments:
        if text == IMAGE_TOKEN and not supervised:
            ids = [image_id] * image_token_count
            image_ends.append(len(input_ids) + image_token_count)
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if supervised else [IGNORE_INDEX] * len(ids)
    expected, found = image_token_count * images * int(has_image), input_ids.count(image_id)
    if found != expected:
        raise InvalidSampleError(
            sample_id,
            f"{found} image token ids, expected {expected} ({IMAGE_TOKEN} in an answer or in a text-only sample?)",
        )
    if max_length is not None and len(input_ids) > max_length:
        if has_image and image_token_count and max_length < image_ends[-1]:
            raise InvalidSampleError(sample_id, _cut_reason(max_length, image_ends, image_token_count, len(input_ids)))
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    supervised_count = sum(label != IGNORE_INDEX for label in labels)
    if not supervised_count:
        raise InvalidSampleError(
            sample_id, f"no supervised token left ({len(input_ids)} tokens, max_length {max_length})"
        )
    return {"input_ids": input_ids, "labels": labels}
