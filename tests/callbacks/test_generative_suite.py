"""The suite's generative scorers: pair / set / relaxed accuracy, ties and unmatched answers, on hand-built cases,
and a tiny LLaVA through the suite's command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from callbacks.protocols import Similarities, relaxed_pair, score
from callbacks.suite.generative import GenerativeScores, evaluate_generative, generative_scores
from datamodules.benchmarks import Benchmark, ImageRef, Item
from tests.zoo.llava_fixtures import llava_vision_folder, one_thread, perturb, picture, tiny_llava  # noqa: F401


def test_relaxed_pair_means_matched_beats_swapped_not_the_printed_perplexity_form():
    # each image has a low perplexity on its own caption: a right pair under the criterion's meaning
    ppl = {(1, 1): 2.0, (1, 2): 8.0, (2, 1): 8.0, (2, 2): 2.0}
    printed = ppl[1, 1] / (ppl[1, 1] + ppl[1, 2]) > ppl[2, 1] / (ppl[2, 1] + ppl[2, 2])
    assert not printed  # the paper's printed form, read literally with perplexities, calls it wrong
    like = {k: 1 / v for k, v in ppl.items()}
    assert relaxed_pair(like[1, 1], like[1, 2], like[2, 1], like[2, 2])
    assert not relaxed_pair(like[1, 2], like[1, 1], like[2, 2], like[2, 1])  # the swapped matching


def test_clip_transform_keeps_the_meaning_with_negative_cosines():
    cos = {(1, 1): 0.1, (1, 2): -0.3, (2, 1): -0.3, (2, 2): 0.1}  # clearly matched
    raw = cos[1, 1] / (cos[1, 1] + cos[1, 2]) > cos[2, 1] / (cos[2, 1] + cos[2, 2])
    assert not raw  # raw cosines in the ratio flip sign and call it wrong
    sims = Similarities(torch.zeros(1, 1), torch.zeros(1, 1), {}, {})
    p = {k: float(sims.positive(torch.tensor(v))) for k, v in cos.items()}
    assert p[1, 1] == pytest.approx(0.55)
    assert relaxed_pair(p[1, 1], p[1, 2], p[2, 1], p[2, 2])
    # and the generative transform: likelihood scores (−mean NLL) become 1 / perplexity
    g = GenerativeScores({}, "mc_full")
    assert float(g.positive(-torch.log(torch.tensor(4.0)))) == pytest.approx(0.25)


def _whatsup_pair(scores: dict[str, list[float]], scorer: str = "mc_full") -> tuple[Benchmark, GenerativeScores]:
    """Two images of a left / right pair, each with its own caption first (What'sUp's option order)."""
    texts = {"l": ["left", "right", "on", "under"], "r": ["right", "left", "on", "under"]}
    items = [
        Item(k, [ImageRef(k)], texts[k], meta={"answer": 0, "pair": "p", "set": "s", "caption_pair": (0, 1)})
        for k in ("l", "r")
    ]
    table = {(k, tuple(texts[k])): torch.tensor(v) for k, v in scores.items()}
    return Benchmark("whatsup/x", "whatsup", items), GenerativeScores(table, scorer)


def test_whatsup_pair_set_relaxed_and_ties_under_likelihood_scores():
    nll = torch.log(torch.tensor([2.0, 3.0, 9.0, 9.0]))  # image l: "left" best (ppl 2 vs 3)
    bench, scores = _whatsup_pair({"l": (-nll).tolist(), "r": [-1.5, -1.0, -3.0, -3.0]})  # r picks "left": wrong
    figures = score(bench, scores)
    assert figures["individual_accuracy"] == 0.5 and figures["pair_accuracy"] == 0.0 and figures["set_accuracy"] == 0
    # relaxed: l gives "left" 0.5/(0.5+0.333) = 0.6; r gives "left" e^-1/(e^-1+e^-1.5) = 0.62: not right
    assert figures["relaxed_pair_accuracy"] == 0.0
    assert figures["ties"] == 0 and "pair_image_cosine" not in figures  # no image embeddings given
    bench, scores = _whatsup_pair({"l": [-1.0, -1.0, -3.0, -3.0], "r": [-1.0, -2.0, -3.0, -3.0]})
    figures = score(bench, scores)
    assert figures["individual_accuracy"] == 0.5 and figures["ties"] == 1  # a tie is never right
    assert figures["relaxed_pair_accuracy"] == 1.0  # 0.5 share against e^-2/(e^-2+e^-1) = 0.27


def test_mmvp_reports_question_and_pair_accuracy_and_ties():
    items = [Item(str(i), [ImageRef(f"{i}a"), ImageRef(f"{i}b")], ["t0", "t1"]) for i in range(2)]
    table = {
        ("0a", ("t0", "t1")): torch.tensor([0.9, 0.1]), ("0b", ("t0", "t1")): torch.tensor([0.2, 0.8]),  # both right
        ("1a", ("t0", "t1")): torch.tensor([0.9, 0.5]), ("1b", ("t0", "t1")): torch.tensor([0.2, 0.5]),  # t1 ties
    }  # fmt: skip
    text_to_image = GenerativeScores(table, "vqascore", image_to_text=False)  # MMVP-VLM: a statement picks an image
    figures = score(Benchmark("mmvp", "mmvp", items), text_to_image)
    assert figures["question_accuracy"] == 0.75 and figures["pair_accuracy"] == 0.5 and figures["ties"] == 1
    figures = score(Benchmark("mmvp", "mmvp", items), GenerativeScores(table, "vqascore"))  # each image's question
    assert figures["question_accuracy"] == 1.0 and figures["pair_accuracy"] == 1.0 and figures["ties"] == 0
    same = {key: torch.tensor([0.9, 0.1]) for key in table}  # the same answer whatever the image
    figures = score(Benchmark("mmvp", "mmvp", items), GenerativeScores(same, "mc_letters"))
    assert figures["question_accuracy"] == 0.5 and figures["pair_accuracy"] == 0.0  # MMVP's chance: 50 / 25


class StubLLaVA:
    """What generative_scores calls, answering from a table (a wrong answer for image "b", none for "c")."""

    def choice_scores(self, images, questions, options, form, batch_size=16):
        return [torch.tensor([float(form == "full"), 0.0]) for _ in images]

    def vqa_score(self, images, texts, batch_size=16):
        return torch.tensor([0.9 if t == "yes" else 0.1 for t in texts])

    def choose_by_generation(self, images, questions, options, **kwargs):
        choice = {(1, 1): 0, (2, 2): 1}
        return [choice.get(image.size) for image in images], ["..."] * len(images)


def test_scorers_fill_the_protocols_and_count_unmatched(tmp_path):
    refs = {}
    for name, size in (("a", 1), ("b", 2), ("c", 3)):
        picture((size, size), 0).save(tmp_path / f"{name}.png")
        refs[name] = ImageRef(str(tmp_path / f"{name}.png"))
    items = [Item(n, [refs[n]], ["yes", "no"], meta={"answer": 0}) for n in ("a", "b", "c")]
    bench = Benchmark("toy", "multiple_choice", items)
    assert score(bench, generative_scores(StubLLaVA(), bench, "vqascore"))["accuracy"] == 1.0
    assert score(bench, generative_scores(StubLLaVA(), bench, "mc_letters"))["ties"] == 3
    results = evaluate_generative(StubLLaVA(), [bench], "generation")["toy"]
    assert results["accuracy"] == pytest.approx(1 / 3) and results["unmatched"] == 1 and results["ties"] == 1
    with pytest.raises(ValueError, match="scores by one of"):
        generative_scores(StubLLaVA(), bench, "cosine")


def test_a_tiny_llava_checkpoint_through_the_suite_command_line(tmp_path, llava_vision_folder):  # noqa: F811
    import lightning

    model = tiny_llava(llava_vision_folder)
    perturb(model, seed=1)
    trainer = lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "llava.ckpt")
    suite = tmp_path / "suite.yaml"
    spec = {"kind": "shapesworld", "n": 8, "n_spatial": 2, "per_class": 1, "benchmark_dir": str(tmp_path / "sw")}
    suite.write_text(json.dumps({"trainer": {"callbacks": [
        {"class_path": "callbacks.EvaluationSuite", "init_args": {"benchmarks": [spec]}}]}}))  # fmt: skip
    out = tmp_path / "report.json"
    command = [sys.executable, "-m", "callbacks.suite", "--checkpoint", str(tmp_path / "llava.ckpt"), "--module"]
    command += ["zoo.LLaVA", "--scorer", "mc_full", "--both-images", "--benchmarks", str(suite), "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    spatial = report["benchmarks"]["shapesworld/spatial"]
    assert report["scorer"] == "mc_full" and 0 <= spatial["relaxed_pair_accuracy"] <= 1
    assert {"pair_accuracy", "set_accuracy", "both_images_pair_accuracy", "ties"} <= set(spatial)
    assert {"question_accuracy", "pair_accuracy"} <= set(report["benchmarks"]["shapesworld/mmvp"])
    assert "shapesworld/retrieval" not in report["benchmarks"]  # needs embeddings: left out, with a warning


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _toy_benchmark(tmp_path) -> Benchmark:
    items = []
    for i in range(4):
        picture((20 + i, 20), i).save(tmp_path / f"{i}.png")
        texts = ["a red circle left of a blue square", "a red circle right of a blue square"]
        items.append(Item(str(i), [ImageRef(str(tmp_path / f"{i}.png"))], texts, meta={"answer": i % 2}))
    return Benchmark("toy", "multiple_choice", items)


def test_greedy_and_likelihood_scoring_are_deterministic_and_sampling_reports_mean_and_std(
    tmp_path, llava_vision_folder  # noqa: F811
):
    from callbacks.suite.study import mean_and_std

    torch.set_num_threads(1)
    model = perturb(tiny_llava(llava_vision_folder), seed=2, scale=0.3).eval()
    bench = _toy_benchmark(tmp_path)
    for scorer in ("mc_letters", "mc_full", "vqascore", "generation"):
        first = evaluate_generative(model, [bench], scorer, generation_kwargs={"max_new_tokens": 6})
        assert evaluate_generative(model, [bench], scorer, generation_kwargs={"max_new_tokens": 6}) == first
    runs = []
    for seed in range(3):
        torch.manual_seed(seed)
        sampled = {"do_sample": True, "temperature": 1.5, "max_new_tokens": 6}
        runs.append(evaluate_generative(model, [bench], "generation", generation_kwargs=sampled))
    summary = mean_and_std(runs)
    assert summary["seeds"] == 3
    assert summary["benchmarks"]["toy"]["accuracy"] == pytest.approx(sum(r["toy"]["accuracy"] for r in runs) / 3)
    assert summary["std"]["toy"]["items"] == 0 and summary["std"]["toy"]["unmatched"] >= 0
    assert mean_and_std(runs[:1]) == {"benchmarks": runs[0]}


def test_reranking_reorders_each_querys_top_k_and_keeps_the_rest():
    from callbacks.suite.rerank import reranked_recall

    # 3 images, one caption each; the first stage ranks every image's wrong captions first
    first = torch.tensor([[0.1, 0.9, 0.8], [0.9, 0.1, 0.8], [0.9, 0.8, 0.1]])
    text_to_image = torch.tensor([0, 1, 2])
    asked = []

    def vqa(pairs):  # the generative score knows the truth
        asked.extend(pairs)
        return torch.tensor([1.0 if i == t else 0.2 for i, t in pairs])

    plain = reranked_recall(first, text_to_image, lambda pairs: torch.zeros(len(pairs)), k=3)
    assert plain["i2t_R@1"] == 0.0 and plain["t2i_R@1"] == 0.0  # tied reranked scores: never right
    fixed = reranked_recall(first, text_to_image, vqa, k=3)
    assert fixed["i2t_R@1"] == 1.0 and fixed["t2i_R@1"] == 1.0
    assert len(asked) == len(set(asked)) == 9  # each distinct pair scored once
    shallow = reranked_recall(first, text_to_image, vqa, k=1)  # the right caption is outside every top 1
    assert shallow["i2t_R@1"] == 0.0 and shallow["t2i_R@1"] == 0.0  # beyond the top k: the first stage's order
    # 7 images: the right caption 3rd by the first stage; k = 2 cannot reach it, k = 3 can
    n = 7
    gallery = torch.rand(n, n, generator=torch.Generator().manual_seed(0)) * 0.5
    gallery[torch.arange(n), (torch.arange(n) + 1) % n] = 0.9
    gallery[torch.arange(n), (torch.arange(n) + 2) % n] = 0.8
    gallery[torch.arange(n), torch.arange(n)] = 0.7
    two, three = (reranked_recall(gallery, torch.arange(n), vqa, k=k) for k in (2, 3))
    assert two["i2t_R@1"] == 0.0 and two["i2t_R@5"] == 1.0 and three["i2t_R@1"] == 1.0
