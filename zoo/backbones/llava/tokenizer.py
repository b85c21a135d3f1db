"""An offline Llama-like tokenizer: byte-level BPE trained in-process, so tiny LLaVA models need no download.

Ids are fixed: ``<unk>`` 0, ``<s>`` 1 (BOS, prepended to every encoded text as Llama does), ``</s>`` 2 (EOS),
``<pad>`` 3, ``<image>`` 4 (``tok.image_token`` / ``tok.image_token_id``). Every byte is in the alphabet, so any
text encodes. ``tok.chat_template`` renders LLaVA's vicuna_v1 format (``conversation.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from zoo.backbones.llava.conversation import IMAGE_TOKEN, VICUNA_V1_SYSTEM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE_TOKEN)  # their ids are their positions here

# vicuna_v1 (SeparatorStyle.TWO) as a chat template: ``{bos}{system} USER: {q} ASSISTANT: {a}</s>USER: ...``.
# A leading system message replaces the default system prompt; list contents put ``<image>\n`` per image item
# before the text items (the llava-hf convention), string contents are used as they are. The generation prompt
# is "ASSISTANT:" with no trailing space. The template writes BOS itself, so ``processor.apply_chat_template``
# does not add a second one.
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}"
    "{%- for item in content if item['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "\\n' }}{%- endfor -%}"
    "{%- for item in content if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ render(messages[0]['content']) + ' ' }}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{{ '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + " ' }}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' + render(message['content']) + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + render(message['content']) + eos_token }}"
    "{%- else -%}{{ raise_exception('vicuna_v1 knows the roles system (first), user and assistant, not ' "
    "+ message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def train_bpe_model(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """The bare ``tokenizers`` model: byte-level BPE with the fixed special ids and a BOS post-processor.

    Deterministic: the same texts give the same vocabulary and merges, in any process.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    for expected, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != expected:
            raise RuntimeError(f"{token!r} got id {tok.token_to_id(token)}, expected {expected}")
    bos = SPECIAL_TOKENS.index(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos)]
    )
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` over :func:`train_bpe_model`, with ``image_token`` and the vicuna_v1
    ``chat_template``; ``save_pretrained`` + ``AutoTokenizer.from_pretrained`` reload it unchanged."""
    from transformers import PreTrainedTokenizerFast

    kwargs = {
        "tokenizer_object": train_bpe_model(texts, vocab_size),
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "clean_up_tokenization_spaces": False,  # decoding gives the text back exactly
    }
    try:
        tok = PreTrainedTokenizerFast(**kwargs, extra_special_tokens={"image_token": IMAGE_TOKEN})
    except TypeError:  # transformers without named extra special tokens: <image> stays an additional one
        tok = PreTrainedTokenizerFast(**kwargs, additional_special_tokens=[IMAGE_TOKEN])
    tok.chat_template = VICUNA_V1_CHAT_TEMPLATE
    return tok
