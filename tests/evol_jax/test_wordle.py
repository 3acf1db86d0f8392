"""evol_jax.envs.wordle: parity with every recorded AgentGym wordle exchange, MT19937, jit/vmap."""

import random
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evol_jax.envs import make
from evol_jax.envs import wordle as W
from evol_jax.prompts import wordle_first_observation
from tests.evol_jax import agentgym_data as data

FINISHED = re.compile(r"^The task with environment \d+ has finished\.$")


@pytest.fixture(scope="module")
def env():
    return make("wordle", vocab=str(data.path("wordle_words.txt")), agentgym_compat=True)


@pytest.fixture(scope="module")
def fns(env):
    return jax.jit(env.reset), jax.jit(env.step)


def test_vocab_file_order(env):
    text = data.path("wordle_words.txt").read_text()
    assert env.vocab == text.split("\n") and len(env.vocab) == 40


@pytest.mark.parametrize("seed", [0, 1, 7, 29, 12345, 99999, 2**31 - 1])
def test_mt_outputs_equal_cpython(seed):
    out = np.asarray(jax.jit(W.mt_outputs)(seed))
    ref = random.Random(seed)
    np.testing.assert_array_equal(out, [ref.getrandbits(32) for _ in range(624)])


def test_randbelow_equals_cpython_choice():
    rng = np.random.default_rng(0)
    draw, outputs = jax.jit(W.mt_randbelow), jax.jit(W.mt_outputs)
    for seed in rng.integers(0, 2**31 - 1, 5):
        ref = random.Random(int(seed))
        out = outputs(int(seed))
        pos = jnp.int32(0)
        for n in rng.integers(1, 3000, 30):
            r, pos = draw(out, pos, jnp.int32(n))
            assert int(r) == ref._randbelow(int(n))


def test_parity_every_transcript_record(env, fns):
    reset, step = fns
    records = data.load_jsonl("wordle_transcripts.jsonl")
    checked = 0
    for episode in data.episodes(records):
        first = episode[0]
        state, ts = reset(jax.random.key(0), first["seed"])
        assert env.observation_text(ts) == first["payload"]["observation"] == env.render_text(state)
        assert env.filtered_words(state) == first["vocab_after_create"]
        assert env.filtered_words(state) == first["state"]["filtered_vocab"]
        assert wordle_first_observation(env.filtered_words(state)) == first["client_observation"]
        checked += 1
        for rec in episode[1:]:
            payload, st = rec["payload"], rec["state"]
            if "error" in payload:
                assert FINISHED.match(payload["error"]) and bool(state.done)
                checked += 1
                continue
            try:
                action = env.action_from_text(rec["action"])
            except W.InvalidAction as e:
                assert e.message == "invalid word"
                action = W.INVALID_ACTION
            state, ts = step(state, jnp.int32(action))
            assert env.observation_text(ts) == payload["observation"] == env.render_text(state)
            assert float(ts.reward) == payload["reward"] and bool(ts.done) == payload["done"]
            assert int(state.round) == st["n_actions"]
            assert env.filtered_words(state) == st["filtered_vocab"]
            draws = st["rng_draws"]
            assert int(state.draw_n) == (draws[0]["n"] if draws else 0)
            if draws:
                assert len(draws) == 1
                assert int(state.draw_index) == draws[0]["index"]
                assert env.vocab[int(state.target)] == draws[0]["word"]
            checked += 1
    assert checked == len(records) == 189


def _reference_game(vocab, seed, guesses):
    """Independent host reimplementation of LMRL-Gym's game (lists and dicts, CPython rng)."""
    rng = random.Random(seed)
    know = {c: [W.POSSIBLE] * 5 for c in W.ALPHABET}

    def ok(word):
        for c, row in know.items():
            if all(k == W.POSSIBLE for k in row):
                continue
            if all(k == W.NOT_HERE for k in row):
                if c in word:
                    return False
                continue
            for i in range(5):
                if row[i] == W.HERE and word[i] != c:
                    return False
                if row[i] == W.NOT_HERE and word[i] == c:
                    return False
            if c not in word:
                return False
        return True

    filtered = list(vocab)
    out, history = [], []
    for g in guesses:
        history.append(g)
        if g not in vocab:
            out.append(("invalid word", 0.0, len(history) == 6))
            if len(history) == 6:
                break
            continue
        target = rng.choice(filtered)
        for i, c in enumerate(g):
            row = list(know[c])
            if c == target[i]:
                row[i] = W.HERE
            elif c in target:
                row[i] = W.NOT_HERE
            else:
                row = [W.NOT_HERE] * 5
            know[c] = row
        filtered = [w for w in vocab if ok(w)]
        solved = len(filtered) == 1 and filtered[0] in history
        k = np.array([know[c] for c in W.ALPHABET])
        out.append((W.reference_feedback(k, g), float(solved), solved or len(history) == 6))
        if out[-1][2]:
            break
    return out


def test_random_games_equal_host_reference():
    env = make("wordle", vocab=list(W.BUILTIN_VOCAB[:120]), agentgym_compat=True)
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    rng = np.random.default_rng(3)
    for seed in rng.integers(0, 10**6, 12):
        guesses = [env.vocab[i] if i >= 0 else "zzzzz" for i in rng.integers(-1, len(env.vocab), 6)]
        ref = _reference_game(env.vocab, int(seed), guesses)
        state, _ = reset(jax.random.key(0), int(seed))
        for g, (text, reward, done) in zip(guesses, ref, strict=False):
            state, ts = step(state, jnp.int32(env._index.get(g, -1)))
            assert (env.observation_text(ts), float(ts.reward), bool(ts.done)) == (
                text,
                reward,
                done,
            )


