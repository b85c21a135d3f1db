"""Scoring with a generative LLaVA, one place for every benchmark: answer likelihoods (multiple choice, relaxed
full options, VQAScore) and greedy answers matched to the options.

* Multiple choice by likelihood (reference ``llava.md`` §4.2): each option is tokenised on its own after the same
  prompt ids, its score is the mean negative log-likelihood of its tokens and the end token, computed per row from
  the logits (never a batch-averaged loss), so an item scores the same alone or in any batch, padded left or right.
* VQAScore (Lin et al., 2024): exp(−mean CE) of the answer "Yes" (and the end token, as ``t2v_metrics``' LLaVA
  scorer writes it: ``"Yes</s>"``) to ``Does this figure show "{text}"? Please answer yes or no.``, over the full
  vocabulary (never renormalised over yes / no); with a one-token "Yes" and no end token it is P("Yes").
* Generation + matching: the greedy answer, normalised, matched to an option by its letter or its text; an answer
  that names no option (or several) is unmatched: ``None``, never a random pick.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any, Literal

import torch

from zoo.backbones.llava.conversation import conversation_segments
from zoo.llava_inference import PromptBatch, PromptImages
from zoo.losses.language import IGNORE_INDEX, sequence_nll

ChoiceForm = Literal["letters", "full"]
LETTERS = string.ascii_uppercase
LETTERS_INSTRUCTION = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5's MC prompt
FULL_INSTRUCTION = "Answer with the correct option."
VQASCORE_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'


def choice_prompt(question: str, options: Sequence[str], form: ChoiceForm = "letters") -> tuple[str, list[str]]:
    """The multiple-choice prompt and the answers scored for its options.

    ``letters`` (the paper's MC setting): ``"{question}\\nA. {o1}\\nB. {o2}\\n{LETTERS_INSTRUCTION}"``, answers
    ``"A"``, ``"B"``; ``full`` (the relaxed setting): ``"{question}\\n(a) {o1}\\n(b) {o2}\\n{FULL_INSTRUCTION}"``,
    answers ``"(a) {o1}"``, ``"(b) {o2}"``."""
    if not 1 < len(options) <= len(LETTERS):
        raise ValueError(f"{len(options)} options: a multiple-choice question needs 2 to {len(LETTERS)}")
    if form == "letters":
        listed = [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
        return "\n".join([question, *listed, LETTERS_INSTRUCTION]), list(LETTERS[: len(options)])
    if form == "full":
        listed = [f"({LETTERS[i].lower()}) {o}" for i, o in enumerate(options)]
        return "\n".join([question, *listed, FULL_INSTRUCTION]), listed
    raise ValueError(f"unknown choice form {form!r}; expected 'letters' or 'full'")


def normalise_answer(text: str) -> str:
    """Lower case, punctuation dropped (but "(" and ")"), whitespace collapsed."""
    kept = "".join(c if c not in string.punctuation or c in "()" else " " for c in text.lower())
    return " ".join(kept.split())


_LETTER = re.compile(r"^\s*(?:\(([a-z])\)|([a-z])\s*[.):](?:\s|$)|([a-z])\s*$)", re.IGNORECASE)


def match_option(answer: str, options: Sequence[str]) -> int | None:
    """The option a generated answer names, else ``None``.

    In order: a letter alone or marked (``"B"``, ``"b."``, ``"(b) ..."``, ``"B) ..."``; not ``"a red ..."``), the
    answer equal to one option's text, one option's text inside the answer, the answer inside one option's text
    (all after :func:`normalise_answer`; the option's own ``"(a) "`` prefix ignored). Several candidates: ``None``.
    """
    letter = _LETTER.match(answer)
    if letter:
        index = LETTERS.index(next(g for g in letter.groups() if g).upper())
        return index if index < len(options) else None
    said = normalise_answer(answer)
    texts = [normalise_answer(re.sub(r"^\([a-z]\)\s*", "", o, flags=re.IGNORECASE)) for o in options]
    for found in (
        [i for i, t in enumerate(texts) if t == said],
        [i for i, t in enumerate(texts) if t and re.search(rf"\b{re.escape(t)}\b", said)],
        [i for i, t in enumerate(texts) if said and re.search(rf"\b{re.escape(said)}\b", t)],
    ):
        if found:
            return found[0] if len(found) == 1 else None
    return None


class LLaVAScoring:
    """Likelihood scoring of :class:`zoo.LLaVA` (a mixin over :class:`~zoo.llava_inference.LLaVAInference`)."""

    def answer_ids(self, answer: str) -> list[int]:
        """``answer``'s ids as training supervises them: the template's answer segment (vicuna_v1 ``" {answer}</s>"``,
        plain ``"{answer}\\n"``, a chat template's answer with its end tokens)."""
        turns = [{"from": "human", "value": "?"}, {"from": "gpt", "value": answer}]
        segments = conversation_segments(turns, self.template, False, self.tokenizer, self.hparams.system_prompt)
        return [i for text, sup in segments if sup for i in self.tokenizer(text, add_special_tokens=False).input_ids]

    @torch.no_grad()
    def answer_nll(
        self,
        images: Sequence[PromptImages],
        prompts: Sequence[str],
        answers: Sequence[str],
        batch_size: int = 16,
        padding_side: Literal["left", "right"] = "right",
    ) -> torch.Tensor:
        """Mean negative log-likelihood [N] of each answer (:meth:`answer_ids`) after its prompt and images (one
        entry per row, as :meth:`generate` takes them), per row from the logits: a row's value does not depend
        on the batch it is in nor on the padding side. Eval mode (no LoRA dropout) whatever the module's mode."""
        if not len(images) == len(prompts) == len(answers):
            raise ValueError(f"{len(images)} image entries, {len(prompts)} prompts, {len(answers)} answers")
        training, out = self.training, []
        self.eval()
        try:
            for start in range(0, len(prompts), batch_size):
                chunk = slice(start, start + batch_size)
                out.append(self._answer_nll(list(images[chunk]), list(prompts[chunk]), answers[chunk], padding_side))
        finally:
            self.train(training)
        return torch.cat(out) if out else torch.zeros(0)

    def _answer_nll(self, images: list, prompts: list[str], answers: Sequence[str], side: str) -> torch.Tensor:
        batch = self.prompt_batch(images, prompts)
        targets = [self.answer_ids(a) for a in answers]
        rows = PromptBatch([row + t for row, t in zip(batch.ids, targets)], batch.masked, batch.images)
        input_ids, mask, positions = self.padded(rows, side)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, (row, target) in enumerate(zip(rows.ids, targets)):
            end = input_ids.shape[1] if side == "left" else len(row)
            labels[i, end - len(target) : end] = torch.tensor(target)
        hidden = self(input_ids, mask, **self._image_inputs(batch.images), position_ids=positions)
        head = self.llava.lm_head
        total, count = sequence_nll(hidden, labels, head.weight, head.bias)
        return (total / count).cpu()

    def _image_inputs(self, encoded: Any) -> dict[str, torch.Tensor]:
        if encoded is None:
            return {}
        if self.high_res is None:
            return {"pixel_values": encoded.to(self.device)}
        views, sizes = encoded
        return {"pixel_values": views.to(self.device), "image_sizes": sizes}

    def choice_scores(
        self,
        images: Sequence[PromptImages],
        questions: Sequence[str],
        options: Sequence[Sequence[str]],
        form: ChoiceForm = "letters",
        batch_size: int = 16,
    ) -> list[torch.Tensor]:
        """Per question, each option's score: −(mean NLL) of its answer under :func:`choice_prompt` (higher is
        better; exp(score) is the option's length-normalised likelihood, 1 / perplexity)."""
        rows = [(i, prompt, answer) for i, (q, opts) in enumerate(zip(questions, options))
                for prompt, scored in [choice_prompt(q, opts, form)] for answer in scored]  # fmt: skip
        nll = self.answer_nll([images[i] for i, _, _ in rows], [p for _, p, _ in rows], [a for *_, a in rows],
                              batch_size)  # fmt: skip
        return list((-nll).split([len(o) for o in options]))

    def vqa_score(self, images: Sequence[PromptImages], texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """VQAScore [N] of each (image, text) pair, in [0, 1] (see the module docstring)."""
        questions = [VQASCORE_QUESTION.format(t) for t in texts]
        return torch.exp(-self.answer_nll(images, questions, ["Yes"] * len(texts), batch_size))

    def choose_by_generation(
        self,
        images: Sequence[PromptImages],
        questions: Sequence[str],
        options: Sequence[Sequence[str]],
        form: ChoiceForm = "letters",
        **generation_kwargs: Any,
    ) -> tuple[list[int | None], list[str]]:
        """The benchmarks' own protocol: the answer to :func:`choice_prompt` (greedy unless ``generation_kwargs``
        say otherwise) and the option it names (:func:`match_option`; ``None``: unmatched)."""
        prompts = [choice_prompt(q, o, form)[0] for q, o in zip(questions, options)]
        generation_kwargs.setdefault("max_new_tokens", 32)
        answers = self.generate(list(images), prompts, **generation_kwargs)
        return [match_option(a, o) for a, o in zip(answers, options)], answers
