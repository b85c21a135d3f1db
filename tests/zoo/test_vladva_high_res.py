"""VladVA over LLaVA-NeXT AnyRes (``high_res``) on the tiny model (42 px tiles, 14 px patches): image sequences
whose visual-token count follows the image's size, padded per row (right and left) with the summary where it
belongs; the image embedding against zoo.LLaVA's own forward; which parameters train on a real
ShortLongCaptionDataModule batch of two image sizes; checkpoints; and a fit through the stacked config."""

from __future__ import annotations

import json

import pytest
import torch

import zoo
from tests.conftest import ROOT
from tests.zoo.llava_fixtures import (
    llava_vision_folder,
    one_thread,
    perturb_lora,
    picture,
    save,
    tiny_llava,
    tiny_vladva,
    trainable,
)
from zoo.vladva.high_res import HighResImages, HighResImageTransform

__all__ = ["llava_vision_folder", "one_thread"]  # fixtures, used by name
pytestmark = pytest.mark.usefixtures("one_thread")
ANYRES = {"mode": "anyres"}
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}
SIZES = [(100, 50), (37, 90), (42, 42)]  # (width, height): three token counts (30, 37, 24 on the tiny geometry)
SHORTS = ["a red square", "two blue circles left of a large green triangle", None]
LONGS = ["There is one object in the image. A red square is in the top left.", None, "There is one object."]
ADAPTED = ("soft_prompts.prompts.image", "soft_prompts.prompts.text", "log_logit_scale")


def model_of(folder, **kwargs):
    return tiny_vladva(folder, high_res=ANYRES, lora=LORA, **kwargs).eval()


def pictures(sizes=SIZES, seed: int = 0) -> list:
    return [picture(size, seed + i) for i, size in enumerate(sizes)]


def counts(model, sizes=SIZES) -> list[int]:
    return [model.high_res.tokens((h, w)) for w, h in sizes]


def test_high_res_reaches_llava_and_stays_in_the_pruned_hparams(llava_vision_folder, tmp_path):
    model = model_of(llava_vision_folder)
    assert type(model.llava).__name__ == "LlavaNextForConditionalGeneration" and model.high_res.mode == "anyres"
    assert model.hparams["high_res"] == model.high_res.options()  # resolved, and not pruned as LLaVA's own
    assert "stage" not in model.hparams and model.sequences.image_tokens is None  # counts come per image
    assert len(set(counts(model))) == 3
    perturb_lora(model)
    path = tmp_path / "vladva.ckpt"
    save(model, path)
    again = zoo.VladVA.load_from_checkpoint(path, map_location="cpu").eval()
    assert again.high_res == model.high_res
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(pictures()), model.encode_image(pictures()))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_an_items_embedding_alone_equals_it_in_a_padded_batch_of_mixed_image_sizes(llava_vision_folder, padding_side):
    model = model_of(llava_vision_folder, padding_side=padding_side)
    perturb_lora(model)
    images, expected = pictures(), counts(model)
    pixels, batch = model.image_inputs(images)
    assert batch["image_sizes"].tolist() == [[h, w] for w, h in SIZES] and len(pixels) == 3 + 3 * 1 + 4  # views
    ids, mask = batch["image_input_ids"], batch["image_attention_mask"]
    assert (ids == model.llava.config.image_token_id).sum(1).tolist() == expected
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 3  # rows of three lengths: padding is exercised on the image side
    width = ids.shape[1]
    last = lengths - 1 if padding_side == "right" else torch.full((3,), width - 1)
    assert torch.equal(batch["image_summary_index"], last)
    summary_token = model.sequences.first_turn("image", image_tokens=1)[0][-1]  # ":" of "ASSISTANT:"
    assert ids[torch.arange(3), batch["image_summary_index"]].tolist() == [summary_token] * 3
    with torch.no_grad():
        batched = model.encode_image(images)
        alone = torch.cat([model.encode_image(image) for image in images])
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
        # the training layout: long captions of other lengths after the summary, each row's own count
        train = model.sequences(SHORTS, LONGS, image_tokens=expected)
        train.update(image_sizes=batch["image_sizes"])
        torch.testing.assert_close(model._tower("image", train, pixels)[1], model.encode_image(images, False))
    from callbacks.prompts import eager_attention, tower_pass  # the prompt analysis embeds as encode_image does

    with eager_attention(model):
        torch.testing.assert_close(tower_pass(model, "image", images=images)["embeddings"], batched)


