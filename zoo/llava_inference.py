"""zoo.LLaVA's inference side: prompts, batched generation (LLaVA-1.5 and the high-resolution modes) and the
transformers export (a ``LlavaForConditionalGeneration`` folder, or a ``LlavaNextForConditionalGeneration`` one
for AnyRes)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoo.backbones.llava.build import encode_prompt, llava_processor
from zoo.backbones.llava.conversation import inference_prompt


class ImageTransform:
    """PIL image → ``[3, S, S]`` tensor through a transformers image processor (picklable for workers)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


class LLaVAInference:
    """Generation and export of :class:`zoo.LLaVA` (a mixin: it uses the module's ``llava``, ``tokenizer``,
    ``images``, ``image_spec``, ``image_tokens``, ``high_res`` and ``visual_features``)."""

    def prompt_ids(
        self, questions: list[str], has_image: list[bool], image_tokens: list[int] | None = None
    ) -> list[list[int]]:
        """Token ids of the inference prompts (the model's template), each image expanded to its tokens
        (``image_tokens`` per prompt; default: the model's fixed count)."""
        texts = [
            inference_prompt(q, self.template, has_image=h, tokenizer=self.tokenizer, system=self.hparams.system_prompt)
            for q, h in zip(questions, has_image)
        ]
        counts = image_tokens or [self.image_tokens] * len(texts)
        return [encode_prompt(text, self.tokenizer, count) for text, count in zip(texts, counts)]

    def _generation_images(self, images: list[Image.Image | None]) -> tuple[list[int], Any]:
        """Per prompt its image-token count, and what encodes the images: ``pixel_values`` [B, 3, S, S]
        (LLaVA-1.5) or, high-res, (views [sum, 3, T, T], image sizes [B, 2]); text-only rows of a mixed batch get
        a zero (LLaVA-1.5) or black (high-res) image whose tokens sit masked in the left padding."""
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

    @torch.no_grad()
    def generate(
        self,
        images: list[Image.Image | None] | Image.Image | None,
        prompts: list[str] | str,
        return_ids: bool = False,
        **generation_kwargs: Any,
    ) -> list[str] | list[list[int]]:
        """Answers to ``prompts`` about ``images`` (``None``: a text-only prompt), batched with left padding,
        through transformers' ``generate`` (greedy by default; sampling / beams by its arguments), in eval mode
        (no LoRA dropout) whatever the module's mode; ``return_ids``: the answers' token ids, up to EOS.

        High-res: the zoo's merged features (any merge, order and global view) go in as ``mm_encoder_outputs``
        for the prompt's forward pass; transformers' own feature path is never used."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        images = [images] * len(prompts) if images is None or isinstance(images, Image.Image) else list(images)
        has_image = [image is not None for image in images]
        counts, encoded = self._generation_images(images) if any(has_image) else ([0] * len(images), None)
        ids = self.prompt_ids(prompts, has_image, counts)
        image_id = self.llava.config.image_token_id
        if encoded is not None:  # a text-only row of a mixed batch: its image's tokens sit masked in the left padding
            ids = [row if h else [image_id] * n + row for row, h, n in zip(ids, has_image, counts)]
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=self.device)
        for i, (h, n) in enumerate(zip(has_image, counts)):
            if not h and encoded is not None:
                mask[i, width - len(ids[i]) : width - len(ids[i]) + n] = 0
        generation_kwargs.setdefault("max_new_tokens", 64)
        generation_kwargs.setdefault("do_sample", False)
        generation_kwargs.setdefault("pad_token_id", pad)
        training = self.training
        self.eval()
        try:
            if encoded is not None and self.high_res is None:
                generation_kwargs["pixel_values"] = encoded.to(self.device, self.dtype)
            elif encoded is not None:
                views, sizes = encoded
                features = self.visual_features(views.to(self.device), sizes, input_ids)
                generation_kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
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
