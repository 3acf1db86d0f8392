"""Device sampler: device loop == host step-by-step reference, legal actions, row independence."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from core_jax.nn import Transformer, TransformerConfig
from evol_jax import envs, experts
from evol_jax import prompts as prompts_mod
from evol_jax.policy_data import tokenize_conversation
from evol_jax.policy_tokenizer import PolicyTokenizer, train_policy_tokenizer
from evol_jax.sampler import (
    DeviceSampler,
    PolicyCodec,
    action_table,
    host_reference_episode,
    strip_thoughts,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = []
    for name in ("maze", "textcraft"):
        env = envs.make(name)
        batch = experts.rollout(env, np.arange(6))
        for t in experts.trajectories(env, batch):
            item = experts.agenttraj.to_item(t)
            texts += [turn["value"] for turn in item["conversations"]]
    path = tmp_path_factory.mktemp("tok") / "policy"
    return PolicyTokenizer(train_policy_tokenizer(texts, str(path), vocab_size=600))


def _model(tok, seed=0):
    cfg = TransformerConfig(
        vocab_size=tok.vocab_size, d_model=32, num_layers=2, num_heads=2, mlp_dim=64,
        mlp="swiglu", norm="rmsnorm", max_len=8192,
    )  # fmt: skip
    model = Transformer(cfg)
    params = model.init(jax.random.key(seed), np.zeros((1, 4), np.int32))["params"]
    # Larger random weights give peaked, seed-dependent action choices.
    params = jax.tree.map(lambda p: p * 4.0 if p.ndim >= 2 else p, params)
    return model, params


_SAMPLERS = {}


def _sampler(tok, name, rounds=4):
    """One sampler per env for the module (its jit cache is shared by the tests)."""
    if name not in _SAMPLERS:
        model, params = _model(tok)
        env = envs.make(name, codec=PolicyCodec(tok))
        _SAMPLERS[name] = (DeviceSampler(env, model, tok, rounds=rounds), params)
    return _SAMPLERS[name]


@pytest.mark.parametrize("name", ["maze", pytest.param("textcraft", marks=pytest.mark.slow)])
def test_device_equals_host_reference(tok, name):
    sampler, params = _sampler(tok, name)
    idx = [0, 3, 7]
    out = sampler.run(params, idx, seed=5, temperature=0.0)
    assert not out.overflow.any()
    keys = sampler.row_keys(5, 0, idx, [0, 0, 0])
    for i, ix in enumerate(idx):
        env_key = jax.random.fold_in(keys[i], 2**31 - 1)
        ref = host_reference_episode(sampler, params, ix, env_key)
        n = int(out.num_steps[i])
        assert out.actions[:n, i].tolist() == ref["actions"]
        np.testing.assert_allclose(out.rewards[:n, i], ref["rewards"])
        np.testing.assert_array_equal(sampler.token_stream(out, i), ref["tokens"])
    sampler.run(params, idx, seed=6, temperature=0.5, top_p=0.9)
    assert sampler._jitted._cache_size() == 1  # new seed / temperature: no retrace


def test_stream_equals_bc_tokenisation(tok):
    """What the policy saw == what BC trains on (tokenize_conversation of the exported record)."""
    sampler, params = _sampler(tok, "maze")
    out = sampler.run(params, [1, 2, 24], seed=0, temperature=1.0)
    for i, rec in enumerate(sampler.to_records(out)):
        toks, mask = tokenize_conversation(rec["conversations"], tok)
        np.testing.assert_array_equal(toks, sampler.token_stream(out, i))
        assert rec["reward"] == pytest.approx(float(out.last_reward[i]))


@pytest.mark.slow
def test_legal_actions_only_and_rows_independent(tok):
    env = envs.make("textcraft", codec=PolicyCodec(tok))
    model, params = _model(tok, seed=2)
    sampler = DeviceSampler(env, model, tok, rounds=3)
    out = sampler.run(params, [4, 9], seed=3, num_samples=2, temperature=1.5, top_p=0.95)
    assert out.actions.shape == (3, 4)
    # Replay the sampled actions: each must be legal in the state it was taken in.
    keys = sampler.row_keys(3, 0, out.indices, [0, 1, 0, 1])
    for i in range(4):
        state, ts = env.reset(jax.random.fold_in(keys[i], 2**31 - 1), out.indices[i])
        for r in range(int(out.num_steps[i])):
            a = int(out.actions[r, i])
            assert bool(ts.legal_actions[a]), (i, r, env.action_text(a))
            state, ts = env.step(state, a)
    # A row alone gives the same episode as inside the batch (own key, own cache rows).
    single = sampler.run(params, [9], seed=3, num_samples=2, temperature=1.5, top_p=0.95)
    np.testing.assert_array_equal(single.actions, out.actions[:, 2:])
    np.testing.assert_array_equal(single.last_reward, out.last_reward[2:])


@pytest.mark.slow
def test_sharded_batch_equals_unsharded(tok):
    from core_jax.parallel import MeshConfig, make_mesh

    n = len(jax.devices())
    env = envs.make("maze", codec=PolicyCodec(tok))
    model, params = _model(tok, seed=3)
    sampler = DeviceSampler(env, model, tok, rounds=2)
    idx = list(range(n))
    plain = sampler.run(params, idx, seed=1, temperature=1.0)
    sharded = sampler.run(params, idx, seed=1, temperature=1.0, mesh=make_mesh(MeshConfig()))
    np.testing.assert_array_equal(plain.actions, sharded.actions)
    np.testing.assert_array_equal(plain.obs_tokens, sharded.obs_tokens)


def test_codec_and_bad_input(tok):
    codec = PolicyCodec(tok)
    text = "Crafting commands:\ncraft 4 oak planks using 1 oak log"
    table = codec.word_table(text.split(" "))
    pieces = np.concatenate([table.pieces[w, : table.lengths[w]] for w in range(table.num_words)])
    assert pieces.tolist() == codec.encode(text)
    assert codec.decode(codec.encode(text)) == text
    env = envs.make("maze")
    model, _ = _model(tok)
    with pytest.raises(ValueError, match="codec=PolicyCodec"):
        DeviceSampler(env, model, tok)
    env = envs.make("maze", codec=codec)
    table, lengths = action_table(env, tok)
    assert (table[np.arange(env.num_actions), lengths - 1] == tok.eos_id).all()
    sampler = DeviceSampler(env, model, tok)
    with pytest.raises(ValueError, match="indices"):
        sampler.run({}, [])
    with pytest.raises(ValueError, match="temperature"):
        sampler.run({}, [0], temperature=-1.0)


def test_strip_thoughts():
    item = {
        "item_id": "maze_0",
        "conversations": [
            {"from": "human", "loss": None, "value": "x"},
            {"from": "gpt", "loss": True, "value": "Thought:\nGo.\n\nAction:\nmove up"},
        ],
    }
    out = strip_thoughts(item)
    assert out["conversations"][1]["value"] == "Thought:\n\n\nAction:\nmove up"
    assert item["conversations"][1]["value"].startswith("Thought:\nGo.")


def test_http_host_path_batches_generation(tok):
    import asyncio

    from aiohttp import web

    from evol_jax.action_parse import client_action
    from evol_jax.agenttraj import validate_item
    from evol_jax.client import AgentGymClient
    from evol_jax.policy_data import tokenize_conversation as tc
    from evol_jax.sampler import BatchedHTTPPolicy
    from evol_jax.serve import build_app, build_service

    model, params = _model(tok)
    policy = BatchedHTTPPolicy(model, params, tok, "maze", max_new_tokens=6, wait_s=0.05,
                               kv_reuse=False)  # fmt: skip

    async def run(policy):
        runner = web.AppRunner(build_app([build_service("maze")]))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with AgentGymClient(f"http://127.0.0.1:{port}", env="maze") as client:
                return await client.run_episodes([0, 1, 2, 3], policy, max_rounds=2)
        finally:
            await runner.cleanup()

    batch = asyncio.run(run(policy))
    assert not batch.failed
    calls = sum(len(ep.actions) for ep in batch.episodes.values())
    assert policy.num_batches < calls and max(policy.batch_sizes) == 4
    records = policy.records(batch)
    assert len(records) == 4
    for rec in records:
        validate_item(rec)
        ep = batch.episodes[int(rec["item_id"].split("_")[1])]
        gpt = [t["value"] for t in rec["conversations"][3::2]]
        assert [client_action("maze", g) for g in gpt] == ep.actions
        # Batched greedy generation == the same prompt generated alone.
        prompt, _ = tc(rec["conversations"][:3], tok)
        assert policy.generate([prompt]) == [gpt[0]]
    # the same episodes with each episode's KV cache kept between turns
    kv = BatchedHTTPPolicy(model, params, tok, "maze", max_new_tokens=6, wait_s=0.05,
                           kv_reuse=True)  # fmt: skip
    kv_batch = asyncio.run(run(kv))
    assert not kv_batch.failed
    by_id = lambda recs: sorted(recs, key=lambda r: r["item_id"])  # noqa: E731
    assert by_id(kv.records(kv_batch)) == by_id(records)
    assert kv.prefilled_tokens < kv.prompt_tokens
    assert BatchedHTTPPolicy(model, params, tok, "maze").kv_reuse  # the default
    with pytest.raises(ValueError, match="wordle"):
        BatchedHTTPPolicy(model, params, tok, "wordle")
    with pytest.raises(ValueError, match="webshop"):
        BatchedHTTPPolicy(model, params, tok, "webshop")


class _FixedText:
    """Stands in for `BatchedHTTPPolicy.generate`: every turn is ``text``."""

    def __init__(self, text):
        self.text = text

    def __call__(self, prompts_):
        return [self.text] * len(prompts_)


@pytest.mark.parametrize(
    "env_name, text, action",
    [
        # Maze / BabyAI (lmrlgym rule): after the *first* "Action:", up to the next one
        ("maze", "Thought:\nAction: first\n\nAction:\nmove up", "first"),
        ("babyai", "Thought:\nAction: turn left\n\nAction:\nturn right", "turn left"),
        ("maze", "Action: move down", "move down"),  # no newline after the marker
        # TextCraft: after the last "Action:", sanitised
        ("textcraft", "Thought: x\n\nAction:\n get 1 oak log!  \nInstruction: y", "get 1 oak log"),
    ],
)
def test_http_host_path_uses_client_rule(tok, env_name, text, action):
    """The host path sends what AgentGym's client would (`action_parse.client_action`), not
    the text after the last ``"Action:\\n"``."""
    import asyncio

    from evol_jax.action_parse import client_action
    from evol_jax.sampler import BatchedHTTPPolicy

    model, params = _model(tok)
    # the re-encoding path, whose `generate` is replaced (the rule is applied in ``__call__``,
    # after either path)
    policy = BatchedHTTPPolicy(model, params, tok, env_name, wait_s=0.0, kv_reuse=False)
    policy.generate = _FixedText(text)
    sent = asyncio.run(policy(0, "Your goal: go to the red ball", []))
    assert sent == action == client_action(env_name, text)
    assert policy.turns[0] == [text]


def test_http_host_records_success_threshold(tok):
    """Host records use the env's success threshold: a BabyAI reward of 1 - 0.9 t/T is a
    success, a Maze reward of 0.5 is not (was ``reward == 1.0``)."""
    from evol_jax.client import BatchResult, Episode
    from evol_jax.sampler import BatchedHTTPPolicy

    model, params = _model(tok)
    expect = {"babyai": [(0.82, True), (0.0, False)], "maze": [(1.0, True), (0.5, False)]}
    for env_name, cases in expect.items():
        policy = BatchedHTTPPolicy(model, params, tok, env_name)
        episodes = {}
        for idx, (reward, _) in enumerate(cases):
            policy.conversation(idx, "obs", [])
            policy.turns[idx] = ["Thought:\n\n\nAction:\nx"]
            episodes[idx] = Episode(idx=idx, actions=["x"], replies=[{"reward": reward}])
        recs = policy.records(BatchResult(episodes=episodes, failed={}))
        got = [(r["reward"], r["success"]) for r in recs]
        assert got == cases, env_name


def test_compact_prompt(tok):
    """``prompt="compact"``: device loop == host reference, records tokenise to the stream, expert
    records restyled by `restyle_item` start exactly as the sampler's episodes, far fewer
    prefix tokens than AgentGym's prompt."""
    from evol_jax.sampler import first_observation, prefix_tokens, restyle_item

    model, params = _model(tok, seed=1)
    env = envs.make("maze", codec=PolicyCodec(tok))
    sampler = DeviceSampler(env, model, tok, rounds=3, prompt="compact")
    idx = [0, 13]
    out = sampler.run(params, idx, seed=4, temperature=0.0)
    keys = sampler.row_keys(4, 0, idx, [0, 0])
    records = sampler.to_records(out)
    expert = experts.trajectories(env, experts.rollout(env, np.asarray(idx)))
    for i, ix in enumerate(idx):
        ref = host_reference_episode(sampler, params, ix, jax.random.fold_in(keys[i], 2**31 - 1))
        n = int(out.num_steps[i])
        assert out.actions[:n, i].tolist() == ref["actions"]
        np.testing.assert_array_equal(sampler.token_stream(out, i), ref["tokens"])
        toks, _ = tokenize_conversation(records[i]["conversations"], tok)
        np.testing.assert_array_equal(toks, ref["tokens"])
        item = restyle_item(experts.agenttraj.to_item(expert[i]), "compact")
        assert item["conversations"][:3] == records[i]["conversations"][:3]
    state, _ = env.reset(jax.random.key(0), 0)
    full = prefix_tokens("maze", first_observation(env, state), tok)
    short = prefix_tokens("maze", first_observation(env, state, "compact"), tok, "compact")
    assert 4 * len(short) < len(full)
    with pytest.raises(ValueError, match="prompt"):
        DeviceSampler(env, model, tok, prompt="short")
    with pytest.raises(ValueError, match="prompt"):
        restyle_item(records[0], "short")


