"""Tests of gato_jax.tasks and gato_jax.datagen: experts, recorded layout, loading back."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("tensorflow_datasets")

from gato_jax import datagen, tasks  # noqa: E402
from gato_jax.configs.tokenizer import TokenizerConfig  # noqa: E402
from gato_jax.input_pipeline import (  # noqa: E402
    STEP_FLAGS,
    GatoDataPipeline,
    RLDSDataset,
    parse_data_spec,
)
from gato_jax.sequence import encode_episode  # noqa: E402

CONTROL = ("cartpole", "acrobot", "pendulum", "mountaincar_continuous")
CFG = TokenizerConfig(seq_len=192, prompt_tokens=48)
EPISODES = 2
MAX_STEPS = 12


def _available():
    return datagen.resolve_tasks("available")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("datagen"))
    names = _available()
    report = datagen.generate(names, EPISODES, out, seed=3, max_steps=MAX_STEPS, quiet=True)
    return out, names, report


# ---------------------------------------------------------------------------------------------
# Registry.


def test_unknown_task_lists_known_tasks():
    with pytest.raises(KeyError, match="unknown task 'cartpol'.*known tasks: .*cartpole"):
        tasks.get_task("cartpol")
    with pytest.raises(ValueError, match="unknown task 'nope'.*pendulum.*domains"):
        datagen.resolve_tasks("cartpole,nope")
    with pytest.raises(ValueError, match="unknown domain"):
        tasks.list_tasks("robots")
    with pytest.raises(SystemExit):
        datagen.main(["--tasks", "nope", "--out", "/nonexistent"])


def test_registry_domains_and_specs():
    names = tasks.list_tasks()
    assert set(CONTROL) <= set(names)
    assert sorted(sum((tasks.list_tasks(d) for d in tasks.DOMAINS), [])) == names
    for d in tasks.DOMAINS:
        assert tasks.list_tasks(d), f"domain {d} has no task"
    for n in names:
        t = tasks.get_task(n)
        assert t.name == n and t.domain in tasks.DOMAINS
        assert t.spec.observation and t.max_steps >= 1
        assert (t.make_env is None) == (t.domain in ("vl", "text"))
        assert (t.expert is None) == (t.domain in ("vl", "text"))
        # Environment tasks act; vl_shapes "acts" by captioning (a text action field).
        assert bool(t.spec.action) == (t.has_env or t.domain == "vl")
        if not t.has_env:
            assert all(f.spec.kind == "text" for f in t.spec.action)
        for f in t.spec.observation:
            if f.spec.kind == "image":
                assert f.spec.shape[2] == TokenizerConfig().image_channels


def test_spec_follows_tokenizer_config():
    cfg = TokenizerConfig(seq_len=64)
    assert tasks.get_task("cartpole", cfg).spec.cfg == cfg


def test_recorded_returns_expert_beats_random():
    """Every environment task has measured returns in the shipped table, expert >> random."""
    with open(tasks.RETURNS_FILE) as f:
        table = json.load(f)
    for n in tasks.list_tasks():
        t = tasks.get_task(n)
        if not t.has_env:
            assert math.isnan(t.random_return) and math.isnan(t.expert_return)
            continue
        assert n in table, f"{n} has no recorded returns"
        assert t.random_return == table[n]["random_return"]
        assert t.expert_return == table[n]["expert_return"]
        assert table[n]["max_steps"] == t.max_steps
        # A wide margin: the gap exceeds 3 standard errors of the difference of the two means
        # and half of the expert's absolute return.
        row = table[n]
        gap = t.expert_return - t.random_return
        stderr = math.hypot(row["random_std"], row["expert_std"]) / math.sqrt(row["episodes"])
        assert gap > 3 * stderr and gap > 0.5 * abs(t.expert_return), n
        assert t.normalized_score(t.expert_return) == pytest.approx(100.0)
        assert t.normalized_score(t.random_return) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no usable random/expert returns"):
        tasks.get_task("vl_shapes").normalized_score(1.0)


# ---------------------------------------------------------------------------------------------
# Experts and rollouts.


@pytest.mark.parametrize("name", CONTROL)
def test_control_expert_beats_random(name):
    task = tasks.get_task(name)
    for seed in (0, 1):
        expert = datagen.run_episode(task, seed, "expert", record=False)["return"]
        rand = datagen.run_episode(task, seed, "random", record=False)["return"]
        # normalised score of the expert on this seed (0 = random mean, 100 = expert mean)
        assert task.normalized_score(expert) > 50, (name, seed, expert)
        assert expert - rand > 0.5 * (task.expert_return - task.random_return), (name, seed)


def test_rollouts_are_deterministic_per_seed():
    task = tasks.get_task("pendulum")
    a = datagen.run_episode(task, 5, "expert", max_steps=30)
    b = datagen.run_episode(task, 5, "expert", max_steps=30)
    c = datagen.run_episode(task, 6, "expert", max_steps=30)
    np.testing.assert_array_equal(a["observation"]["state"], b["observation"]["state"])
    np.testing.assert_array_equal(a["action"]["torque"], b["action"]["torque"])
    assert not np.array_equal(a["observation"]["state"], c["observation"]["state"])
    r1 = datagen.run_episode(task, 5, "random", max_steps=30)
    r2 = datagen.run_episode(task, 5, "random", max_steps=30)
    np.testing.assert_array_equal(r1["action"]["torque"], r2["action"]["torque"])


def test_recorded_episode_replays_in_the_environment():
    """Known case: replaying the recorded actions from the seed reproduces the observations
    and rewards (parity with the original simulator)."""
    task = tasks.get_task("acrobot")
    ep = datagen.run_episode(task, 2, "expert")
    env, obs = task.new_episode(2)
    for t in range(ep["steps"]):
        o = task.observation(obs, env)
        np.testing.assert_array_equal(o["state"], ep["observation"]["state"][t])
        obs, r, term, trunc, _ = env.step(task.to_env_action({"action": ep["action"]["action"][t]}))
        assert r == ep["reward"][t]
    assert term == ep["terminal"]
    assert ep["reward"].sum() == pytest.approx(ep["return"])


def test_bad_inputs():
    task = tasks.get_task("cartpole")
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        task.to_env_action({"action": np.int32(2)})
    with pytest.raises(ValueError, match="key 'action'"):
        task.to_env_action({"move": 1})
    pend = tasks.get_task("pendulum")
    with pytest.raises(ValueError, match="NaN"):
        pend.to_env_action({"torque": np.array([np.nan], np.float32)})
    with pytest.raises(ValueError, match="expected shape"):
        pend.to_env_action({"torque": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(pend.to_env_action({"torque": np.array([5.0])}), [2.0])
    with pytest.raises(ValueError, match="policy="):
        datagen.run_episode(task, 0, "greedy")
    with pytest.raises(ValueError, match="no environment"):
        datagen.run_episode(tasks.get_task("text_corpus"), 0)
    with pytest.raises(ValueError, match="no actions"):
        tasks.get_task("vl_shapes").to_env_action({})
    with pytest.raises(ValueError, match="episodes=0"):
        datagen.measure_returns(task, 0)


def test_vl_captions_describe_the_image():
    """Known answer: each named shape is drawn in its named cell with its named colour."""
    rng = np.random.default_rng(0)
    places = {p: i for i, p in enumerate(tasks._PLACES)}
    for _ in range(20):
        img, caption = tasks.vl_shapes_pair(rng)
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8
        assert caption.endswith(tasks.CAPTION_END)
        named = []
        for part in caption[: -len(tasks.CAPTION_END)].split(" and "):
            words = part.split(" ")  # "a red circle in the top left"
            colour, shape, place = words[1], words[2], " ".join(words[5:])
            named.append(places[place])
            r, c = divmod(places[place], 3)
            cell = img[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
            mask = tasks._shape_mask(shape, 16)
            np.testing.assert_array_equal(
                cell[mask], np.broadcast_to(tasks._COLOURS[colour], cell[mask].shape)
            )
        assert named == sorted(named)  # raster order: the caption is a function of the image


def test_vl_caption_follows_its_image_and_carries_the_loss():
    """Captioning layout (spec sections 2/5): per step the image patches, '|', then the
    caption's text tokens, which are the loss targets; image tokens carry no loss."""
    import jax

    from gato_jax.sequence import build_batch, stack_episodes
    from gato_jax.spec import TokenKind

    task = tasks.get_task("vl_shapes", CFG)
    assert [f.name for f in task.spec.observation] == ["observation/image"]
    assert [(f.name, f.spec.kind) for f in task.spec.action] == [("action/caption", "text")]
    ep = task.sample_episode(5)
    captions = ep["action"]["caption"]
    tok = datagen.train_tokenizer(captions, vocab_size=120)
    arrays = encode_episode(ep, task.spec, text_tokenizer=tok)
    b = build_batch(
        stack_episodes([arrays]), jax.random.split(jax.random.key(0), 1), task.spec,
        prompt_mode="none", window="start",
    )  # fmt: skip
    kinds, tokens = np.asarray(b.kinds[0]), np.asarray(b.tokens[0])
    loss, valid = np.asarray(b.loss_mask[0]), np.asarray(b.valid[0])
    patches = (tasks.VL_IMAGE // 16) ** 2
    pos = 0
    for caption in captions:  # every step that fits in the window, in order
        ids = tok.encode(caption)
        n = patches + 1 + ids.size
        if pos + n > CFG.seq_len:
            break
        assert (kinds[pos : pos + patches] == TokenKind.IMAGE).all()
        assert not loss[pos : pos + patches + 1].any()
        assert kinds[pos + patches] == TokenKind.SEPARATOR
        span = slice(pos + patches + 1, pos + n)
        assert (kinds[span] == TokenKind.ACTION).all() and loss[span].all()
        np.testing.assert_array_equal(tokens[span], ids)
        pos += n
    assert pos >= 2 * (patches + 1) and valid[:pos].all()


# ---------------------------------------------------------------------------------------------
# Generated datasets.


def test_generate_writes_every_task(generated):
    out, names, report = generated
    with open(os.path.join(out, "tasks.json")) as f:
        saved = json.load(f)
    assert list(saved["tasks"]) == names
    assert saved["data_all"] == datagen.data_spec(names, out)
    plain = [n for n in names if tasks.get_task(n).domain not in ("vl", "text")]
    assert saved["data"] == datagen.data_spec(plain, out)
    assert open(os.path.join(out, "data_spec.txt")).read().strip() == saved["data"]
    for n in names:
        t = tasks.get_task(n)
        row = saved["tasks"][n]
        assert os.path.isfile(os.path.join(out, n, "1.0.0", "dataset_info.json"))
        assert row["seeds"] == [3, 3 + EPISODES]
        if t.has_env:
            assert row["random_return"] == t.random_return
            assert row["expert_return"] == t.expert_return
            assert len(row["generated_returns"]) == EPISODES
        assert 1 <= row["mean_steps"] <= MAX_STEPS


def test_generated_data_loads_through_pipeline(generated):
    """Every task's dataset loads through the training pipeline's reader (RLDSDataset, with the
    task's spec) and encoder; a mixture gives training batches through GatoDataPipeline."""
    out, names, _ = generated
    tok = datagen.load_tokenizer(out)
    srcs = datagen.sources(out, cfg=CFG)
    assert [s.name for s in srcs] == names
    for src in srcs:
        t = tasks.get_task(src.name, CFG)
        ds = RLDSDataset(src, CFG, expert_fraction=0.0, text_tokenizer=tok)
        assert ds.num_episodes == EPISODES
        assert set(ds.tasks) == {src.name}
        raw, n = ds.episode(0)
        assert 1 <= n <= MAX_STEPS
        for f in t.spec.fields:
            leaf = raw[f.name.split("/")[0]][f.path[0]]
            if f.spec.kind == "text":
                assert len(leaf) == n and all(isinstance(v, str) and v for v in leaf)
            else:
                assert np.asarray(leaf).shape == (n, *f.spec.shape), (src.name, f.name)
        arrays = encode_episode(raw, t.spec, text_tokenizer=tok)
        assert int(np.asarray(arrays.num_steps)) == n
    # Batches (one build_batch compilation per source: a small mixture here, all in the slow
    # test below): mission text from metadata + discrete view, and image + caption text.
    _check_batches(out, [n for n in ("babyai_goto_redball", "vl_shapes") if n in names], tok)


def _check_batches(out, names, tok, batches=2):
    srcs = datagen.sources(out, names, cfg=CFG)
    data = GatoDataPipeline(
        srcs,
        CFG,
        batch_size=2 * len(srcs),
        seed=0,
        expert_fraction=0.0,
        num_threads=0,
        text_tokenizer=tok,
    )
    for _ in range(batches):
        batch = next(data)
        assert batch.tokens.shape == (2 * len(srcs), CFG.seq_len)
        assert np.asarray(batch.valid).any(axis=1).all()
        # (A row's window may hold observation tokens only, e.g. a Pong step's patches with a
        # prompt; so targets are checked per batch.)
        assert np.asarray(batch.loss_mask).any()


@pytest.mark.slow
def test_all_generated_tasks_give_batches(generated):
    out, names, _ = generated
    _check_batches(out, names, datagen.load_tokenizer(out), batches=3)


def test_babyai_instruction_comes_from_metadata(generated):
    out, names, _ = generated
    if "babyai_goto_redball" not in names:
        pytest.skip("minigrid not installed")
    tok = datagen.load_tokenizer(out)
    (src,) = datagen.sources(out, ["babyai_goto_redball"], cfg=CFG)
    assert src.instruction_key == "instruction"
    ds = RLDSDataset(src, CFG, expert_fraction=0.0, text_tokenizer=tok)
    for i in range(EPISODES):
        raw, n = ds.episode(i)
        task = tasks.get_task("babyai_goto_redball")
        env, obs = task.new_episode(3 + i)
        assert raw["observation"]["instruction"] == [obs["mission"]] * n
        np.testing.assert_array_equal(
            raw["observation"]["view"][0], tasks.babyai_cells(obs["image"])
        )


def test_inferred_specs_load_for_non_text_tasks(generated):
    """The plain `--data` string of python -m gato_jax.main (specs inferred from features)
    reads every dataset without text steps fields."""
    out, names, _ = generated
    plain = [n for n in names if tasks.get_task(n).domain not in ("vl", "text")]
    for src in parse_data_spec(datagen.data_spec(plain, out)):
        ds = RLDSDataset(src, CFG, expert_fraction=0.0)
        task = tasks.get_task(src.name, CFG)
        want = {
            f.name: f.spec.shape for f in task.spec.fields if f.name != "observation/instruction"
        }
        assert {f.name: f.spec.shape for f in ds.spec.fields} == want, src.name
        raw, n = ds.episode(1)
        encode_episode(raw, ds.spec)


def test_recorded_layout_known_case(tmp_path):
    """Full-length episodes: flags, rewards summing to the return, terminal vs time limit."""
    import tensorflow_datasets as tfds

    out = str(tmp_path)
    datagen.generate(["cartpole", "mountaincar_continuous"], 2, out, seed=0, quiet=True)
    for name, terminal in (("cartpole", False), ("mountaincar_continuous", True)):
        task = tasks.get_task(name)
        source = tfds.builder_from_directory(os.path.join(out, name, "1.0.0")).as_data_source(
            "train"
        )
        for i in range(2):
            ep = source[i]
            meta = ep["episode_metadata"]
            steps = ep["steps"]
            n = len(steps)
            flags = {k: np.asarray([s[k] for s in steps]) for k in STEP_FLAGS}
            np.testing.assert_array_equal(flags["is_first"], np.arange(n) == 0)
            np.testing.assert_array_equal(flags["is_last"], np.arange(n) == n - 1)
            np.testing.assert_array_equal(flags["is_terminal"], (np.arange(n) == n - 1) & terminal)
            rewards = np.asarray([s["reward"] for s in steps], np.float64)
            ref = datagen.run_episode(task, i, "expert", record=False)
            assert n == ref["steps"]
            assert rewards.sum() == pytest.approx(ref["return"], rel=1e-5)
            assert float(meta["episode_return"]) == pytest.approx(ref["return"])
            assert meta["task"].decode() == name and int(meta["seed"]) == i
            assert meta["instruction"].decode() == task.instruction
            if name == "cartpole":
                assert n == task.max_steps and rewards.sum() == n  # balanced until the limit
            else:
                assert n < task.max_steps  # reached the flag


def test_existing_dataset_needs_overwrite(tmp_path):
    out = str(tmp_path)
    datagen.generate(["text_corpus"], 1, out, quiet=True, vocab_size=0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        datagen.generate(["text_corpus"], 1, out, quiet=True, vocab_size=0)
    datagen.generate(["text_corpus"], 2, out, quiet=True, vocab_size=0, overwrite=True)
    assert datagen.load_report(out)["episodes"] == {"text_corpus": 2}


def test_per_task_episode_counts(tmp_path):
    assert datagen.parse_episodes("5") == (5, {})
    assert datagen.parse_episodes("5,vl_shapes=2") == (5, {"vl_shapes": 2})
    for bad in ("x", "0", "5,6", "=3", "vl_shapes=0"):
        with pytest.raises(ValueError, match="--episodes"):
            datagen.parse_episodes(bad)
    out = str(tmp_path)
    rc = datagen.main(
        ["--tasks", "text_corpus,vl_shapes", "--episodes", "1,vl_shapes=3", "--out", out,
         "--vocab_size", "0", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    report = datagen.load_report(out)
    assert report["episodes"] == {"text_corpus": 1, "vl_shapes": 3}
    assert report["tasks"]["vl_shapes"]["seeds"] == [0, 3]
    with pytest.raises(ValueError, match="no count for vl_shapes"):
        datagen.generate(["text_corpus", "vl_shapes"], {"text_corpus": 1}, str(tmp_path / "b"))


def test_measure_returns_updates_file(tmp_path):
    path = str(tmp_path / "returns.json")
    rc = datagen.main(
        [
            "--tasks",
            "cartpole",
            "--measure_returns",
            "--returns_episodes",
            "2",
            "--quiet",
            "--returns_file",
            path,
        ]
    )
    assert rc == 0
    row = json.load(open(path))["cartpole"]
    assert row["episodes"] == 2 and row["expert_return"] == 200.0
    assert row["random_return"] < 100


@pytest.mark.slow
def test_main_trains_on_generated_data(tmp_path):
    out = str(tmp_path / "data")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gato_jax.datagen",
            "--tasks",
            "control",
            "--episodes",
            "4",
            "--out",
            out,
            "--quiet",
        ],
        check=True,
    )
    spec = open(os.path.join(out, "data_spec.txt")).read().strip()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gato_jax.main",
            "--config",
            "gato_tiny",
            "--workdir",
            str(tmp_path / "run"),
            "--num_steps",
            "3",
            "--data",
            spec,
            "--quiet",
            "--set",
            "expert_fraction=0",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = open(tmp_path / "run" / "metrics.jsonl").read().splitlines()
    assert json.loads(lines[-1])["step"] == 3
