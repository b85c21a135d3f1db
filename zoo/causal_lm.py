"""A causal language model trained on text alone: the zoo's own small "Vicuna" for the LLaVA family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from zoo.backbones.llava.build import load_language_model, load_tokenizer
from zoo.base import ZooModule
from zoo.losses import causal_lm_loss


class CausalLM(ZooModule):
    """Next-token training of a transformers causal LM (``vlzoo-tiny-llama``: a small Llama with the zoo's
    byte-level BPE tokenizer). At the end of ``fit`` the model and its tokenizer are written as a transformers
    folder (``export_dir``, default ``<log dir>/hf``): the LLaVA configs' ``language_model``.

    Args:
        language_model: ``vlzoo-tiny-llama`` or an HF causal-LM folder / id to continue training.
        language_model_config: geometry overrides for ``vlzoo-tiny-llama``.
        max_length: token limit of a training text.
        export_dir: where :meth:`export_hf` writes at the end of ``fit``.
        **kwargs: optimiser settings of :class:`zoo.base.ZooModule`.
    """

    def __init__(
        self,
        language_model: str = "vlzoo-tiny-llama",
        language_model_config: dict[str, Any] | None = None,
        max_length: int = 512,
        export_dir: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        lr: float = 0.001,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_ratio: float = 0.03,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, warmup_ratio=warmup_ratio, **kwargs)
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer(language_model, cache_dir)
        self.model = load_language_model(language_model, cache_dir, language_model_config, seed)
        self.model.train()

    def data_transforms(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "train_transform": None, "eval_transform": None,
                "max_length": self.hparams.max_length}  # fmt: skip

    def batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["input_ids"])

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        hidden = self.model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        head = self.model.get_output_embeddings()
        return causal_lm_loss(hidden.last_hidden_state, batch["labels"], head.weight, head.bias)

    def export_hf(self, folder: str | Path) -> Path:
        """Write the model and tokenizer as a transformers folder (``AutoModelForCausalLM.from_pretrained``)."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            default = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "hf"
            folder = self.export_hf(self.hparams.export_dir or default)
            rank_zero_info(f"language model written to {folder} (use it as --model.init_args.language_model)")
