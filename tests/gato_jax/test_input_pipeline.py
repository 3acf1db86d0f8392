"""gato_jax.input_pipeline: RLDS reading (both file formats), filter, mixture, windows, resume."""

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gato_jax import input_pipeline as ip
from gato_jax.configs.tokenizer import TokenizerConfig
from gato_jax.prompt import PromptKind
from gato_jax.reference import reference_build_sequence
from gato_jax.sequence import encode_episode
from gato_jax.spec import EpisodeSpec, FieldSpec

ROOT = Path(__file__).resolve().parents[2]
CFG = TokenizerConfig(seq_len=64, max_patches=16, prompt_tokens=16, prompt_prob=0.5)
# Tokens of one step: state (4) + rgb (2 patches) + '|' + action (1).
TPS = 8


def make_episodes(seed=0, n=12):
    rng = np.random.default_rng(seed)
    out = []
    quality = np.where(np.arange(n) % 4 == 3, 0.5, rng.uniform(0.9, 1.0, n))
    for i, steps in enumerate(rng.integers(3, 20, n)):
        state = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
        out.append(
            {
                "steps": {
                    "observation": {
                        "state": state,
                        "rgb": rng.integers(0, 256, (steps, 16, 32, 3), dtype=np.uint8),
                    },
                    "action": np.argmax(state, 1).astype(np.int32),
                    # Returns near 1, except every 4th episode (0.5): filtered out at 0.8.
                    "reward": np.full(steps, quality[i] / steps, np.float32),
                },
                "episode_metadata": {"task": "ab"[i % 2]},
            }
        )
    return out


