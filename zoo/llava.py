"""LLaVA / LLaVA-1.5 (Liu et al., 2023; 2024): visual instruction tuning of a causal LM over a CLIP vision
tower, with transformers' ``LlavaForConditionalGeneration`` as the model."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from transformers import LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoo.backbones.llava.build import (
    Projector,
    build_llava,
    encode_prompt,
    image_processor,
    llava_processor,
    num_image_tokens,
)
from zoo.backbones.llava.clip_vision import ImageSpec
from zoo.backbones.llava.conversation import inference_prompt
from zoo.backbones.llava.parts import PARTS, LoRAConfig, Stage, apply_lora, canonical_name, part_modules, stage_parts
from zoo.base import ZooModule
from zoo.losses import causal_lm_loss, supervised_token_count

Template = Literal["plain", "vicuna_v1", "chat_template"]


class ImageTransform:
    """PIL image → ``[3, S, S]`` tensor through a transformers image processor (picklable for workers)."""

    def __init__(self, processor: Callable) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def resolved_spec(spec: str | None) -> str | None:
    """A model spec with any local path made absolute (a checkpoint then loads from any directory)."""
    if spec is None:
        return None
    scheme = "local-dir:" if spec.startswith("local-dir:") else ""
    path = Path(spec[len(scheme) :])
    return f"{scheme}{path.resolve()}" if path.exists() else spec


class LLaVA(ZooModule):
    """LLaVA / LLaVA-1.5 in one module; the training stage is configuration.

    Public API: :meth:`generate` (images + questions → answers), :meth:`export_hf` (a transformers folder),
    ``LLaVA.load_from_checkpoint(path)``; ``self.model`` is the transformers ``LlavaForConditionalGeneration``
    (a peft ``PeftModel`` around it with LoRA; :attr:`llava` is always the LLaVA itself).

    Args:
        model_name_or_path: a whole LLaVA (``llava-hf/llava-1.5-7b-hf``, a folder, a zoo export); else built
            from ``vision_tower`` + a new ``projector`` + ``language_model``.
        vision_tower: an HF CLIP vision folder or id, a zoo CLIP checkpoint (``.ckpt``), an open_clip export
            (``local-dir:<folder>``) or ``open_clip:<name>[@<pretrained>]`` (converted to ``CLIPVisionModel``).
        language_model: an HF causal-LM folder or id (``configs/llm_pretrain.yaml`` writes one), or
            ``vlzoo-tiny-llama`` (a small random Llama with the zoo's ShapesWorld tokenizer).
        language_model_config: geometry overrides for ``vlzoo-tiny-llama``.
        projector: ``mlp2x_gelu`` (LLaVA-1.5) or ``linear`` (LLaVA).
        vision_feature_layer: the tower layer whose patch features feed the projector (−2).
        stage: ``pretrain`` (projector only, ``plain`` template, square crop) or ``finetune`` (projector + LM,
            ``vicuna_v1``, pad to square); the vision tower is frozen and runs under ``torch.no_grad()``.
        template: the conversation template (default by stage); ``chat_template`` uses the tokenizer's own.
        system_prompt: the system prompt (default: vicuna_v1's; under ``chat_template`` the template's own).
        image_aspect_ratio: ``pad`` (mean-colour square) or ``square`` (resize + centre crop); default by stage.
        max_length: token limit of a training sample, image tokens included.
        lora: peft LoRA on the language model's linears (``{}`` for LLaVA-1.5's r 128, α 256, dropout 0.05).
        projector_lr: the projector's own learning rate (LoRA recipe: 2e-5).
        trainable: parts trained beyond the stage's (``{vision_tower: 2e-6}``: a part at its own lr; ``true``:
            at ``lr``; ``false``: frozen), e.g. LLaVA-NeXT's unfrozen tower (up to ``vision_feature_layer``: the
            layers after it get no gradient). With ``lora``, ``language_model`` means its adapters.
        init_from: a checkpoint (e.g. stage 1's) whose matching tensors initialise this model. Its checkpoints
            need the file again only when it initialised frozen tensors (they are not saved).
        micro_batches: micro-batches per optimiser step; the loss is the mean over the supervised tokens of all
            of them (and of every rank), so k micro-batches equal one batch of k·B.
        activation_checkpointing: recompute the LM's activations in the backward pass.
        cache_dir: where hub downloads go. seed: initialisation seed of new weights (projector, tiny LM, LoRA).
        image_spec: the preprocessing (:class:`~zoo.backbones.llava.clip_vision.ImageSpec` fields) instead of the
            tower's own; checkpoints save the one trained with, so a reload preprocesses as the training did.
        **kwargs: optimiser settings of :class:`zoo.base.ZooModule` (LLaVA defaults: weight decay 0, betas
            (0.9, 0.999), eps 1e-8, warmup ratio 0.03, cosine).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        vision_tower: str | None = "open_clip:vlzoo-tiny-vit",
        language_model: str | None = "vlzoo-tiny-llama",
        language_model_config: dict[str, Any] | None = None,
        projector: Projector = "mlp2x_gelu",
        vision_feature_layer: int = -2,
        stage: Stage = "finetune",
        template: Template | None = None,
        system_prompt: str | None = None,
        image_aspect_ratio: Literal["pad", "square"] | None = None,
        max_length: int = 2048,
        lora: LoRAConfig | None = None,
        projector_lr: float | None = None,
        trainable: dict[str, bool | float] | None = None,
        init_from: str | None = None,
        micro_batches: int = 1,
        activation_checkpointing: bool = False,
        cache_dir: str | None = None,
        seed: int = 0,
        image_spec: dict[str, Any] | None = None,
        lr: float = 2e-05,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_ratio: float = 0.03,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, warmup_ratio=warmup_ratio,
            contrastive_accumulation=micro_batches, **kwargs,
        )  # fmt: skip
        if model_name_or_path is None and (vision_tower is None or language_model is None):
            raise ValueError("give model_name_or_path, or both vision_tower and language_model")
        self.save_hyperparameters()
        self.stage = stage
        self.template = template or ("plain" if stage == "pretrain" else "vicuna_v1")
        self.image_aspect_ratio = image_aspect_ratio or ("square" if stage == "pretrain" else "pad")
        model = self.build_backbone()  # from the hyper-parameters just saved
        self.hparams["image_spec"] = dataclasses.asdict(self.image_spec)  # saved with the checkpoint: the preprocessing
        if activation_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        with torch.random.fork_rng(devices=[]):  # LoRA's A matrices: a function of ``seed``, not of the global RNG
            torch.manual_seed(seed)
            self.model = model if lora is None else apply_lora(model, lora)
        self._trainable = self._set_trainable(stage, lora is not None, projector, projector_lr, trainable or {})
        self._init_from_frozen = False  # init_from wrote frozen tensors: checkpoints name it as part of the base
        if init_from:
            loaded = set(self.load_matching(init_from)["loaded"])
            self._init_from_frozen = any(not p.requires_grad for n, p in self.named_parameters() if n in loaded)

    # ------------------------------------------------------------------------------ structure
    def build_backbone(self) -> LlavaForConditionalGeneration:
        """The hyper-parameters' model (``build_llava``); sets tokenizer, image_spec, image_tokens and images."""
        hp, spec = self.hparams, self.hparams.image_spec
        model, self.tokenizer, self.image_spec = build_llava(
            hp.model_name_or_path, hp.vision_tower, hp.language_model, hp.projector, hp.vision_feature_layer,
            hp.language_model_config, hp.cache_dir, hp.seed,
        )  # fmt: skip
        if spec is not None:
            self.image_spec = ImageSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        self.image_tokens = num_image_tokens(model.config)
        self.images = image_processor(self.image_spec, pad=self.image_aspect_ratio == "pad")
        return model

    @property
    def llava(self) -> LlavaForConditionalGeneration:
        """The transformers LLaVA (inside peft's wrapper when LoRA is on)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _set_trainable(
        self, stage: Stage, lora: bool, projector: str, projector_lr: float | None, overrides: dict[str, Any]
    ) -> dict[str, bool | float]:
        unknown = set(overrides) - set(PARTS)
        if unknown:
            raise ValueError(f"trainable: unknown part(s) {sorted(unknown)}; the parts are {PARTS}")
        parts = stage_parts(stage)
        if projector_lr is not None:
            parts["projector"] = projector_lr
        parts.update(overrides)
        self.model.requires_grad_(False)
        for part, setting in parts.items():
            for module in part_modules(self.llava, part) if setting is not False else []:
                if lora and part == "language_model":  # LoRA: the adapters train, the base weights stay frozen
                    for name, param in module.named_parameters():
                        param.requires_grad_(".lora_" in name)
                else:
                    module.requires_grad_(True)
        if projector == "linear":  # the identity second layer stays fixed: one Linear, as LLaVA's
            self.llava.model.multi_modal_projector.linear_2.requires_grad_(False)
        return parts

    def learning_rates(self) -> dict[str, float]:
        names = {module: name for name, module in self.named_modules()}
        rates = {}
        for part, setting in self._trainable.items():
            if setting is not True and setting is not False:
                rates.update({names[module]: float(setting) for module in part_modules(self.llava, part)})
        return rates

    def vision_trainable(self) -> bool:
        return any(p.requires_grad for p in self.llava.model.vision_tower.parameters())

    def base_specs(self) -> dict[str, str | None]:
        """Where the base weights come from (local paths absolute)."""
        hp = self.hparams
        if hp.model_name_or_path:
            return {"model_name_or_path": resolved_spec(hp.model_name_or_path)}
        return {"vision_tower": resolved_spec(hp.vision_tower), "language_model": resolved_spec(hp.language_model)}

    def frozen_base_reference(self) -> dict[str, Any]:
        # init_from is needed again only where it wrote frozen tensors (stage 1's projector trains on: saved)
        init_from = resolved_spec(self.hparams.init_from) if self._init_from_frozen else None
        return {**self.base_specs(), "init_from": init_from}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the base specs are also the architecture: a checkpoint holding every tensor still names them
        checkpoint["hyper_parameters"].update(self.base_specs())

    def batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["input_ids"])

    def data_transforms(self) -> dict[str, Any]:
        """What :class:`datamodules.InstructionDataModule` needs: tokenizer, image transform, template, image
        tokens per image (:func:`~zoo.backbones.llava.build.num_image_tokens`), system prompt, max length."""
        transform = ImageTransform(self.images)
        return {
            "tokenizer": self.tokenizer,
            "train_transform": transform,
            "eval_transform": transform,
            "template": self.template,
            "image_tokens": self.image_tokens,
            "system_prompt": self.hparams.system_prompt,
            "max_length": self.hparams.max_length,
            "image_size": self.image_spec.image_size,
        }

    # -------------------------------------------------------------------------------- forward
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected patch features [B, N, D] of the tower's layer ``vision_feature_layer``, CLS dropped; a
        frozen tower runs under ``torch.no_grad()`` (no activations kept)."""
        inner = self.llava.model
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable()):
            states = inner.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True).hidden_states
            selected = states[self.llava.config.vision_feature_layer]
            if self.llava.config.vision_feature_select_strategy == "default":
                selected = selected[:, 1:]
        return inner.multi_modal_projector(selected)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states [B, L, D] of the LM (after its final norm), image features spliced in at the
        ``<image>`` placeholders (transformers' ``masked_scatter``, which checks the counts)."""
        encoded = None
        if pixel_values is not None:
            encoded = {"image": BaseModelOutputWithPooling(pooler_output=list(self.image_features(pixel_values)))}
        out = self.llava.model(input_ids=input_ids, attention_mask=attention_mask, mm_encoder_outputs=encoded)
        return out.last_hidden_state

    def _lm_terms(self, batch: dict[str, Any], num_supervised: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = self(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"))
        head = self.llava.lm_head
        return causal_lm_loss(hidden, batch["labels"], head.weight, head.bias, num_supervised)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self._lm_terms(batch)

    def accumulated_losses(self, batches: list[dict[str, Any]], backward: Callable = torch.Tensor.backward):
        """k micro-batches as one batch: each loss is normalised by the supervised tokens of all k (all ranks)."""
        count = supervised_token_count([batch["labels"] for batch in batches])
        total = 0.0
        for batch in batches:
            loss = self._lm_terms(batch, count)["lm_loss"]
            backward(loss)
            total = total + loss.detach()
        return {"lm_loss": total}

    def on_train_epoch_end(self) -> None:
        """Say how many invalid samples the data module left out or replaced (``skip_invalid``), every epoch."""
        super().on_train_epoch_end()
        skipped = getattr(getattr(self.trainer, "datamodule", None), "skipped_invalid", None)
        if skipped:
            self.log("data/skipped_invalid", float(len(skipped)), rank_zero_only=True)
            named = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
            rank_zero_info(f"epoch {self.current_epoch}: {len(skipped)} invalid sample(s) skipped ({named} ...)")

    def configure_callbacks(self) -> list:
        if self.trainer.accumulate_grad_batches > 1:
            rank_zero_warn(
                "trainer.accumulate_grad_batches averages per-micro-batch token means; for the token mean of the "
                "whole step (what LLaVA's recipe means) use --model.init_args.micro_batches instead"
            )
        return super().configure_callbacks()

    # ----------------------------------------------------------------------------- checkpoints
    def load_matching(self, path: str) -> dict[str, list[str]]:
        """Initialise from ``path`` (a zoo checkpoint, e.g. stage 1's): every tensor whose name (without peft's
        wrapping) and shape match is loaded; says what was loaded and what was not."""
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        saved = {canonical_name(k): v for k, v in state.items()}
        loaded, skipped = [], []
        with torch.no_grad():
            for name, tensor in self.state_dict(keep_vars=True).items():
                source = saved.get(canonical_name(name))
                if source is not None and source.shape == tensor.shape:
                    tensor.copy_(source)
                    loaded.append(name)
                elif source is not None:
                    skipped.append(f"{name} {tuple(source.shape)} != {tuple(tensor.shape)}")
        if not loaded:
            raise ValueError(f"init_from {path}: no tensor of the checkpoint matches this model")
        groups = sorted({canonical_name(n).split(".")[2] for n in loaded})
        rank_zero_info(
            f"init_from {path}: loaded {len(loaded)} of its {len(state)} tensors ({', '.join(groups)})"
            + (f"; shapes differ: {skipped}" if skipped else "")
        )
        return {"loaded": loaded, "skipped": skipped}

    # ----------------------------------------------------------------------------- generation
    def prompt_ids(self, questions: list[str], has_image: list[bool]) -> list[list[int]]:
        """Token ids of the inference prompts (the model's template), each image expanded to its tokens."""
        texts = [
            inference_prompt(q, self.template, has_image=h, tokenizer=self.tokenizer, system=self.hparams.system_prompt)
            for q, h in zip(questions, has_image)
        ]
        return [encode_prompt(text, self.tokenizer, self.image_tokens) for text in texts]

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
        (no LoRA dropout) whatever the module's mode; ``return_ids``: the answers' token ids, up to EOS."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        images = [images] * len(prompts) if images is None or isinstance(images, Image.Image) else list(images)
        ids = self.prompt_ids(prompts, [image is not None for image in images])
        pixel_values = None
        if any(image is not None for image in images):
            transform, size = ImageTransform(self.images), self.image_spec.image_size
            pixel_values = torch.stack(
                [transform(image) if image is not None else torch.zeros(3, size, size) for image in images]
            ).to(self.device, self.dtype)
            # a text-only row of a mixed batch: its (zero) image's tokens sit masked in the left padding
            ids = [row if image is not None else [self.llava.config.image_token_id] * self.image_tokens + row
                   for row, image in zip(ids, images)]  # fmt: skip
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=self.device)
        for i, image in enumerate(images):
            if image is None and pixel_values is not None:
                mask[i, width - len(ids[i]) : width - len(ids[i]) + self.image_tokens] = 0
        generation_kwargs.setdefault("max_new_tokens", 64)
        generation_kwargs.setdefault("do_sample", False)
        generation_kwargs.setdefault("pad_token_id", pad)
        if pixel_values is not None:
            generation_kwargs["pixel_values"] = pixel_values
        training = self.training
        self.eval()
        try:
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

    # --------------------------------------------------------------------------------- export
    def export_hf(self, folder: str | Path, merge_lora: bool = True) -> Path:
        """Write a plain transformers LLaVA folder (model, tokenizer, processor), loadable with
        ``LlavaForConditionalGeneration.from_pretrained`` + ``LlavaProcessor.from_pretrained``. With LoRA, the
        adapters are merged (``merge_lora``) or kept as a peft adapter folder ``adapter/`` beside the base.

        The processor is the zoo's (PIL) one, but transformers picks an image processor's backend when loading,
        not from the folder (5.x: torchvision whenever installed; its bicubic resize differs by ~0.02):
        ``LlavaProcessor.from_pretrained(folder, backend="pil")`` gives exactly the zoo's pixels (tested)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.llava
        if hasattr(self.model, "get_base_model"):
            wrapped = copy.deepcopy(self.model).cpu()
            if not merge_lora:
                self.model.save_pretrained(folder / "adapter")
            model = wrapped.merge_and_unload() if merge_lora else wrapped.unload()
        model.save_pretrained(folder)
        llava_processor(model, self.tokenizer, self.images).save_pretrained(folder)
        return folder