# ------------------------------------------------------------------------------ free decoding
def _free_model(tok, seed=0, chain=None):
    """Untied 1-layer model: random (writes garbage) or, with ``chain``, a bigram machine whose
    greedy continuation of ``chain[k]`` is ``chain[k + 1]`` (layers zeroed, one-hot embeddings)."""
    import flax.linen as nn

    cfg = TransformerConfig(
        vocab_size=tok.vocab_size, d_model=32, num_layers=1, num_heads=2, mlp_dim=64,
        mlp="swiglu", norm="rmsnorm", max_len=8192, tie_embeddings=False,
    )  # fmt: skip
    model = Transformer(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(seed), np.zeros((1, 4), np.int32))["params"])
    params = jax.tree.map(lambda p: np.array(p * 4.0 if p.ndim >= 2 else p), params)
    if chain is not None:
        assert len(set(chain[:-1])) == len(chain) - 1 <= 32, "chain tokens must be distinct"
        layer = params["layer_0"]
        layer["attn"]["out"]["kernel"][...] = 0.0
        layer["mlp"]["wo"]["kernel"][...] = 0.0
        emb = np.zeros_like(params["embedder"]["embedding"])
        head = np.zeros_like(params["lm_head"]["kernel"])
        for k, (a, b) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
            emb[a, k] = 1.0
            head[k, b] = 10.0
        params["embedder"]["embedding"], params["lm_head"]["kernel"] = emb, head
    return model, params


