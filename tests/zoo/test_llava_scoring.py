"""Likelihood scoring of a generative LLaVA (multiple choice, VQAScore) and generated answers matched to options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.zoo.llava_fixtures import llava_vision_folder, one_thread, perturb, picture, tiny_llava  # noqa: F401
from zoo.llava_inference import ImageTransform
from zoo.llava_scoring import VQASCORE_QUESTION, choice_prompt, match_option


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(1)
    llava = tiny_llava(tmp_path_factory)
    perturb(llava, seed=3, scale=0.3)  # away from uniform: options get clearly different likelihoods
    return llava.eval()


def by_hand(model, image, prompt: str, answer: str) -> float:
    """Mean NLL of the answer's ids after the prompt's, from transformers' own LLaVA forward."""
    prompt_ids = model.prompt_ids([prompt], [image is not None])[0]
    target = model.answer_ids(answer)
    ids = torch.tensor([prompt_ids + target])
    pixels = {} if image is None else {"pixel_values": model.prompt_batch([image], [prompt]).images}
    with torch.no_grad():
        logits = model.llava(input_ids=ids, **pixels).logits[0].float()
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(target) - 1)
    return float(F.cross_entropy(logits[positions], torch.tensor(target)))


def test_answer_ids_are_the_supervised_answer_and_eos(model):
    ids = model.answer_ids("two")
    assert ids[-1] == model.tokenizer.eos_token_id
    assert model.tokenizer.decode(ids[:-1]).strip() == "two"


def test_answer_nll_equals_a_hand_computed_log_likelihood(model):
    image = picture((50, 70), 1)
    prompt, answers = choice_prompt("Where is the circle?", ["left of the square", "right of the square"], "full")
    nll = model.answer_nll([image, image], [prompt, prompt], answers)
    expected = torch.tensor([by_hand(model, image, prompt, a) for a in answers])
    torch.testing.assert_close(nll, expected, atol=1e-5, rtol=1e-5)
    assert abs(float(nll[0] - nll[1])) > 1e-3  # the options really differ


def test_a_row_scores_the_same_alone_in_a_batch_and_padded_left_or_right(model):
    rows = [
        (picture((50, 70), 1), "What shape is it?", "a red square"),
        (None, "What colour is the sky on a clear day?", "blue"),
        (picture((64, 40), 2), "How many?", "two"),
        (picture((30, 30), 3), "Is there a triangle in the picture at all?", "no, there is none"),
    ]
    images, prompts, answers = map(list, zip(*rows))
    alone = torch.cat([model.answer_nll([i], [p], [a]) for i, p, a in rows])
    for side in ("right", "left"):
        batched = model.answer_nll(images, prompts, answers, batch_size=16, padding_side=side)
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    mixed = model.answer_nll(images, prompts, answers, batch_size=3, padding_side="left")
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)


def test_choice_scores_are_minus_the_mean_nll_of_each_option(model):
    image = picture((50, 70), 1)
    options = [["circle", "square", "triangle"], ["yes", "no"]]
    questions = ["Which shape is red?", "Is there a circle?"]
    for form in ("letters", "full"):
        scores = model.choice_scores([image, None], questions, options, form)
        assert [len(s) for s in scores] == [3, 2]
        for q, opts, image_, got in zip(questions, options, [image, None], scores):
            prompt, answers = choice_prompt(q, opts, form)
            expected = torch.tensor([-by_hand(model, image_, prompt, a) for a in answers])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_vqa_score_is_exp_minus_ce_of_yes_and_a_probability(model):
    images = [picture((50, 70), 1), picture((64, 40), 2)]
    texts = ["a red circle left of a blue square", "two triangles"]
    scores = model.vqa_score(images, texts)
    assert ((scores > 0) & (scores < 1)).all()
    expected = [torch.exp(torch.tensor(-by_hand(model, i, VQASCORE_QUESTION.format(t), "Yes"))) for i, t in
                zip(images, texts)]  # fmt: skip
    torch.testing.assert_close(scores, torch.stack(expected), atol=1e-6, rtol=1e-5)


