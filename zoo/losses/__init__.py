"""Losses as pure functions on tensors returning named ``*_loss`` terms."""

from zoo.losses.contrastive import contrastive_loss, negclip_loss, unicl_loss
from zoo.losses.distributed import all_reduce_sum, gather, gather_with_grad, rank, world_size
from zoo.losses.language import (
    DEFAULT_CHUNK_SIZE,
    IGNORE_INDEX,
    ChunkedLinearCrossEntropy,
    causal_lm_loss,
    linear_cross_entropy,
    sequence_nll,
    supervised_token_count,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "IGNORE_INDEX",
    "ChunkedLinearCrossEntropy",
    "all_reduce_sum",
    "causal_lm_loss",
    "contrastive_loss",
    "gather",
    "gather_with_grad",
    "linear_cross_entropy",
    "negclip_loss",
    "rank",
    "sequence_nll",
    "supervised_token_count",
    "unicl_loss",
    "world_size",
]
