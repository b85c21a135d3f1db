"""Soft prompts (VladVA, Sec. 3.2): learnable vectors that replace a prompt's tokens in ``inputs_embeds``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftPrompts(nn.Module):
    """One ``[n, D]`` parameter per modality, initialised from the handcrafted prompt tokens' embeddings (so at
    initialisation the model sees exactly the handcrafted prompt)."""

    def __init__(self, initial: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.prompts = nn.ParameterDict({name: nn.Parameter(value.detach().clone()) for name, value in initial.items()})

    def __getitem__(self, modality: str) -> nn.Parameter:
        return self.prompts[modality]

    def splice(self, embeds: torch.Tensor, mask: torch.Tensor, modality: str) -> torch.Tensor:
        """``embeds`` [B, L, D] with the positions of ``mask`` [B, L] (n per row) replaced by the modality's soft
        prompt, out of place (the image slots and every other token untouched)."""
        prompt = self.prompts[modality]
        counts = mask.sum(1)
        if bool((counts != len(prompt)).any()):
            raise ValueError(
                f"the {modality} soft prompt has {len(prompt)} vectors, the rows have {counts.tolist()} slots"
            )
        source = prompt.to(embeds.dtype).expand(len(embeds), -1, -1)
        return embeds.masked_scatter(mask[..., None].to(embeds.device), source)

    @torch.no_grad()
    def nearest_tokens(self, modality: str, vocabulary: torch.Tensor) -> list[int]:
        """Ids of the vocabulary embeddings (rows of ``vocabulary`` [V, D]) nearest, by cosine, to each vector."""
        prompt = F.normalize(self.prompts[modality].float(), dim=-1)
        return (prompt @ F.normalize(vocabulary.float(), dim=-1).T).argmax(-1).tolist()
