"""evol_jax.prompts, evol_jax.agenttraj, evol_jax.experts: prompts, format, batched expert, CLI."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evol_jax import agenttraj, experts, prompts
from evol_jax.envs import make
from tests.evol_jax import agentgym_data as data


def test_prompts_equal_agentgym_client_strings():
    shared = data.load_json("agentgym_client_prompts.json")
    for env, client in [("babyai", "BabyAIEnvClient"), ("textcraft", "TextCraftEnvClient"),
                        ("maze", "MazeEnvClient"), ("wordle", "WordleEnvClient")]:  # fmt: skip
        assert prompts.conversation_start(env) == shared[client]["conversation_start"]
        assert prompts.ENV_NAMES[env] == shared[client.replace("EnvClient", "Task")]["env_name"]
    maze = shared["MazeEnvClient"]
    assert prompts.MAZE_FULLY_FIRST_OBSERVATION == maze["_fully_first_observation"]
    assert prompts.MAZE_PARTIALLY_FIRST_OBSERVATION == maze["_partially_first_observation"]
    template = shared["WordleEnvClient"]["first_observation"]
    assert prompts.WORDLE_FIRST_OBSERVATION_TEMPLATE == template and "{{vocab}}" in template
    # The returned list is a copy.
    prompts.conversation_start("maze")[0]["value"] = "changed"
    assert prompts.conversation_start("maze") == maze["conversation_start"]
    with pytest.raises(ValueError, match="no AgentGym prompt"):
        prompts.conversation_start("webshop")


def test_client_first_observation_matches_recorded_client():
    rec = data.load_jsonl("maze_transcripts.jsonl")[0]
    got = agenttraj.client_first_observation("maze", rec["payload"]["observation"])
    assert got == rec["client_observation"]
    rec = data.load_jsonl("wordle_transcripts.jsonl")[0]
    got = agenttraj.client_first_observation("wordle", "", vocab=rec["vocab_after_create"])
    assert got == rec["client_observation"]


def test_react_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        thought = " ".join(rng.choice(["a", "b\n", "move", "x:y", ""], size=rng.integers(0, 9)))
        action = str(rng.choice(["move up", "p a n i c", "craft 1 stick using 2 planks"]))
        assert agenttraj.parse_react(agenttraj.react(thought, action)) == (thought, action)
    with pytest.raises(agenttraj.AgentTrajError, match="not a 'Thought"):
        agenttraj.parse_react("Action: move up")


@pytest.fixture(scope="module")
def maze():
    return make("maze")


def test_batched_expert_equals_python_loop(maze):
    idx = np.arange(30)
    batch = experts.rollout(maze, idx)
    step = jax.jit(maze.step)
    for i in [0, 9, 24, 29]:
        state, ts = maze.reset(jax.random.key(0), int(idx[i]))
        t = 0
        while not bool(ts.done):
            a = maze.expert_action(state)
            assert int(a) == int(batch.actions[t, i])
            state, ts = step(state, a)
            assert float(ts.reward) == float(batch.rewards[t, i])
            t += 1
        assert t == int(batch.num_steps[i])
        chex.assert_trees_all_equal(
            jax.tree.map(lambda x, i=i, t=t: x[t, i], batch.states), jax.device_get(state)
        )
    assert batch.success.all()
    rep = experts.report(maze, batch)
    assert rep["success_rate"] == 1.0 and rep["episodes"] == 30


def test_rollout_compiles_once_per_shape(maze):
    calls = []
    reset = maze.reset

    def counting_reset(key, idx):
        calls.append(1)
        return reset(key, idx)

    maze.reset = counting_reset
    try:
        experts.rollout(maze, np.arange(7), rounds=4)
        experts.rollout(maze, np.arange(7) + 3, rounds=4)
    finally:
        del maze.reset
    assert len(calls) == 1


def test_agenttraj_items_and_file_round_trip(maze, tmp_path):
    batch = experts.rollout(maze, np.arange(25))
    trajs = experts.trajectories(maze, batch)
    path = tmp_path / "maze.json"
    agenttraj.write_agenttraj(path, trajs)
    items = agenttraj.read_agenttraj(path)
    assert [it["item_id"] for it in items] == [f"maze_{i}" for i in range(25)]
    start = prompts.conversation_start("maze")
    step = jax.jit(maze.step)
    for i, item in enumerate(items):
        conv = item["conversations"]
        assert conv[:2] == start and conv[1]["loss"] is False
        assert conv[2]["from"] == "human" and conv[2]["value"].startswith(
            prompts.MAZE_FULLY_FIRST_OBSERVATION + "\n"
        )
        assert all(t["loss"] is None for t in conv[2::2])
        assert all(t["loss"] is True for t in conv[3::2]) and conv[-1]["from"] == "gpt"
        assert item["success"] is True and item["reward"] == 1.0
        # Replaying the file's actions in the env reproduces its observations and succeeds.
        state, _ = maze.reset(jax.random.key(0), i)
        obs = [t["value"] for t in conv[4::2]]
        for k, action in enumerate(agenttraj.actions_of(item)):
            state, ts = step(state, jnp.int32(maze.action_from_text(action)))
            if k < len(obs):
                assert maze.render_text(state) == obs[k]
        assert bool(state.success)


def test_agenttraj_reader_rejects_malformed_files(tmp_path):
    p = tmp_path / "bad.json"
    with pytest.raises(FileNotFoundError):
        agenttraj.read_agenttraj(tmp_path / "missing.json")
    p.write_text("{not json")
    with pytest.raises(agenttraj.AgentTrajError, match="not valid JSON"):
        agenttraj.read_agenttraj(p)
    good = {"item_id": "maze_0", "conversations": prompts.conversation_start("maze")}
    cases = [
        ({"conversations": []}, "item_id"),
        ({**good, "conversations": [{"from": "robot", "value": "x"}]}, "'from'"),
        ({**good, "conversations": [{"from": "human", "value": 3}]}, "'value'"),
        ({**good, "conversations": [{"from": "human", "value": "x", "loss": 1}]}, "'loss'"),
        ({**good, "conversations": [{"from": "gpt", "value": "x"}]}, "alternate"),
    ]
    for item, match in cases:
        p.write_text(json.dumps([good, item]))
        with pytest.raises(agenttraj.AgentTrajError, match=match):
            agenttraj.read_agenttraj(p)
    traj = agenttraj.Trajectory("maze", 0, "obs", thoughts=["t"], actions=[], observations=[])
    with pytest.raises(agenttraj.AgentTrajError, match="must match"):
        agenttraj.to_item(traj)


def test_cli_wordle_compat_on_shared_vocab(tmp_path, capsys):
    out = tmp_path / "wordle.json"
    vocab = str(data.path("wordle_words.txt"))
    summary = experts.main(
        ["--env", "wordle", "--num", "8", "--out", str(out), "--compat", "--vocab", vocab]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == summary and summary["episodes"] == 8 and summary["agentgym_compat"]
    items = agenttraj.read_agenttraj(out)
    env = make("wordle", vocab=vocab, agentgym_compat=True)
    first = agenttraj.client_first_observation("wordle", "", vocab=env.vocab)
    successes, reset = 0, jax.jit(env.reset)
    for seed, item in enumerate(items):
        assert item["item_id"] == f"wordle_{seed}" and item["conversations"][2]["value"] == first
        # The recorded actions replayed with CPython's rng semantics give the same outcome.
        state, _ = reset(jax.random.key(0), seed)
        for action in agenttraj.actions_of(item):
            state, ts, _ = env.step_text(state, action)
        assert bool(state.success) == item["success"]
        successes += item["success"]
    assert summary["success_rate"] == successes / 8


def test_rollout_bad_input(maze):
    with pytest.raises(ValueError, match="non-empty 1-D"):
        experts.rollout(maze, [])
    with pytest.raises(ValueError, match="rounds"):
        experts.rollout(maze, [0], rounds=-1)


def test_expert_success_uses_each_envs_threshold():
    # BabyAI pays 1 - 0.9 t/T on success (never exactly 1), the others pay 1; a failed episode 0.
    from evol_jax.envs.base import success_threshold

    last = np.array([0.0, 0.55, 0.99, 1.0], np.float32)

    def batch(env_name):
        z = np.zeros((1, 4))
        return experts.ExpertBatch(
            indices=np.arange(4), states=None, actions=z, rewards=z, active=z.astype(bool),
            last_reward=last, threshold=success_threshold(env_name),
        )  # fmt: skip

    np.testing.assert_array_equal(batch("babyai").success, [False, True, True, True])
    for name in ("maze", "wordle", "textcraft"):
        np.testing.assert_array_equal(batch(name).success, [False, False, False, True])
