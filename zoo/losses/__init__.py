"""Losses as pure functions on tensors returning named ``*_loss`` terms."""

from zoo.losses.contrastive import contrastive_loss, negclip_loss, unicl_loss
from zoo.losses.distributed import gather, gather_with_grad, rank, world_size

__all__ = ["contrastive_loss", "negclip_loss", "unicl_loss", "gather", "gather_with_grad", "rank", "world_size"]