def test_action_parsing(env):
    assert env.action_from_text(" p a n i c\n") == 0 == env.action_from_text("panic")
    assert env.action_text(0) == "p a n i c"
    for bad in ["P A N I C", "panic!", "hello", "a b c d e f", "", "trove."]:
        with pytest.raises(W.InvalidAction, match="invalid word"):
            env.action_from_text(bad)


def test_default_mode_jax_rng_and_expert():
    env = make("wordle")
    assert len(env.vocab) == len(set(env.vocab)) >= 300 and not env.agentgym_compat
    run = jax.jit(jax.vmap(lambda k, i: _expert_episode(env, k, i)))
    n = 64
    success, rounds = run(jax.random.split(jax.random.key(0), n), jnp.arange(n))
    # The consistent-guess expert solves almost every game of the re-sampling variant.
    assert float(jnp.mean(success)) >= 0.9
    assert int(jnp.max(rounds)) <= 6
    # Same key and index -> same game.
    a = run(jax.random.split(jax.random.key(0), n), jnp.arange(n))
    chex.assert_trees_all_equal(a, (success, rounds))


def _expert_episode(env, key, idx):
    state, ts = env.reset(key, idx)

    def body(_, carry):
        s, _ = carry
        return env.step(s, env.expert_action(s))

    state, ts = jax.lax.fori_loop(0, 6, body, (state, ts))
    return state.success, state.round


def test_jit_vmap_no_retrace_and_vmap_equals_loop(env):
    n = 16
    idx = jnp.arange(n, dtype=jnp.int32)
    keys = jax.random.split(jax.random.key(1), n)
    rng = np.random.default_rng(0)
    actions = jnp.asarray(rng.integers(-1, env.num_actions, size=(6, n)), jnp.int32)
    reset_b = jax.jit(jax.vmap(chex.assert_max_traces(env.reset, n=1)))
    step_b = jax.jit(jax.vmap(chex.assert_max_traces(env.step, n=1)))
    state, _ = reset_b(keys, idx)
    outs = []
    for t in range(6):
        state, ts = step_b(state, actions[t])
        outs.append(ts)
    reset_b(keys, idx + 3)
    reset_one, step_one = jax.jit(env.reset), jax.jit(env.step)
    for i in [0, 5, 15]:
        s, _ = reset_one(keys[i], idx[i])
        for t in range(6):
            s, tsi = step_one(s, actions[t, i])
            chex.assert_trees_all_equal(tsi, jax.tree.map(lambda x, i=i: x[i], outs[t]))
        chex.assert_trees_all_equal(s, jax.tree.map(lambda x, i=i: x[i], state))


def test_bad_vocab(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        make("wordle", vocab=str(tmp_path / "none.txt"))
    (tmp_path / "v.txt").write_text("Hello\nworld\n")
    with pytest.raises(ValueError, match="5 letters a-z"):
        make("wordle", vocab=str(tmp_path / "v.txt"))
    (tmp_path / "e.txt").write_text("ab\n")
    with pytest.raises(ValueError, match="empty vocabulary"):
        make("wordle", vocab=str(tmp_path / "e.txt"))


def _word_in_state(knowledge: np.ndarray, word: str) -> bool:
    """Upstream ``WordleState.word_in_state``, letter by letter (host reference)."""
    for c in range(26):
        row = knowledge[c]
        if (row == W.POSSIBLE).all():
            continue
        letter = W.ALPHABET[c]
        if (row == W.NOT_HERE).all():
            if letter in word:
                return False
            continue
        if letter not in word:
            return False
        for p in range(W.N_CHARS):
            if row[p] == W.HERE and word[p] != letter:
                return False
            if row[p] == W.NOT_HERE and word[p] == letter:
                return False
    return True


def test_consistent_equals_word_in_state_on_random_knowledge():
    """The letter-set formulation == upstream's per-letter check, on reachable knowledge (from
    random guess/target pairs) and on arbitrary random knowledge (two HERE letters at one
    position included)."""
    env = make("wordle")
    consistent = jax.jit(jax.vmap(env.consistent))
    transition = jax.jit(env._transition)
    rng = np.random.default_rng(0)
    states = []
    for _ in range(10):  # reachable: a few transitions from the all-POSSIBLE state
        k = jnp.full((26, W.N_CHARS), W.POSSIBLE, jnp.int32)
        for _ in range(rng.integers(1, 5)):
            g, t = rng.integers(0, len(env.vocab), 2)
            k = transition(k, env._letters[g], env._letters[t])
            states.append(np.asarray(k))
    for density in (0.02, 0.1, 0.3):  # arbitrary: sparse non-POSSIBLE entries
        for _ in range(4):
            k = np.full((26, W.N_CHARS), W.POSSIBLE, np.int32)
            hit = rng.random((26, W.N_CHARS)) < density
            k[hit] = rng.choice([W.NOT_HERE, W.HERE], size=hit.sum())
            states.append(k)
    got = np.asarray(consistent(jnp.asarray(np.stack(states))))
    for k, row in zip(states, got, strict=True):
        assert row.tolist() == [_word_in_state(k, w) for w in env.vocab]
    assert got.any(axis=1).mean() > 0.3 and not got.all()  # both outcomes exercised


def test_nth_true_equals_cumsum_argmax():
    rng = np.random.default_rng(1)
    nth = jax.jit(W.WordleEnv._nth_true)
    for v in (1, 32, 33, 477):
        for _ in range(8):
            mask = rng.random(v) < rng.random()
            n = int(mask.sum())
            for r in {-1, 0, max(n - 1, 0), n, int(rng.integers(0, max(n, 1)))}:
                want = int(np.argmax(np.cumsum(mask) > r))
                assert int(nth(jnp.asarray(mask), jnp.int32(r))) == want, (v, r)
