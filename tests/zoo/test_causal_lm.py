"""The zoo's tiny LLM: CausalLM on ShapesWorld text, exported as a transformers folder that LLaVA builds on."""

import torch
from lightning.pytorch import Trainer
from transformers import AutoModelForCausalLM, AutoTokenizer

from datamodules.text import TextDataModule
from tests.zoo.llava_fixtures import TINY_LM_CONFIG, tiny_vision_folder
from zoo import LLaVA
from zoo.causal_lm import CausalLM


def test_text_batches_supervise_every_real_token_and_end_with_eos():
    model = CausalLM(language_model_config=TINY_LM_CONFIG, max_length=64)
    data = TextDataModule(shapesworld={"n_train": 8, "n_val": 4}, batch_size=4, num_workers=0)
    data.connect(**model.data_transforms())
    batch = next(iter(data.loader("train", train=True, tokenize=True)))
    mask = batch["attention_mask"].bool()
    assert torch.equal(batch["labels"][mask], batch["input_ids"][mask])
    assert (batch["labels"][~mask] == -100).all()
    for ids, row in zip(batch["input_ids"], mask):
        real = ids[row].tolist()
        assert real[0] == model.tokenizer.bos_token_id
        assert real[-1] == model.tokenizer.eos_token_id or len(real) == 64  # a text cut at max_length has no end
        assert "<image>" not in model.tokenizer.decode(real)


def test_trained_llm_exports_a_folder_that_transformers_and_llava_load(tmp_path):
    torch.set_num_threads(1)
    model = CausalLM(language_model_config=TINY_LM_CONFIG, max_length=64, lr=3e-3, lr_schedule="constant")
    data = TextDataModule(shapesworld={"n_train": 64, "n_val": 8}, batch_size=8, num_workers=0)
    trainer = Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    data.connect(**model.data_transforms())
    before = model.model.lm_head.weight.detach().clone()
    trainer.fit(model, data)
    assert not torch.equal(before, model.model.lm_head.weight)
    folder = model.export_hf(tmp_path / "llm")
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("a red square to the left of a blue circle", return_tensors="pt").input_ids
    model.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model.model(ids).logits, atol=1e-6)
    llava = LLaVA(vision_tower=str(tiny_vision_folder(tmp_path / "vision")), language_model=str(folder))
    assert llava.tokenizer.image_token_id == tokenizer.image_token_id == 4
    assert torch.equal(llava.llava.lm_head.weight, model.model.lm_head.weight)
    embed = llava.llava.model.language_model.embed_tokens.weight
    assert torch.equal(embed, model.model.get_input_embeddings().weight)
