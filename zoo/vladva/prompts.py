"""VladVA's two sequences (Ouali, Bulat et al., 2025, Sec. 3): token ids, soft-prompt slots, summary positions and
next-token labels, built segment by segment from configurable templates.

Templates are strings with the placeholders ``{prompt}`` (the handcrafted prompt, whose tokens soft prompts replace),
``<image>`` (the image span), ``{caption}`` (the short caption) and ``{long_caption}``. A space written before a
placeholder belongs to it (tokenised with it, as in the whole string). Defaults, LLaVA-1.5's chat format as the
paper writes it::

    image: "{system} USER: {prompt} <image> ASSISTANT:"  +  detail: "</s>USER: Describe the image in detail.
                                                                      ASSISTANT: {long_caption}</s>"
    text:  "{system} USER: {prompt} {caption} ASSISTANT:"

The **summary token** is the last token of the first turn (``ASSISTANT:``'s ``:``), the position that would
generate the one-word answer. The detail turn follows it in the same image sequence, so one forward pass serves
both losses; the next-token labels cover exactly the long caption's tokens and what follows it (``</s>``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, TypedDict

import torch

from zoo.backbones.llava.conversation import IGNORE_INDEX, IMAGE_TOKEN, VICUNA_V1_SYSTEM, InvalidSampleError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Modality = Literal["image", "text"]
IMAGE_PROMPT = "Summarize the provided image in one word:"
TEXT_PROMPT = "Summarize the provided text in one word:"
IMAGE_TEMPLATE = VICUNA_V1_SYSTEM + " USER: {prompt} <image> ASSISTANT:"
TEXT_TEMPLATE = VICUNA_V1_SYSTEM + " USER: {prompt} {caption} ASSISTANT:"
DETAIL_TEMPLATE = "</s>USER: Describe the image in detail. ASSISTANT: {long_caption}</s>"
_PLACEHOLDER = re.compile(r"( ?)(\{prompt\}|\{caption\}|\{long_caption\}|<image>)")


class EmbeddingPrompts(TypedDict, total=False):
    """The wording of VladVA's sequences (recorded in checkpoints): ``image_prompt`` / ``text_prompt`` (the
    handcrafted prompts), ``image_template`` / ``text_template`` (the first turns) and ``detail_template`` (the
    image sequence's second turn; ``{long_caption}`` and the text after it are supervised)."""

    image_prompt: str
    text_prompt: str
    image_template: str
    text_template: str
    detail_template: str


PROMPT_DEFAULTS: EmbeddingPrompts = {
    "image_prompt": IMAGE_PROMPT,
    "text_prompt": TEXT_PROMPT,
    "image_template": IMAGE_TEMPLATE,
    "text_template": TEXT_TEMPLATE,
    "detail_template": DETAIL_TEMPLATE,
}
_REQUIRED = {
    "image_template": ("{prompt}", "<image>"),
    "text_template": ("{prompt}", "{caption}"),
    "detail_template": ("{long_caption}",),
}


def _pieces(template: str) -> list[tuple[str, str]]:
    """``(kind, text)`` pieces of a template: kind ``literal`` or a placeholder's name; the space before a
    placeholder goes with it (``text`` holds that space)."""
    pieces, start = [], 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > start:
            pieces.append(("literal", template[start : match.start()]))
        pieces.append((match.group(2).strip("{}<>"), match.group(1)))
        start = match.end()
    if start < len(template):
        pieces.append(("literal", template[start:]))
    return pieces


class EmbeddingSequences:
    """Tokenises VladVA's image and text sequences for a batch (picklable: runs in data-loader workers).

    Call it with the short and long captions of a batch (``None`` where an image lacks one) to get, right-padded
    (or left-padded with ``padding_side="left"``)::

        image_input_ids, image_attention_mask, image_soft_mask, image_summary_index   [B, Li] / [B]
        labels                                         [B, Li]   −100 except the long caption and "</s>"
        text_input_ids, text_attention_mask, text_soft_mask, text_summary_index       [B, Lt] / [B]
        has_short, has_long                            [B] bool

    ``*_soft_mask`` marks the handcrafted prompt's tokens (the soft prompts' slots); ``*_summary_index`` the summary
    token. A row without a short caption embeds an empty caption (masked out of the loss by ``has_short``); a row
    without a long caption stops after the first turn, and so does every row with ``long_captions=False`` (no
    next-token loss: the second turn would only cost compute; ``has_long`` still says what the data held).
    ``max_length`` cuts the long caption's tail (then the short caption's), never the first turn's template.
    ``image_token`` is the image slots' token, ``image_span`` the text around them (Qwen2-VL:
    ``<|image_pad|>`` inside ``<|vision_start|>`` ... ``<|vision_end|>``), ``defaults`` a backbone's own
    templates (:data:`zoo.vladva.qwen2_vl.QWEN2_VL_PROMPTS`) under ``prompts``.

    ``image_tokens`` is every image's count of ``<image>`` slots; ``None`` (LLaVA-NeXT AnyRes / HD: it depends on
    the image's size) makes each call take the counts per row (``image_tokens=[...]``), so image rows differ in
    length and are padded like text rows, the summary index following each row's own length and padding.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_tokens: int | None,
        prompts: EmbeddingPrompts | None = None,
        max_length: int = 512,
        padding_side: Literal["right", "left"] = "right",
        long_captions: bool = True,
        image_token: str = IMAGE_TOKEN,
        image_span: tuple[str, str] = ("", ""),
        defaults: EmbeddingPrompts | None = None,
    ) -> None:
        self.prompts: EmbeddingPrompts = {**PROMPT_DEFAULTS, **(defaults or {}), **(prompts or {})}
        unknown = set(self.prompts) - set(PROMPT_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown prompt settings {sorted(unknown)}: expected {sorted(PROMPT_DEFAULTS)}")
        for key, needed in _REQUIRED.items():
            missing = [p for p in needed if p not in self.prompts[key]]
            if missing:
                raise ValueError(f"prompts.{key} {self.prompts[key]!r} lacks {missing}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.tokenizer, self.image_tokens, self.max_length, self.padding_side = (
            tokenizer, image_tokens, max_length, padding_side
        )  # fmt: skip
        self.long_captions, self.image_span = long_captions, tuple(image_span)
        self.image_token, self.image_id = image_token, tokenizer.convert_tokens_to_ids(image_token)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prompt_ids(self, modality: Modality) -> list[int]:
        """Token ids of a modality's handcrafted prompt as it sits in its template (its leading space included):
        the soft prompts' initial values are these tokens' embeddings."""
        space = next(text for kind, text in _pieces(self.prompts[f"{modality}_template"]) if kind == "prompt")
        ids = self._ids(space + self.prompts[f"{modality}_prompt"])
        if self.image_id in ids:
            raise ValueError(f"the {modality} prompt holds {self.image_token}: soft prompts never start from it")
        return ids

    def caption_prefix(self) -> str:
        """The text tokenised before a caption (the template's space before ``{caption}``)."""
        return next(text for kind, text in _pieces(self.prompts["text_template"]) if kind == "caption")

    def image_count(self, image_tokens: int | None = None) -> int:
        """An image's number of ``<image>`` slots: ``image_tokens`` (its own) or the fixed count."""
        count = self.image_tokens if image_tokens is None else image_tokens
        if count is None:
            raise ValueError("these sequences have no fixed image-token count (high-res): give image_tokens per image")
        if int(count) < 1:
            raise ValueError(f"an image needs at least one image token, got {count}")
        return int(count)

    def first_turn(
        self, modality: Modality, caption: str = "", image_tokens: int | None = None
    ) -> tuple[list[int], list[bool], int]:
        """``(ids, soft_mask, caption_start)`` of a modality's first turn, BOS first; the summary token is last
        (``image_tokens``: the image's slot count, default the fixed one)."""
        ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        soft, caption_start = [False] * len(ids), -1
        for kind, text in _pieces(self.prompts[f"{modality}_template"]):
            if kind == "prompt":
                piece = self.prompt_ids(modality)
            elif kind == "image":
                opening, closing = self.image_span  # e.g. Qwen2-VL's <|vision_start|> ... <|vision_end|>
                count = self.image_count(image_tokens)
                piece = self._ids(text + opening) + [self.image_id] * count + self._ids(closing)
            elif kind == "caption":
                caption_start = len(ids)
                piece = self._ids(text + caption) if caption else []
            else:
                piece = self._ids(text)
            ids += piece
            soft += [kind == "prompt"] * len(piece)
        return ids, soft, caption_start

    def detail_turn(self, long_caption: str) -> tuple[list[int], list[int]]:
        """``(ids, labels)`` of the image sequence's second turn: the long caption and the text after it supervised."""
        ids: list[int] = []
        labels: list[int] = []
        supervised = False
        for kind, text in _pieces(self.prompts["detail_template"]):
            piece = self._ids(text + long_caption) if kind == "long_caption" else self._ids(text)
            supervised = supervised or kind == "long_caption"
            ids += piece
            labels += piece if supervised else [IGNORE_INDEX] * len(piece)
        return ids, labels

    def image_row(self, long_caption: str | None, key: str = "?", image_tokens: int | None = None) -> dict[str, list]:
        ids, soft, _ = self.first_turn("image", image_tokens=image_tokens)
        if len(ids) > self.max_length:
            raise InvalidSampleError(
                key, f"the image prompt alone has {len(ids)} tokens > max_length {self.max_length}"
            )
        labels = [IGNORE_INDEX] * len(ids)
        summary = len(ids) - 1
        if long_caption:
            more, more_labels = self.detail_turn(long_caption)
            room = self.max_length - len(ids)
            ids, labels = ids + more[:room], labels + more_labels[:room]
            soft = soft + [False] * len(more[:room])
        return {"ids": ids, "soft": soft, "labels": labels, "summary": summary}

    def text_row(self, caption: str | None, key: str = "?") -> dict[str, list]:
        ids, soft, start = self.first_turn("text", caption or "")
        excess = len(ids) - self.max_length
        if excess > 0:  # cut the caption's tail, keep the template (and the summary token) whole
            caption_length = len(self.first_turn("text", caption or "")[0]) - len(self.first_turn("text")[0])
            if excess > caption_length:
                raise InvalidSampleError(key, f"the text prompt alone exceeds max_length {self.max_length}")
            end = start + caption_length
            ids, soft = ids[: end - excess] + ids[end:], soft[: end - excess] + soft[end:]
        return {"ids": ids, "soft": soft, "summary": len(ids) - 1}

    def pad(self, rows: list[dict[str, list]], prefix: str) -> dict[str, torch.Tensor]:
        """Pad rows to one length; the summary index follows the padding."""
        width = max(len(row["ids"]) for row in rows)
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "soft_mask": [], "summary_index": []}
        if "labels" in rows[0]:
            out["labels"] = []
        for row in rows:
            gap = width - len(row["ids"])
            left = gap if self.padding_side == "left" else 0

            def padded(values: list, fill: object, gap: int = gap, left: int = left) -> list:
                return [fill] * left + values + [fill] * (gap - left)

            out["input_ids"].append(padded(row["ids"], self.pad_id))
            out["attention_mask"].append(padded([1] * len(row["ids"]), 0))
            out["soft_mask"].append(padded(row["soft"], False))
            out["summary_index"].append(row["summary"] + left)
            if "labels" in row:
                out["labels"].append(padded(row["labels"], IGNORE_INDEX))
        names = {"labels": "labels"}
        return {names.get(k, f"{prefix}_{k}"): torch.tensor(v) for k, v in out.items()}

    def _counts(self, n: int, image_tokens: list[int] | None) -> list[int | None]:
        if image_tokens is None:
            return [None] * n
        counts = [int(count) for count in image_tokens]
        if len(counts) != n:
            raise ValueError(f"{len(counts)} image-token counts for {n} images")
        return counts

    def images(
        self, n: int, long_captions: list[str | None] | None = None, image_tokens: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """The image sequences of ``n`` images (their long captions appended where given; ``image_tokens``: each
        image's slot count, for high-res images)."""
        longs = long_captions or [None] * n
        counts = self._counts(n, image_tokens)
        return self.pad([self.image_row(long, image_tokens=c) for long, c in zip(longs, counts)], "image")

    def texts(self, captions: list[str | None]) -> dict[str, torch.Tensor]:
        """The text sequences of ``captions``."""
        return self.pad([self.text_row(caption) for caption in captions], "text")

    def __call__(
        self,
        shorts: list[str | None],
        longs: list[str | None],
        keys: list[str] | None = None,
        image_tokens: list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Both kinds of sequence of a batch (``image_tokens``: each image's slot count, for high-res images)."""
        keys = keys or [str(i) for i in range(len(shorts))]
        appended = longs if self.long_captions else [None] * len(longs)
        counts = self._counts(len(shorts), image_tokens)
        rows = [self.image_row(long, key, count) for long, key, count in zip(appended, keys, counts)]
        batch = self.pad(rows, "image")
        batch.update(self.pad([self.text_row(short, key) for short, key in zip(shorts, keys)], "text"))
        batch["has_short"] = torch.tensor([bool(s) for s in shorts])
        batch["has_long"] = torch.tensor([bool(long) for long in longs])
        return batch
