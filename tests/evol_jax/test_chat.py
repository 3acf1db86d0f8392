"""Chat formats: golden strings (AgentGym Llama-2) and parity with HF apply_chat_template."""

from __future__ import annotations

import pytest

from evol_jax.chat import (
    LLAMA2,
    JinjaTemplate,
    Llama2Format,
    generation_prompt,
    render_conversation,
    render_text,
    turn_loss,
)
from evol_jax.hf_import import HFTokenizer
from tests.evol_jax.hf_testutil import CHATML_TEMPLATE, LLAMA2_TEMPLATE, make_tokenizer

# Three exchanges as AgentTraj stores them: instructions, canned "Ok." (loss false), ReAct turns.
CONV = [
    {"from": "human", "loss": None, "value": "You are an agent in a maze. Reply Ok."},
    {"from": "gpt", "loss": False, "value": "Ok."},
    {"from": "human", "loss": None, "value": "The goal is at position 8, 6."},
    {"from": "gpt", "loss": True, "value": "Thought:\nGo down.\n\nAction:\nmove down"},
    {"from": "human", "loss": None, "value": "There are walls to your left."},
    {"from": "gpt", "loss": None, "value": "Thought:\nKeep going.\n\nAction:\nmove right"},
]


def test_llama2_golden_string():
    expected = (
        "<s>[INST] You are an agent in a maze. Reply Ok. [/INST] Ok.</s>"
        "<s>[INST] The goal is at position 8, 6. [/INST]"
        " Thought:\nGo down.\n\nAction:\nmove down</s>"
        "<s>[INST] There are walls to your left. [/INST]"
        " Thought:\nKeep going.\n\nAction:\nmove right</s>"
    )
    assert render_text(CONV, LLAMA2) == expected


def test_llama2_segments_and_loss_flags():
    segs = render_conversation(CONV, LLAMA2)
    assert segs == [
        ("<s>[INST] You are an agent in a maze. Reply Ok. [/INST]", False, False),
        (" Ok.</s>", True, False),
        ("<s>[INST] The goal is at position 8, 6. [/INST]", False, False),
        (" Thought:\nGo down.\n\nAction:\nmove down</s>", True, True),
        ("<s>[INST] There are walls to your left. [/INST]", False, False),
        (" Thought:\nKeep going.\n\nAction:\nmove right</s>", True, True),
    ]
    # Official trainer semantics: null means no loss.
    official = [loss for _, _, loss in render_conversation(CONV, LLAMA2, null_loss="none")]
    assert official == [False, False, False, True, False, False]
    # A human turn explicitly marked loss=true is honoured.
    conv = [dict(CONV[0], loss=True)] + CONV[1:2]
    assert render_conversation(conv, LLAMA2)[0][2] is True


def test_llama2_custom_special_strings_and_generation_prompt():
    fmt = Llama2Format(bos="<bos>", eos="<eos>")
    assert render_text(CONV[:2], fmt) == "<bos>[INST] " + CONV[0]["value"] + " [/INST] Ok.<eos>"
    assert generation_prompt(CONV[:3], LLAMA2) == render_text(CONV[:3], LLAMA2)
    with pytest.raises(ValueError, match="end with a human turn"):
        generation_prompt(CONV[:2], LLAMA2)


@pytest.mark.parametrize("name", ["llama2", "chatml"])
def test_imported_template_matches_apply_chat_template(tmp_path, name):
    source = LLAMA2_TEMPLATE if name == "llama2" else CHATML_TEMPLATE
    ref = make_tokenizer(str(tmp_path), chat_template=source)
    tok = HFTokenizer.from_dir(str(tmp_path))
    assert tok.chat_template == source
    template = JinjaTemplate.from_tokenizer(tok)
    messages = [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
        for t in CONV
    ]
    segs = render_conversation(CONV, template)
    full = ref.apply_chat_template(messages, tokenize=False)
    assert "".join(s for s, _, _ in segs) == full
    prompt = ref.apply_chat_template(messages[:5], tokenize=False, add_generation_prompt=True)
    assert generation_prompt(CONV[:5], template) == prompt
    # Assistant segments hold exactly the assistant content plus the template's end marker.
    assistant = [s for s, a, _ in segs if a]
    if name == "llama2":
        assert assistant == [f" {t['value']} </s>" for t in CONV if t["from"] == "gpt"]
    else:
        assert assistant == [f"{t['value']}<|im_end|>\n" for t in CONV if t["from"] == "gpt"]
        headers = [s for s, a, _ in segs if s == "<|im_start|>assistant\n"]
        assert len(headers) == 3 and all(not a for s, a, _ in segs if s in headers)
    assert [loss for _, a, loss in segs if a] == [False, True, True]
    assert not any(loss for _, a, loss in segs if not a)


def test_template_with_system_message(tmp_path):
    ref = make_tokenizer(str(tmp_path), chat_template=CHATML_TEMPLATE)
    template = JinjaTemplate.from_tokenizer(HFTokenizer.from_dir(str(tmp_path)), system="Be terse.")
    messages = [{"role": "system", "content": "Be terse."}] + [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
        for t in CONV[:2]
    ]
    assert render_text(CONV[:2], template) == ref.apply_chat_template(messages, tokenize=False)


def test_bad_inputs():
    with pytest.raises(ValueError, match="'from'='system'"):
        render_conversation([{"from": "system", "loss": None, "value": "x"}], LLAMA2)
    with pytest.raises(ValueError, match="'value' must be a string"):
        render_conversation([{"from": "human", "loss": None, "value": 3}], LLAMA2)
    with pytest.raises(ValueError, match="empty"):
        render_conversation([], LLAMA2)
    with pytest.raises(ValueError, match="null, true or false"):
        turn_loss({"from": "gpt", "loss": "yes", "value": ""})
    with pytest.raises(ValueError, match="null_loss"):
        render_conversation(CONV, LLAMA2, null_loss="maybe")
    with pytest.raises(ValueError, match="does not compile"):
        JinjaTemplate("{% for %}")
    alternating = JinjaTemplate(LLAMA2_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>"})
    with pytest.raises(ValueError, match="roles must alternate"):
        render_conversation(CONV[:1] + CONV[:1], alternating)
    # A template that renders only the last message is not prefix-stable.
    last_only = JinjaTemplate("{{ messages[-1]['content'] }}")
    with pytest.raises(ValueError, match="prefix-stable"):
        render_conversation(CONV[:2], last_only)
