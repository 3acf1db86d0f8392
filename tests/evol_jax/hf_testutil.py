"""Tiny random Hugging Face models and tokenizers, built and saved locally (no hub access)."""

from __future__ import annotations

import os

CORPUS = [
    "Your goal: go to the red ball. There is a red ball 1 3 steps in front of you.",
    "Thought:\nI should move forward.\n\nAction:\nmove forward",
    "Thought:\nThe door is locked.\n\nAction:\ntoggle and go through blue door 1",
    "You are facing a wall 2 steps away. Available actions: turn left, turn right, check",
    "Ok. Your current position is at position 3, 4. The goal is at position 8, 6.",
]

# The Llama-2-chat template as published with meta-llama/Llama-2-7b-chat-hf (system prompt folded
# into the first user turn, BOS before every user turn, " content EOS" after every assistant turn).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# ChatML (Qwen2-style) with a default system message, multi-line with whitespace control, so that
# trim_blocks / lstrip_blocks matter.
CHATML_TEMPLATE = """{%- if messages[0]['role'] != 'system' %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def make_tokenizer(path: str, chat_template: str | None = None, vocab_size: int = 300):
    """Trains a byte-level BPE on :data:`CORPUS`; saves it as a HF fast tokenizer in ``path``.

    Returns:
      The ``transformers`` tokenizer (for reference outputs).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=chat_template,
    )
    os.makedirs(path, exist_ok=True)
    hf.save_pretrained(path)
    return hf


def make_model(family: str, path: str, *, seed: int = 0, vocab_size: int = 320, **overrides):
    """A tiny random ``*ForCausalLM`` of ``family`` (2 layers, d 64), saved to ``path``.

    Weights are drawn with ``initializer_range=0.2`` so logits are far from uniform and greedy
    decoding has clear winners (no near-ties that fp32 noise could flip).
    """
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    if family == "gpt2":
        kw = dict(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        kw.update(initializer_range=0.2, bos_token_id=1, eos_token_id=2, **overrides)
        model = GPT2LMHeadModel(GPT2Config(**kw))
    else:
        kw = dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            initializer_range=0.2,
            bos_token_id=1,
            eos_token_id=2,
        )
        kw.update(overrides)
        cls = (
            (Qwen2Config, Qwen2ForCausalLM)
            if family == "qwen2"
            else (LlamaConfig, LlamaForCausalLM)
        )
        model = cls[1](cls[0](**kw))
    with torch.no_grad():  # norms / biases start at 1 / 0 in HF: randomise them too
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(path)
    return model
