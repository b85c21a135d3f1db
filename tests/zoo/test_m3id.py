"""M3ID decoding (``zoo.decoding``) on the tiny LLaVA: the image-free prompts of a planted batch, greedy equality at
α = 0 and λ = 0, a change at large λ, every step's l* against two separate full forward passes, and the KV-cached
image-free branch against a forward without cache."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LogitsProcessorList

from tests.zoo.llava_fixtures import llava_vision_folder, one_thread, perturb, picture, tiny_llava  # noqa: F401
from zoo.decoding import M3IDLogitsProcessor, image_free_inputs, m3id_generate, m3id_scores, m3id_weight

IMAGE = 4  # the tiny model's image token id (checked in the fixture)
# rows of different lengths; the text-only row's image tokens sit masked in the left padding (zoo convention)
QUESTIONS = ["<image>\nWhat shape is it?", "What colour is the sky today, and why?", "<image>\nHow many?"]
SIZES = [(50, 70), None, (64, 40)]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model(llava_vision_folder):  # noqa: F811
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    module = perturb(tiny_llava(llava_vision_folder), seed=1).eval()  # as if trained: not an EOS-only model
    assert module.llava.config.image_token_id == IMAGE
    yield module
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(model) -> dict:
    """The prompts left padded as ``LLaVA.generate`` builds them: ``input_ids``, ``attention_mask``,
    ``pixel_values`` (a zero image for the text-only row)."""
    images = [None if size is None else picture(size, i) for i, size in enumerate(SIZES)]
    prompts = model.prompt_batch(images, QUESTIONS)
    input_ids, mask, _ = model.padded(prompts, "left")
    width, pixels = input_ids.shape[1], prompts.images
    greedy = generate(model, input_ids, mask, pixels)
    assert greedy[:, width:].tolist() == model.generate(images, QUESTIONS, return_ids=True, max_new_tokens=NEW_TOKENS)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels, "greedy": greedy, "images": images}


def generate(model, input_ids, mask, pixels, **kwargs):
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": model.tokenizer.pad_token_id, **kwargs}
    with torch.no_grad():
        return model.llava.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, **kwargs)


def m3id(model, batch, **kwargs):
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": model.tokenizer.pad_token_id, **kwargs}
    with torch.no_grad():
        return m3id_generate(model.llava, batch["input_ids"], batch["attention_mask"], IMAGE,
                             pixel_values=batch["pixel_values"], **kwargs)  # fmt: skip


def log_probs(model, ids: list[int], pixels: torch.Tensor | None) -> torch.Tensor:
    """Next-token log-probabilities after ``ids`` (one unpadded row, a forward without cache)."""
    with torch.no_grad():
        logits = model.llava(input_ids=torch.tensor([ids]), pixel_values=pixels, use_cache=False).logits
    return torch.log_softmax(logits[0, -1].float(), dim=-1)


def test_image_free_inputs_of_a_planted_batch():
    P, B = 0, 1  # pad, BOS; 4 = the image token
    ids = torch.tensor([
        [P, P, B, 7, 4, 4, 4, 8, 9],  # left padded, the image span in the middle
        [B, 4, 4, 4, 5, 6, 7, 8, 9],  # the longest: no padding
        [4, 4, 4, B, 5, 6, 4, 9, 9],  # text-only row of a mixed batch: masked image tokens in the padding
        [P, B, 4, 4, 5, 4, 4, 6, 9],  # two images
    ])  # fmt: skip
    mask = torch.tensor([
        [0, 0, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1, 1],
    ])  # fmt: skip
    free_ids, free_mask = image_free_inputs(ids, mask, IMAGE, pad_token_id=3)
    assert free_ids.tolist() == [[3, 3, B, 7, 8, 9], [B, 5, 6, 7, 8, 9], [3, B, 5, 6, 9, 9], [3, 3, B, 5, 6, 9]]
    assert free_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="no text token"):
        image_free_inputs(torch.tensor([[P, 4, 4]]), torch.tensor([[0, 1, 1]]), IMAGE)


def test_scores_by_hand():
    """l* on a hand case: the gate per row on probabilities, e^{λt} − 1, and a −inf (an earlier processor's ban) that
    stays −inf, never nan, whether the weight is 0 or not."""
    inf = float("inf")
    lc = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.9, 0.05, 0.05, 0.0]]).log()  # row 1: confident (0.9 >= 0.6)
    lu = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]).log()
    assert m3id_weight(0.15, 2) == pytest.approx(math.exp(0.3) - 1) and m3id_weight(0.0, 7) == 0
    assert math.isfinite(m3id_weight(1.0, 1e6))  # saturates instead of overflowing
    w = 0.5
    out = m3id_scores(lc, lu, alpha=0.6, weight=w)
    expected_row0 = [
        math.log(0.5) + w * math.log(2),
        math.log(0.3) + w * math.log(1.2),
        math.log(0.2) + w * math.log(0.8),
    ]
    torch.testing.assert_close(out[0, :3], torch.tensor(expected_row0))
    assert out[0, 3] == -inf and torch.equal(out[1], lc[1])  # the confident row is left alone
    assert torch.equal(m3id_scores(lc, lu, alpha=1.0, weight=0.0), lc)  # not 0 * -inf = nan


@pytest.mark.parametrize("alpha, lam", [(0.0, 5.0), (1.0, 0.0)], ids=["alpha=0", "lambda=0"])
def test_no_guidance_is_greedy_token_for_token(model, batch, alpha, lam):
    greedy, width = batch["greedy"], batch["input_ids"].shape[1]
    assert greedy.shape[1] == width + NEW_TOKENS and len({tuple(r) for r in greedy[:, width:].tolist()}) == 3
    assert (greedy[:, width:] != model.tokenizer.eos_token_id).all()  # non-trivial answers, all 12 tokens long
    assert torch.equal(m3id(model, batch, alpha=alpha, lam=lam), greedy)


def test_large_lambda_changes_the_answer(model, batch):
    out = m3id(model, batch, alpha=1.0, lam=5.0)  # the gate always open, weight e^{5t} − 1
    width = batch["input_ids"].shape[1]
    assert out.shape == batch["greedy"].shape
    changed = [a != b for a, b in zip(out[:, width:].tolist(), batch["greedy"][:, width:].tolist())]
    assert changed[0] and changed[2]  # the rows with an image


def test_text_only_row_is_unchanged(model, batch):
    """A text-only row's image-free prompt is its prompt: l_u = l_c (up to float noise), whatever λ."""
    out = m3id(model, batch, alpha=1.0, lam=0.5)
    assert torch.equal(out[1], batch["greedy"][1])


def test_every_step_matches_two_full_forward_passes(model, batch):
    """l* of each row and step (``generate``'s scores) against l_c and l_u computed by hand: a forward with the image
    and one of the prompt without its image tokens, each unpadded and without cache, over the tokens generated so
    far; t = t_offset + step; the gate per row on conditioned probabilities."""
    greedy, width = batch["greedy"], batch["input_ids"].shape[1]
    gate_probs = [
        log_probs(model, row[m.bool()].tolist(), batch["pixel_values"][i : i + 1] if SIZES[i] else None).exp().max()
        for i, (row, m) in enumerate(zip(greedy[:, :width], batch["attention_mask"]))
    ]
    alpha = float(sum(gate_probs) / len(gate_probs))  # between the rows' first-step confidences: the gate splits
    lam, t_offset = 0.1, 2
    out = m3id(model, batch, alpha=alpha, lam=lam, t_offset=t_offset, output_scores=True, return_dict_in_generate=True)
    fired = set()
    for i in range(3):
        attended = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        text = [token for token in attended if token != IMAGE]
        pixels = batch["pixel_values"][i : i + 1] if SIZES[i] else None
        for step in range(NEW_TOKENS):
            tokens = out.sequences[i, width : width + step].tolist()
            lc, lu = log_probs(model, attended + tokens, pixels), log_probs(model, text + tokens, None)
            weight = math.exp(lam * (t_offset + step)) - 1
            fire = bool(lc.exp().max() < alpha)
            fired.add(fire)
            expected = lc + weight * (lc - lu) if fire else lc
            torch.testing.assert_close(out.scores[step][i], expected, atol=1e-5, rtol=0)
    assert fired == {True, False}


def test_cached_image_free_branch_equals_a_forward_without_cache(model, batch):
    """The processor's l_u, step by step with its own cache, mask and positions, against an unpadded forward of
    the image-free prompt + tokens; row 1 hits EOS at step 2 and is then fed pad tokens, as ``generate`` does."""
    width, eos, pad = batch["input_ids"].shape[1], model.tokenizer.eos_token_id, model.tokenizer.pad_token_id
    sequences = batch["greedy"].clone()
    sequences[1, width + 2] = eos
    sequences[1, width + 3 :] = pad
    free_ids, free_mask = image_free_inputs(batch["input_ids"], batch["attention_mask"], IMAGE, pad)
    assert len(set(free_mask.sum(1).tolist())) == 3  # three image-free lengths: left padding at work
    processor = M3IDLogitsProcessor(model.llava, free_ids, free_mask)
    lengths = []
    hook = model.llava.register_forward_pre_hook(
        lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        cached = [processor.unconditioned_log_probs(sequences[:, : width + step]) for step in range(NEW_TOKENS)]
    finally:
        hook.remove()
    assert lengths == [free_ids.shape[1]] + [1] * (NEW_TOKENS - 1)  # the prompt once, then one token a step
    # generate's positions: attended tokens counted from 0 whatever the padding (RoPE alone would not notice a shift)
    assert processor.positions[:, -1].tolist() == (free_mask.sum(1) + NEW_TOKENS - 2).tolist()
    for i in range(3):
        text = free_ids[i][free_mask[i].bool()].tolist()
        for step in range(NEW_TOKENS):
            full = log_probs(model, text + sequences[i, width : width + step].tolist(), None)
            torch.testing.assert_close(cached[step][i], full, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="one generate call"):
        processor(sequences[:, :width], torch.zeros(3, model.llava.config.text_config.vocab_size))


def test_sampling(model, batch):
    """Sampling: the warpers act on l*; at α = 0 the same seed samples the same tokens as plain sampling."""
    options = {"do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.95}
    torch.manual_seed(0)
    plain = generate(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"], **options)
    torch.manual_seed(0)
    assert torch.equal(m3id(model, batch, alpha=0.0, **options), plain)
    torch.manual_seed(0)
    guided = m3id(model, batch, alpha=1.0, lam=0.5, num_return_sequences=2, **options)
    assert guided.shape == (6, plain.shape[1])


def test_one_processor_per_call_and_no_beams(model, batch):
    free_ids, free_mask = image_free_inputs(batch["input_ids"], batch["attention_mask"], IMAGE)
    processor = M3IDLogitsProcessor(model.llava, free_ids[:2], free_mask[:2])
    with pytest.raises(ValueError, match="beam search"):
        generate(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                 logits_processor=LogitsProcessorList([processor]))  # fmt: skip
    with pytest.raises(ValueError, match="beam search"):
        m3id(model, batch, num_beams=2)


def test_llava_generate_decodes_with_m3id_by_option(model, batch):
    images = [None if size is None else picture(size, i) for i, size in enumerate(SIZES)]
    kwargs = {"max_new_tokens": NEW_TOKENS, "return_ids": True}
    greedy = model.generate(images, QUESTIONS, **kwargs)
    assert model.generate(images, QUESTIONS, m3id={"alpha": 0.0}, **kwargs) == greedy
    guided = model.generate(images, QUESTIONS, m3id={"alpha": 1.0, "lam": 5.0}, **kwargs)
    expected = m3id(model, batch, alpha=1.0, lam=5.0)[:, batch["input_ids"].shape[1] :]
    eos = model.tokenizer.eos_token_id
    assert guided == [row[: row.index(eos)] if eos in row else row for row in expected.tolist()]
    assert guided != greedy
