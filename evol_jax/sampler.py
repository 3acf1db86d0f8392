"""Device sampler: the policy LM and a JAX environment in one compiled loop.

Per row (one episode) the conversation prefix (AgentGym's instruction, the canned ``"Ok."``, the
first observation and the opening of the assistant turn) is prefilled into a KV cache. Then one
``lax.scan`` over rounds, entirely on device:

0. (rounds and action tokens run in ``lax.while_loop`` s that stop as soon as every row is done)
1. the action is decoded token by token under a prefix mask over the env's *legal* actions: the
   action texts, tokenised with the policy tokenizer and closed by ``</s>``, form a padded table
   ``[num_actions, max_action_len]``; at step ``j`` only tokens ``table[a, j]`` of actions ``a``
   still consistent with the tokens drawn so far are allowed. ``</s>`` makes the set prefix-free,
   so the drawn sequence names exactly one legal action (greedy or temperature / top-p per token);
2. the environment steps (``vmap`` over rows);
3. the next human turn ``<s>[INST] {obs} [/INST]`` plus the assistant opener is appended to the
   cache in one chunk. The observation tokens are made by the env itself in the *policy's*
   vocabulary (pass ``codec=PolicyCodec(tokenizer)`` to the env), so nothing leaves the device.

Rows that are done append nothing (``num_valid = 0``) and keep their env state. Every shape is
fixed; each row draws from its own key ``fold_in(fold_in(fold_in(seed, iteration), idx), sample)``
so a row's episode does not depend on the rest of the batch. The batch axis may be sharded over
the mesh's data axes (``mesh=``).

Assistant turns are ``" " + react(thought, action) + "</s>"`` with an empty thought in the
default ``decode="constrained"``: ``" Thought:\\n\\n\\nAction:\\n{action}</s>"``; BC data for
a policy sampled this way must use the same form (`strip_thoughts`).

``decode="free"`` is the original's way: the prefix and every human chunk end at ``[/INST]`` and
the policy writes the whole assistant turn (thought and action), sampled token by token over its
vocabulary for up to ``max_new_tokens`` tokens and closed by ``</s>`` (forced when the budget
runs out), inside the same jitted loop (a fixed-width ``lax.while_loop`` with early exit). The
turn is parsed on device (`evol_jax.action_parse.DeviceActionParser`: token ids -> UTF-8 bytes
-> AgentGym's client rule -> exact match against the action table) and text that names no
action gets the env's invalid-action step, i.e. the same reply as AgentGym's server (Maze:
position unchanged, Wordle: ``"invalid word"``, both counted). TextCraft text outside its action
table cannot be served on device (its reply echoes the text); the episode ends on that turn,
flagged (`SampleOutput.unserved`), with no substituted action. BabyAI is constrained-only.
`SampleOutput.gen_tokens` / ``status`` keep every turn; records hold the generated text.

    >>> codec = PolicyCodec(tok)
    >>> env = envs.make("maze", codec=codec)
    >>> sampler = DeviceSampler(env, model, tok)
    >>> out = sampler.run(params, indices=np.arange(25), seed=0, temperature=0.0)
    >>> records = sampler.to_records(out)          # AgentTraj items with reward / success

`host_reference_episode` is a step-by-step host implementation (no cache, full forward passes)
used to test the device loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from core_jax.nn.sampling import sample as sample_ids
from core_jax.nn.transformer import KVCache, Transformer
from evol_jax import action_parse, agenttraj, prompts
from evol_jax.chat import LLAMA2
from evol_jax.envs.base import Env, legal_or_first, success_threshold
from evol_jax.policy_data import tokenize_conversation
from evol_jax.text import TextCodec, WordTable

OPENER = " Thought:\n\n\nAction:\n"  # assistant turn up to the action (empty thought)
PROMPTS = ("agentgym", "compact")
DECODES = ("constrained", "free")
# A one-line instruction for small policies trained from scratch: AgentGym's instructions (and the
# maze's first-observation preamble) are constant text, ~1,600 of the ~2,200 tokens of a maze
# episode; a policy trained from scratch learns nothing from them, but pays for them in every
# attention row of training and sampling.
COMPACT_INSTRUCTION = "Play {env}. Answer with one action."
# Wordle's compact first observation: the client's filtered vocabulary without the rules.
COMPACT_WORDLE = "Valid words:\n{words}"
_WORDLE_VOCAB_START = "accepted by the game:\n```\n"


class PolicyCodec:
    """Environment codec in the policy tokenizer's vocabulary.

    An observation ``" ".join(words)`` sits after ``"[INST]"`` and a space in the chat format, so
    every word is encoded as it appears after a space (``tokenizer.encode_word``) and
    ``encode(text) == tokenizer.encode(" " + text)``; ``decode`` drops that leading space.

    Args:
      tokenizer: a `evol_jax.policy_tokenizer.PolicyTokenizer` (or anything with ``encode``,
        ``encode_word``, ``decode`` and ``vocab_size`` with the same no-dummy-prefix behaviour).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(" " + text))

    def decode(self, ids) -> str:
        text = self.tokenizer.decode(ids)
        return text[1:] if text.startswith(" ") else text

    def encode_word(self, word: str) -> list[int]:
        return list(self.tokenizer.encode_word(word))

    def word_table(self, words: Sequence[str], max_pieces: int | None = None) -> WordTable:
        return TextCodec.word_table(self, words, max_pieces)  # same layout, this encode_word


def strip_thoughts(item: dict) -> dict:
    """An AgentTraj item with every ReAct thought emptied (the sampler's assistant-turn form)."""
    conv = []
    for turn in item["conversations"]:
        turn = dict(turn)
        if turn["from"] == "gpt" and turn.get("loss") is True:
            _, action = agenttraj.parse_react(turn["value"])
            turn["value"] = agenttraj.react("", action)
        conv.append(turn)
    return {**item, "conversations": conv}


