"""CLIP (Radford et al., 2021): symmetric contrastive image-text training over an open_clip backbone."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from zoo.backbones import OpenCLIPConfig, clip_backbone
from zoo.backbones.llm_text import language_model_reference
from zoo.base import ZooModule
from zoo.checkpoints import file_or_name
from zoo.inputs import Images, Texts, image_batch, text_list
from zoo.losses import contrastive_loss


class CLIP(ZooModule):
    """Contrastive image-text model.

    Public API: :meth:`encode_image`, :meth:`encode_text` (token ids or strings), :meth:`similarity`,
    :meth:`export_open_clip`; ``CLIP.load_from_checkpoint(path)`` needs nothing but this package.

    Args:
        backbone: the open_clip backbone's arguments (:class:`zoo.backbones.OpenCLIPConfig`: ``model_name``,
            ``pretrained``, ``model_cfg``, ``lock_image``, ``lock_text``, ``grad_checkpointing``,
            ``cache_dir``, ``lora_rank``, ``lora_alpha``, ``lora_towers``, ``train_augmentation``; see
            :class:`zoo.backbones.OpenCLIPBackbone`), e.g. ``{"model_name": "ViT-B-32-quickgelu",
            "pretrained": "openai"}``; with ``text_tower: {language_model: ...}`` a frozen causal LM and an MLP
            connector replace the text tower (:class:`zoo.backbones.LLMTextCLIPBackbone`).
        compile: ``torch.compile`` both towers (a dict: ``torch.compile`` options, e.g. ``{mode: max-autotune}``).
        **kwargs: optimiser settings of :class:`zoo.base.ZooModule` (``lr``, ``weight_decay``, ...).
    """

    def __init__(
        self,
        backbone: OpenCLIPConfig | None = None,
        compile: bool | dict[str, Any] = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone_config = OpenCLIPConfig(**(backbone or {}))
        self.save_hyperparameters()
        # a copy all the way down: checkpoints rewrite base references in the saved hparams (text_tower.language_model)
        self.hparams["backbone"] = copy.deepcopy(dict(self.backbone_config))
        self.backbone = clip_backbone(self.backbone_config)
        if compile:
            self.backbone.compile_towers(**(compile if isinstance(compile, dict) else {}))

    # ------------------------------------------------------------------------------ public API
    def data_transforms(self) -> dict[str, Callable]:
        """What a data module's ``connect`` needs: tokenizer and train / eval image transforms."""
        return {
            "tokenizer": self.backbone.tokenizer,
            "train_transform": self.backbone.image_transform(train=True),
            "eval_transform": self.backbone.image_transform(train=False),
        }

    def encode_image(self, images: Images, normalize: bool = True) -> torch.Tensor:
        """Image embeddings ``[B, D]`` (L2-normalised by default).

        ``images``: a PIL image or a list of them (the model's own eval transform, ``data_transforms()
        ["eval_transform"]``, is applied), or tensors that transform made (``[B, 3, H, W]``, one
        ``[3, H, W]`` or a list of them); moved to the model's device and dtype."""
        batch = image_batch(images, self._eval_transform())
        weight = self.backbone.model.logit_scale
        return self.backbone.encode_image(batch.to(weight.device, weight.dtype), normalize=normalize)

    def encode_text(self, texts: Texts, normalize: bool = True) -> torch.Tensor:
        """Text embeddings ``[N, D]`` from one string, a list of strings (tokenised with the backbone's
        tokenizer) or token ids ``[N, L]``."""
        texts = text_list(texts)
        tokens = self.backbone.tokenize(texts) if isinstance(texts, list) else texts
        return self.backbone.encode_text(tokens.to(self.backbone.model.logit_scale.device), normalize=normalize)

    def similarity(self, images: Images, texts: Texts) -> torch.Tensor:
        """Cosine similarities ``[B, N]`` between images and texts (both as :meth:`encode_image` and
        :meth:`encode_text` take them)."""
        return self.encode_image(images) @ self.encode_text(texts).T

    def _eval_transform(self) -> Callable:
        if getattr(self, "_eval_transform_cache", None) is None:
            self._eval_transform_cache = self.backbone.image_transform(train=False)
        return self._eval_transform_cache

    def export_open_clip(self, out_dir: str | Path) -> Path:
        """Export to an open_clip ``local-dir:`` folder; returns the weights file."""
        return self.backbone.export_open_clip(out_dir)

    # -------------------------------------------------------------------------------- training
    def features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        return {"image": self.backbone.encode_image(batch["image"]), "text": self.backbone.encode_text(batch["text"])}

    def logit_scale(self, detach: bool = False) -> torch.Tensor:
        """The logit scale ``s = exp(t)``, the inverse temperature the losses multiply cosines by
        (detached: no gradient for it)."""
        scale = self.backbone.logit_scale
        return scale.detach() if detach else scale

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        return contrastive_loss(features["image"], features["text"], self.logit_scale(detach_parameters))

    def on_fit_start(self) -> None:
        rank_zero_info(f"Trainable parameters of {type(self).__name__}:\n{self.backbone.parameter_table()}")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.backbone.clamp_logit_scale_()
        self.log("train/logit_scale", self.backbone.logit_scale.item())

    # ---------------------------------------------------------------------------- base hooks
    def frozen_base_reference(self) -> dict[str, Any]:
        """The open_clip ``pretrained`` tag or file (absolute) the frozen weights come from, and an LLM text
        tower's language model (a folder made absolute)."""
        reference = {"backbone.pretrained": file_or_name(self.backbone_config.get("pretrained"))}
        if self.backbone_config.get("text_tower"):
            language_model = self.backbone_config["text_tower"]["language_model"]
            reference["backbone.text_tower.language_model"] = language_model_reference(language_model)
        return reference

    def no_weight_decay(self) -> set[str]:
        """open_clip's rule, answered by the backbone (names below ``backbone.``)."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def fsdp_wrap_classes(self) -> set[type[nn.Module]]:
        return self.backbone.block_classes()
