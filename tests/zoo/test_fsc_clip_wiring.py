"""FSC-CLIP wiring: ``FSCCLIP.losses`` equals the loss primitives fed by hand, row by row.

The reference below encodes every caption and every hard negative by its own string, pairs each one
with its own row's image in explicit loops, builds the text-token mask from the token ids (positions
1..EOT: start-of-text and padding out, EOT in) and calls the primitives of ``zoo.losses`` directly.
It shares no indexing with :meth:`FSCCLIP.features`, so a negative scored against another row's
image, a slot shifted by the mask scatter, the start token left in the local loss or a swapped
hyper-parameter all change a term.
"""

import pytest
import torch

import zoo
from tests.conftest import negative_caption_batch
from zoo.losses.contrastive import contrastive_loss
from zoo.losses.fsc import calibrated_hard_negative_loss, local_score

CAPTIONS = ["a red circle left of a blue square", "a green star", "two yellow crosses", "a purple hexagon"]
# row 1 has no negative, row 2 only in slot 1, row 3 only in slot 0: the scatter into [B, K] is exercised
NEGATIVES = [
    ["a blue circle left of a red square", "red a circle"],
    [None, None],
    [None, "crosses two yellow"],
    ["a purple pentagon", None],
]
SETTINGS = {"lambda_global": 0.7, "lambda_local": 0.3, "focal_gamma": 1.5, "label_smoothing": 0.1}

# seeded values (torch.manual_seed(0) model, the batch of ``negative_caption_batch``), recorded from
# ``model.losses`` after the hand-built reference below agreed with it to 1e-6
PINNED = {
    "contrastive_loss": 1.677513599395752,
    "global_hn_loss": 0.3631734549999237,
    "local_hn_loss": 0.1079348474740982,
}


def _model(tiny_cfg):
    torch.manual_seed(0)
    return zoo.FSCCLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg}, **SETTINGS).eval()


def _text_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[N, L] True at positions 1..EOT (EOT is the largest id of open_clip's tokenizer): no SOT, no padding."""
    positions = torch.arange(tokens.shape[1])
    return (positions >= 1) & (positions <= tokens.argmax(dim=1, keepdim=True))


def _reference(model, batch) -> dict[str, torch.Tensor]:
    backbone, hp = model.backbone, model.hparams
    scale = backbone.logit_scale
    mask = torch.tensor([[n is not None for n in row] for row in NEGATIVES])
    image = backbone.encode_dense(images=batch["image"])
    images, patches = image["image_features"], image["patch_features"]

    def text(caption: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = backbone.tokenize([caption])
        dense = backbone.encode_dense(tokens=tokens)
        return dense["text_features"][0], dense["token_features"], _text_mask(tokens)

    captions = [text(c) for c in CAPTIONS]
    global_logits = torch.zeros(mask.shape[0], 1 + mask.shape[1])
    local_logits = torch.zeros_like(global_logits)
    for i, row in enumerate(NEGATIVES):
        candidates = [(0, captions[i])] + [(1 + k, text(n)) for k, n in enumerate(row) if n is not None]
        for column, (pooled, words, words_mask) in candidates:
            global_logits[i, column] = scale * images[i] @ pooled  # own row's image, always
            local_logits[i, column] = local_score(words, words_mask, patches[i : i + 1], scale)[0]
    gamma, beta = hp.focal_gamma, hp.label_smoothing
    texts = torch.stack([pooled for pooled, _, _ in captions])
    return {
        **contrastive_loss(images, texts, scale),
        "global_hn_loss": hp.lambda_global * calibrated_hard_negative_loss(global_logits, mask, gamma, beta),
        "local_hn_loss": hp.lambda_local * calibrated_hard_negative_loss(local_logits, mask, gamma, beta),
    }


def test_losses_equal_the_primitives_wired_by_hand(tiny_cfg):
    model = _model(tiny_cfg)
    batch = negative_caption_batch(model, CAPTIONS, NEGATIVES)
    with torch.no_grad():
        got, expected = model.losses(batch), _reference(model, batch)
    assert got.keys() == expected.keys() == PINNED.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name].reshape(got[name].shape), atol=1e-6, rtol=0, msg=name)


def test_seeded_loss_values_are_pinned(tiny_cfg):
    model = _model(tiny_cfg)
    with torch.no_grad():
        got = model.losses(negative_caption_batch(model, CAPTIONS, NEGATIVES))
    assert {name: value.item() for name, value in got.items()} == pytest.approx(PINNED, abs=1e-5, rel=0)
