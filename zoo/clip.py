"""CLIP (Radford et al., 2021): symmetric contrastive image-text training over an open_clip backbone."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from zoo.backbones import OpenCLIPBackbone
from zoo.base import ZooModule
from zoo.losses import contrastive_loss


def _checksum(tensors: dict[str, torch.Tensor]) -> float:
    """A position-weighted sum of every value, enough to tell two sets of weights apart."""
    total = 0.0
    for i, name in enumerate(sorted(tensors)):
        total += (i + 1) * float(tensors[name].detach().double().abs().sum())
    return total


class CLIP(ZooModule):
    """Contrastive image-text model.

    Public API: :meth:`encode_image`, :meth:`encode_text` (token ids or strings), :meth:`similarity`,
    :meth:`export_open_clip`; ``CLIP.load_from_checkpoint(path)`` needs nothing but this package.

    Args:
        model_name, pretrained, model_cfg, lock_image, lock_text, grad_checkpointing, lora_rank,
            lora_alpha, lora_towers, train_augmentation: see :class:`zoo.backbones.OpenCLIPBackbone`.
        compile: ``torch.compile`` both towers (a dict: ``torch.compile`` options, e.g. ``{mode: max-autotune}``).
        **kwargs: optimiser settings of :class:`zoo.base.ZooModule` (``lr``, ``weight_decay``, ...).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        model_cfg: dict[str, Any] | None = None,
        lock_image: bool = False,
        lock_text: bool = False,
        grad_checkpointing: bool = False,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        lora_towers: tuple[str, ...] = ("image", "text"),
        train_augmentation: dict[str, Any] | None = None,
        compile: bool | dict[str, Any] = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.backbone = OpenCLIPBackbone(
            model_name=model_name,
            pretrained=pretrained,
            model_cfg=model_cfg,
            lock_image=lock_image,
            lock_text=lock_text,
            grad_checkpointing=grad_checkpointing,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_towers=lora_towers,
            train_augmentation=train_augmentation,
        )
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

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings ``[B, D]`` (L2-normalised by default)."""
        return self.backbone.encode_image(images, normalize=normalize)

    def encode_text(self, texts: torch.Tensor | list[str], normalize: bool = True) -> torch.Tensor:
        """Text embeddings ``[N, D]`` from token ids or raw strings (tokenised with the backbone's tokenizer)."""
        tokens = self.backbone.tokenize(texts) if isinstance(texts, (list, tuple)) else texts
        return self.backbone.encode_text(tokens, normalize=normalize)

    def similarity(self, images: torch.Tensor, texts: torch.Tensor | list[str]) -> torch.Tensor:
        """Cosine similarities ``[B, N]`` between images and texts."""
        return self.encode_image(images) @ self.encode_text(texts).T

    def export_open_clip(self, out_dir: str | Path) -> Path:
        """Export to an open_clip ``local-dir:`` folder; returns the weights file."""
        return self.backbone.export_open_clip(out_dir)

    # -------------------------------------------------------------------------------- training
    def features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        return {"image": self.backbone.encode_image(batch["image"]), "text": self.backbone.encode_text(batch["text"])}

    def temperature(self, detach: bool = False) -> torch.Tensor:
        """The logit scale ``s`` the losses use (detached: no gradient for it)."""
        scale = self.backbone.logit_scale
        return scale.detach() if detach else scale

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        return contrastive_loss(features["image"], features["text"], self.temperature(detach_parameters))

    def on_fit_start(self) -> None:
        rank_zero_info(f"Trainable parameters of {type(self).__name__}:\n{self.backbone.parameter_table()}")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.backbone.clamp_logit_scale_()
        self.log("train/logit_scale", self.backbone.logit_scale.item())

    def _frozen_parameters(self) -> dict[str, torch.Tensor]:
        return {name: param for name, param in self.named_parameters() if not param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A run that trains part of a pre-trained model (LoRA, locked towers, REACT's gated blocks)
        saves only what it trains plus a reference to its frozen base (the ``pretrained`` tag or file)
        and a checksum of it; any other run saves every weight and drops the reference."""
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint["hyper_parameters"]
        frozen = self._frozen_parameters()
        if hparams.get("pretrained") is None or not frozen:
            hparams["pretrained"] = None  # the weights are all here: loading must not fetch the tag again
            return
        if Path(hparams["pretrained"]).is_file():
            hparams["pretrained"] = str(Path(hparams["pretrained"]).resolve())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["frozen_base"] = {"pretrained": hparams["pretrained"], "checksum": _checksum(frozen)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Complete a trainable-only checkpoint with the frozen base this model was just built from."""
        super().on_load_checkpoint(checkpoint)
        base = checkpoint.get("frozen_base")
        if base is None:
            return
        frozen = self._frozen_parameters()
        if not math.isclose(_checksum(frozen), base["checksum"], rel_tol=1e-9):
            raise RuntimeError(
                f"the frozen base rebuilt from {base['pretrained']!r} is not the one this checkpoint was trained "
                "on (its weights changed): load the checkpoint with the original base"
            )
        checkpoint["state_dict"] = {**{k: v.detach() for k, v in frozen.items()}, **checkpoint["state_dict"]}