def conversation_start(env_name: str, prompt: str = "agentgym") -> list[dict]:
    """The first two turns (instruction, canned reply) in prompt style ``prompt``.

    ``"agentgym"`` is the client's instruction (`evol_jax.prompts.conversation_start`);
    ``"compact"`` is a one-line instruction (`COMPACT_INSTRUCTION`) with the same canned reply.
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt={prompt!r}; choose one of {PROMPTS}")
    conv = prompts.conversation_start(env_name)
    if prompt == "compact":
        conv[0]["value"] = COMPACT_INSTRUCTION.format(env=env_name.lower())
    return conv


def first_observation(env: Env, state, prompt: str = "agentgym") -> str:
    """Host: the client's first observation for a (single, unbatched) reset state.

    With ``prompt="compact"`` the maze's fully-observed preamble (instructions and a worked
    example, ~1,000 tokens) is left out: the first observation is the reset text itself. Wordle's
    compact first observation keeps the information of the client's (the filtered vocabulary,
    one word a line) without its ~900 tokens of rules and example (`COMPACT_WORDLE`).
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt={prompt!r}; choose one of {PROMPTS}")
    text = env.render_text(state)
    vocab = env.filtered_words(state) if hasattr(env, "filtered_words") else None
    if prompt == "compact":
        return COMPACT_WORDLE.format(words="\n".join(vocab)) if env.name == "wordle" else text
    return agenttraj.client_first_observation(env.name, text, vocab=vocab)


def restyle_item(item: dict, prompt: str) -> dict:
    """An AgentTraj item (in the client's form) rewritten to prompt style ``prompt``.

    Replaces the instruction turn and, for ``"compact"``, drops the maze preamble / replaces
    wordle's first observation by `COMPACT_WORDLE` (same vocabulary), so that expert data matches
    what a `DeviceSampler` with that ``prompt`` feeds the policy.
    """
    env = item["item_id"].rsplit("_", 1)[0]
    conv = [dict(t) for t in item["conversations"]]
    if len(conv) < 3:
        raise ValueError(f"{item['item_id']}: needs instruction, reply and first observation")
    conv[:2] = conversation_start(env, prompt)
    if prompt == "compact" and env == "maze":
        conv[2]["value"] = conv[2]["value"].removeprefix(
            prompts.MAZE_FULLY_FIRST_OBSERVATION + "\n"
        )
    if prompt == "compact" and env == "wordle":
        first = conv[2]["value"]
        if _WORDLE_VOCAB_START not in first:
            raise ValueError(
                f"{item['item_id']}: the first observation is not the wordle client's (no "
                "vocabulary block), cannot restyle it"
            )
        words = first.split(_WORDLE_VOCAB_START, 1)[1].split("\n```", 1)[0]
        conv[2]["value"] = COMPACT_WORDLE.format(words=words)
    return {**item, "conversations": conv}


def prefix_tokens(
    env_name: str, first_obs: str, tokenizer, prompt: str = "agentgym", opener: bool = True
) -> np.ndarray:
    """Tokens of instruction, "Ok.", first observation and (``opener``) the assistant opener
    `OPENER` (int32 [P]); without the opener the prefix ends at ``[/INST]`` (free decoding)."""
    conv = conversation_start(env_name, prompt)
    conv.append({"from": "human", "loss": None, "value": first_obs})
    toks, _ = tokenize_conversation(conv, tokenizer, LLAMA2)
    tail = tokenizer.encode(OPENER) if opener else []
    return np.concatenate([toks, np.asarray(tail, np.int32)])


