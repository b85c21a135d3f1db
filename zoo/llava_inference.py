"""zoo.LLaVA's inference side: prompts, batched generation (LLaVA-1.5 and the high-resolution modes) and the
transformers export (a ``LlavaForConditionalGeneration`` folder, or a ``LlavaNextForConditionalGeneration`` one
for AnyRes)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoo.backbones.llava.build import encode_prompt, llava_processor
from zoo.backbones.llava.conversation import IMAGE_TOKEN, inference_prompt
from zoo.decoding import m3id_generate


class ImageTransform:
    """PIL image → ``[3, S, S]`` tensor through a transformers image processor (picklable for workers)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


PromptImages = Image.Image | Sequence[Image.Image] | None
"""One prompt's images: one, several (one ``<image>`` tag each in the question, in order) or none."""


@dataclass
class PromptBatch:
    """Prompts ready for the LM: each row's ids with its images expanded (a text-only row of a batch with images
    starts with a stand-in image's tokens, masked: ``masked`` leading tokens) and the encoded images in row order
    (``pixel_values`` [N, 3, S, S]; high-res (views, image sizes); ``None`` when no prompt has an image)."""

    ids: list[list[int]]
    masked: list[int]
    images: Any


def images_per_prompt(images: PromptImages | Sequence[PromptImages], prompts: list[str], single: bool) -> list[list]:
    """Each prompt's list of images; ``single``: ``prompts`` was one string, so ``images`` are its images."""
    if single or images is None or isinstance(images, Image.Image):
        images = [images] * len(prompts)
    images = list(images)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} image entries for {len(prompts)} prompts (one entry per prompt)")
    return [[] if x is None else [x] if isinstance(x, Image.Image) else list(x) for x in images]


