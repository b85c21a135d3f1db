"""Protocols on hand-set similarities: every figure is known in advance."""

import math

import pytest
import torch

from callbacks.protocols import Similarities, picks, score
from datamodules.benchmarks import Benchmark, ImageRef, Item


def _sims(image_text: dict[tuple[str, str], float], texts: list[str], images: list[str], text_text=None):
    """Similarities whose image-text (and text-text) dot products are exactly the given values.

    Features live in a space with one axis per image plus one per text: an image is a unit vector on
    its axis plus nothing else; a text's coordinate on image axis k is s(image_k, text)."""
    n_i, n_t = len(images), len(texts)
    image_features = torch.zeros(n_i, n_i + n_t)
    image_features[:, :n_i] = torch.eye(n_i)
    text_features = torch.zeros(n_t, n_i + n_t)
    for (image, text), value in image_text.items():
        text_features[texts.index(text), images.index(image)] = value
    for (a, b), value in (text_text or {}).items():  # put the text-text products on the text axes
        i, j = texts.index(a), texts.index(b)
        text_features[i, n_i + j] += value
        text_features[j, n_i + j] += 1.0
    return Similarities(
        image_features, text_features, {k: i for i, k in enumerate(images)}, {t: i for i, t in enumerate(texts)}
    )


def _item(id, images, texts, **kw):
    return Item(id=id, images=[ImageRef(p) for p in images], texts=texts, **kw)


def test_ties_fail_unless_first_max():
    scores = torch.tensor([0.3, 0.3, 0.1])
    assert not picks(scores, 0) and not picks(scores, 1)
    assert picks(scores, 0, "first_max") and not picks(scores, 1, "first_max")


def test_multiple_choice_with_macro_groups():
    texts = ["t", "f", "t2", "f2", "t3", "f3"]
    sims = _sims(
        {("a", "t"): 0.5, ("a", "f"): 0.2, ("b", "t2"): 0.1, ("b", "f2"): 0.4, ("c", "t3"): 0.3, ("c", "f3"): 0.3},
        texts,
        ["a", "b", "c"],
    )
    items = [
        _item("1", ["a"], ["f", "t"], group="on", meta={"answer": 1}),
        _item("2", ["b"], ["f2", "t2"], group="on", meta={"answer": 1}),
        _item("3", ["c"], ["f3", "t3"], group="under", meta={"answer": 1}),
    ]
    bench = Benchmark(
        "aro/vg_relation", "multiple_choice", items, options={"macro_over_groups": True, "macro_min_items": 2}
    )
    figures = score(bench, sims)
    assert figures["accuracy"] == pytest.approx(1 / 3)  # item 3 ties: a failure
    assert figures["macro_accuracy"] == pytest.approx(0.5) and figures["macro_groups"] == 1  # "under" has < 2 items
    bench.options["tie_rule"] = "first_max"  # the tie now goes to index 0 ("f3"), still wrong
    assert score(bench, sims)["accuracy"] == pytest.approx(1 / 3)


def test_whatsup_individual_pair_set_and_relaxed():
    texts = ["left", "right", "above", "below"]
    values = {
        ("i1", "left"): 0.30,
        ("i1", "right"): 0.20,
        ("i1", "above"): 0.1,
        ("i1", "below"): 0.1,  # right
        ("i2", "left"): 0.25,
        ("i2", "right"): 0.24,
        ("i2", "above"): 0.1,
        ("i2", "below"): 0.1,  # wrong
        ("i3", "left"): 0.0,
        ("i3", "right"): 0.0,
        ("i3", "above"): 0.5,
        ("i3", "below"): 0.4,  # right
        ("i4", "left"): 0.0,
        ("i4", "right"): 0.0,
        ("i4", "above"): 0.3,
        ("i4", "below"): 0.6,  # right
    }
    sims = _sims(values, texts, ["i1", "i2", "i3", "i4"])
    items = [
        _item("1", ["i1"], texts, meta={"answer": 0, "pair": "lr", "set": "s", "caption_pair": (0, 1)}),
        _item("2", ["i2"], texts, meta={"answer": 1, "pair": "lr", "set": "s", "caption_pair": (1, 0)}),
        _item("3", ["i3"], texts, meta={"answer": 2, "pair": "ab", "set": "s", "caption_pair": (2, 3)}),
        _item("4", ["i4"], texts, meta={"answer": 3, "pair": "ab", "set": "s", "caption_pair": (3, 2)}),
    ]
    figures = score(Benchmark("whatsup/controlled_a", "whatsup", items), sims)
    assert figures["individual_accuracy"] == pytest.approx(3 / 4)
    assert figures["pair_accuracy"] == pytest.approx(1 / 2)
    assert figures["set_accuracy"] == 0.0
    # relaxed, pair lr: i1 prefers left by (1.3/2)/(1.3/2+1.2/2) = 1.3/2.5 = 0.52; i2: 1.25/2.49 = 0.502 -> right
    # pair ab: i3: 1.5/2.9 = 0.517 > i4: 1.3/2.9 = 0.448 -> right
    assert figures["relaxed_pair_accuracy"] == 1.0
    assert figures["pair_image_cosine"] == 0.0  # orthogonal image features by construction