def action_table(env: Env, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Action texts + ``</s>`` in the policy vocabulary: ``(table int32 [A, La], lengths [A])``."""
    seqs = [list(tokenizer.encode(env.action_text(a))) + [tokenizer.eos_id]
            for a in range(env.num_actions)]  # fmt: skip
    width = max(len(s) for s in seqs)
    table = np.zeros((len(seqs), width), np.int32)
    for a, s in enumerate(seqs):
        table[a, : len(s)] = s
    lengths = np.array([len(s) for s in seqs], np.int32)
    for a, s in enumerate(seqs):
        if tokenizer.eos_id in s[:-1]:
            raise ValueError(f"action {a} text {env.action_text(a)!r} contains the EOS token")
    return table, lengths


@dataclasses.dataclass
class SampleOutput:
    """Host result of `DeviceSampler.run`; episode axis ``N``, round axis ``R``."""

    env: str
    indices: np.ndarray  # int32 [N]
    first_obs: list[str]  # client first observation per episode
    actions: np.ndarray  # int32 [R, N], -1 where the round was not played
    rewards: np.ndarray  # float32 [R, N]
    active: np.ndarray  # bool [R, N], the round was played
    obs_tokens: np.ndarray  # int32 [R, N, O], observation after each round (policy vocab)
    obs_mask: np.ndarray  # bool [R, N, O]
    last_reward: np.ndarray  # float32 [N]
    overflow: np.ndarray  # bool [N], the KV cache ran out (later actions unreliable)
    decode: str = "constrained"
    # decode="free" only: the generated turn (ids, end-of-turn excluded) and its parse status
    gen_tokens: np.ndarray | None = None  # int32 [R, N, T + 1]
    gen_len: np.ndarray | None = None  # int32 [R, N], text tokens of the turn
    status: np.ndarray | None = None  # int32 [R, N], action_parse.MATCHED / INVALID / UNSERVED

    @property
    def unserved(self) -> np.ndarray:
        """bool [N]: the episode ended on a turn the device cannot serve (free decoding,
        TextCraft text outside the action table; see `evol_jax.action_parse`)."""
        if self.status is None:
            return np.zeros(self.last_reward.shape, bool)
        return ((self.status == action_parse.UNSERVED) & self.active).any(axis=0)

    @property
    def invalid_turns(self) -> np.ndarray:
        """int [N]: turns parsed to the env's invalid action (free decoding)."""
        if self.status is None:
            return np.zeros(self.last_reward.shape, np.int64)
        return ((self.status == action_parse.INVALID) & self.active).sum(axis=0)

    @property
    def num_steps(self) -> np.ndarray:
        return self.active.sum(axis=0)

    @property
    def success(self) -> np.ndarray:
        return self.last_reward == 1.0


def _early_exit_scan(body, init, length: int, running):
    """``lax.scan(body, init, arange(length))`` that stops once ``running(carry)`` is False.

    Skipped steps leave their stacked outputs at zero. Exact for the sampler because a step that
    runs after every row is done changes nothing (done rows append nothing, keep their state).
    """
    _, out_shape = jax.eval_shape(body, init, jnp.int32(0))
    bufs = jax.tree.map(lambda o: jnp.zeros((length,) + o.shape, o.dtype), out_shape)

    def cond(c):
        i, carry, _ = c
        return (i < length) & running(carry)

    def step(c):
        i, carry, bufs = c
        carry, out = body(carry, i)
        bufs = jax.tree.map(lambda buf, o: buf.at[i].set(o), bufs, out)
        return i + 1, carry, bufs

    _, carry, bufs = jax.lax.while_loop(cond, step, (jnp.int32(0), init, bufs))
    return carry, bufs


def _scatter_chunk(parts, width):
    """Concatenates ``(tokens [B, k], n [B])`` parts per row into ``[B, width]``; returns length."""
    b = parts[0][0].shape[0]
    out = jnp.zeros((b, width), jnp.int32)
    offset = jnp.zeros((b,), jnp.int32)
    rows = jnp.arange(b)[:, None]
    for toks, n in parts:
        k = toks.shape[1]
        pos = offset[:, None] + jnp.arange(k)[None, :]
        pos = jnp.where(jnp.arange(k)[None, :] < n[:, None], pos, width)
        out = out.at[rows, pos].set(toks, mode="drop")
        offset = offset + n
    return out, offset


class DeviceSampler:
    """Batched multi-turn rollouts of a policy LM in a JAX environment (see the module docstring).

    Args:
      env: the environment, built with ``codec=PolicyCodec(tokenizer)``.
      model: the policy :class:`core_jax.nn.Transformer`.
      tokenizer: the policy tokenizer (``encode``, ``eos_id``, ``bos_id``).
      rounds: rounds per episode (default ``env.max_rounds``).
      max_cache_len: cap on the KV-cache capacity (default: the worst case, prefix plus every
        round's longest action and longest observation chunk). Rows that outgrow a smaller cap
        are flagged in `SampleOutput.overflow` (their later actions are unreliable).
      prompt: ``"agentgym"`` (the client's instruction and first observation) or ``"compact"``
        (see `conversation_start`, `first_observation`); records and token streams use it too.
      prefix_bucket: the padded prefix width is rounded up to a multiple of this, so that runs
        whose first observations differ slightly in length reuse one compiled rollout.
      decode: ``"constrained"`` (default): the action is decoded under the legal-action prefix
        mask after the fixed `OPENER` (empty thought). ``"free"``: the policy writes the whole
        assistant turn (thought and action, as AgentGym's agents do), up to ``max_new_tokens``
        tokens, ending at ``</s>`` (appended when the budget runs out); the turn is parsed on
        device by `evol_jax.action_parse.DeviceActionParser` with the AgentGym client's rules,
        and text that names no action gets the env's invalid-action step (Maze, Wordle) or ends
        the episode flagged ``UNSERVED`` (TextCraft text outside its action table). Still one
        jitted loop with fixed shapes.
      max_new_tokens: generation budget per turn for ``decode="free"``.
    """

    def __init__(
        self,
        env: Env,
        model: Transformer,
        tokenizer,
        rounds: int | None = None,
        max_cache_len: int | None = None,
        prompt: str = "agentgym",
        prefix_bucket: int = 64,
        decode: str = "constrained",
        max_new_tokens: int = 64,
    ):
        if decode not in DECODES:
            raise ValueError(f"DeviceSampler: decode={decode!r}; choose one of {DECODES}")
        if max_new_tokens < 1:
            raise ValueError(f"DeviceSampler: max_new_tokens={max_new_tokens} must be >= 1")
        self.decode, self.max_new_tokens = decode, int(max_new_tokens)
        if prefix_bucket < 1:
            raise ValueError(f"DeviceSampler: prefix_bucket={prefix_bucket} must be >= 1")
        self.prefix_bucket = int(prefix_bucket)
        if prompt not in PROMPTS:
            raise ValueError(f"DeviceSampler: prompt={prompt!r}; choose one of {PROMPTS}")
        self.prompt = prompt
        if not isinstance(env.codec, PolicyCodec) or env.codec.tokenizer is not tokenizer:
            raise ValueError(
                f"{env.name}: the env must be built with codec=PolicyCodec(tokenizer) of this "
                "policy tokenizer so that observations are in the policy's vocabulary"
            )
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids, model vocab is "
                f"{model.config.vocab_size}"
            )
        self.env, self.model, self.tokenizer = env, model, tokenizer
        self.rounds = int(rounds or env.max_rounds)
        self.max_cache_len = max_cache_len
        table, lengths = action_table(env, tokenizer)
        self.table, self.table_len = table, lengths
        self.open_human = np.asarray(tokenizer.encode(LLAMA2.bos + "[INST]"), np.int32)
        self.close_human = np.asarray(tokenizer.encode(" [/INST]"), np.int32)
        free = decode == "free"
        self.opener = np.asarray([] if free else tokenizer.encode(OPENER), np.int32)
        self.parser = action_parse.DeviceActionParser(env, tokenizer) if free else None
        # tokens one assistant turn can put in the cache (free: the budget plus </s>)
        self.turn_width = self.max_new_tokens + 1 if free else self.table.shape[1]
        self.chunk_width = (
            len(self.open_human) + env.max_obs_len + len(self.close_human) + len(self.opener)
        )
        self._jitted = jax.jit(self._rollout, static_argnames=("cache_len",))

    # ------------------------------------------------------------------------------- host prep
    def reset_and_prefix(self, keys: jax.Array, indices: np.ndarray):
        """Resets every row and builds the right-padded prefixes ``[N, P]`` and lengths ``[N]``."""
        states, ts = jax.jit(jax.vmap(self.env.reset))(keys, jnp.asarray(indices, jnp.int32))
        host = jax.device_get(states)
        firsts, prefixes = [], []
        for i in range(len(indices)):
            st = jax.tree.map(lambda x, i=i: x[i], host)
            firsts.append(first_observation(self.env, st, self.prompt))
            prefixes.append(self.prefix(firsts[-1]))
        # widths rounded up to a bucket: batches of one size share one compiled rollout
        p = -(-max(len(x) for x in prefixes) // self.prefix_bucket) * self.prefix_bucket
        pad = np.zeros((len(prefixes), p), np.int32)
        for i, x in enumerate(prefixes):
            pad[i, : len(x)] = x
        lengths = np.array([len(x) for x in prefixes], np.int32)
        return states, ts.legal_actions, firsts, pad, lengths

    def prefix(self, first_obs: str) -> np.ndarray:
        """Host: the prefix tokens of an episode with first observation ``first_obs``."""
        return prefix_tokens(
            self.env.name, first_obs, self.tokenizer, self.prompt, self.decode == "constrained"
        )

    # ----------------------------------------------------------------------------- device loop
    def _rollout(
        self, params, row_keys, states, legal0, prefix, lengths, temperature, top_p, *, cache_len
    ):
        env, model = self.env, self.model
        b = prefix.shape[0]
        table = jnp.asarray(self.table)
        tlen = jnp.asarray(self.table_len)
        la = table.shape[1]
        eos = self.tokenizer.eos_id
        vocab = model.config.vocab_size

        logits, cache = model.apply(
            {"params": params}, prefix, cache=KVCache.init(model.config, b, cache_len),
            num_valid=lengths,
        )  # fmt: skip
        last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]

        def draw(key, lg, allowed):
            return sample_ids(
                key, lg[None], temperature=temperature, top_p=top_p, allowed_mask=allowed[None]
            )[0]

        def decode_action(cache, last, legal, live, keys):
            cons0 = legal & live[:, None]

            def body(carry, j):
                cache, last, cons, finished, chosen = carry
                valid = cons & (j < tlen)[None, :]
                allowed = jnp.zeros((b, vocab), bool)
                allowed = allowed.at[jnp.arange(b)[:, None], table[None, :, j]].max(valid)
                step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, j)
                tok = jax.vmap(draw)(step_keys, last, allowed)
                run = ~finished
                cons = jnp.where(run[:, None], cons & (table[None, :, j] == tok[:, None]), cons)
                ends = run & ((tok == eos) | (tok < 0))
                pick = jnp.argmax(cons & (tlen == j + 1)[None, :], axis=1).astype(jnp.int32)
                chosen = jnp.where(ends, jnp.where(tok < 0, legal_or_first_rows(legal), pick),
                                   chosen)  # fmt: skip
                lg, cache = model.apply(
                    {"params": params}, jnp.maximum(tok, 0)[:, None], cache=cache,
                    num_valid=run.astype(jnp.int32),
                )  # fmt: skip
                last = jnp.where(run[:, None], lg[:, 0], last)
                return (cache, last, cons, finished | ends, chosen), None

            init = (cache, last, cons0, ~live, jnp.full((b,), -1, jnp.int32))
            (cache, last, _, _, chosen), _ = _early_exit_scan(
                body, init, la, lambda c: ~jnp.all(c[3])
            )
            return cache, last, chosen

        def legal_or_first_rows(legal):
            return jax.vmap(legal_or_first)(legal)

        tok_vocab = self.tokenizer.vocab_size
        width = self.turn_width

        def generate_turn(cache, last, live, keys):
            """Free decoding: up to ``max_new_tokens`` tokens, then ``</s>`` is forced."""

            def body(carry, j):
                cache, last, finished, count = carry
                step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, j)
                tok = jax.vmap(
                    lambda k, lg: sample_ids(
                        k, lg[None], temperature=temperature, top_p=top_p,
                        id_range=(0, tok_vocab),
                    )[0]
                )(step_keys, last)  # fmt: skip
                tok = jnp.where(j == width - 1, eos, tok)  # budget spent: close the turn
                run = ~finished
                ends = run & (tok == eos)
                count = count + (run & ~ends).astype(jnp.int32)
                lg, cache = model.apply(
                    {"params": params}, jnp.maximum(tok, 0)[:, None], cache=cache,
                    num_valid=run.astype(jnp.int32),
                )  # fmt: skip
                last = jnp.where(run[:, None], lg[:, 0], last)
                return (cache, last, finished | ends, count), tok

            init = (cache, last, ~live, jnp.zeros((b,), jnp.int32))
            (cache, last, _, count), toks = _early_exit_scan(
                body, init, width, lambda c: ~jnp.all(c[2])
            )
            gen = jnp.where(jnp.arange(width)[None, :] < count[:, None], toks.T, 0)
            action, status = self.parser.parse(gen, count)
            return cache, last, action, status, (gen, count)

        def constrained_turn(cache, last, legal, live, keys):
            cache, last, chosen = decode_action(cache, last, legal, live, keys)
            return cache, last, chosen, jnp.zeros((b,), jnp.int32), ()

        open_h = jnp.broadcast_to(
            jnp.asarray(self.open_human, jnp.int32), (b, len(self.open_human))
        )
        close_h = jnp.broadcast_to(self.close_human, (b, len(self.close_human)))
        opener = jnp.broadcast_to(self.opener, (b, len(self.opener)))

        def round_body(carry, r):
            states, cache, last, done, legal, last_reward = carry
            live = ~done
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, r)
            if self.decode == "free":
                cache, last, chosen, status, extra = generate_turn(cache, last, live, keys)
            else:
                cache, last, chosen, status, extra = constrained_turn(
                    cache, last, legal, live, keys
                )
            # a turn the device cannot serve ends the episode there, without a step
            serve = live & (status != action_parse.UNSERVED)
            act = jnp.where(serve, chosen, legal_or_first_rows(legal))
            new_states, ts = jax.vmap(env.step)(states, act)
            new_states = jax.tree.map(
                lambda n, o: jnp.where(serve.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
                new_states, states,
            )  # fmt: skip
            cont = serve & ~ts.done
            nobs = ts.obs_mask.sum(axis=1).astype(jnp.int32)
            ones = lambda k: jnp.full((b,), k, jnp.int32)  # noqa: E731
            parts = [(open_h, ones(open_h.shape[1])), (ts.obs_tokens, nobs),
                     (close_h, ones(close_h.shape[1]))]  # fmt: skip
            if opener.shape[1]:
                parts.append((opener, ones(opener.shape[1])))
            chunk, n = _scatter_chunk(parts, self.chunk_width)
            n = jnp.where(cont, n, 0)
            lg, cache = model.apply({"params": params}, chunk, cache=cache, num_valid=n)
            new_last = jnp.take_along_axis(lg, jnp.maximum(n - 1, 0)[:, None, None], axis=1)[:, 0]
            last = jnp.where(cont[:, None], new_last, last)
            reward = jnp.where(serve, ts.reward, 0.0)
            last_reward = jnp.where(live, reward, last_reward)
            legal = jnp.where(serve[:, None], ts.legal_actions, legal)
            out = (jnp.where(live, chosen, -1), reward, live, ts.obs_tokens,
                   ts.obs_mask & serve[:, None], status, extra)  # fmt: skip
            ended = (serve & ts.done) | (live & ~serve)
            return (new_states, cache, last, done | ended, legal, last_reward), out

        done0 = jnp.zeros((b,), bool)
        init = (states, cache, last, done0, legal0, jnp.zeros((b,), jnp.float32))
        (_, cache, _, _, _, last_reward), outs = _early_exit_scan(
            round_body, init, self.rounds, lambda c: ~jnp.all(c[3])
        )
        actions, rewards, active, obs_tokens, obs_mask, status, extra = outs
        actions = jnp.where(active, actions, -1)  # rounds never reached hold zeros
        outs = (actions, rewards, active, obs_tokens, obs_mask, status, extra)
        return outs, last_reward, cache.overflow

    def cache_len(self, prefix_len: int) -> int:
        """KV capacity: prefix plus every round's assistant-turn tokens and human chunk."""
        worst = int(prefix_len + self.rounds * (self.turn_width + self.chunk_width))
        if self.max_cache_len is None:
            return worst
        return min(worst, max(int(self.max_cache_len), prefix_len + self.chunk_width))

    # ------------------------------------------------------------------------------------ API
    def row_keys(self, seed: int, iteration: int, indices, sample_ids_: Sequence[int]):
        """Per-row keys ``fold_in(fold_in(fold_in(key(seed), iteration), idx), sample)``."""
        base = jax.random.fold_in(jax.random.key(seed), iteration)
        return jnp.stack([
            jax.random.fold_in(jax.random.fold_in(base, int(i)), int(s))
            for i, s in zip(indices, sample_ids_, strict=True)
        ])  # fmt: skip

    def run(
        self,
        params,
        indices,
        *,
        seed: int = 0,
        iteration: int = 0,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        mesh=None,
    ) -> SampleOutput:
        """Runs ``num_samples`` episodes per instance index, all rows at once.

        Args:
          params: policy parameters.
          indices: int [N] instance indices.
          seed, iteration: key derivation (see `row_keys`).
          num_samples: K episodes per index (rows ``idx0 s0, idx0 s1, ..., idx1 s0, ...``).
          temperature: 0 is greedy; per-token temperature over the legal-action prefix mask.
          top_p: nucleus mass per token.
          mesh: optional `core_jax.parallel` mesh; the batch axis is sharded over its data axes
            (the row count must divide by the number of batch shards).

        Returns:
          `SampleOutput` with ``N * num_samples`` episodes.
        """
        indices = np.asarray(indices, np.int32)
        if indices.ndim != 1 or indices.size == 0:
            raise ValueError(f"indices must be a non-empty 1-D list, got shape {indices.shape}")
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        if not temperature >= 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature={temperature} must be >= 0, top_p={top_p} in (0, 1]")
        rows = np.repeat(indices, num_samples)
        samples = np.tile(np.arange(num_samples), len(indices))
        keys = self.row_keys(seed, iteration, rows, samples)
        env_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(keys)
        states, legal0, firsts, prefix, lengths = self.reset_and_prefix(env_keys, rows)
        args = (keys, states, legal0, jnp.asarray(prefix), jnp.asarray(lengths))
        if mesh is not None:
            from core_jax.parallel import batch_sharding

            args = jax.tree.map(
                lambda x: jax.device_put(x, batch_sharding(mesh, ndim=np.ndim(x))), args
            )
        outs, last_reward, overflow = self._jitted(
            params, *args, jnp.float32(temperature), jnp.float32(top_p),
            cache_len=self.cache_len(prefix.shape[1]),
        )  # fmt: skip
        actions, rewards, active, obs_tokens, obs_mask, status, extra = jax.device_get(outs)
        free = self.decode == "free"
        return SampleOutput(
            env=self.env.name,
            indices=rows,
            first_obs=firsts,
            actions=np.asarray(actions),
            rewards=np.asarray(rewards),
            active=np.asarray(active),
            obs_tokens=np.asarray(obs_tokens),
            obs_mask=np.asarray(obs_mask),
            last_reward=np.asarray(jax.device_get(last_reward)),
            overflow=np.asarray(jax.device_get(overflow)),
            decode=self.decode,
            gen_tokens=np.asarray(extra[0]) if free else None,
            gen_len=np.asarray(extra[1]) if free else None,
            status=np.asarray(status) if free else None,
        )

    def turn_text(self, out: SampleOutput, r: int, i: int) -> str:
        """Host, ``decode="free"``: the text generated in round ``r`` of episode ``i``."""
        if out.gen_tokens is None:
            raise ValueError("turn_text: the output has no generated turns (decode='constrained')")
        return self.tokenizer.decode(out.gen_tokens[r, i, : int(out.gen_len[r, i])])

    def trajectories(self, out: SampleOutput) -> list[agenttraj.Trajectory]:
        """Host: episodes as `agenttraj.Trajectory` (empty thoughts, decoded observations);
        ``decode="constrained"`` outputs only (free turns are not in ReAct form by construction:
        use `to_records`)."""
        if out.decode != "constrained":
            raise ValueError("trajectories: decode='free' turns are free text; use to_records")
        trajs = []
        for i, idx in enumerate(out.indices.tolist()):
            t = agenttraj.Trajectory(
                env=self.env.name, idx=int(idx), first_observation=out.first_obs[i]
            )
            for r in range(int(out.num_steps[i])):
                t.thoughts.append("")
                t.actions.append(self.env.action_text(int(out.actions[r, i])))
                t.observations.append(
                    self.env.codec.decode(out.obs_tokens[r, i][out.obs_mask[r, i]])
                )
            t.reward = float(out.last_reward[i])
            t.success = bool(out.success[i])
            trajs.append(t)
        return trajs

    def to_records(self, out: SampleOutput) -> list[dict]:
        """AgentTraj items (with ``reward`` and ``success``) of every episode of ``out``.

        ``decode="free"``: each gpt turn is the generated text (a leading space, the chat
        format's separator, removed), items also carry ``invalid_turns`` and ``unserved``.
        """
        if out.decode == "free":
            return self._free_records(out)
        items = [agenttraj.to_item(t) for t in self.trajectories(out)]
        if self.prompt == "agentgym":
            return items
        # first observations are already in this style; only the instruction turn changes
        start = conversation_start(self.env.name, self.prompt)
        return [{**it, "conversations": start + it["conversations"][2:]} for it in items]

    def _free_records(self, out: SampleOutput) -> list[dict]:
        items = []
        invalid, unserved = out.invalid_turns, out.unserved
        for i, idx in enumerate(out.indices.tolist()):
            conv = conversation_start(self.env.name, self.prompt)
            conv.append({"from": "human", "loss": None, "value": out.first_obs[i]})
            steps = int(out.num_steps[i])
            for r in range(steps):
                text = self.turn_text(out, r, i)
                conv.append({"from": "gpt", "loss": True, "value": text.removeprefix(" ")})
                if r + 1 < steps:
                    obs = self.env.codec.decode(out.obs_tokens[r, i][out.obs_mask[r, i]])
                    conv.append({"from": "human", "loss": None, "value": obs})
            items.append({
                "item_id": f"{self.env.name}_{idx}", "conversations": conv,
                "reward": float(out.last_reward[i]), "success": bool(out.success[i]),
                "invalid_turns": int(invalid[i]), "unserved": bool(unserved[i]),
            })  # fmt: skip
        return items

    def token_stream(self, out: SampleOutput, i: int) -> np.ndarray:
        """Host: the exact token sequence episode ``i`` put through the policy (int32 [n])."""
        parts = [self.prefix(out.first_obs[i])]
        steps = int(out.num_steps[i])
        for r in range(steps):
            if out.decode == "free":
                n = int(out.gen_len[r, i])
                parts.append(list(out.gen_tokens[r, i, :n]) + [self.tokenizer.eos_id])
            else:
                a = int(out.actions[r, i])
                parts.append(self.table[a, : self.table_len[a]])
            if r + 1 < steps:
                obs = out.obs_tokens[r, i][out.obs_mask[r, i]]
                parts += [self.open_human, obs, self.close_human, self.opener]
        return np.concatenate([np.asarray(p, np.int32) for p in parts])


# ------------------------------------------------------------------------------------------------
# Host reference (tests)
# ------------------------------------------------------------------------------------------------


def host_reference_episode(sampler: DeviceSampler, params, idx: int, env_key) -> dict:
    """Greedy episode, step by step on the host with full (cache-free) forward passes.

    ``decode="free"``: each turn is generated greedily (ids below the tokenizer's size, at most
    ``max_new_tokens``, then ``</s>``), decoded with ``tokenizer.decode``, parsed with the client
    rule and ``env.action_from_text`` (`evol_jax.action_parse.host_parse`) and stepped; the
    result also holds ``"texts"``, ``"status"`` and ``"observations"`` (the env's reply text
    after each step, `Env.render_text`).

    Returns ``{"actions": [...], "rewards": [...], "tokens": np.ndarray, ...}``.
    """
    env, model, tok = sampler.env, sampler.model, sampler.tokenizer
    state, ts = jax.jit(env.reset)(env_key, jnp.int32(idx))
    first = first_observation(env, jax.device_get(state), sampler.prompt)
    seq = list(sampler.prefix(first))
    legal = np.asarray(ts.legal_actions)
    actions, rewards = [], []
    texts, status, observations = [], [], []
    step = jax.jit(env.step)
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    width = sampler.cache_len(len(seq))  # one padded length: one compile (causal, so exact)

    def next_logits(seq):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(seq)] = seq
        return np.asarray(forward(params, jnp.asarray(padded)))[0, len(seq) - 1]

    for r in range(sampler.rounds):
        if sampler.decode == "free":
            gen = []
            while True:
                t = int(np.argmax(next_logits(seq)[: tok.vocab_size]))
                if len(gen) == sampler.max_new_tokens:
                    t = tok.eos_id  # budget spent
                seq.append(t)
                if t == tok.eos_id:
                    break
                gen.append(t)
            texts.append(tok.decode(gen))
            a, st = action_parse.host_parse(env, texts[-1])
            status.append(st)
            actions.append(a)
            if st == action_parse.UNSERVED:
                rewards.append(0.0)
                break
            state, ts = step(state, jnp.int32(a))
            rewards.append(float(ts.reward))
            observations.append(env.render_text(jax.device_get(state)))
            if bool(ts.done) or r + 1 == sampler.rounds:
                break
            obs = np.asarray(ts.obs_tokens)[np.asarray(ts.obs_mask)]
            seq += list(sampler.open_human) + list(obs) + list(sampler.close_human)
            continue
        cons = legal.copy()
        j = 0
        while True:
            logits = next_logits(seq)
            allowed = np.zeros(logits.shape, bool)
            for a in np.nonzero(cons & (sampler.table_len > j))[0]:
                allowed[sampler.table[a, j]] = True
            t = int(np.argmax(np.where(allowed, logits, -np.inf)))
            seq.append(t)
            cons &= sampler.table[:, j] == t
            if t == tok.eos_id:
                a = int(np.nonzero(cons & (sampler.table_len == j + 1))[0][0])
                break
            j += 1
        state, ts = step(state, jnp.int32(a))
        actions.append(a)
        rewards.append(float(ts.reward))
        if bool(ts.done) or r + 1 == sampler.rounds:
            break
        obs = np.asarray(ts.obs_tokens)[np.asarray(ts.obs_mask)]
        seq += list(sampler.open_human) + list(obs) + list(sampler.close_human)
        seq += list(sampler.opener)
        legal = np.asarray(ts.legal_actions)
    out = {"actions": actions, "rewards": rewards, "tokens": np.asarray(seq, np.int32)}
    if sampler.decode == "free":
        out.update(texts=texts, status=status, observations=observations)
    return out