def gato_episode(ep):
    return {"observation": ep["steps"]["observation"], "action": ep["steps"]["action"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 12 episodes (two tasks) as array_record and tfrecord datasets."""
    d = tmp_path_factory.mktemp("tfds")
    eps = make_episodes()
    for fmt in ip.FILE_FORMATS:
        ip.write_rlds_dataset(eps, d, f"toy_{fmt}", fmt)
    return str(d), eps


def pipeline(data_dir, spec="tfds:toy_array_record@{d}*3,tfds:toy_tfrecord@{d}*1", **kw):
    kw = {"batch_size": 8, "seed": 0, "num_threads": 2, **kw}
    return ip.GatoDataPipeline(ip.parse_data_spec(spec.format(d=data_dir)), CFG, **kw)


def assert_batches_equal(a, b):
    for name in ("tokens", "kinds", "valid", "loss_mask", "patches", "prompt_kind"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# -- expert-return filter ---------------------------------------------------------------------


def test_expert_return_known_case():
    # N = 30 -> W = min(1000, 3) = 3. The best 3-episode mean is (6 + 9 + 12) / 3 = 9, not the
    # best single episode (15, mean of its windows 5).
    r = np.zeros(30)
    r[10:13] = [6, 9, 12]
    r[20] = 15
    assert ip.expert_return(r) == 9.0
    keep = ip.expert_filter(r, fraction=0.8)  # threshold 7.2
    assert np.nonzero(keep)[0].tolist() == [11, 12, 20]
    # N < 10: W = 1, the best episode.
    assert ip.expert_return([1.0, 4.0, 2.0]) == 4.0


def test_expert_return_window_is_capped_at_1000():
    rng = np.random.default_rng(1)
    r = rng.normal(size=12_000)  # 0.1 N = 1200 -> W = 1000
    brute = max(r[j : j + 1000].mean() for j in range(0, 12_000 - 999))
    np.testing.assert_allclose(ip.expert_return(r), brute, rtol=1e-9)
    assert ip.expert_return(r, window=1000) == ip.expert_return(r)
    assert ip.expert_return(r) != ip.expert_return(r, window=1200)


def test_expert_filter_is_per_task():
    r = np.array([10.0, 1.0, 7.0, 0.9, 9.0, 0.5])
    tasks = ["a", "b"] * 3  # a: 10, 7, 9 (expert 10); b: 1, 0.9, 0.5 (expert 1)
    assert ip.expert_filter(r, tasks).tolist() == [True, True, False, True, True, False]
    # All-negative returns (e.g. Pendulum): expert -100, threshold -100 - 0.2 * 100 = -120.
    neg = np.array([-100.0, -119.0, -121.0, -300.0])
    assert ip.expert_filter(neg, fraction=0.8).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="NaN"):
        ip.expert_return([1.0, np.nan])


def test_dataset_filter_matches_rewards(data):
    d, eps = data
    ds = ip.RLDSDataset(ip.Source("toy_array_record", d), CFG)
    returns = np.array([e["steps"]["reward"].astype(np.float64).sum() for e in eps])
    np.testing.assert_allclose(ds.returns, returns, rtol=1e-6)
    expect = ip.expert_filter(returns, ["ab"[i % 2] for i in range(len(eps))], 0.8)
    assert 0 < expect.sum() < len(eps)  # the fixture really filters
    assert ds.kept.tolist() == np.nonzero(expect)[0].tolist()
    assert ip.RLDSDataset(ip.Source("toy_array_record", d), CFG, expert_fraction=0).kept.size == 12


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ip.FILE_FORMATS)
def test_both_formats_read_the_written_episodes(data, fmt):
    d, eps = data
    ds = ip.RLDSDataset(ip.Source(f"toy_{fmt}", d), CFG, expert_fraction=0)
    assert ds.file_format == fmt and ds.num_episodes == len(eps)
    assert [f.name for f in ds.spec.fields] == [
        "observation/rgb",
        "observation/state",
        "action",
    ]
    assert ds.tasks == ["ab"[i % 2] for i in range(len(eps))]
    for i in (0, 5, 11):
        got, n = ds.episode(i)
        want = gato_episode(eps[i])
        assert n == len(want["action"])
        np.testing.assert_array_equal(got["action"], want["action"])
        for k in ("state", "rgb"):
            np.testing.assert_array_equal(got["observation"][k], want["observation"][k])


def test_array_record_reads_without_tensorflow(data):
    d, _ = data
    code = textwrap.dedent(
        f"""
        import sys
        from gato_jax import input_pipeline as ip
        from gato_jax.configs.tokenizer import TokenizerConfig
        ds = ip.RLDSDataset(ip.Source("toy_array_record", {d!r}), TokenizerConfig(seq_len=64))
        ep, n = ds.episode(int(ds.shard[0]))
        assert n > 0 and ep["observation"]["rgb"].shape == (n, 16, 32, 3)
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_both_formats_give_identical_batches(data):
    d, _ = data
    a = pipeline(d, "tfds:toy_array_record@{d}", num_threads=0)
    b = pipeline(d, "tfds:toy_tfrecord@{d}", num_threads=0)
    assert_batches_equal(a.load(0), b.load(0))


# -- pipeline -------------------------------------------------------------------------------------


def test_same_seed_same_batches_and_resume_equality(data):
    d, _ = data
    ref = pipeline(d)
    first = [next(ref) for _ in range(2)]
    saved = ref.state()
    assert saved["index"] == 2
    following = [next(ref) for _ in range(2)]

    again = pipeline(d)  # same seed: same batches
    for x, y in zip(first, [next(again) for _ in range(2)], strict=True):
        assert_batches_equal(x, y)

    resumed = pipeline(d, num_threads=1)  # a fresh pipeline, restored; thread count is free
    resumed.restore(saved)
    for x, y in zip(following, [next(resumed) for _ in range(2)], strict=True):
        assert_batches_equal(x, y)

    other = pipeline(d, seed=1)
    assert not np.array_equal(next(other).tokens, first[0].tokens)
    with pytest.raises(ValueError, match="different mixture"):
        other.restore(saved)


def test_mixture_proportions_and_prompt_rate(data):
    d, _ = data
    p = pipeline(d)
    rows = [r for i in range(300) for r in p.plan(i)]
    src = np.array([r.source for r in rows])
    n = len(rows)
    sd = np.sqrt(0.75 * 0.25 / n)
    assert abs((src == 0).mean() - 0.75) < 4 * sd
    kinds = np.array([r.prompt_kind for r in rows])
    sd = np.sqrt(0.25 / n)
    assert abs((kinds != PromptKind.NONE).mean() - CFG.prompt_prob) < 4 * sd
    prompted = kinds != PromptKind.NONE
    assert abs((kinds[prompted] == PromptKind.END).mean() - 0.5) < 4 * np.sqrt(
        0.25 / prompted.sum()
    )
    for r in rows[:200]:
        ds = p.datasets[r.source]
        assert r.episode in ds.shard and r.prompt_episode in ds.shard
        assert ds.tasks[r.prompt_episode] == ds.tasks[r.episode]
        assert r.prompt_episode != r.episode  # each task has several episodes


def test_windows_and_prompts_match_the_episode_streams(data):
    """Every row is a contiguous window of its episode's full token stream, after a prompt
    cut from another episode of the same task (end prompts: its last tokens)."""
    d, eps = data
    p = pipeline(d, "tfds:toy_array_record@{d}", num_threads=0)
    ds = p.datasets[0]
    full_cfg = dataclasses.replace(CFG, seq_len=4096, max_patches=None)
    full_spec = EpisodeSpec(
        {"state": FieldSpec("continuous", (4,)), "rgb": FieldSpec("image", (16, 32, 3))},
        FieldSpec("discrete", ()),
        full_cfg,
    )

    def stream(i):
        ref = reference_build_sequence(encode_episode(gato_episode(eps[i]), full_spec), full_spec)
        n = int(ref["valid"].sum())
        return {k: ref[k][:n] for k in ("tokens", "kinds", "timesteps")}

    seen = set()
    for index in range(4):
        batch, plan = p.load(index), p.plan(index)
        for r, row in enumerate(plan):
            _, _, start, p_start = p.row_arrays(row)
            p_len = int(batch.prompt_mask[r].sum())
            seen.add((row.prompt_kind, p_len > 0))
            main = stream(row.episode)
            off = start * TPS + int(batch.window_start[r])
            valid = batch.valid[r] & ~batch.prompt_mask[r]
            m = int(valid.sum())
            assert m == min(CFG.seq_len - p_len, len(main["tokens"]) - off) and m > 0
            sl = slice(p_len, p_len + m)
            np.testing.assert_array_equal(batch.tokens[r, sl], main["tokens"][off : off + m])
            np.testing.assert_array_equal(batch.kinds[r, sl], main["kinds"][off : off + m])
            np.testing.assert_array_equal(
                batch.timesteps[r, sl] + start, main["timesteps"][off : off + m]
            )
            if row.prompt_kind == PromptKind.NONE:
                assert p_len == 0
                continue
            assert p_len == CFG.prompt_tokens
            pr = stream(row.prompt_episode)["tokens"]
            got = batch.tokens[r, :p_len]
            if row.prompt_kind == PromptKind.END:
                np.testing.assert_array_equal(got, pr[-p_len:])
            else:
                starts = [s for s in range(len(pr) - p_len + 1) if (pr[s : s + p_len] == got).all()]
                assert starts, "uniform prompt is not a window of the prompt episode"
            assert ds.tasks[row.prompt_episode] == ds.tasks[row.episode]
    assert {(0, False), (int(PromptKind.END), True), (int(PromptKind.UNIFORM), True)} <= seen


def test_shards_are_disjoint(data):
    d, _ = data
    src = ip.Source("toy_array_record", d)
    shards = [
        ip.RLDSDataset(src, CFG, process_index=i, process_count=3).shard.tolist() for i in range(3)
    ]
    kept = ip.RLDSDataset(src, CFG).kept.tolist()
    assert sorted(sum(shards, [])) == kept
    assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1 :])
    p = pipeline(d, "tfds:toy_array_record@{d}", process_index=1, process_count=2, batch_size=16)
    assert p.local_batch == 8
    used = {r.episode for i in range(20) for r in p.plan(i)}
    assert used <= set(p.datasets[0].shard.tolist()) and used.isdisjoint(kept[0::2])