def test_winoground_scores():
    texts = ["c0", "c1", "d0", "d1"]
    values = {
        ("i0", "c0"): 0.5,
        ("i0", "c1"): 0.2,
        ("i1", "c0"): 0.3,
        ("i1", "c1"): 0.4,  # all right
        ("j0", "d0"): 0.5,
        ("j0", "d1"): 0.2,
        ("j1", "d0"): 0.6,
        ("j1", "d1"): 0.4,
    }  # text wrong on j1
    sims = _sims(values, texts, ["i0", "i1", "j0", "j1"])
    items = [_item("a", ["i0", "i1"], ["c0", "c1"]), _item("b", ["j0", "j1"], ["d0", "d1"])]
    figures = score(Benchmark("winoground", "winoground", items), sims)
    # b: text needs s(d1,j1) > s(d0,j1): 0.4 < 0.6 wrong; image needs s(d0,j0) > s(d0,j1): 0.5 < 0.6 wrong
    assert figures == {"text_score": 0.5, "image_score": 0.5, "group_score": 0.5, "items": 2, "skipped": 0}


def test_mmvp_pair_accuracy_text_to_image():
    texts = ["s0", "s1"]
    # t0 picks image a (0.6 > 0.5); t1 ties between the images (0.5 = 0.5)
    sims = _sims({("a", "s0"): 0.6, ("a", "s1"): 0.5, ("b", "s0"): 0.5, ("b", "s1"): 0.5}, texts, ["a", "b"])
    bench = Benchmark("mmvp", "mmvp", [_item("1", ["a", "b"], texts)])
    assert score(bench, sims)["pair_accuracy"] == 0.0  # a tie is a failure
    bench.options["tie_rule"] = "reference"  # the official script counts the tie on t1 as right
    assert score(bench, sims)["pair_accuracy"] == 1.0


def test_sugarcrepe_pp_itt_and_tot():
    texts = ["p1", "p2", "n"]
    sims = _sims(
        {("a", "p1"): 0.5, ("a", "p2"): 0.3, ("a", "n"): 0.4},
        texts,
        ["a"],
        text_text={("p1", "p2"): 0.9, ("p1", "n"): 0.2, ("p2", "n"): 0.1},
    )
    figures = score(Benchmark("sugarcrepe_pp/replace_obj", "sugarcrepe_pp", [_item("1", ["a"], texts)]), sims)
    assert figures["itt_accuracy"] == 0.0  # s(a, p2) = 0.3 < s(a, n) = 0.4
    assert sims.text_text("p1", "p2") > sims.text_text("p1", "n")
    assert figures["tot_accuracy"] == 1.0


def test_brittleness():
    texts = ["pos", "hard", "neg", "pos2", "hard2", "neg2"]
    sims = _sims(
        {
            ("a", "pos"): 0.5,
            ("a", "hard"): 0.4,
            ("a", "neg"): 0.3,
            ("b", "pos2"): 0.5,
            ("b", "hard2"): 0.2,
            ("b", "neg2"): 0.3,
        },
        texts,
        ["a", "b"],
    )
    items = [_item("1", ["a"], ["pos", "hard", "neg"]), _item("2", ["b"], ["pos2", "hard2", "neg2"])]
    assert score(Benchmark("brittleness", "brittleness", items), sims)["brittleness"] == 0.5


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol"):
        score(Benchmark("x", "nope", []), _sims({}, [], []))
    assert math.isnan(score(Benchmark("x", "mmvp", []), _sims({}, [], []))["pair_accuracy"])


def test_macro_excludes_groups():
    texts = ["t", "f", "t2", "f2"]
    sims = _sims({("a", "t"): 0.5, ("a", "f"): 0.2, ("b", "t2"): 0.1, ("b", "f2"): 0.4}, texts, ["a", "b"])
    items = [
        _item("1", ["a"], ["f", "t"], group="on", meta={"answer": 1}),
        _item("2", ["b"], ["f2", "t2"], group="near", meta={"answer": 1}),
    ]
    options = {"macro_over_groups": True, "macro_min_items": 1, "macro_exclude_groups": ["near"]}
    figures = score(Benchmark("aro/vg_relation", "multiple_choice", items, options=options), sims)
    assert figures["accuracy"] == 0.5 and figures["macro_accuracy"] == 1.0 and figures["macro_groups"] == 1


def test_winoground_second_clauses_decide():
    """Items where only one clause of one score fails, so dropping any clause changes a figure.

    s(c_j, i_k) per item: ("c0","i0"), ("c0","i1"), ("c1","i0"), ("c1","i1") → (text, image) expected."""
    cases = {  # s(c0,i0) s(c0,i1) s(c1,i0) s(c1,i1)      text image
        "image_second": ((0.9, 0.1, 0.6, 0.5), (1.0, 0.0)),  # image: s(c1,i1) 0.5 < s(c1,i0) 0.6
        "text_second": ((0.9, 0.6, 0.1, 0.5), (0.0, 1.0)),  # text: s(c1,i1) 0.5 < s(c0,i1) 0.6
        "image_first": ((0.5, 0.6, 0.1, 0.9), (1.0, 0.0)),  # image: s(c0,i0) 0.5 < s(c0,i1) 0.6
        "text_first": ((0.5, 0.1, 0.6, 0.9), (0.0, 1.0)),  # text: s(c0,i0) 0.5 < s(c1,i0) 0.6
        "both": ((0.9, 0.2, 0.3, 0.8), (1.0, 1.0)),
    }
    for name, ((c0i0, c0i1, c1i0, c1i1), (text, image)) in cases.items():
        values = {("i0", "c0"): c0i0, ("i1", "c0"): c0i1, ("i0", "c1"): c1i0, ("i1", "c1"): c1i1}
        sims = _sims(values, ["c0", "c1"], ["i0", "i1"])
        figures = score(Benchmark("winoground", "winoground", [_item(name, ["i0", "i1"], ["c0", "c1"])]), sims)
        got = (figures["text_score"], figures["image_score"], figures["group_score"])
        assert got == (text, image, min(text, image)), name