def _check_free_against_host(sampler, params, idx, seed):
    """Device free rollout == host reference (ids, texts, parse, rewards, stream, replies)."""
    from evol_jax import action_parse

    env = sampler.env
    out = sampler.run(params, idx, seed=seed, temperature=0.0)
    assert not out.overflow.any()
    keys = sampler.row_keys(seed, 0, idx, [0] * len(idx))
    statuses = []
    for i, ix in enumerate(idx):
        env_key = jax.random.fold_in(keys[i], 2**31 - 1)
        ref = host_reference_episode(sampler, params, ix, env_key)
        n = int(out.num_steps[i])
        assert [sampler.turn_text(out, r, i) for r in range(n)] == ref["texts"]
        assert out.actions[:n, i].tolist() == ref["actions"]
        assert out.status[:n, i].tolist() == ref["status"]
        np.testing.assert_allclose(out.rewards[:n, i], ref["rewards"])
        np.testing.assert_array_equal(sampler.token_stream(out, i), ref["tokens"])
        # the reply after each served turn is the server's (invalid text included)
        state, _ = env.reset(env_key, ix)
        for r in range(n):
            if out.status[r, i] == action_parse.UNSERVED:
                assert r == n - 1 and out.unserved[i]
                break
            action = action_parse.client_action(env.name, ref["texts"][r])
            state, _, reply = env.step_text(state, action)
            assert env.codec.decode(out.obs_tokens[r, i][out.obs_mask[r, i]]) == reply
            assert reply == ref["observations"][r]
        statuses += ref["status"]
    return out, statuses