# -- errors -----------------------------------------------------------------------------------


def test_bad_paths_name_the_dataset(data, tmp_path):
    d, _ = data
    with pytest.raises(ip.DataError, match=r"'toy_array_record'.*does not exist"):
        ip.RLDSDataset(ip.Source("toy_array_record", str(tmp_path / "nope")), CFG)
    with pytest.raises(ip.DataError, match=r"'missing_ds': no directory .*toy_array_record"):
        ip.RLDSDataset(ip.Source("missing_ds", d), CFG)
    with pytest.raises(ip.DataError, match=r"no prepared version at"):
        ip.RLDSDataset(ip.Source("toy_array_record:9.9.9", d), CFG)
    with pytest.raises(ip.DataError, match=r"'toy_array_record': split 'validation'"):
        ip.RLDSDataset(ip.Source("toy_array_record", d, split="validation"), CFG)


def _spec(state=None, **extra):
    return EpisodeSpec(
        {
            "state": state or FieldSpec("continuous", (4,)),
            "rgb": FieldSpec("image", (16, 32, 3)),
            **extra,
        },
        FieldSpec("discrete", ()),
        CFG,
    )


def test_missing_field_and_wrong_shape_or_dtype_are_named(data):
    d, _ = data

    def open_with(spec):
        return ip.RLDSDataset(ip.Source("toy_array_record", d, spec=spec), CFG)

    with pytest.raises(ip.DataError, match=r"'toy_array_record': field steps/observation/vel"):
        open_with(_spec(vel=FieldSpec("continuous", (2,))))
    msg = r"steps/observation/state has shape \(4,\) dtype float32, expected shape \(5,\)"
    with pytest.raises(ip.DataError, match=msg):
        open_with(_spec(FieldSpec("continuous", (5,))))
    with pytest.raises(ip.DataError, match=r"state has shape \(4,\) dtype float32.*discrete"):
        open_with(_spec(FieldSpec("discrete", (4,))))
    bad_img = EpisodeSpec(
        {"state": FieldSpec("continuous", (4,)), "rgb": FieldSpec("image", (32, 32, 3))},
        FieldSpec("discrete", ()),
        CFG,
    )
    with pytest.raises(ip.DataError, match=r"rgb has shape \(16, 32, 3\) dtype uint8, expected"):
        open_with(bad_img)
    # Values the features cannot express (discrete bounds) fail at encode, naming the episode.
    narrow = EpisodeSpec(
        {"state": FieldSpec("continuous", (4,)), "rgb": FieldSpec("image", (16, 32, 3))},
        FieldSpec("discrete", (), low=0, high=0),
        CFG,
    )
    ds = open_with(narrow)
    i = int(ds.shard[0])
    raw, _ = ds.episode(i)
    if np.any(raw["action"] > 0):
        with pytest.raises(ip.DataError, match=rf"'toy_array_record', episode {i}: action"):
            ds.encode(raw, i)