# ------------------------------------------------------------------------------------------------
# Host path: any AgentGym HTTP server, generation batched across in-flight episodes
# ------------------------------------------------------------------------------------------------


class BatchedHTTPPolicy:
    """Policy for `evol_jax.client.AgentGymClient.run_episodes` that batches generation.

    Every in-flight episode awaits its next action; requests are collected for ``wait_s`` (or until
    ``max_batch`` are pending) and answered by one jitted `core_jax.nn.decoding.generate` call
    over the right-padded prompts (lengths bucketed to multiples of ``bucket`` so that few shapes
    compile). The assistant turn is generated freely up to ``</s>`` and the action sent to the
    server is cut out of it by AgentGym's client rule for the env
    (`evol_jax.action_parse.client_action`: Maze / Wordle / BabyAI after the first ``"Action:"``,
    TextCraft after the last one, sanitised); text that names no action is sent as it is and the
    server answers as it does to any invalid action. Records count an episode as a success when
    its reward is above the env's threshold (`evol_jax.envs.base.success_threshold`).

    ``kv_reuse=True`` keeps every episode's KV cache between its turns (one slot per episode in a
    device-resident pool) instead of re-encoding the whole conversation every turn: a turn's
    prompt (the conversation re-tokenised as above) is compared with the tokens already in the
    episode's cache, the cache is kept up to their longest common prefix and only the rest (the
    end of the last assistant turn, when re-tokenising its text does not give back the sampled
    ids, and the new observation) is prefilled. The prompt tokens are the same as with
    ``kv_reuse=False``, the per-step keys too (``fold_in(fold_in(key(seed), n), step)``), so both
    modes give the same turns up to float rounding (tested, greedy and sampled).

    Args:
      model, params, tokenizer: the policy.
      env_name: AgentGym environment name (selects the client prompt and the client's action
        rule, `evol_jax.action_parse.RULES`; Wordle is not supported here because its first
        observation needs the server's filtered vocabulary; environments without a ported
        client rule raise ``ValueError``).
      max_new_tokens: generation budget per turn.
      temperature, top_p: sampling (0 = greedy).
      seed: PRNG seed; batch ``n`` uses ``fold_in(key(seed), n)``.
      max_batch, wait_s, bucket: batching knobs.
      kv_reuse: keep each episode's cache between turns (default; see above); ``False``
        re-encodes the whole conversation every turn.
      cache_len: per-episode cache capacity with ``kv_reuse`` (default the model's ``max_len``);
        a turn that would not fit raises ``ValueError``. The pool holds one such cache per
        episode index seen (``clear_cache`` frees it).
    """

    def __init__(
        self, model, params, tokenizer, env_name: str, *, max_new_tokens: int = 64,
        temperature: float = 0.0, top_p: float | None = None, seed: int = 0,
        max_batch: int = 64, wait_s: float = 0.01, bucket: int = 256, kv_reuse: bool = True,
        cache_len: int | None = None,
    ):  # fmt: skip
        if env_name.lower() == "wordle":
            raise ValueError("BatchedHTTPPolicy: wordle's first observation needs the vocabulary")
        if env_name.lower() not in action_parse.RULES:
            raise ValueError(
                f"BatchedHTTPPolicy: no AgentGym client action rule for {env_name!r} (have "
                f"{sorted(action_parse.RULES)}, `evol_jax.action_parse.RULES`)"
            )
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.env_name = env_name.lower()
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.key = jax.random.key(seed)
        self.max_batch, self.wait_s, self.bucket = max_batch, wait_s, bucket
        self.first_obs: dict[int, str] = {}
        self.turns: dict[int, list[str]] = {}
        self.num_batches = 0
        self.batch_sizes: list[int] = []
        self._pending: list = []
        self._flush_task = None
        # kv_reuse: slot 0 of the pool is scratch (padding rows write there), episode idx owns
        # slot self._slots[idx] and self._cached[idx] lists the tokens its cache holds
        self.kv_reuse = kv_reuse
        self.cache_len = int(cache_len or model.config.max_len)
        self._pool: KVCache | None = None
        self._slots: dict[int, int] = {}
        self._cached: dict[int, list[int]] = {}
        self.prompt_tokens = 0  # tokens of every turn's prompt
        self.prefilled_tokens = 0  # of which were run through the model (the rest was cached)
        self.generated_counts: list[np.ndarray] = []  # per batch: tokens generated per row
        self._turn = jax.jit(
            partial(_cached_turn, model, eos_id=tokenizer.eos_id,
                    max_new_tokens=max_new_tokens, top_p=top_p),
            static_argnames=("width",), donate_argnames=("pool",),
        )  # fmt: skip
        from core_jax.nn.decoding import generate

        self._generate = jax.jit(
            partial(generate, model, eos_id=tokenizer.eos_id, max_new_tokens=max_new_tokens,
                    top_p=top_p),
            static_argnames=("cache_len",),
        )  # fmt: skip

    def conversation(self, idx: int, obs: str, history) -> list[dict]:
        """The AgentTraj turns so far (first call for ``idx`` records its first observation)."""
        if not history:
            self.first_obs[idx] = agenttraj.client_first_observation(self.env_name, obs)
            self.turns[idx] = []
        conv = prompts.conversation_start(self.env_name)
        conv.append({"from": "human", "loss": None, "value": self.first_obs[idx]})
        for turn, (_, reply) in zip(self.turns[idx], history, strict=True):
            conv.append({"from": "gpt", "loss": True, "value": turn})
            conv.append({"from": "human", "loss": None, "value": str(reply.get("observation", ""))})
        return conv

    async def __call__(self, idx: int, obs: str, history):
        import asyncio

        conv = self.conversation(idx, obs, history)
        toks, _ = tokenize_conversation(conv, self.tokenizer, LLAMA2)
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((idx, toks, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().call_later(self.wait_s, self._flush)
        text = await fut
        self.turns[idx].append(text)
        return action_parse.client_action(self.env_name, text)

    def _flush(self):
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if not batch:
            return
        try:
            if self.kv_reuse:
                texts = self.generate_cached([i for i, _, _ in batch], [t for _, t, _ in batch])
            else:
                texts = self.generate([t for _, t, _ in batch])
        except Exception as e:  # every waiting episode fails with the reason
            for _, _, fut in batch:
                fut.set_exception(e)
            return
        for (_, _, fut), text in zip(batch, texts, strict=True):
            fut.set_result(text)
        if self._pending:
            self._flush()

    def generate(self, prompts_: Sequence[np.ndarray]) -> list[str]:
        """Batched generation for token prompts; returns the assistant turn texts."""
        n = len(prompts_)
        width = -(-max(len(p) for p in prompts_) // self.bucket) * self.bucket
        rows = -(-n // 8) * 8  # a few fixed batch sizes
        pad, lengths = _pad_rows(prompts_, rows, width)
        key = jax.random.fold_in(self.key, self.num_batches)
        toks, count = self._generate(
            self.params, key, jnp.asarray(pad), lengths=jnp.asarray(lengths),
            temperature=jnp.float32(self.temperature), cache_len=width + self.max_new_tokens,
        )  # fmt: skip
        self.num_batches += 1
        self.batch_sizes.append(n)
        self.prompt_tokens += sum(len(p) for p in prompts_)
        self.prefilled_tokens += sum(len(p) for p in prompts_)
        return self._texts(np.asarray(toks), np.asarray(count), n)

    def generate_cached(self, episodes: Sequence[int], prompts_: Sequence[np.ndarray]) -> list[str]:
        """`generate` for the turns of episodes ``episodes`` reusing their KV caches
        (``kv_reuse``; see the class docstring). Same batch layout, keys and outputs."""
        n = len(prompts_)
        if len(set(episodes)) != n:
            raise ValueError(f"generate_cached: an episode appears twice in one batch: {episodes}")
        rows = -(-n // 8) * 8
        for idx in episodes:
            if idx not in self._slots:
                self._slots[idx] = len(self._slots) + 1  # slot 0 is scratch
                self._cached[idx] = []
        self._grow_pool(len(self._slots) + 1)
        keep = np.zeros((rows,), np.int32)
        slots = np.zeros((rows,), np.int32)
        new = []
        for i, (idx, p) in enumerate(zip(episodes, prompts_, strict=True)):
            p = [int(t) for t in p]
            c = _common_prefix(self._cached[idx], p)
            keep[i] = min(c, len(p) - 1)  # at least one token to prefill: the next logits
            slots[i] = self._slots[idx]
            new.append(p[keep[i] :])
        chunk_bucket = min(self.bucket, 64)  # later turns prefill ~one observation
        chunk_w = -(-max(len(t) for t in new) // chunk_bucket) * chunk_bucket
        need = int(max(keep[i] + len(t) for i, t in enumerate(new))) + self.max_new_tokens
        width = -(-need // self.bucket) * self.bucket
        if width > self.cache_len:
            width = need
        if need > self.cache_len:
            raise ValueError(
                f"BatchedHTTPPolicy: a turn needs {need} cache positions (prompt + "
                f"max_new_tokens={self.max_new_tokens}), cache_len is {self.cache_len}"
            )
        chunk, n_new = _pad_rows(new, rows, chunk_w)
        key = jax.random.fold_in(self.key, self.num_batches)
        toks, count, self._pool = self._turn(
            self.params, key, self._pool, jnp.asarray(slots), jnp.asarray(keep),
            jnp.asarray(chunk), jnp.asarray(n_new), jnp.float32(self.temperature), width=width,
        )  # fmt: skip
        self.num_batches += 1
        self.batch_sizes.append(n)
        toks, count = np.asarray(toks), np.asarray(count)
        for i, (idx, p) in enumerate(zip(episodes, prompts_, strict=True)):
            self._cached[idx] = [int(t) for t in p] + toks[i, : count[i]].tolist()
        self.prompt_tokens += sum(len(p) for p in prompts_)
        self.prefilled_tokens += int(n_new[:n].sum())
        return self._texts(toks, count, n)

    def clear_cache(self) -> None:
        """Frees the ``kv_reuse`` pool (every episode index owns a slot until then; an index
        that comes back reuses its slot and whatever prefix of its cache still matches)."""
        self._pool, self._slots, self._cached = None, {}, {}

    def _grow_pool(self, slots: int) -> None:
        have = 0 if self._pool is None else self._pool.length.shape[0]
        if slots <= have:
            return
        size = max(8, -(-slots // 8) * 8, 2 * have)
        pool = KVCache.init(self.model.config, size, self.cache_len)
        # KVCache.init shares its zero arrays between keys and values; the pool is donated to
        # every turn, so each must be its own buffer
        pool = pool.replace(values=tuple(jnp.zeros_like(v) for v in pool.values))
        if self._pool is not None:
            old = self._pool
            pool = pool.replace(
                keys=tuple(k.at[:have].set(o) for k, o in zip(pool.keys, old.keys, strict=True)),
                values=tuple(
                    v.at[:have].set(o) for v, o in zip(pool.values, old.values, strict=True)
                ),
            )
        self._pool = pool

    def _texts(self, toks: np.ndarray, count: np.ndarray, n: int) -> list[str]:
        self.generated_counts.append(count[:n])
        out = []
        for i in range(n):
            ids = [int(t) for t in toks[i, : count[i]] if t != self.tokenizer.eos_id]
            text = self.tokenizer.decode(ids)
            out.append(text[1:] if text.startswith(" ") else text)
        return out

    def records(self, batch) -> list[dict]:
        """AgentTraj items (with ``reward``) of a `evol_jax.client.BatchResult`."""
        items = []
        for idx, ep in batch.episodes.items():
            if idx not in self.first_obs:
                continue
            conv = prompts.conversation_start(self.env_name)
            conv.append({"from": "human", "loss": None, "value": self.first_obs[idx]})
            turns = self.turns[idx][: len(ep.actions)]
            for t, turn in enumerate(turns):
                conv.append({"from": "gpt", "loss": True, "value": turn})
                if t + 1 < len(turns):
                    obs = str(ep.replies[t].get("observation", ""))
                    conv.append({"from": "human", "loss": None, "value": obs})
            items.append({"item_id": f"{self.env_name}_{idx}", "conversations": conv,
                          "reward": ep.reward,
                          "success": ep.reward > success_threshold(self.env_name),
                          "failed": idx in batch.failed})  # fmt: skip
        return items


def _pad_rows(seqs, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences -> ``[rows, width]`` int32, zero-padded, and their lengths (1 for the
    padding rows, so every row has a next-token position)."""
    out = np.zeros((rows, width), np.int32)
    lengths = np.ones((rows,), np.int32)
    for i, t in enumerate(seqs):
        out[i, : len(t)] = t
        lengths[i] = len(t)
    return out, lengths


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _cached_turn(
    model, params, key, pool: KVCache, slots, keep, chunk, n_new, temperature, *, eos_id: int,
    max_new_tokens: int, top_p, width: int,
):  # fmt: skip
    """One host-path turn on cached rows (`BatchedHTTPPolicy.generate_cached`).

    Gathers the rows ``slots`` of ``pool`` (first ``width`` positions), keeps ``keep[b]`` cached
    positions, prefills ``chunk[b, :n_new[b]]`` and samples ``max_new_tokens`` tokens with
    `core_jax.nn.decoding.generate`'s own loop (`sample_continuation`: step ``i`` draws with
    ``fold_in(key, i)``, rows stop after ``eos_id``); writes the rows back.
    Returns ``(tokens [B, T], count [B], pool)``.
    """
    from core_jax.nn.decoding import prefill, sample_continuation

    b = slots.shape[0]
    cache = KVCache(
        keys=tuple(k[slots, :width] for k in pool.keys),
        values=tuple(v[slots, :width] for v in pool.values),
        length=keep, overflow=jnp.zeros((b,), bool),
    )  # fmt: skip
    logits, cache = prefill(model, params, chunk, lengths=n_new, cache=cache)
    last = jnp.take_along_axis(logits, (n_new - 1)[:, None, None], axis=1)[:, 0]
    toks, count, cache = sample_continuation(
        model, params, key, cache, last, max_new_tokens=max_new_tokens, eos_id=eos_id,
        temperature=temperature, top_p=top_p,
    )  # fmt: skip
    keys = zip(pool.keys, cache.keys, strict=True)
    values = zip(pool.values, cache.values, strict=True)
    pool = pool.replace(
        keys=tuple(p.at[slots, :width].set(c) for p, c in keys),
        values=tuple(p.at[slots, :width].set(c) for p, c in values),
    )
    return toks, count, pool
