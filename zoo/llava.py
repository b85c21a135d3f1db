"""LLaVA / LLaVA-1.5 (Liu et al., 2023; 2024): visual instruction tuning of a causal LM over a CLIP vision
tower, with transformers' ``LlavaForConditionalGeneration`` as the model; with ``high_res``, LLaVA-NeXT's AnyRes
or LLaVA-1.5-HD in transformers' ``LlavaNextForConditionalGeneration``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoo.backbones.llava.build import Projector, build_llava, image_processor, num_image_tokens
from zoo.backbones.llava.clip_vision import ImageSpec
from zoo.backbones.llava.high_res import HighRes, HighResTransform, describe_out_of_memory
from zoo.backbones.llava.parts import (
    PARTS,
    LoRAConfig,
    Stage,
    apply_lora,
    load_matching_tensors,
    newline_parameter,
    part_modules,
    repeated_block_classes,
    stage_parts,
)
from zoo.base import ZooModule
from zoo.llava_inference import ImageTransform, LLaVAInference
from zoo.llava_scoring import LLaVAScoring
from zoo.losses import causal_lm_loss, supervised_token_count

Template = Literal["plain", "vicuna_v1", "chat_template"]


def resolved_spec(spec: str | None) -> str | None:
    """A model spec with any local path made absolute (a checkpoint then loads from any directory)."""
    if spec is None:
        return None
    scheme = "local-dir:" if spec.startswith("local-dir:") else ""
    path = Path(spec[len(scheme) :])
    return f"{scheme}{path.resolve()}" if path.exists() else spec


class LLaVA(LLaVAScoring, LLaVAInference, ZooModule):
    """LLaVA / LLaVA-1.5 in one module; the training stage is configuration.

    Public API: :meth:`generate` (images + questions → answers), :meth:`answer_nll`, :meth:`choice_scores` and
    :meth:`vqa_score` (likelihood scoring), :meth:`export_hf` (a transformers folder),
    ``LLaVA.load_from_checkpoint(path)``; ``self.model`` is the transformers ``LlavaForConditionalGeneration``
    (``LlavaNextForConditionalGeneration`` with ``high_res``; a peft ``PeftModel`` around it with LoRA; :attr:`llava`
    is always the LLaVA itself).

    Args:
        model_name_or_path: a whole LLaVA (``llava-hf/llava-1.5-7b-hf``, a folder, a zoo export); else built
            from ``vision_tower`` + a new ``projector`` + ``language_model``.
        vision_tower: an HF CLIP vision folder or id, a zoo CLIP checkpoint (``.ckpt``), an open_clip export
            (``local-dir:<folder>``) or ``open_clip:<name>[@<pretrained>]`` (converted to ``CLIPVisionModel``).
        language_model: an HF causal-LM folder or id (``configs/llm_pretrain.yaml`` writes one), or
            ``vlzoo-tiny-llama`` (a small random Llama with the zoo's ShapesWorld tokenizer).
        language_model_config: geometry overrides for ``vlzoo-tiny-llama``.
        projector: ``mlp2x_gelu`` (LLaVA-1.5) or ``linear`` (LLaVA).
        vision_feature_layer: the tower layer whose patch features feed the projector (−2).
        stage: ``pretrain`` (projector only, ``plain`` template, square crop) or ``finetune`` (projector + LM,
            ``vicuna_v1``, pad to square); the vision tower is frozen and runs under ``torch.no_grad()``.
        template: the conversation template (default by stage); ``chat_template`` uses the tokenizer's own.
        system_prompt: the system prompt (default: vicuna_v1's; under ``chat_template`` the template's own).
        image_aspect_ratio: ``pad`` (mean-colour square) or ``square`` (resize + centre crop); default by stage.
        max_length: token limit of a training sample, image tokens included.
        lora: peft LoRA on the language model's linears (``{}`` for LLaVA-1.5's r 128, α 256, dropout 0.05).
        projector_lr: the projector's own learning rate (LoRA recipe: 2e-5).
        trainable: parts trained beyond the stage's (``{vision_tower: 2e-6}``: a part at its own lr; ``true``:
            at ``lr``; ``false``: frozen), e.g. LLaVA-NeXT's unfrozen tower (up to ``vision_feature_layer``: the
            layers after it get no gradient). With ``lora``, ``language_model`` means its adapters.
        init_from: a checkpoint (e.g. stage 1's) whose matching tensors initialise this model. Its checkpoints
            need the file again only when it initialised frozen tensors (they are not saved).
        micro_batches: micro-batches per optimiser step; the loss is the mean over the supervised tokens of all
            of them (and of every rank), so k micro-batches equal one batch of k·B.
        activation_checkpointing: recompute the LM's activations in the backward pass.
        loss_chunk_size: supervised tokens per chunk of the LM loss's logits (recomputed in the backward pass; peak
            memory O(chunk x vocabulary)); ``null``: all logits at once.
        cache_dir: where hub downloads go. seed: initialisation seed of new weights (projector, tiny LM, LoRA).
        image_spec: the preprocessing (:class:`~zoo.backbones.llava.clip_vision.ImageSpec` fields) instead of the
            tower's own; checkpoints save the one trained with, so a reload preprocesses as the training did.
        high_res: LLaVA-NeXT AnyRes (``{mode: anyres}``: the canvas per image from ``pinpoints``, default the
            llava-v1.6 list scaled to the tower; ``merge`` spatial_unpad with the learned newline, or flat /
            spatial; ``pinpoint_order`` hw (transformers) or wh (original code)) or LLaVA-1.5-HD (``{mode: hd,
            grid: [2, 2]}``: fixed native tiles + the global view, merge spatial; ``global_context: false``: tiles
            only); ``max_visual_tokens`` bounds one image's tokens. See
            :class:`~zoo.backbones.llava.high_res.HighRes`. ``null``: LLaVA-1.5 (a LLaVA-NeXT ``model_name_or_path``
            defaults to anyres with its own pinpoints). ``image_newline`` trains with the projector.
        **kwargs: optimiser settings of :class:`zoo.base.ZooModule` (LLaVA defaults: weight decay 0, betas
            (0.9, 0.999), eps 1e-8, warmup ratio 0.03, cosine).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        vision_tower: str | None = "open_clip:vlzoo-tiny-vit",
        language_model: str | None = "vlzoo-tiny-llama",
        language_model_config: dict[str, Any] | None = None,
        projector: Projector = "mlp2x_gelu",
        vision_feature_layer: int = -2,
        stage: Stage = "finetune",
        template: Template | None = None,
        system_prompt: str | None = None,
        image_aspect_ratio: Literal["pad", "square"] | None = None,
        max_length: int = 2048,
        lora: LoRAConfig | None = None,
        projector_lr: float | None = None,
        trainable: dict[str, bool | float] | None = None,
        init_from: str | None = None,
        micro_batches: int = 1,
        activation_checkpointing: bool = False,
        loss_chunk_size: int | None = 1024,
        cache_dir: str | None = None,
        seed: int = 0,
        image_spec: dict[str, Any] | None = None,
        high_res: dict[str, Any] | None = None,
        lr: float = 2e-05,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_ratio: float = 0.03,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, warmup_ratio=warmup_ratio,
            contrastive_accumulation=micro_batches, **kwargs,
        )  # fmt: skip
        if model_name_or_path is None and (vision_tower is None or language_model is None):
            raise ValueError("give model_name_or_path, or both vision_tower and language_model")
        self.save_hyperparameters()
        self.stage = stage
        self.template = template or ("plain" if stage == "pretrain" else "vicuna_v1")
        self.image_aspect_ratio = image_aspect_ratio or ("square" if stage == "pretrain" else "pad")
        self.high_res: HighRes | None = None  # set by build_backbone
        model = self.build_backbone()  # from the hyper-parameters just saved
        self.hparams["image_spec"] = dataclasses.asdict(self.image_spec)  # saved with the checkpoint: the preprocessing
        self.hparams["high_res"] = None if self.high_res is None else self.high_res.options()  # resolved
        if activation_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        with torch.random.fork_rng(devices=[]):  # LoRA's A matrices: a function of ``seed``, not of the global RNG
            torch.manual_seed(seed)
            self.model = model if lora is None else apply_lora(model, lora)
        self._trainable = self._set_trainable(stage, lora is not None, projector, projector_lr, trainable or {})
        self._init_from_frozen = False  # init_from wrote frozen tensors: checkpoints name it as part of the base
        if init_from:
            loaded = set(self.load_matching(init_from)["loaded"])
            self._init_from_frozen = any(not p.requires_grad for n, p in self.named_parameters() if n in loaded)

    # ------------------------------------------------------------------------------ structure
    def build_backbone(self) -> LlavaForConditionalGeneration:
        """The hyper-parameters' model (``build_llava``); sets tokenizer, image_spec, image_tokens, images and
        high_res (a LLaVA becomes a ``LlavaNextForConditionalGeneration`` with the same weights for high_res)."""
        hp, spec = self.hparams, self.hparams.image_spec
        model, self.tokenizer, self.image_spec = build_llava(
            hp.model_name_or_path, hp.vision_tower, hp.language_model, hp.projector, hp.vision_feature_layer,
            hp.language_model_config, hp.cache_dir, hp.seed,
        )  # fmt: skip
        if spec is not None:
            self.image_spec = ImageSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        options, is_next = hp.get("high_res"), isinstance(model, LlavaNextForConditionalGeneration)
        options = {"mode": "anyres"} if options is None and is_next else options
        self.high_res = None
        if options is not None:
            vision = model.config.vision_config
            canvases = model.config.image_grid_pinpoints if is_next else None
            self.high_res = HighRes.from_options(options, vision.image_size, vision.patch_size, canvases)
            if is_next:
                model.config.image_grid_pinpoints = self.high_res.canvases
            else:
                from zoo.backbones.llava.next import to_llava_next

                model = to_llava_next(model, self.high_res.canvases, hp.seed)
        self.image_tokens = num_image_tokens(model.config)
        self.images = image_processor(self.image_spec, pad=self.image_aspect_ratio == "pad")
        return model

    @property
    def llava(self) -> LlavaForConditionalGeneration:
        """The transformers LLaVA (inside peft's wrapper when LoRA is on)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _set_trainable(
        self, stage: Stage, lora: bool, projector: str, projector_lr: float | None, overrides: dict[str, Any]
    ) -> dict[str, bool | float]:
        unknown = set(overrides) - set(PARTS)
        if unknown:
            raise ValueError(f"trainable: unknown part(s) {sorted(unknown)}; the parts are {PARTS}")
        parts = stage_parts(stage)
        if projector_lr is not None:
            parts["projector"] = projector_lr
        parts.update(overrides)
        self.model.requires_grad_(False)
        for part, setting in parts.items():
            for module in part_modules(self.llava, part) if setting is not False else []:
                if lora and part == "language_model":  # LoRA: the adapters train, the base weights stay frozen
                    for name, param in module.named_parameters():
                        param.requires_grad_(".lora_" in name)
                else:
                    module.requires_grad_(True)
        if projector == "linear":  # the identity second layer stays fixed: one Linear, as LLaVA's
            self.llava.model.multi_modal_projector.linear_2.requires_grad_(False)
        newline = newline_parameter(self.llava)
        if newline is not None:  # trains with the projector where the merge uses it (else no gradient: frozen)
            used = bool(self.high_res and self.high_res.newline)
            newline.requires_grad_(used and parts.get("projector") is not False)
        return parts

    def learning_rates(self) -> dict[str, float]:
        names = {module: name for name, module in self.named_modules()}
        rates = {}
        for part, setting in self._trainable.items():
            if setting is not True and setting is not False:
                rates.update({names[module]: float(setting) for module in part_modules(self.llava, part)})
        return rates

    def parameter_groups(self) -> list[dict[str, Any]]:
        """:meth:`ZooModule.parameter_groups`, with ``image_newline`` at the projector's own lr (when it has one)."""
        groups = super().parameter_groups()
        newline, lr = newline_parameter(self.llava), self._trainable.get("projector")
        if newline is None or not newline.requires_grad or isinstance(lr, bool):
            return groups
        for group in groups:
            group["params"] = [p for p in group["params"] if p is not newline]
        at_lr = [group for group in groups if group.get("lr") == float(lr)]
        no_decay = [group for group in at_lr if group["weight_decay"] == 0.0]
        (no_decay or at_lr)[0]["params"].append(newline)
        return groups

    def vision_trainable(self) -> bool:
        return any(p.requires_grad for p in self.llava.model.vision_tower.parameters())

    def base_specs(self) -> dict[str, str | None]:
        """Where the base weights come from (local paths absolute)."""
        hp = self.hparams
        if hp.model_name_or_path:
            return {"model_name_or_path": resolved_spec(hp.model_name_or_path)}
        return {"vision_tower": resolved_spec(hp.vision_tower), "language_model": resolved_spec(hp.language_model)}

    def frozen_base_reference(self) -> dict[str, Any]:
        # init_from is needed again only where it wrote frozen tensors (stage 1's projector trains on: saved)
        init_from = resolved_spec(self.hparams.init_from) if self._init_from_frozen else None
        return {**self.base_specs(), "init_from": init_from}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the base specs are also the architecture: a checkpoint holding every tensor still names them
        checkpoint["hyper_parameters"].update(self.base_specs())

    def batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["key"]) if "samples_per_row" in batch else len(batch["input_ids"])  # packed: samples

    def fsdp_wrap_classes(self) -> set[type[torch.nn.Module]]:
        """One FSDP unit per decoder layer of the LM and per encoder layer of the vision tower."""
        return repeated_block_classes(self.llava)

    def data_transforms(self) -> dict[str, Any]:
        """What :class:`datamodules.InstructionDataModule` needs: tokenizer, image transform, template, image
        tokens per image (:func:`~zoo.backbones.llava.build.num_image_tokens`), system prompt, max length."""
        high_res = self.high_res
        transform = ImageTransform(self.images) if high_res is None else HighResTransform(high_res, self.image_spec)
        return {
            "tokenizer": self.tokenizer,
            "train_transform": transform,
            "eval_transform": transform,
            "template": self.template,
            "image_tokens": self.image_tokens if high_res is None else 1,  # high-res: expanded once the image is read
            "system_prompt": self.hparams.system_prompt,
            "max_length": self.hparams.max_length,
            "image_size": self.image_spec.image_size,
            **({} if high_res is None else {"high_res": high_res}),
        }

    # -------------------------------------------------------------------------------- forward
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected patch features [B, N, D] of the tower's layer ``vision_feature_layer``, CLS dropped; a
        frozen tower runs under ``torch.no_grad()`` (no activations kept)."""
        inner = self.llava.model
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable()):
            states = inner.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True).hidden_states
            selected = states[self.llava.config.vision_feature_layer]
            if self.llava.config.vision_feature_select_strategy == "default":
                selected = selected[:, 1:]
        return inner.multi_modal_projector(selected)

    def visual_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """High-res: each image's merged visual sequence [tokens, D] from the views of all images [N, 3, T, T]
        (each image's :meth:`HighRes.views_of`, in row order) and their sizes [B, 2] (h, w); with ``input_ids``,
        each row's placeholders are checked against :meth:`HighRes.tokens` of its image."""
        high_res = self.high_res
        sizes = [tuple(int(side) for side in size) for size in image_sizes.tolist()]
        views = [high_res.views_of(size) for size in sizes]
        if sum(views) != len(pixel_values):
            raise ValueError(f"{len(pixel_values)} views for images of (h, w) {sizes}: expected {views}")
        if input_ids is not None:
            found = (input_ids == self.llava.config.image_token_id).sum(1).tolist()
            expected = [high_res.tokens(size) for size in sizes]
            if found != expected:
                raise ValueError(f"image placeholders per row {found}; the images of (h, w) {sizes} give {expected}")
        tiles = self.image_features(pixel_values).split(views)
        newline = newline_parameter(self.llava)
        return [high_res.merge_features(f, size, newline) for f, size in zip(tiles, sizes)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, L, D] of the LM (after its final norm), image features spliced in at the
        ``<image>`` placeholders (transformers' ``masked_scatter``, which checks the counts). High-res:
        ``pixel_values`` are all images' views [N, 3, T, T] and ``image_sizes`` their (h, w) [B, 2]. ``position_ids``
        (default 0..L-1) from the mask make left-padded rows equal to right-padded ones."""
        encoded = None
        if pixel_values is not None and self.high_res is not None:
            if image_sizes is None:
                raise ValueError("a high-res LLaVA needs image_sizes [B, 2] (h, w) with the views in pixel_values")
            features = self.visual_features(pixel_values, image_sizes, input_ids)
            encoded = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        elif pixel_values is not None:
            encoded = {"image": BaseModelOutputWithPooling(pooler_output=list(self.image_features(pixel_values)))}
        out = self.llava.model(  # no cache: with position_ids and no mask, transformers packs (block-diagonal)
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, mm_encoder_outputs=encoded,
            use_cache=False,
        )  # fmt: skip
        return out.last_hidden_state

    def _lm_terms(self, batch: dict[str, Any], num_supervised: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        sizes = {"image_sizes": batch["image_sizes"]} if "image_sizes" in batch else {}
        mask = None if "position_ids" in batch else batch["attention_mask"]  # packed rows: datamodules.packing
        positions = batch.get("position_ids")
        hidden = self(batch["input_ids"], mask, batch.get("pixel_values"), position_ids=positions, **sizes)
        head = self.llava.lm_head
        chunk = self.hparams.get("loss_chunk_size", 1024)
        return causal_lm_loss(hidden, batch["labels"], head.weight, head.bias, num_supervised, chunk_size=chunk)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self._lm_terms(batch)

    def accumulated_losses(self, batches: list[dict[str, Any]], backward: Callable = torch.Tensor.backward):
        """k micro-batches as one batch: each loss is normalised by the supervised tokens of all k (all ranks)."""
        count = supervised_token_count([batch["labels"] for batch in batches])
        total = 0.0
        for batch in batches:
            loss = self._lm_terms(batch, count)["lm_loss"]
            backward(loss)
            total = total + loss.detach()
        return {"lm_loss": total}

    def visual_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """Visual tokens of each row [B] (attended image placeholders: a text-only row's masked ones are 0)."""
        placeholders = batch["input_ids"] == self.llava.config.image_token_id
        return (placeholders & batch["attention_mask"].bool()).sum(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """:meth:`ZooModule.training_step`, logging ``train/visual_tokens`` (mean per row of the batch) and
        ``train/padding_fraction`` (padding's share of the batch's tokens); an out-of-memory error is raised
        again naming the batch's samples and their token counts."""
        if "input_ids" not in batch:  # another batch layout (VladVA's contrastive batches)
            return super().training_step(batch, batch_idx)
        visual, mask = self.visual_tokens(batch), batch["attention_mask"]
        self.log("train/visual_tokens", visual.float().mean(), batch_size=len(visual))
        self.log("train/padding_fraction", 1 - mask.float().mean(), batch_size=len(visual))
        try:
            return super().training_step(batch, batch_idx)
        except torch.OutOfMemoryError as error:
            raise torch.OutOfMemoryError(describe_out_of_memory(batch, batch_idx, visual, error)) from error

    def on_train_epoch_end(self) -> None:
        """Say how many invalid samples the data module left out or replaced (``skip_invalid``), every epoch."""
        super().on_train_epoch_end()
        skipped = getattr(getattr(self.trainer, "datamodule", None), "skipped_invalid", None)
        if skipped:
            self.log("data/skipped_invalid", float(len(skipped)), rank_zero_only=True)
            named = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
            rank_zero_info(f"epoch {self.current_epoch}: {len(skipped)} invalid sample(s) skipped ({named} ...)")

    def configure_callbacks(self) -> list:
        if self.trainer.accumulate_grad_batches > 1:
            rank_zero_warn(
                "trainer.accumulate_grad_batches averages per-micro-batch token means; for the token mean of the "
                "whole step (what LLaVA's recipe means) use --model.init_args.micro_batches instead"
            )
        return super().configure_callbacks()

    # ----------------------------------------------------------------------------- checkpoints
    def load_matching(self, path: str) -> dict[str, list[str]]:
        """Initialise from ``path`` (a zoo checkpoint, e.g. stage 1's): see :func:`load_matching_tensors`."""
        return load_matching_tensors(self, path)
