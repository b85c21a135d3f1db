"""The tokenizer shipped with vlzoo-tiny-llama is what the project's own training code produces."""

import json

from datamodules.shapesworld.tokenizer import shapesworld_tokenizer
from zoo.backbones.llava.build import TINY_LLAMA, TINY_LLAMA_FOLDER, load_tokenizer


def test_shipped_tokenizer_equals_a_fresh_training_run(tmp_path):
    shapesworld_tokenizer().save_pretrained(tmp_path)
    fresh = json.loads((tmp_path / "tokenizer.json").read_text())
    shipped = json.loads((TINY_LLAMA_FOLDER / "tokenizer.json").read_text())
    assert fresh["model"]["vocab"] == shipped["model"]["vocab"]
    assert fresh["model"]["merges"] == shipped["model"]["merges"]
    assert fresh["added_tokens"] == shipped["added_tokens"]


def test_shipped_tokenizer_loads_with_the_special_tokens_llava_needs():
    tok = load_tokenizer(TINY_LLAMA)
    ids = (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.image_token_id)
    assert ids == (0, 1, 2, 3, 4)
    assert tok("<image>").input_ids == [1, 4]
    assert tok("a red square</s>", add_special_tokens=False).input_ids[-1] == 2
    config = json.loads((TINY_LLAMA_FOLDER / "config.json").read_text())
    assert config["vocab_size"] >= len(tok)