def test_free_decoding_equals_host_reference(tok):
    """decode="free", maze: a random policy (garbage -> the env's invalid action, the same reply
    as AgentGym's server) and a policy that writes "Action: move up" (parsed), both equal to
    the step-by-step host reference; new seeds / params do not retrace."""
    from evol_jax import action_parse

    env = envs.make("maze", codec=PolicyCodec(tok))
    model, garbage = _free_model(tok)
    sampler = DeviceSampler(
        env, model, tok, rounds=2, decode="free", max_new_tokens=10, prompt="compact"
    )
    out, st = _check_free_against_host(sampler, garbage, [0, 5], seed=2)
    assert action_parse.INVALID in st
    assert (out.invalid_turns > 0).any() and not out.unserved.any()
    close = sampler.prefix("x")[-1]  # the prefix ends at [/INST]: the policy writes the turn
    chain = [int(close)] + tok.encode("Action: move up") + [tok.eos_id]
    _, writer = _free_model(tok, chain=chain)
    out, st = _check_free_against_host(sampler, writer, [0, 5], seed=3)
    assert set(st) == {action_parse.MATCHED} and (out.actions[out.active] == 2).all()
    assert sampler.turn_text(out, 0, 0) == "Action: move up"
    rec = sampler.to_records(out)[0]
    assert rec["conversations"][3]["value"] == "Action: move up" and rec["invalid_turns"] == 0
    assert sampler._jitted._cache_size() == 1
    with pytest.raises(ValueError, match="decode"):
        DeviceSampler(env, model, tok, decode="parse")
    with pytest.raises(ValueError, match="babyai"):
        DeviceSampler(envs.make("babyai", codec=PolicyCodec(tok)), model, tok, decode="free")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wordle", "textcraft"])
