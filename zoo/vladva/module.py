"""VladVA (Ouali, Bulat et al., "Discriminative Fine-tuning of LVLMs", 2025): a LLaVA turned into a two-tower
embedding model with fully shared weights, trained with L = L_c + λ·L_AR."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from zoo.backbones.llava.build import Projector
from zoo.backbones.llava.parts import LoRAConfig
from zoo.base import ZooModule
from zoo.inputs import Images, Texts, image_batch, text_list
from zoo.llava import ImageTransform, LLaVA
from zoo.losses import all_reduce_sum, contrastive_loss, sequence_nll, world_size
from zoo.vladva import qwen2_vl
from zoo.vladva.high_res import HighResImages, HighResImageTransform, image_inputs, required_sizes
from zoo.vladva.prompts import EmbeddingPrompts, EmbeddingSequences, Modality
from zoo.vladva.qwen2_vl import QWEN2_VL, backbone_type
from zoo.vladva.soft_prompts import SoftPrompts

MAX_LOGIT_SCALE = 100.0


class VladVA(LLaVA):
    """An LVLM as two embedding towers: f_v(image) and f_t(text) are the LLM's final-layer hidden state (after its
    final norm) at the summary token, the last token of the one-word prompt (:mod:`zoo.vladva.prompts`). The text
    tower is the LLM alone: the vision tower never runs for text.

    Public API as the CLIP family: :meth:`encode_image`, :meth:`encode_text`, :meth:`similarity`; plus LLaVA's
    :meth:`generate` and :meth:`export_hf` (with ``vladva.json``: prompts and soft prompts beside the weights).

    Args:
        model_name_or_path, vision_tower, language_model, language_model_config, projector, vision_feature_layer:
            the base LVLM, as :class:`zoo.LLaVA` takes it (a zoo LLaVA export folder, an HF LLaVA, or parts); or
            a Qwen2-VL folder / hub id (``model_type: qwen2_vl``; :mod:`zoo.vladva.qwen2_vl`; the parts unused).
        prompts: the wording (:class:`~zoo.vladva.prompts.EmbeddingPrompts`; default the paper's prompts in
            LLaVA-1.5's chat format, or in Qwen's ChatML on Qwen2-VL), recorded in checkpoints.
        soft_prompts: learnable vectors replacing each modality's handcrafted prompt tokens, initialised from those
            tokens' embeddings.
        lora: peft LoRA on the LLM's linear layers only (``{}``: r 128, α 256; ``null``: no LoRA).
        ar_weight: λ of the next-token loss on the long captions (0: off).
        temperature: the contrastive temperature τ (logit scale 1/τ, at most 100); ``learn_temperature`` trains it.
        trainable: parts trained beyond the adapters (``{projector: true}``, ``{vision_tower: 2e-6}``); the vision
            tower and the projector are frozen by default.
        init_from: a zoo LLaVA checkpoint whose matching tensors initialise the base.
        contrastive_accumulation: micro-batches contrasted as one batch (GradCache-style): the negatives are the
            global batch of every micro-batch of the step.
        max_length: token limit of a sequence (the long caption's tail is cut).
        padding_side: how batched sequences are padded (``right``: the summary is gathered at its index).
        image_aspect_ratio, system_prompt, activation_checkpointing, cache_dir, seed, image_spec: as LLaVA's.
        high_res: LLaVA-NeXT AnyRes / LLaVA-1.5-HD, as LLaVA's (LLaVA backbones only): an image's visual-token
            count follows its size, so image sequences are padded per row (:mod:`zoo.vladva.high_res`).
        **kwargs: optimiser settings of :class:`zoo.base.ZooModule`.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        vision_tower: str | None = "open_clip:vlzoo-tiny-vit",
        language_model: str | None = "vlzoo-tiny-llama",
        language_model_config: dict[str, Any] | None = None,
        projector: Projector = "mlp2x_gelu",
        vision_feature_layer: int = -2,
        prompts: EmbeddingPrompts | None = None,
        soft_prompts: bool = True,
        lora: LoRAConfig | None = None,
        ar_weight: float = 1.0,
        temperature: float = 0.05,
        learn_temperature: bool = True,
        trainable: dict[str, bool | float] | None = None,
        init_from: str | None = None,
        contrastive_accumulation: int = 1,
        max_length: int = 512,
        padding_side: Literal["right", "left"] = "right",
        image_aspect_ratio: Literal["pad", "square"] = "pad",
        system_prompt: str | None = None,
        activation_checkpointing: bool = False,
        cache_dir: str | None = None,
        seed: int = 0,
        image_spec: dict[str, Any] | None = None,
        high_res: dict[str, Any] | None = None,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_ratio: float = 0.03,
        **kwargs: Any,
    ) -> None:
        if ar_weight < 0 or not 0 < temperature <= 1:
            raise ValueError(f"ar_weight must be >= 0 and temperature in (0, 1], got {ar_weight}, {temperature}")
        parts = {"projector": False, "language_model": lora is not None, **(trainable or {})}
        super().__init__(
            model_name_or_path, vision_tower, language_model, language_model_config, projector, vision_feature_layer,
            stage="finetune", template="vicuna_v1", system_prompt=system_prompt,
            image_aspect_ratio=image_aspect_ratio, max_length=max_length, lora=lora, trainable=parts,
            init_from=init_from, micro_batches=contrastive_accumulation,
            activation_checkpointing=activation_checkpointing, cache_dir=cache_dir, seed=seed, image_spec=image_spec,
            high_res=high_res, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, warmup_ratio=warmup_ratio,
            **kwargs,
        )  # fmt: skip
        own = inspect.signature(VladVA.__init__).parameters
        for name in [name for name in self.hparams if name not in own]:  # LLaVA's stage / template: fixed here
            del self.hparams[name]
        self.sequences = self.embedding_sequences(prompts, long_captions=ar_weight > 0)
        self.hparams["prompts"] = dict(self.sequences.prompts)  # the exact wording trained with
        self.hparams["image_spec"] = dataclasses.asdict(self.image_spec)
        embedding = self.llava.get_input_embeddings().weight
        self.soft_prompts = (
            SoftPrompts({m: embedding[self.sequences.prompt_ids(m)] for m in ("image", "text")})
            if soft_prompts
            else None
        )
        self.log_logit_scale = nn.Parameter(
            torch.tensor([math.log(1 / temperature)]), requires_grad=learn_temperature
        )  # shape [1]: a 0-d parameter breaks FSDP and DeepSpeed

    # ---------------------------------------------------------------------------------- backbone
    def build_backbone(self) -> nn.Module:
        """LLaVA's, or a ``Qwen2VLForConditionalGeneration`` when ``model_name_or_path`` holds a Qwen2-VL."""
        hp = self.hparams
        self.backbone_type = backbone_type(hp.model_name_or_path, hp.cache_dir)
        if self.backbone_type != QWEN2_VL:
            return super().build_backbone()
        if hp.get("high_res") is not None:
            raise ValueError("high_res (AnyRes / HD) is for LLaVA backbones; Qwen2-VL sizes its images itself")
        model, self.tokenizer, self.image_spec, self.images, self.image_tokens = qwen2_vl.load_qwen2_vl(
            hp.model_name_or_path, hp.cache_dir, hp.image_spec
        )
        return model

    def embedding_sequences(self, prompts: EmbeddingPrompts | None, long_captions: bool) -> EmbeddingSequences:
        """The sequences' builder, with the backbone's chat format and image span as defaults."""
        qwen = {}
        if self.backbone_type == QWEN2_VL:
            token = self.tokenizer.convert_ids_to_tokens(self.llava.config.image_token_id)
            qwen = {"image_token": token, "image_span": qwen2_vl.IMAGE_SPAN, "defaults": qwen2_vl.QWEN2_VL_PROMPTS}
        hp, count = self.hparams, None if self.high_res is not None else self.image_tokens  # high-res: per image
        return EmbeddingSequences(self.tokenizer, count, prompts, hp.max_length, hp.padding_side, long_captions, **qwen)

    # ---------------------------------------------------------------------------------- towers
    def sequence_states(
        self,
        modality: Modality,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        soft_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, L, D] of the LLM (after its final norm) over ``inputs_embeds``: the token
        embeddings, the soft prompts at ``soft_mask`` and the projected image features at the ``<image>`` slots,
        each spliced out of place, row after row. Position ids count real tokens only, so padding never shifts a
        row (Qwen2-VL: M-RoPE's). High-res: every image's views [N, 3, T, T] and ``image_sizes`` [B, 2] (h, w)."""
        qwen, grid = self.backbone_type == QWEN2_VL, None
        embeds = self.llava.get_input_embeddings()(input_ids)
        if self.soft_prompts is not None:
            embeds = self.soft_prompts.splice(embeds, soft_mask, modality)
        if pixel_values is not None:
            slots = input_ids == self.llava.config.image_token_id
            if qwen:
                grad = any(p.requires_grad for p in self.llava.model.visual.parameters())
                features, grid = qwen2_vl.image_features(self.llava, pixel_values.to(self.dtype), grad)
            elif self.high_res is not None:  # visual_features checks each row's slots against its image's count
                features = torch.cat(self.visual_features(pixel_values, required_sizes(image_sizes), input_ids))
            else:
                features = self.image_features(pixel_values)
            features = features.flatten(0, -2).to(embeds.dtype)  # row after row, as masked_scatter fills the slots
            if int(slots.sum()) != len(features):
                raise ValueError(f"{int(slots.sum())} <image> slots for {len(features)} image features")
            embeds = embeds.masked_scatter(slots[..., None], features)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if qwen:
            positions = qwen2_vl.position_ids(self.llava, input_ids, attention_mask, grid)
        out = self.llava.model.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions
        )
        return out.last_hidden_state

    @staticmethod
    def summary(states: torch.Tensor, summary_index: torch.Tensor) -> torch.Tensor:
        """The hidden state at each row's summary token: ``[B, D]``."""
        return states[torch.arange(len(states), device=states.device), summary_index.to(states.device)]

    def _tower(self, modality: Modality, batch: dict[str, Any], pixel_values: torch.Tensor | None = None):
        states = self.sequence_states(
            modality, batch[f"{modality}_input_ids"], batch[f"{modality}_attention_mask"],
            batch[f"{modality}_soft_mask"], pixel_values, batch.get("image_sizes"),
        )  # fmt: skip
        return states, self.summary(states, batch[f"{modality}_summary_index"])

    def image_inputs(self, images: Images | HighResImages) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(pixel_values, batch)``: the image tower's pixels and sequences (high-res: per-image counts, sizes)."""
        if self.high_res is None:
            pixels = image_batch(images, ImageTransform(self.images))
            batch = self.sequences.images(len(pixels))
        else:
            inputs = image_inputs(self.high_res, self.image_spec, images)
            pixels, batch = inputs["pixel_values"], self.sequences.images(len(inputs), image_tokens=inputs.counts)
            batch["image_sizes"] = inputs["image_sizes"]
        return pixels.to(self.device, self.dtype), {k: v.to(self.device) for k, v in batch.items()}

    def encode_image(self, images: Images | HighResImages, normalize: bool = True) -> torch.Tensor:
        """Image embeddings f_v ``[B, D]`` (L2-normalised by default) of PIL images or transformed ones."""
        pixels, batch = self.image_inputs(images)
        embeddings = self._tower("image", batch, pixels)[1]
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    def encode_text(self, texts: Texts, normalize: bool = True) -> torch.Tensor:
        """Text embeddings f_t ``[N, D]`` of one string or a list (the LLM alone: no vision tower)."""
        texts = text_list(texts)
        if isinstance(texts, torch.Tensor):
            raise TypeError("VladVA encodes strings (its prompt is built around them), not token ids")
        batch = {k: v.to(self.device) for k, v in self.sequences.texts(texts).items()}
        embeddings = self._tower("text", batch)[1]
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    def similarity(self, images: Images, texts: Texts) -> torch.Tensor:
        """Cosine similarities ``[B, N]`` between images and texts."""
        return self.encode_image(images) @ self.encode_text(texts).T

    def data_transforms(self) -> dict[str, Any]:
        """Tokenizer, image transform and the :class:`~zoo.vladva.prompts.EmbeddingSequences` the collator calls."""
        transforms = {**super().data_transforms(), "sequences": self.sequences}
        if self.high_res is not None:  # images that batch themselves, each with its count (zoo.vladva.high_res)
            transform = HighResImageTransform(self.high_res, self.image_spec)
            transforms.update(train_transform=transform, eval_transform=transform)
        return transforms

    # -------------------------------------------------------------------------------- training
    def logit_scale(self, detach: bool = False) -> torch.Tensor:
        """1/τ, clamped at 100 (detached: no gradient for it)."""
        scale = self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return scale.detach() if detach else scale

    def batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["image_input_ids"])

    def features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Normalised summary embeddings of both towers and, with λ > 0, each row's summed next-token loss over
        its long caption (from the same image forward pass) and its count of supervised tokens."""
        pixels = batch["pixel_values"] if "pixel_values" in batch else batch["image"]
        states, image = self._tower("image", batch, pixels)
        text = self._tower("text", batch)[1]
        out = {
            "image": F.normalize(image, dim=-1),
            "text": F.normalize(text, dim=-1),
            "has_short": batch.get("has_short"),
        }
        if self.hparams.ar_weight > 0:
            head = self.llava.lm_head
            out["ar_nll"], out["ar_tokens"] = sequence_nll(states, batch["labels"], head.weight, head.bias)
        return out

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        """``contrastive_loss``: L_c, the symmetric InfoNCE (Eq. 1) over the global batch's rows with a short
        caption; ``ar_loss``: λ·L_AR, the summed next-token loss over the global count of supervised tokens."""
        terms = contrastive_loss(
            features["image"], features["text"], self.logit_scale(detach_parameters), valid=features.get("has_short")
        )
        if self.hparams.ar_weight > 0:
            count = all_reduce_sum(features["ar_tokens"].sum()).clamp(min=1)
            loss = features["ar_nll"].sum() * world_size() / count
            terms["ar_loss"] = self.hparams.ar_weight * loss
        return terms

    losses = ZooModule.losses
    accumulated_losses = ZooModule.accumulated_losses

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("train/logit_scale", self.logit_scale().item())

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        experiment = getattr(self.logger, "experiment", None) if self.trainer.is_global_zero else None
        for modality, text in self.soft_prompt_words().items():  # the paper reads the soft prompts back as text
            rank_zero_info(f"soft {modality} prompt, nearest vocabulary tokens: {text!r}")
            if hasattr(experiment, "add_text"):  # TensorBoard
                experiment.add_text(f"soft_prompts/{modality}", text, self.global_step)

    def soft_prompt_words(self) -> dict[str, str]:
        """The soft prompts read back as text: each vector's nearest vocabulary embedding (cosine), decoded."""
        if self.soft_prompts is None:
            return {}
        vocabulary = self.llava.get_input_embeddings().weight
        return {
            modality: self.tokenizer.decode(self.soft_prompts.nearest_tokens(modality, vocabulary))
            for modality in ("image", "text")
        }

    def no_weight_decay(self) -> set[str]:
        """The soft prompts are embeddings: no weight decay, as the vocabulary's."""
        soft = self.soft_prompts.named_parameters() if self.soft_prompts is not None else []
        return super().no_weight_decay() | {f"soft_prompts.{name}" for name, _ in soft}

    def configure_callbacks(self) -> list:
        if self.trainer.accumulate_grad_batches > 1:
            rank_zero_warn(
                "trainer.accumulate_grad_batches contrasts each micro-batch alone (fewer negatives); to contrast the "
                "whole step use --model.init_args.contrastive_accumulation instead"
            )
        return ZooModule.configure_callbacks(self)

    def configure_optimizers(self) -> dict[str, Any]:
        if not any(p.requires_grad for p in self.parameters()):
            raise ValueError(
                "VladVA has nothing to train (no soft prompts, no LoRA, a fixed temperature, frozen parts): evaluate "
                "it with `validate`, or switch one on"
            )
        return super().configure_optimizers()

    # ------------------------------------------------------------------------------ base model
    def generate(self, images: Any, prompts: list[str] | str, return_ids: bool = False, **kwargs: Any) -> list:
        """LLaVA's :meth:`~zoo.LLaVA.generate`; on Qwen2-VL, :func:`zoo.vladva.qwen2_vl.generate`."""
        if self.backbone_type != QWEN2_VL:
            return super().generate(images, prompts, return_ids, **kwargs)
        return qwen2_vl.generate(self, images, prompts, return_ids, **kwargs)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The base LVLM: LoRA adapters off inside the block (a no-op without LoRA)."""
        if hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield
        else:
            yield

    @contextlib.contextmanager
    def handcrafted(self, prompts: EmbeddingPrompts | None = None) -> Iterator[None]:
        """Inside the block, embed with handcrafted prompts: soft prompts off, the wording changed by ``prompts``
        (e.g. ``{"image_prompt": ..., "text_prompt": ...}``; prompt analysis). With :meth:`adapters_disabled` too,
        the model is the base LVLM with the handcrafted prompts (zero-shot)."""
        saved = self.sequences, self.soft_prompts
        wording = {**self.sequences.prompts, **(prompts or {})}
        self.sequences = self.embedding_sequences(wording, self.sequences.long_captions)
        self.soft_prompts = None
        try:
            yield
        finally:
            self.sequences, self.soft_prompts = saved

    def zero_shot_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors at their start, for WiSE-FT from the base (``vlzoo-wise-ft --zeroshot base``):
        LoRA's B at zero (the base LVLM), the soft prompts at the handcrafted prompt's embeddings; the rest (LoRA's
        A, the temperature) as trained, which changes no embedding there."""
        embedding = self.llava.get_input_embeddings().weight.detach()
        state = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                state[name] = torch.zeros_like(param) if ".lora_B." in name else param.detach().clone()
                if name.startswith("soft_prompts.prompts."):
                    state[name] = embedding[self.sequences.prompt_ids(name.rsplit(".", 1)[1])].clone()
        return state

    # ---------------------------------------------------------------------------------- export
    def embedding_recipe(self) -> dict[str, Any]:
        """What plain transformers needs to embed as this model does (``vladva.json``): per modality the token ids
        around the prompt and the caption, the soft prompt (or the prompt's ids), and the summary rule."""
        recipe: dict[str, Any] = {
            "prompts": dict(self.sequences.prompts),
            "summary": "final-layer hidden state (after the final norm) at the last token",
            "logit_scale": float(self.logit_scale(detach=True)),
        }
        for modality in ("image", "text"):
            ids, soft, caption_start = self.sequences.first_turn(modality, image_tokens=1 if self.high_res else None)
            start, end = soft.index(True), len(soft) - soft[::-1].index(True)
            entry: dict[str, Any] = {"before_ids": ids[:start], "prompt_ids": ids[start:end]}
            if modality == "text":
                entry.update(between_ids=ids[end:caption_start], after_ids=ids[caption_start:])
                entry["caption_prefix"] = self.sequences.caption_prefix()
            else:
                entry["after_ids"] = ids[end:]
            if self.soft_prompts is not None:
                entry["soft_prompt"] = self.soft_prompts[modality].detach().float().cpu().tolist()
                entry["soft_prompt_words"] = self.soft_prompt_words()[modality]
            recipe[modality] = entry
        return recipe

    def export_hf(self, folder: str | Path, merge_lora: bool = True) -> Path:
        """LLaVA's export (LoRA merged) plus ``vladva.json`` (:meth:`embedding_recipe`); the README shows how to
        embed with plain transformers from it."""
        if self.backbone_type != QWEN2_VL:
            folder = super().export_hf(folder, merge_lora)
            (folder / "vladva.json").write_text(json.dumps(self.embedding_recipe()))
            return folder
        folder = qwen2_vl.export(self, folder, merge_lora)
        (folder / "vladva.json").write_text(json.dumps({**self.embedding_recipe(), **qwen2_vl.recipe_extras(self)}))
        return folder
