"""NegCLIP (Yuksekgonul et al., ICLR 2023): CLIP fine-tuned with hard-negative captions (and images)."""

from __future__ import annotations

from typing import Any

import torch

from zoo.clip import CLIP
from zoo.losses import negclip_loss


class NegCLIP(CLIP):
    """CLIP whose image→text softmax also runs over each caption's hard negatives.

    Needs batches with ``negatives`` [B, K, L] and ``negative_mask`` [B, K] (the image-caption data
    module's ``hard_negatives`` option); hard images arrive as extra rows of the batch
    (``hard_images: true``). Only valid negatives are encoded.

    Args:
        mask_same_image: another caption of the same image (same ``image_id``) is never a negative.
        **kwargs: everything :class:`zoo.CLIP` takes.
    """

    def __init__(self, mask_same_image: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.mask_same_image = mask_same_image

    def encode_negatives(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, K, D]`` of the valid negatives (zeros where ``mask`` is False)."""
        valid = self.backbone.encode_text(tokens[mask])
        out = valid.new_zeros(*mask.shape, valid.shape[-1])
        out[mask] = valid
        return out

    def features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        if "negatives" not in batch:
            raise ValueError("NegCLIP needs hard negatives: set data.init_args.hard_negatives (e.g. [negclip])")
        return {
            **super().features(batch),
            "negatives": self.encode_negatives(batch["negatives"], batch["negative_mask"]),
            "negative_mask": batch["negative_mask"],
            "image_id": batch["image_id"] if self.mask_same_image else None,
        }

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        return negclip_loss(
            features["image"],
            features["text"],
            features["negatives"],
            features["negative_mask"],
            self.logit_scale(detach_parameters),
            features["image_id"],
        )