def test_free_decoding_wordle_textcraft(tok, name):
    """Wordle (a guess without spaces is the same guess; garbage -> "invalid word") and
    TextCraft (table text -> its action; other text -> UNSERVED, the episode ends there)."""
    from evol_jax import action_parse

    opts = {"vocab": ["panic", "frown", "shire", "crane", "slate"]} if name == "wordle" else {}
    env = envs.make(name, codec=PolicyCodec(tok), **opts)
    model, garbage = _free_model(tok, seed=1)
    sampler = DeviceSampler(
        env, model, tok, rounds=3, decode="free", max_new_tokens=12, prompt="compact"
    )
    out, st = _check_free_against_host(sampler, garbage, [0, 4], seed=1)
    bad = action_parse.INVALID if name == "wordle" else action_parse.UNSERVED
    assert bad in st
    text = "Action: crane" if name == "wordle" else "Action: inventory"
    chain = [int(sampler.prefix("x")[-1])] + tok.encode(text) + [tok.eos_id]
    _, writer = _free_model(tok, chain=chain)
    out, st = _check_free_against_host(sampler, writer, [0, 4], seed=1)
    assert set(st) == {action_parse.MATCHED}
    assert sampler._jitted._cache_size() == 1


def test_compact_wordle_first_observation():
    """Compact Wordle: the client's vocabulary without the rules, the same from the sampler
    (`first_observation`) and from restyled expert records (`restyle_item`)."""
    from evol_jax.sampler import COMPACT_WORDLE, first_observation, restyle_item

    words = ["panic", "frown", "shire"]
    env = envs.make("wordle", vocab=words)
    state, _ = env.reset(jax.random.key(0), 0)
    assert first_observation(env, state, "compact") == COMPACT_WORDLE.format(words="\n".join(words))
    full = first_observation(env, state)
    assert "frown" in full and len(full) > 10 * len(first_observation(env, state, "compact"))
    item = {"item_id": "wordle_0", "conversations": [
        {"from": "human", "loss": None, "value": "x"}, {"from": "gpt", "loss": False, "value": "y"},
        {"from": "human", "loss": None, "value": full}]}  # fmt: skip
    assert restyle_item(item, "compact")["conversations"][2]["value"] == first_observation(
        env, state, "compact"
    )
    item["conversations"][2]["value"] = "Let's start"
    with pytest.raises(ValueError, match="vocabulary block"):
        restyle_item(item, "compact")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_http_host_kv_reuse_equals_reencoding(tok, temperature):
    """``kv_reuse=True`` (each episode's cache kept between turns, only new tokens prefilled)
    gives the same turns as re-encoding the whole conversation, greedy and sampled, over
    several turns with changing batch membership and order; it prefills far fewer tokens."""
    from evol_jax.sampler import BatchedHTTPPolicy

    model, params = _model(tok, seed=2)
    kw = dict(max_new_tokens=12, temperature=temperature, seed=3, bucket=64)
    ref = BatchedHTTPPolicy(model, params, tok, "maze", kv_reuse=False, **kw)
    kv = BatchedHTTPPolicy(model, params, tok, "maze", kv_reuse=True, **kw)
    convs = {}
    for i in range(3):
        convs[i] = prompts_mod.conversation_start("maze")
        convs[i].append({"from": "human", "loss": None, "value": f"You are at {i}, {i + 1}."})
    prev = {}  # episode -> its last prompt's length
    # turn membership/order: all, a reordered subset, all again
    for turn, eps in enumerate([[0, 1, 2], [2, 0], [1, 0, 2]]):
        toks = [tokenize_conversation(convs[i], tok)[0] for i in eps]
        want = ref.generate(toks)
        before = kv.prefilled_tokens
        got = kv.generate_cached(eps, toks)
        assert got == want, turn
        prefilled = kv.prefilled_tokens - before
        # at most what the prompts added since the episode's last turn (all of it on turn 0)
        added = sum(len(t) - prev.get(i, 0) for i, t in zip(eps, toks, strict=True))
        assert prefilled <= added < sum(len(t) for t in toks) or turn == 0, turn
        assert prefilled == added or turn > 0
        prev.update({i: len(t) for i, t in zip(eps, toks, strict=True)})
        for i, text in zip(eps, got, strict=True):
            convs[i].append({"from": "gpt", "loss": True, "value": text})
            convs[i].append({"from": "human", "loss": None, "value": f"Wall {turn} at {i}."})
    assert kv.prompt_tokens == ref.prompt_tokens
    kv.clear_cache()  # a fresh pool: everything prefilled again, same turns
    assert kv.generate_cached(eps, toks) == ref.generate(toks)
    short = BatchedHTTPPolicy(model, params, tok, "maze", kv_reuse=True, cache_len=64, **kw)
    with pytest.raises(ValueError, match="cache_len"):
        short.generate_cached([0], [tokenize_conversation(convs[0], tok)[0]])