def test_choice_prompt_forms():
    prompt, answers = choice_prompt("Where?", ["left", "right"], "letters")
    assert prompt == "Where?\nA. left\nB. right\nAnswer with the option's letter from the given choices directly."
    assert answers == ["A", "B"]
    prompt, answers = choice_prompt("Where?", ["left", "right"], "full")
    assert answers == ["(a) left", "(b) right"] and "(b) right" in prompt
    with pytest.raises(ValueError, match="2 to"):
        choice_prompt("Where?", ["left"])


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("B", 1),
        ("b.", 1),
        ("(a) the circle is left of the square", 0),
        ("A) left", 0),
        ("C", None),  # a letter past the options
        ("a red circle", None),  # starts with "a " but names no letter, and no option
        ("The circle is left of the square.", 0),
        ("left", 0),  # inside exactly one option
        ("right of the square", 1),
        ("of the square", None),  # inside both: ambiguous
        ("I cannot tell", None),
        ("", None),
    ],
)
def test_match_option(answer, expected):
    options = ["the circle is left of the square", "the circle is right of the square"]
    assert match_option(answer, options) == expected


def test_generation_matches_or_counts_unmatched(model):
    choices, answers = model.choose_by_generation(
        [picture((50, 70), 1)] * 2, ["Which?", "Where?"], [["circle", "square"], ["left", "right"]], max_new_tokens=4
    )
    assert len(answers) == 2
    assert choices == [match_option(a, o) for a, o in zip(answers, [["circle", "square"], ["left", "right"]])]


def test_several_images_in_one_prompt_are_spliced_in_order(model):
    a, b = picture((50, 70), 1), picture((64, 40), 2)
    prompt = "The first image: <image>\nThe second image: <image>\nWhich one shows a circle?"
    ids = model.prompt_ids([prompt], [True], [[model.image_tokens] * 2])[0]
    assert ids.count(model.llava.config.image_token_id) == 2 * model.image_tokens
    text = model.tokenizer.decode([i for i in ids if i != model.llava.config.image_token_id])
    assert "The first image:" in text and text.index("first") < text.index("second")  # the tags stay in place
    target = model.answer_ids("the second")
    for order in ([a, b], [b, a]):  # transformers' LLaVA, the images' pixels in the order given
        pixels = torch.stack([ImageTransform(model.images)(x) for x in order])
        with torch.no_grad():
            logits = model.llava(input_ids=torch.tensor([ids + target]), pixel_values=pixels).logits[0]
        positions = torch.arange(len(ids) - 1, len(ids) + len(target) - 1)
        expected = F.cross_entropy(logits[positions].float(), torch.tensor(target))
        torch.testing.assert_close(model.answer_nll([order], [prompt], ["the second"])[0], expected, atol=1e-5, rtol=0)
    swapped = model.answer_nll([[a, b], [b, a]], [prompt] * 2, ["the second"] * 2)
    assert abs(float(swapped[0] - swapped[1])) > 1e-4  # the order matters to the model
    answers = model.generate([[a, b], [b, a], None], [prompt, prompt, "Hello?"], max_new_tokens=6, return_ids=True)
    alone = [model.generate([x], [p], max_new_tokens=6, return_ids=True)[0] for x, p in
             zip([[a, b], [b, a], None], [prompt, prompt, "Hello?"])]  # fmt: skip
    assert answers == alone


def test_a_tag_count_that_differs_from_the_images_is_refused(model):
    a = picture((50, 70), 1)
    with pytest.raises(ValueError, match="prompt 1: 2 images but 1 <image> tags"):
        model.generate([a, [a, a]], ["Which?", "<image>\nWhich?"], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 0: an <image> tag but no image"):
        model.answer_nll([None], ["<image>\nWhich?"], ["A"])
    with pytest.raises(ValueError, match="2 image entries for 1 prompts"):
        model.generate([a, a], ["Which?"], max_new_tokens=2)
