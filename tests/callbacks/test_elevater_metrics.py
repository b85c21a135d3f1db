"""ELEVATER's zero-shot metrics against hand-computed values and scikit-learn (what ELEVATER calls)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, precision_recall_curve, roc_auc_score

from callbacks.zero_shot import elevater_metric, eleven_point_average_precision, roc_auc


def _elevater_reference(y_label, y_score):
    """ELEVATER's zeroshot ``mAP_11points``: the running max over scikit-learn's precision-recall curve."""
    precision, recall, _ = precision_recall_curve(y_label, y_score)
    total, index, best = 0.0, 0, 0.0
    for threshold in np.linspace(1, 0, 11, endpoint=True).tolist():
        while index < len(recall) and threshold <= recall[index]:
            best = max(best, precision[index])
            index += 1
        total += best
    return total / 11


def test_eleven_point_ap_by_hand():
    # points (precision, recall): (1, .5), (.5, .5), (2/3, 1), (.5, 1) and the curve's end (1, 0):
    # levels 1.0 ... 0.6 see only recall 1 (best 2/3); levels 0.5 ... 0 reach precision 1
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    positives = torch.tensor([True, False, True, False])
    assert eleven_point_average_precision(scores, positives) == pytest.approx((5 * 2 / 3 + 6) / 11)


@pytest.mark.parametrize("seed", range(5))
def test_eleven_point_ap_matches_elevater_on_sklearn(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 12, (60,), generator=generator).float() / 4  # many ties
    positives = torch.rand(60, generator=generator) < 0.3
    expected = _elevater_reference(positives.numpy(), scores.numpy())
    assert eleven_point_average_precision(scores, positives) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 8, (50,), generator=generator).float()
    positives = torch.rand(50, generator=generator) < 0.4
    assert roc_auc(scores, positives) == pytest.approx(roc_auc_score(positives.numpy(), scores.numpy()), abs=1e-12)


def test_dataset_metrics():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    balanced = balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert elevater_metric("mean-per-class", logits, labels) == pytest.approx(balanced)
    assert elevater_metric("accuracy", logits, labels) == pytest.approx(
        float((logits.argmax(1) == labels).float().mean())
    )
    per_class = [_elevater_reference((labels == c).numpy(), logits[:, c].numpy()) for c in range(4)]
    assert elevater_metric("11point_mAP", logits, labels) == pytest.approx(sum(per_class) / 4)
    binary = logits[:, :2]
    expected = roc_auc_score((labels % 2).numpy(), binary[:, 1].numpy())
    assert elevater_metric("roc_auc", binary, labels % 2) == pytest.approx(expected)
    with pytest.raises(ValueError, match="binary"):
        elevater_metric("roc_auc", logits, labels)
    with pytest.raises(ValueError, match="unknown"):
        elevater_metric("f1", logits, labels)


def test_the_suite_reports_a_datasets_elevater_metric(tmp_path):
    import zoo
    from callbacks.suite import evaluate_suite, load_benchmarks
    from datamodules import ImageCaptionDataModule
    from tests.conftest import TINY_MODEL_CFG

    torch.manual_seed(0)
    model = zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG}).eval()
    spec = {"kind": "shapesworld", "n": 8, "n_spatial": 2, "per_class": 3, "classification_metric": "11point_mAP"}
    benchmarks = load_benchmarks(
        [spec], ImageCaptionDataModule(benchmark_dir=str(tmp_path)), model.data_transforms()["eval_transform"]
    )
    classification = [b for b in benchmarks if b.name == "shapesworld/shape_classification"]
    figures = evaluate_suite(model, classification, batch_size=16, num_workers=0)["shapesworld/shape_classification"]
    assert 0 < figures["11point_mAP"] <= 1 and "top1" in figures
