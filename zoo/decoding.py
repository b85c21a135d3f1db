"""M3ID decoding (Multi-Modal Mutual-Information Decoding; Favero et al., "Multi-Modal Hallucination Control by
Visual Information Grounding", CVPR 2024, arXiv:2403.14003) as a transformers ``LogitsProcessor``.

At generation step t, with l_c the conditioned log-probabilities (image + prompt + tokens so far) and l_u the
image-free ones (the same prompt with its image tokens removed, not a blank image; the same tokens so far):

    γ_t = exp(−λ t);   l* = l_c + ((1 − γ_t) / γ_t) · (l_c − l_u)   if max softmax(l_c) < α,   else l* = l_c.

(1 − γ_t) / γ_t = e^{λt} − 1: classifier-free guidance with a scale e^{λt} that grows with t, switched on per row
only where the conditioned model is not confident. With α = 0 (the gate never fires) or λ = 0 (weight 0), l* = l_c,
a per-row shift of the scores: greedy and sampling pick the tokens they pick without the processor (tested). Each
step costs one extra text-only forward pass (about 2× a decode; ``benchmarks/m3id_cost.py``).

No official implementation exists; this one follows the paper's equation. Settled here, not by the paper's text
as we could reach it: ``t_offset`` (t of the first generated token) defaults to 1 (tokens y_1, y_2, … as in
p(y_t | y_<t); the one public re-implementation we found counts from 1, with λ = 0.02 and no α gate); α = 0.6,
λ = 0.15 are the defaults of the study this zoo reproduces, not values the paper is known to prescribe.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

# e^{λt} − 1 saturates here (≈ 5e21): past it l* ranks tokens by l_c − l_u alone, and float32 stays finite
MAX_EXPONENT = 50.0


def image_free_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, pad_token_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's prompt without its image placeholder tokens, re-left-padded: ``(ids, mask)`` ``[B, L']``.

    Kept: the attended (``attention_mask == 1``) tokens that are not ``image_token_id``, in order; so the left
    padding goes, and so do the masked image tokens the zoo puts in the padding of a text-only row of a mixed batch
    (a text-only row's image-free prompt is its prompt). ``L'`` is the longest kept row; shorter rows get
    ``pad_token_id`` (masked) on the left. A row with nothing left raises ``ValueError``."""
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)}: "
                         "both must be [B, L]")  # fmt: skip
    keep = attention_mask.bool() & (input_ids != image_token_id)
    rows = [ids[k] for ids, k in zip(input_ids, keep)]
    if any(len(row) == 0 for row in rows):
        raise ValueError("image_free_inputs: a row has no text token once its image tokens are removed")
    width = max(len(row) for row in rows)
    ids = input_ids.new_full((len(rows), width), pad_token_id)
    mask = attention_mask.new_zeros((len(rows), width))
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


def m3id_weight(lam: float, t: float) -> float:
    """(1 − γ_t) / γ_t = e^{λt} − 1 with γ_t = e^{−λt} (saturating at λt = ``MAX_EXPONENT``)."""
    return math.expm1(min(lam * t, MAX_EXPONENT))


def m3id_scores(conditioned: torch.Tensor, unconditioned: torch.Tensor, alpha: float, weight: float) -> torch.Tensor:
    """l* ``[B, V]`` from log-probabilities l_c, l_u ``[B, V]``: l_c + weight · (l_c − l_u) in the rows where
    max softmax(l_c) < ``alpha``, l_c elsewhere (and everywhere when ``weight`` is 0, so that a −inf that an
    earlier processor put in l_c never becomes 0 · −inf = nan)."""
    if weight == 0:
        return conditioned
    fire = conditioned.max(dim=-1, keepdim=True).values.exp() < alpha  # the gate: conditioned probabilities
    return torch.where(fire, conditioned + weight * (conditioned - unconditioned), conditioned)