class LLaVAInference:
    """Generation and export of :class:`zoo.LLaVA` (a mixin: it uses the module's ``llava``, ``tokenizer``,
    ``images``, ``image_spec``, ``image_tokens``, ``high_res`` and ``visual_features``)."""

    def prompt_ids(
        self, questions: list[str], has_image: list[bool], image_tokens: list[int | list[int]] | None = None
    ) -> list[list[int]]:
        """Token ids of the inference prompts (the model's template), each image expanded to its tokens
        (``image_tokens`` per prompt, a list for a prompt with several images; default: the model's fixed count)."""
        counts = image_tokens or [self.image_tokens] * len(questions)
        texts = []
        for i, (question, has, count) in enumerate(zip(questions, has_image, counts)):
            if not has and IMAGE_TOKEN in question:
                raise ValueError(f"prompt {i}: an {IMAGE_TOKEN} tag but no image ({question!r})")
            try:
                texts.append(inference_prompt(
                    question, self.template, has_image=has, tokenizer=self.tokenizer, system=self.hparams.system_prompt,
                    images=len(count) if isinstance(count, list) else 1,
                ))  # fmt: skip
            except ValueError as error:
                raise ValueError(f"prompt {i}: {error}") from error
        return [encode_prompt(text, self.tokenizer, count) for text, count in zip(texts, counts)]

    def _encode_images(self, images: list[Image.Image | None]) -> tuple[list[int], Any]:
        """Per image its token count, and what encodes them: ``pixel_values`` [N, 3, S, S] (LLaVA-1.5) or, high-res,
        (views [sum, 3, T, T], image sizes [N, 2]); ``None`` is a stand-in (zero image; high-res: black)."""
        size, high_res = self.image_spec.image_size, self.high_res
        if high_res is None:
            transform = ImageTransform(self.images)
            pixels = [transform(image) if image is not None else torch.zeros(3, size, size) for image in images]
            return [self.image_tokens] * len(images), torch.stack(pixels)
        from zoo.backbones.llava.high_res import HighResTransform

        transform = HighResTransform(high_res, self.image_spec)
        inputs = [transform(image if image is not None else Image.new("RGB", (size, size))) for image in images]
        counts = [high_res.check_budget(f"prompt {i}", x["image_size"]) for i, x in enumerate(inputs)]
        sizes = torch.tensor([x["image_size"] for x in inputs])
        return counts, (torch.cat([x["pixel_values"] for x in inputs]), sizes)

    def prompt_batch(self, images: PromptImages | Sequence[PromptImages], prompts: list[str] | str) -> PromptBatch:
        """The prompts' ids and encoded images (``images``: one entry per prompt, see :data:`PromptImages`)."""
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        rows = images_per_prompt(images, prompts, single)
        if self.high_res is not None and any(len(row) > 1 for row in rows):
            raise ValueError("several images in one prompt are supported by LLaVA-1.5 (high_res: null) only")
        has_image = [bool(row) for row in rows]
        if not any(has_image):
            return PromptBatch(self.prompt_ids(prompts, has_image, [0] * len(prompts)), [0] * len(prompts), None)
        counts, encoded = self._encode_images([image for row in rows for image in row or [None]])
        per_prompt, start = [], 0
        for row in rows:
            per_prompt.append(counts[start : start + max(len(row), 1)])
            start += max(len(row), 1)
        ids = self.prompt_ids(prompts, has_image, [c if h else 0 for c, h in zip(per_prompt, has_image)])
        image_id = self.llava.config.image_token_id  # a text-only row: its stand-in's tokens masked in front
        masked = [0 if h else c[0] for c, h in zip(per_prompt, has_image)]
        return PromptBatch([[image_id] * m + row for row, m in zip(ids, masked)], masked, encoded)

    def padded(self, batch: PromptBatch, side: str = "left") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``position_ids`` [B, L] of ``batch``, padded on ``side``; positions
        count the attended tokens only, so a row's values do not depend on its padding."""
        width, pad = max(len(row) for row in batch.ids), self.tokenizer.pad_token_id
        ids, mask = [], []
        for row, masked in zip(batch.ids, batch.masked):
            fill = width - len(row)
            attended = [0] * masked + [1] * (len(row) - masked)
            ids.append([pad] * fill + row if side == "left" else row + [pad] * fill)
            mask.append([0] * fill + attended if side == "left" else attended + [0] * fill)
        mask_t = torch.tensor(mask, device=self.device)
        positions = (mask_t.cumsum(1) - 1).clamp(min=0)
        return torch.tensor(ids, device=self.device), mask_t, positions

    @torch.no_grad()
    def generate(
        self,
        images: PromptImages | Sequence[PromptImages],
        prompts: list[str] | str,
        return_ids: bool = False,
        m3id: dict[str, float] | bool | None = None,
        **generation_kwargs: Any,
    ) -> list[str] | list[list[int]]:
        """Answers to ``prompts`` about ``images`` (one entry per prompt: an image, several images for as many
        ``<image>`` tags in the question, or ``None``: text only), batched with left padding, through transformers'
        ``generate`` (greedy by default; sampling / beams by its arguments), in eval mode (no LoRA dropout)
        whatever the module's mode; ``return_ids``: the answers' token ids, up to EOS. ``m3id``: M3ID decoding
        (``True`` or ``{alpha, lam, t_offset}``; :func:`zoo.decoding.m3id_generate`), greedy or sampled.

        High-res: the zoo's merged features (any merge, order and global view) go in as ``mm_encoder_outputs``
        for the prompt's forward pass; transformers' own feature path is never used."""
        batch = self.prompt_batch(images, prompts)
        input_ids, mask, _ = self.padded(batch, "left")
        width, pad = input_ids.shape[1], self.tokenizer.pad_token_id
        generation_kwargs.setdefault("max_new_tokens", 64)
        generation_kwargs.setdefault("do_sample", False)
        generation_kwargs.setdefault("pad_token_id", pad)
        training = self.training
        self.eval()
        try:
            if batch.images is not None and self.high_res is None:
                generation_kwargs["pixel_values"] = batch.images.to(self.device, self.dtype)
            elif batch.images is not None:
                views, sizes = batch.images
                features = self.visual_features(views.to(self.device), sizes, input_ids)
                generation_kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
            if m3id:
                options = m3id if isinstance(m3id, dict) else {}
                image_id = self.llava.config.image_token_id
                out = m3id_generate(self.llava, input_ids, mask, image_id, **options, **generation_kwargs)[:, width:]
            else:
                out = self.llava.generate(input_ids=input_ids, attention_mask=mask, **generation_kwargs)[:, width:]
        finally:
            self.train(training)
        eos = self.tokenizer.eos_token_id
        rows = [row[: row.index(eos)] if eos in row else row for row in out.tolist()]  # after EOS: padding
        if return_ids:
            return rows
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Answers of a batch of questions (``InstructionDataModule(predict=...)``), LLaVA's answer format."""
        answers = self.generate(batch["images"], batch["questions"])
        return [
            {"question_id": qid, "prompt": question, "text": answer}
            for qid, question, answer in zip(batch["question_ids"], batch["questions"], answers)
        ]

    def save_weights(self, folder: Path, merge_lora: bool = True) -> Any:
        """The transformers model saved to ``folder`` (``save_pretrained``) and returned: with LoRA, a copy with
        the adapters merged (``merge_lora``) or removed, the adapters then kept in ``folder/adapter``."""
        folder.mkdir(parents=True, exist_ok=True)
        model = self.llava
        if hasattr(self.model, "get_base_model"):
            wrapped = copy.deepcopy(self.model).cpu()
            if not merge_lora:
                self.model.save_pretrained(folder / "adapter")
            model = wrapped.merge_and_unload() if merge_lora else wrapped.unload()
        model.save_pretrained(folder)
        return model

    def export_hf(self, folder: str | Path, merge_lora: bool = True) -> Path:
        """Write a plain transformers LLaVA folder (model, tokenizer, processor), loadable with
        ``LlavaForConditionalGeneration.from_pretrained`` + ``LlavaProcessor.from_pretrained`` (AnyRes:
        ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor``). With LoRA, the adapters are merged
        (``merge_lora``) or kept as a peft adapter folder ``adapter/`` beside the base.

        The processor is the zoo's (PIL) one, but transformers picks an image processor's backend when loading,
        not from the folder (5.x: torchvision whenever installed; its bicubic resize differs by ~0.02):
        ``LlavaProcessor.from_pretrained(folder, backend="pil")`` gives exactly the zoo's pixels (tested).

        High-res layouts transformers cannot compute (LLaVA-1.5-HD's ``spatial`` merge, ``flat``, no newline, no
        global view) raise ``ValueError``: such a model has no transformers class and reloads through the zoo only
        (``zoo.LLaVA.load_from_checkpoint``). ``pinpoint_order: wh`` exports with the canvases as (h, w), so
        transformers picks the same grids, but it unpads with its own rounding (a warning says so)."""
        high_res = self.high_res
        if high_res is not None:
            reason = high_res.expressible_in_transformers()
            if reason is not None:
                raise ValueError(
                    f"export_hf: {reason}. This layout has no transformers class (LlavaNextForConditionalGeneration "
                    "would compute other features): the model reloads through the zoo only, from its Lightning "
                    "checkpoint (zoo.LLaVA.load_from_checkpoint)"
                )
            if high_res.pinpoint_order == "wh":
                rank_zero_warn(
                    "export_hf: pinpoint_order 'wh' is exported as (h, w) canvases, so transformers chooses the "
                    "original code's grids, but it unpads with round(x, 7) instead of int(x): a few image sizes get "
                    "one row or column more in transformers than in the zoo"
                )
        folder = Path(folder)
        model = self.save_weights(folder, merge_lora)
        if high_res is None:
            llava_processor(model, self.tokenizer, self.images).save_pretrained(folder)
        else:
            from zoo.backbones.llava.next import next_processor

            next_processor(model, self.tokenizer, high_res, self.image_spec).save_pretrained(folder)
        return folder