def test_parse_data_spec():
    s = ip.parse_data_spec("tfds:a@/x/y,tfds:b:1.0.0@/z:train[:50%]*3")
    assert [(x.name, x.data_dir, x.split, x.weight) for x in s] == [
        ("a", "/x/y", "train", 1.0),
        ("b:1.0.0", "/z", "train[:50%]", 3.0),
    ]
    for bad, why in [
        ("cartpole@/x", "expected 'tfds:"),
        ("tfds:a", "missing '@DATA_DIR'"),
        ("tfds:a@/x*two", "not a number"),
        ("tfds:a@/x*0", "must be > 0"),
    ]:
        with pytest.raises(ValueError, match=why):
            ip.parse_data_spec(bad)


def test_writer_rejects_inconsistent_episodes(tmp_path):
    eps = make_episodes(n=2)
    eps[1]["steps"]["observation"]["state"] = eps[1]["steps"]["observation"]["state"][:, :3]
    with pytest.raises(ip.DataError, match=r"bad: episode 1: fields differ"):
        ip.write_rlds_dataset(eps, tmp_path, "bad")
    eps = make_episodes(n=1)
    eps[0]["steps"]["reward"] = eps[0]["steps"]["reward"][:-1]
    with pytest.raises(ip.DataError, match="different lengths"):
        ip.write_rlds_dataset(eps, tmp_path, "bad")


