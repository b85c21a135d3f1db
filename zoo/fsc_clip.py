"""FSC-CLIP (Oh et al.): CLIP plus global and local hard-negative losses with selective calibrated
regularisation, preserving multi-modal capabilities while improving compositionality."""

from __future__ import annotations

from typing import Any

import torch

from zoo.clip import CLIP
from zoo.losses import contrastive_loss
from zoo.losses.fsc import fsc_hard_negative_losses, local_score


class FSCCLIP(CLIP):
    """L = L_clip + λ_g·L_neg^g + λ_l·L_neg^l.

    L_clip is the symmetric contrastive loss over the originals only; the hard negatives (batch
    ``negatives`` [B, K, L] + ``negative_mask``) enter only the two per-image (1+K)-way losses. The
    logged ``global_hn_loss`` / ``local_hn_loss`` are already weighted by λ_g / λ_l.

    Args:
        lambda_global: λ_g (paper: 0.5; 1.0 on CC3M in the official README).
        lambda_local: λ_l (paper: 0.2; 0.5 for ViT-B/16 and L/14 in the official README).
        use_global, use_local: switch a hard-negative loss off (Table 2 ablations).
        focal_gamma: γ of the focal factor (0 switches focal loss off).
        label_smoothing: β (0 switches label smoothing off).
        **kwargs: everything :class:`zoo.CLIP` takes.
    """

    def __init__(
        self,
        lambda_global: float = 0.5,
        lambda_local: float = 0.2,
        use_global: bool = True,
        use_local: bool = True,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.02,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Pooled embeddings of images, captions and valid negatives, and (with the local loss) each
        row's local logits ``[B, 1+K]``: they involve only the row's own image, so they are per-sample."""
        if "negatives" not in batch:
            raise ValueError("FSC-CLIP needs hard negatives: set data.init_args.hard_negatives")
        tokens, mask = batch["text"], batch["negative_mask"]
        negative_tokens = batch["negatives"][mask]
        dense = self.backbone.encode_dense(batch["image"], torch.cat([tokens, negative_tokens]))
        n = len(tokens)
        texts = dense["text_features"][:n]
        negatives = texts.new_zeros(*mask.shape, texts.shape[-1])
        negatives[mask] = dense["text_features"][n:]
        local = None
        if self.hparams.use_local:
            scale = self.backbone.logit_scale
            patches, words = dense["patch_features"], dense["token_features"]
            owner = mask.nonzero()[:, 0]  # the image of each valid negative
            positive = local_score(words[:n], self.backbone.token_mask(tokens), patches, scale)
            negative = local_score(words[n:], self.backbone.token_mask(negative_tokens), patches[owner], scale)
            local = torch.cat([positive[:, None], positive.new_zeros(mask.shape).masked_scatter(mask, negative)], 1)
        image = dense["image_features"]
        return {"image": image, "text": texts, "negatives": negatives, "negative_mask": mask, "local": local}

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        hp = self.hparams
        images, texts, scale = features["image"], features["text"], self.logit_scale(detach_parameters)
        terms = contrastive_loss(images, texts, scale)
        hn = fsc_hard_negative_losses(
            images,
            texts,
            features["negatives"],
            features["negative_mask"],
            scale,
            features["local"],
            hp.focal_gamma,
            hp.label_smoothing,
        )
        if hp.use_global:
            terms["global_hn_loss"] = hp.lambda_global * hn["global_hn_loss"]
        if hp.use_local:
            terms["local_hn_loss"] = hp.lambda_local * hn["local_hn_loss"]
        return terms