def test_the_image_embedding_is_llavas_own_summary_hidden_state(llava_vision_folder):
    base = tiny_llava(llava_vision_folder, high_res=ANYRES).eval()
    model = model_of(llava_vision_folder)
    perturb_lora(model)  # adapters that would change everything, switched off below
    shared = {n: t for n, t in model.llava.state_dict().items() if "lora_" not in n}
    reference = base.llava.state_dict()
    assert all(torch.equal(t, reference[n.replace(".base_layer", "")]) for n, t in shared.items())
    images = pictures()
    pixels, batch = model.image_inputs(images)
    views = pixels.split([model.high_res.views_of(size) for size in batch["image_sizes"].tolist()])
    with torch.no_grad():
        with model.adapters_disabled():
            ours = model.encode_image(images, normalize=False)
        for row in range(3):  # one sequence at a time, unpadded: LLaVA's own positions
            ids = batch["image_input_ids"][row][batch["image_attention_mask"][row].bool()][None]
            hidden = base(ids, torch.ones_like(ids), views[row], batch["image_sizes"][row : row + 1])
            torch.testing.assert_close(ours[row], hidden[0, -1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model.encode_image(images[:1], False)[0], ours[0])  # adapters on: not the base
        model.soft_prompts["image"].add_(0.1)
        with model.adapters_disabled():
            assert not torch.allclose(model.encode_image(images[:1], False)[0], ours[0])  # the soft prompt is live


def manifest(folder, sizes=((96, 48), (40, 80), (96, 48), (40, 80))):
    rows = []
    for i, size in enumerate(sizes):
        picture(size, i).save(folder / f"{i}.png")
        rows.append({"image": f"{i}.png", "short": SHORTS[i % 2], "long": LONGS[0] if i % 2 else None})
    path = folder / "pairs.json"
    path.write_text(json.dumps(rows))
    return path


def test_a_caption_batch_of_two_sizes_trains_only_the_adapters(llava_vision_folder, tmp_path):
    from datamodules import ShortLongCaptionDataModule

    model = model_of(llava_vision_folder).train()
    perturb_lora(model)
    path = manifest(tmp_path)
    data = ShortLongCaptionDataModule(source="manifest", train=str(path), val=str(path), batch_size=4, num_workers=0)
    data.connect(**model.data_transforms())
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    views = [model.high_res.views_of(s) for s in batch["image_sizes"].tolist()]
    assert batch["tiles_per_image"].tolist() == views and batch["pixel_values"].shape[0] == sum(views)
    slots = (batch["image_input_ids"] == model.llava.config.image_token_id).sum(1)
    assert slots.tolist() == batch["image_tokens"].tolist() and len(set(slots.tolist())) == 2
    assert torch.equal(batch["image"]["pixel_values"], batch["pixel_values"])
    losses = model.losses(batch)
    assert set(losses) >= {"contrastive_loss", "ar_loss"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= trainable(model) and set(ADAPTED) <= with_grad and any("lora_A" in n for n in with_grad)
    assert all("lora_" in n for n in trainable(model) - set(ADAPTED))  # the newline is frozen with the projector
    # the retrieval loader's batch (no tokens) embeds as the images do one at a time
    model.eval()
    images = next(iter(data.retrieval_dataloader("val")))["image"]
    assert isinstance(images, HighResImages) and len(images) == 4
    with torch.no_grad():
        from PIL import Image

        alone = torch.cat([model.encode_image(Image.open(tmp_path / f"{i}.png")) for i in range(4)])
        torch.testing.assert_close(model.encode_image(images), alone, atol=1e-5, rtol=1e-5)
        # DataLoader's default collate (the compositionality callback's loader) stacks images of one size
        transform = HighResImageTransform(model.high_res, model.image_spec)
        stacked = torch.utils.data.default_collate([transform(Image.open(tmp_path / f"{i}.png")) for i in (0, 2)])
        torch.testing.assert_close(model.encode_image(stacked.to("cpu")), alone[[0, 2]], atol=1e-5, rtol=1e-5)
    # with the projector trained, the newline trains too and gets a gradient
    unfrozen = model_of(llava_vision_folder, trainable={"projector": True}).train()
    sum(unfrozen.losses(batch).values()).backward()
    newline = unfrozen.llava.model.image_newline
    assert newline.requires_grad and newline.grad is not None and newline.grad.abs().sum() > 0


def test_a_pixel_tensor_missing_sizes_and_wrong_counts_are_named_errors(llava_vision_folder):
    model = model_of(llava_vision_folder)
    with pytest.raises(TypeError, match="lost the image's size"):
        model.encode_image(torch.zeros(2, 3, 42, 42))
    pixels, batch = model.image_inputs(pictures()[:2])
    with pytest.raises(ValueError, match="image_sizes"):
        model.sequence_states("image", batch["image_input_ids"], batch["image_attention_mask"],
                              batch["image_soft_mask"], pixels)  # fmt: skip
    with pytest.raises(ValueError, match="placeholders per row"):  # a count that is not the image's own
        wrong = model.sequences.images(2, image_tokens=counts(model)[::-1][1:])
        model.sequence_states("image", wrong["image_input_ids"], wrong["image_attention_mask"],
                              wrong["image_soft_mask"], pixels, batch["image_sizes"])  # fmt: skip
    with pytest.raises(ValueError, match="give image_tokens per image"):
        model.sequences.images(2)


def test_fit_through_the_stacked_config(tmp_path, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)
    configs = ["--config", str(ROOT / "configs" / "vladva.yaml"), "--config", str(ROOT / "configs/vladva/anyres.yaml")]
    cli = train.main(["fit", *configs, "--trainer.fast_dev_run", "true"])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.state.finished and torch.isfinite(metrics["train/loss"])
    assert "val/retrieval/i2t_R@1" in metrics and "val/compositionality/mean" in metrics
    assert cli.model.high_res is not None and cli.model.hparams["high_res"]["max_visual_tokens"] == 1024
