"""Losses as pure functions on tensors returning named ``*_loss`` terms."""

from zoo.losses.contrastive import contrastive_loss, negclip_loss, unicl_loss
from zoo.losses.distributed import all_reduce_sum, gather, gather_with_grad, rank, world_size
from zoo.losses.language import IGNORE_INDEX, causal_lm_loss, sequence_nll, supervised_token_count

__all__ = [
    "IGNORE_INDEX",
    "all_reduce_sum",
    "causal_lm_loss",
    "contrastive_loss",
    "gather",
    "gather_with_grad",
    "negclip_loss",
    "rank",
    "sequence_nll",
    "supervised_token_count",
    "unicl_loss",
    "world_size",
]
