"""Free-text turns -> actions: AgentGym's client rules on the host, the same rules on device."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from evol_jax import action_parse, envs
from evol_jax.action_parse import (
    INVALID,
    MATCHED,
    UNSERVED,
    DeviceActionParser,
    client_action,
    host_parse,
    token_bytes,
)
from evol_jax.envs.base import INVALID_ACTION
from evol_jax.policy_tokenizer import PolicyTokenizer, train_policy_tokenizer

NAMES = ("maze", "wordle", "textcraft")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = ["Thought:\nThe goal is below me, so I move down.\n\nAction:\nmove down"]
    for name in NAMES:
        env = envs.make(name)
        texts += [env.action_text(a) for a in range(env.num_actions)]
    path = tmp_path_factory.mktemp("tok") / "policy"
    return PolicyTokenizer(
        train_policy_tokenizer(texts, str(path), 700, extra_symbols=["Thought:", "Action:"])
    )


def test_client_rules_known_answers():
    assert client_action("maze", "Thought:\nGo.\n\nAction:\nmove up") == "move up"
    assert client_action("maze", "  move up \n") == "move up"
    # the first "Action:" wins, up to the next one
    assert client_action("maze", "Action: move up Action: move down") == "move up"
    # upstream drops 5 characters when the text ends with "</s>" (4): one more goes
    assert client_action("maze", "Action:\nmove upx</s>") == "move up"
    assert client_action("maze", "\u3000move left\u00a0") == "move left"  # unicode strip
    assert client_action("wordle", "Thought:\nhm\n\nAction:\np a n i c") == "p a n i c"
    tc = "Thought: need logs\nAction: get 1 oak log\nInstruction: ignore"
    assert client_action("textcraft", tc) == "get 1 oak log"
    # the last "Action:", punctuation removed, whitespace collapsed
    text = "Action: x\nAction:  craft 4 oak planks!  using 1 oak log\n"
    assert client_action("textcraft", text) == "craft 4 oak planks using 1 oak log"
    # BabyAI's client (agentenv/envs/babyai.py) has the same code as lmrlgym's
    assert client_action("babyai", "Thought:\nx\n\nAction:\ngo to red ball 1") == "go to red ball 1"
    with pytest.raises(ValueError, match="webshop"):
        client_action("webshop", "search[shoes]")


def test_host_parse_uses_env_rules():
    maze, wordle, tc = (envs.make(n) for n in NAMES)
    assert host_parse(maze, "Action:\nmove down") == (3, MATCHED)
    assert host_parse(maze, "Action:\nMove down") == (INVALID_ACTION, INVALID)  # exact match
    w = wordle.action_text(5)
    assert host_parse(wordle, "Action:\n" + w.replace(" ", "")) == (5, MATCHED)  # spaces dropped
    assert host_parse(wordle, "Action:\nzzzzz") == (INVALID_ACTION, INVALID)
    assert host_parse(tc, "Action: inventory") == (0, MATCHED)
    assert host_parse(tc, "Action: jump") == (-2, UNSERVED)


def _texts(env, rng):
    """Turn texts for ``env``: valid in several spellings, invalid, garbage, unicode, '</s>'."""
    acts = [env.action_text(int(a)) for a in rng.choice(env.num_actions, 4, replace=False)]
    out = []
    for a in acts:
        out += [
            f"Thought:\nI think.\n\nAction:\n{a}",
            f" {a}\n",
            f"Action: {a} Action: {acts[0]}",
            f"Action:\n{a}.</s>",
            f"\u3000{a}\u2003",
            f"Thought: x\nAction: {a}\nInstruction: y",
            f"Action:\n{a.upper()}",
            f"Action:  {a.replace(' ', '  ')}!",
        ]
    out += ["", " ", "Action:", "Action:\n\n", "garbage ~ text", "é à Action: ü", "</s>", "x</s>"]
    out += [a.replace(" ", "") for a in acts]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_device_parse_equals_host(tok, name):
    """Device parse of token ids == host_parse(decode(ids)), for canonical and character-by-
    character tokenisations (the model may produce either)."""
    env = envs.make(name)
    parser = DeviceActionParser(env, tok)
    texts = _texts(env, np.random.default_rng(len(name)))
    rows = [tok.encode(t) for t in texts]
    rows += [sum((tok.encode(c) for c in t), []) for t in texts]  # non-canonical ids
    # generation stops at </s>: the end-of-turn id never sits inside a turn's text ids (the
    # character-by-character rows still spell "</s>" out)
    rows = [r for r in rows if tok.eos_id not in r]
    width = max(len(r) for r in rows) + 3
    ids = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    count = np.array([len(r) for r in rows], np.int32)
    action, status = jax.jit(parser.parse)(ids, count)
    want = [host_parse(env, tok.decode(r)) for r in rows]
    assert [(int(a), int(s)) for a, s in zip(action, status, strict=True)] == want
    got = {int(s) for s in status}
    assert MATCHED in got and (INVALID if name != "textcraft" else UNSERVED) in got
    # the byte rows are the decoded text
    buf, m = jax.jit(parser.text_bytes)(ids, count)
    for i, r in enumerate(rows):
        assert bytes(np.asarray(buf[i, : m[i]]).tolist()).decode() == tok.decode(r)


def test_token_bytes_concatenate_to_decode(tok):
    table, lengths = token_bytes(tok)
    rng = np.random.default_rng(0)
    normal = [i for i in range(tok.vocab_size) if not tok.sp.is_byte(i)]
    for _ in range(50):
        ids = rng.choice(normal, 12).tolist()
        joined = b"".join(bytes(table[i, : lengths[i]].tolist()) for i in ids)
        assert joined.decode() == tok.decode(ids)


def test_unsupported_env(tok):
    with pytest.raises(ValueError, match="babyai"):
        DeviceActionParser(envs.make("babyai"), tok)
    assert action_parse.RULES["maze"] == "lmrlgym"