# -- training CLI -------------------------------------------------------------------------------


def test_config_and_main_accept_tfds_mixtures(data):
    from gato_jax.configs import get_config
    from gato_jax.main import make_data
    from gato_jax.models import dummy_inputs

    d, _ = data
    base = dataclasses.replace(get_config("gato_tiny"), tokenizer=CFG)  # CFG: jit cache hits
    cfg = dataclasses.replace(base, data=f"tfds:toy_array_record@{d}*2,tfds:toy_tfrecord@{d}")
    with pytest.raises(ValueError, match="GatoConfig.data"):
        dataclasses.replace(base, data="cartpole")
    with pytest.raises(ValueError, match="expert_fraction"):
        dataclasses.replace(base, expert_fraction=1.5)
    loader = make_data(dataclasses.replace(cfg, data_threads=0))
    assert isinstance(loader, ip.GatoDataPipeline) and loader.weights.tolist() == [2 / 3, 1 / 3]
    got = loader.load(0)
    want = dummy_inputs(base.tokenizer, base.batch_size)  # what the train step compiles for
    for name, x in vars(want).items():
        y = getattr(got, name)
        assert (y.shape, y.dtype) == (x.shape, x.dtype), name


@pytest.mark.slow
def test_cli_trains_on_tfds_and_resumes_bit_for_bit(data, tmp_path):
    from core_jax.metrics import read_metrics

    d, _ = data
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}

    def run(workdir, steps):
        cmd = [sys.executable, "-m", "gato_jax.main", "--config", "gato_tiny", "--quiet"]
        cmd += ["--data", f"tfds:toy_array_record@{d}*3,tfds:toy_tfrecord@{d}"]
        cmd += ["--workdir", str(workdir), "--num_steps", str(steps)]
        cmd += ["--set", "log_every=1", "--set", "checkpoint_every=2", "--set", "batch_size=4"]
        res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        return {r["step"]: r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r}

    ref = run(tmp_path / "ref", 6)
    run(tmp_path / "run", 4)
    got = run(tmp_path / "run", 6)  # resumes from the step-4 checkpoint
    assert sorted(got) == sorted(ref) == list(range(1, 7))
    for step in range(1, 7):
        for key in ("loss", "num_tokens", "grad_norm"):
            assert got[step][key] == ref[step][key], (step, key)


def test_instruction_metadata_becomes_a_text_observation(tmp_path):
    from gato_jax.tokenizer import TextTokenizer

    rng = np.random.default_rng(0)
    letters = list("abcdefgh")
    corpus = [" ".join("".join(rng.choice(letters, 3)) for _ in range(3)) for _ in range(300)]
    tok = TextTokenizer.train(corpus, vocab_size=30)
    eps = make_episodes(n=3)
    for i, e in enumerate(eps):
        e["episode_metadata"] = {"task": "push", "instruction": corpus[i]}
    d = tmp_path / "tfds"
    ip.write_rlds_dataset(eps, d, "instructed")
    src = ip.Source("instructed", str(d), instruction_key="instruction", instruction_tokens=12)
    ds = ip.RLDSDataset(src, CFG, expert_fraction=0, text_tokenizer=tok)
    assert ds.spec.observation[0].name == "observation/instruction"  # text comes first
    raw, n = ds.episode(1)
    assert raw["observation"]["instruction"] == [corpus[1]] * n
    arrays = ds.encode(raw, 1)
    ids = tok.encode(corpus[1])
    np.testing.assert_array_equal(arrays.text_lengths["observation/instruction"], len(ids))
    np.testing.assert_array_equal(arrays.values["observation/instruction"][:, : len(ids)][0], ids)
    bad = dataclasses.replace(src, instruction_key="goal")
    with pytest.raises(ip.DataError, match=r"'instructed': field episode_metadata/goal missing"):
        ip.RLDSDataset(bad, CFG, text_tokenizer=tok)
