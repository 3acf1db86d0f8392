"""The shipped environment tokenizer (evol_jax/assets/envtext.model) and its corpus builder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evol_jax import envtext_corpus as ec
from evol_jax import prompts
from evol_jax.text import TextCodec, default_model_path, train_tokenizer
from tests.evol_jax import agentgym_data

ENVS = ("babyai", "textcraft", "maze", "wordle")

# Mean tokens per recorded AgentGym server observation (3,608 texts, all four environments). The
# bootstrap model shipped before (600 pieces) needs 149.5 (and byte fallback on 117 pieces); the
# model `evol_jax.envtext_corpus` trains needs 86 (README "Text on device": the vocab-size table).
MAX_MEAN_TOKENS = 100.0


@pytest.fixture(scope="module")
def codec():
    return TextCodec()


@pytest.fixture(scope="module")
def transcript_texts():
    """Per environment: every recorded server observation, then every client first observation."""
    out = {}
    for env in ENVS:
        records = agentgym_data.load_jsonl(f"{env}_transcripts.jsonl")
        obs = [r["payload"].get("observation") for r in records if "payload" in r]
        client = [r.get("client_observation") for r in records]
        out[env] = (
            [t for t in obs if isinstance(t, str) and t],
            [t for t in client if isinstance(t, str) and t],
        )
    return out


def _byte_pieces(codec, ids):
    return [codec.sp.id_to_piece(int(i)) for i in ids if codec.sp.is_byte(int(i))]


def test_shipped_model_invariants(codec):
    sp = codec.sp
    assert codec.model_file == default_model_path()
    assert sp.pad_id() == 0 and sp.unk_id() == 1 and sp.bos_id() == -1 and sp.eos_id() == -1
    assert sp.id_to_piece(2) == "\n"  # the user-defined newline
    assert sum(sp.is_byte(i) for i in range(codec.vocab_size)) == 256  # byte fallback kept
    # identity normalisation, no whitespace collapsing
    for text in ("a  b", " x", "y ", "A\n\nB", "Tab\there", "héllo ✓"):
        assert codec.decode(codec.encode(text)) == text


def test_transcripts_round_trip_without_byte_fallback(codec, transcript_texts):
    texts = [t for obs, client in transcript_texts.values() for t in obs + client]
    for name in ENVS:  # the client's first turns
        texts += [turn["value"] for turn in prompts.conversation_start(name)]
    texts.append(prompts.wordle_first_observation(["apple", "crane"]))
    for t in texts:
        ids = codec.encode(t)
        assert codec.decode(ids) == t
        assert not _byte_pieces(codec, ids), (t[:80], _byte_pieces(codec, ids))


def test_mean_tokens_per_observation(codec, transcript_texts):
    counts = {k: len(obs) for k, (obs, _) in transcript_texts.items()}
    assert counts == {"babyai": 2486, "textcraft": 537, "maze": 428, "wordle": 157}  # measured on
    lens = [len(codec.encode(t)) for obs, _ in transcript_texts.values() for t in obs]
    mean = float(np.mean(lens))
    assert mean < MAX_MEAN_TOKENS, mean


@pytest.mark.parametrize("name", ENVS)
def test_word_tables_concatenate(codec, name):
    """encode(" ".join(words)) == concatenated per-word encodings (the device text invariant)."""
    words = ec.word_tables([name])
    assert words
    rng = np.random.default_rng(0)
    order = rng.permutation(len(words))
    text_words = [words[i] for i in order] + [""]  # an empty word: a double space
    joined = codec.encode(" ".join(text_words))
    assert joined == [p for w in text_words for p in codec.encode_word(w)]
    assert not _byte_pieces(codec, joined)


@pytest.mark.parametrize(
    "name",
    # BabyAI: compiles its batched step (minutes on a loaded CPU)
    ["maze", "wordle", "textcraft", pytest.param("babyai", marks=pytest.mark.slow)],
)
def test_fresh_instances_round_trip_on_device(codec, name):
    """Device tokens of fresh instances (reset + random steps) decode to the host text exactly."""
    n, rounds = 6, 4
    if name == "babyai":  # natively generated levels (1, 2, 3, 4, 5, 9), no minigrid bank needed
        env = ec.make("babyai")
        idx = jnp.asarray([1040, 1041, 1042, 1043, 1044, 1048], jnp.int32)
    else:
        env = ec.make_env(name, agentgym_compat=name == "textcraft")
        idx = jnp.arange(1000, 1000 + n, dtype=jnp.int32)
    keys = jax.random.split(jax.random.key(123), n * (rounds + 1)).reshape(n, rounds + 1)
    states, _, active, tokens, masks = jax.device_get(
        ec._random_rollout(env, keys, idx, rounds, 0.3)
    )
    checked = 0
    for t in range(rounds + 1):
        for i in range(n):
            if t > 0 and not active[t - 1, i]:
                continue
            text = env.render_text(jax.tree.map(lambda x, t=t, i=i: x[t, i], states))
            ids = tokens[t, i][masks[t, i]].tolist()
            assert codec.encode(text) == ids
            assert codec.decode(ids) == text
            assert not _byte_pieces(codec, ids)
            checked += 1
    assert checked >= n * 2


def test_corpus_builder_is_deterministic(tmp_path):
    """Same config -> the same sorted corpus lines -> a byte-identical model."""
    cfg = ec.CorpusConfig(envs=("maze",), expert_instances=2, random_instances=3)
    env = ec.make_env("maze", agentgym_compat=False)
    texts = ec.env_texts(env, cfg)
    assert ec.env_texts(env, cfg) == texts
    lines = ec.corpus_lines(texts + ec.word_tables(["maze"]))
    assert lines == sorted(lines) and all(line.strip() and "\n" not in line for line in lines)
    # what the corpus holds: observations, actions, expert turns, the first-turn prompt
    assert any(line.startswith("The goal is at position 8, 6.") for line in lines)
    assert {"move up", "move down", "move left", "move right"} & set(lines)
    assert any(line.startswith("Thought:") for line in lines)
    assert prompts.MAZE_INSTRUCTION in texts
    a = ec.train(lines, str(tmp_path / "a"), 400)
    b = ec.train(lines, str(tmp_path / "b"), 400)
    assert open(a, "rb").read() == open(b, "rb").read()
    assert not (tmp_path / "a.vocab").exists()
    small = TextCodec(a)
    for line in lines:
        assert small.decode(small.encode(line)) == line


@pytest.mark.slow  # two full CLI runs (compiles the Maze rollouts twice per mode and run)
def test_corpus_cli_twice_gives_identical_files(tmp_path):
    argv = ["--envs", "maze", "--expert_instances", "3", "--random_instances", "3"]
    argv += ["--vocab_size", "400"]
    a = ec.main([*argv, "--out", str(tmp_path / "a"), "--corpus_out", str(tmp_path / "a.txt")])
    b = ec.main([*argv, "--out", str(tmp_path / "b"), "--corpus_out", str(tmp_path / "b.txt")])
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a["sha256"] == b["sha256"]
    assert a["corpus_lines"] == len((tmp_path / "a.txt").read_text().split("\n")) - 1


def test_train_tokenizer_deterministic_and_errors(tmp_path):
    texts = [f"There is a red ball {i} steps away." for i in range(40)] + ["go to", "pickup"]
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    p1 = train_tokenizer(texts, str(tmp_path / "1" / "m"), vocab_size=320)
    data = open(p1, "rb").read()
    p2 = train_tokenizer(texts, str(tmp_path / "2" / "m"), vocab_size=320)
    assert open(p2, "rb").read() == data  # also independent of the directory
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer([], str(tmp_path / "z"))
    with pytest.raises(ValueError, match="must be strings"):
        train_tokenizer(["a", 3], str(tmp_path / "z"))
    with pytest.raises(ValueError, match="vocab_size=270 .* 281"):  # 256 bytes + 4 + 21 chars
        train_tokenizer(["abcdefghijklmnopqrstu"], str(tmp_path / "z"), vocab_size=270)
    with pytest.raises(ValueError, match="longer than"):
        train_tokenizer(["ab " * 30000], str(tmp_path / "z"))


def test_corpus_config_errors():
    with pytest.raises(ValueError, match="subset"):
        ec.CorpusConfig(envs=("maze", "chess"))
    with pytest.raises(ValueError, match="subset"):
        ec.CorpusConfig(envs=())
    with pytest.raises(ValueError, match=">= 0"):
        ec.CorpusConfig(expert_instances=-1)
    with pytest.raises(ValueError, match="illegal_rate"):
        ec.CorpusConfig(illegal_rate=1.5)
    with pytest.raises(ValueError, match="random_rounds"):
        ec.CorpusConfig(random_rounds=0)
