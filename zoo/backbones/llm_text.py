"""A frozen causal LM as CLIP's text tower: the LLM2Vec row of the controlled study in "On erroneous agreements
of CLIP image embeddings" (Li et al., 2024). The LM's last hidden states are averaged over a caption's tokens,
then a 2-layer MLP connector (Linear → exact GELU → Linear), the only trainable text part, maps them to the joint
space. Any transformers causal LM (a folder or hub id) or the zoo's own ``vlzoo-tiny-llama``.

* Tokens: the LM tokenizer's own special tokens (BOS for a Llama), the caption, then EOS (the end-of-text mark the
  zoo's LM is pretrained with, ``datamodules.text``), cut at ``max_length`` with EOS kept; the mean runs over all
  of them, BOS and EOS included.
* Padding is ``-1`` (no token has that id): the ``[N, L]`` id tensor carries its own attention mask through any
  collator (the hard-negative reshape included), and the LM's tokenizer needs no pad token.
* Positions count real tokens only (``cumsum(mask) - 1``), so a caption embeds the same left- or right-padded
  (the LM's default positions would shift with left padding).
* The LM runs without gradients and stays in eval mode whatever ``train()`` asks (no dropout: contrastive
  accumulation's two passes agree); it is frozen, so trainable-only checkpoints hold the connector alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zoo.backbones.lora import parameter_table
from zoo.backbones.openclip import OpenCLIPBackbone, OpenCLIPConfig, tower_of

PAD = -1
# open_clip's text tower inside a CLIP (CustomTextCLIP keeps it under ``text``), dropped when an LM replaces it
OPEN_CLIP_TEXT = "text transformer token_embedding positional_embedding ln_final text_projection attn_mask".split()


class LLMCaptionTokenizer:
    """Captions → token ids ``[N, L]``, right-padded with :data:`PAD` to the longest caption of the call.

    Args:
        tokenizer: the LM's transformers tokenizer.
        max_length: most tokens per caption, EOS included (longer captions are cut before EOS).
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if tokenizer.eos_token_id is None or max_length < 2:
            raise ValueError(f"the LM tokenizer needs an EOS token and max_length >= 2 (got {max_length})")
        self.tokenizer = tokenizer
        self.context_length = max_length

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        eos = self.tokenizer.eos_token_id
        rows = []
        for ids in self.tokenizer(texts).input_ids:
            ids = ids[:-1] if ids and ids[-1] == eos else ids  # a tokenizer that appends EOS itself: not twice
            rows.append([*ids[: self.context_length - 1], eos])
        width = max(len(row) for row in rows)
        return torch.tensor([row + [PAD] * (width - len(row)) for row in rows], dtype=torch.long)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``[N, L, H]`` over the positions where ``mask`` ``[N, L]`` is True → ``[N, H]``."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def language_model_reference(spec: str) -> str:
    """An LM spec with a local folder made absolute (a checkpoint then loads from any directory); ids as given."""
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


class LLMTextTower(nn.Module):
    """Frozen causal LM → masked mean of its last hidden states → trainable MLP connector → joint space.

    Args:
        language_model: a transformers causal-LM folder or hub id, or ``vlzoo-tiny-llama`` (seeded random
            weights; train one with ``configs/llm_pretrain.yaml``).
        embed_dim: the joint space's width (the image tower's output).
        connector_hidden: the connector's hidden width (default: the LM's hidden size).
        max_length: most tokens per caption, BOS and EOS included.
        cache_dir: where transformers caches downloaded weights.
    """

    def __init__(
        self,
        language_model: str,
        embed_dim: int,
        connector_hidden: int | None = None,
        max_length: int = 77,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        from zoo.backbones.llava.build import load_language_model, load_tokenizer  # transformers' LMs on use

        self.tokenizer = LLMCaptionTokenizer(load_tokenizer(language_model, cache_dir), max_length)
        self.decoder = load_language_model(language_model, cache_dir).get_decoder()  # no LM head: unused
        self.decoder.requires_grad_(False).eval()
        width = self.decoder.config.hidden_size
        hidden = connector_hidden or width
        self.connector = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))

    def train(self, mode: bool = True) -> LLMTextTower:
        super().train(mode)
        self.decoder.eval()  # frozen: never in training mode (dropout)
        return self

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The LM's mean last hidden state ``[N, H]`` over each caption's tokens (ids padded with :data:`PAD`)."""
        mask = tokens != PAD
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            out = self.decoder(input_ids=tokens.clamp(min=0), attention_mask=mask.long(), position_ids=positions)
            return masked_mean(out.last_hidden_state, mask)

    def forward(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Joint-space embeddings ``[N, D]`` of token ids ``[N, L]`` (:class:`LLMCaptionTokenizer`'s)."""
        features = self.connector(self.pooled(tokens))
        return F.normalize(features, dim=-1) if normalize else features


class LLMTextCLIPBackbone(OpenCLIPBackbone):
    """An open_clip backbone whose text tower is an :class:`LLMTextTower` (``text_tower`` among the backbone's
    arguments, :class:`~zoo.backbones.openclip.LLMTextConfig`); open_clip's own text tower is dropped. The image
    tower, temperature and image options are open_clip's as usual; ``lock_text`` freezes the connector too;
    LoRA adapts the image tower only. Its tokenizer (``data_transforms()["tokenizer"]``) is the LM's."""

    def __init__(self, text_tower: dict[str, Any], lora_towers: tuple[str, ...] = ("image",), **open_clip: Any) -> None:
        if open_clip.get("lora_rank") and "text" in lora_towers:
            raise ValueError("the LLM text tower is frozen: LoRA adapts the image tower only (lora_towers: [image])")
        super().__init__(lora_towers=lora_towers, **open_clip)
        with torch.no_grad():  # the joint space's width, whatever the architecture: what open_clip's text tower gives
            embed_dim = self.model.encode_text(self.tokenizer([""])).shape[-1]
        for part in OPEN_CLIP_TEXT:
            if hasattr(self.model, part):
                delattr(self.model, part)
        self.text_tower = LLMTextTower(**text_tower, embed_dim=embed_dim, cache_dir=open_clip.get("cache_dir"))
        self.text_tower.connector.requires_grad_(not open_clip.get("lock_text", False))
        self.tokenizer = self.text_tower.tokenizer

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Pooled text embeddings ``[N, D]`` from token ids (:class:`LLMCaptionTokenizer`'s)."""
        return self.text_tower(tokens, normalize=normalize)

    def compile_towers(self, **options: Any) -> None:
        self.model.visual.compile(**options)
        self.text_tower.compile(**options)

    def parameter_table(self) -> str:
        return parameter_table(self, lambda name: tower_of(name.removeprefix("model.")))

    def encode_dense(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> dict:
        raise NotImplementedError("an LLM text tower has no per-token joint-space features (encode_dense)")

    def export_open_clip(self, out_dir: str | Path) -> Path:
        raise NotImplementedError("an LLM text tower is no open_clip model: use the checkpoint (load_from_checkpoint)")


def clip_backbone(config: OpenCLIPConfig) -> OpenCLIPBackbone:
    """The CLIP family's backbone from its arguments: open_clip's two towers, or with ``text_tower`` an LLM's."""
    if config.get("text_tower"):
        return LLMTextCLIPBackbone(**config)
    return OpenCLIPBackbone(**{key: value for key, value in config.items() if key != "text_tower"})