class M3IDLogitsProcessor(LogitsProcessor):
    """M3ID for ``model.generate`` (greedy or sampling; it runs before the sampling warpers, so temperature, top-k
    and top-p act on l*). Returns l* as log-probabilities (the conditioned rows where the gate stays shut).

    Args:
        model: the model that ``generate`` runs (e.g. a transformers ``LlavaForConditionalGeneration``). It is called
            again here, text only (no ``pixel_values``), on the image-free prompt and the generated tokens, with its
            own ``DynamicCache``, attention mask and position ids (``generate``'s convention: the cumulative sum of
            the mask minus one): the whole image-free prompt at the first call, the last generated token after.
            Put it in eval mode, as for ``generate`` itself.
        unconditioned_ids, unconditioned_mask: the image-free prompts ``[B, L']``, left padded
            (:func:`image_free_inputs`); the same rows, in the same order, as ``generate``'s ``input_ids``.
        alpha: the gate; M3ID acts on a row when its largest conditioned probability is below ``alpha``
            (0: never, > 1: always).
        lam: λ ≥ 0 of γ_t = e^{−λt} (0: no change).
        t_offset: t of the first generated token (t = t_offset + the number of tokens generated before the step).

    One processor serves one ``generate`` call (it holds that call's cache). The scores it gets are the conditioned
    logits after ``generate``'s own processors (repetition penalty, minimum length, ...). Rows that reached EOS keep
    receiving ``generate``'s pad token, which this branch attends to as ``generate``'s does; their scores are
    discarded. Beam search (which reorders rows) and a batch other than ``unconditioned_ids``'s raise."""

    def __init__(
        self,
        model: Any,
        unconditioned_ids: torch.Tensor,
        unconditioned_mask: torch.Tensor,
        alpha: float = 0.6,
        lam: float = 0.15,
        t_offset: int = 1,
    ) -> None:
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if unconditioned_ids.shape != unconditioned_mask.shape or unconditioned_ids.ndim != 2:
            raise ValueError("unconditioned_ids and unconditioned_mask must both be [B, L] tensors of one shape")
        self.model, self.alpha, self.lam, self.t_offset = model, alpha, lam, t_offset
        self.unconditioned_ids, self.unconditioned_mask = unconditioned_ids, unconditioned_mask
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # the image-free branch's attention mask so far
        self.positions: torch.Tensor | None = None  # the position ids of its last call
        self.steps = 0  # tokens generated before the current step
        self.prompt_length: int | None = None  # generate's prompt width, to catch a processor used twice

    def unconditioned_log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """l_u ``[B, V]`` (float32) for the next token given the image-free prompt and ``input_ids``' generated
        tokens; advances the cache by one step (``input_ids``: ``generate``'s prompt + tokens so far)."""
        if input_ids.shape[0] != self.unconditioned_ids.shape[0]:
            raise ValueError(
                f"M3ID: generate runs {input_ids.shape[0]} rows but the image-free prompts have "
                f"{self.unconditioned_ids.shape[0]} (beam search and num_return_sequences > 1 are not supported here)"
            )
        if self.steps == 0:
            self.prompt_length = input_ids.shape[1]
            ids = self.unconditioned_ids.to(input_ids.device)
            self.mask = self.unconditioned_mask.to(input_ids.device)
            positions = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 0)
            self.cache = DynamicCache(config=self.model.config)
        elif input_ids.shape[1] != self.prompt_length + self.steps:
            raise RuntimeError(
                "M3IDLogitsProcessor holds one generate call's cache: build a new one for each call "
                f"(expected {self.prompt_length + self.steps} ids, got {input_ids.shape[1]})"
            )
        else:
            ids = input_ids[:, -1:]
            self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
            positions = self.positions[:, -1:] + 1
        with torch.no_grad():
            out = self.model(
                input_ids=ids, attention_mask=self.mask, position_ids=positions, cache=self.cache, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip
        self.cache, self.positions = out.cache, positions
        self.steps += 1
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = self.t_offset + self.steps
        unconditioned = self.unconditioned_log_probs(input_ids)
        conditioned = torch.log_softmax(scores.float(), dim=-1)
        return m3id_scores(conditioned, unconditioned.to(conditioned.device), self.alpha, m3id_weight(self.lam, t))


def m3id_generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    alpha: float = 0.6,
    lam: float = 0.15,
    t_offset: int = 1,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """``model.generate(input_ids=..., attention_mask=..., **generate_kwargs)`` with M3ID
    (:class:`M3IDLogitsProcessor` over :func:`image_free_inputs` of the prompts) appended to any
    ``logits_processor`` given. ``generate_kwargs`` carry the images (``pixel_values`` or ``mm_encoder_outputs``),
    ``max_new_tokens``, ``do_sample``, ...; ``num_return_sequences`` > 1 repeats the image-free prompts; beam search
    raises. Returns what ``generate`` returns."""
    config = getattr(model, "generation_config", None)
    if (generate_kwargs.get("num_beams") or getattr(config, "num_beams", None) or 1) > 1:
        raise ValueError("m3id_generate: beam search is not supported (the image-free cache is not reordered)")
    pad = generate_kwargs.get("pad_token_id", getattr(config, "pad_token_id", None))
    ids, mask = image_free_inputs(input_ids, attention_mask, image_token_id, 0 if pad is None else pad)
    copies = generate_kwargs.get("num_return_sequences") or 1
    if copies > 1:
        ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
    processor = M3IDLogitsProcessor(model, ids, mask, alpha, lam, t_offset)
    processors = LogitsProcessorList([*(generate_kwargs.pop("logits_processor", None) or []), processor])
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=processors,
                          **generate_kwargs)  # fmt: skip
