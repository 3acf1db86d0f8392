"""BabyAI as a vectorised JAX text environment with AgentGym's semantics.

>>> env = BabyAI(max_rounds=20)
>>> state, ts = env.reset_from_minigrid(level=1, seed=0)  # exact AgentGym instance
>>> print(env.render_text(state).splitlines()[0])
Your goal: go to the red ball
>>> state, ts = jax.jit(env.step)(state, env.action_from_text("go to red ball 1", state))

Actions are a fixed table (`babyai_core`): 0 turn left, 1 turn right, 2 move forward, 3 toggle,
4 drop, 5 check available actions, 6 an unrecognised string, 7 the empty string, then
``8 + verb * 48 + k`` for verb in (pickup, go to, go through, toggle and go through) applied to the
k-th object listed in the observation (``legal_actions`` marks upstream's available actions). Action
texts carry upstream's numbering ("pickup grey key 2" counts only reachable grey
keys).

``agentgym_compat=True`` reproduces the server: ``reward`` is the server's (stale)
``env.reward``, so that the running sum of rewards is the payload ``score`` (the stale-score
quirk); a success with reward <= 0.5 does not end the episode; execution of a plan goes on
after a success; the "no path" message for closed doors prints a dict. The default (corrected) mode
rewards only the step that succeeds,
ends the episode on success and stops a plan there.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs import babyai_core as core
from evol_jax.envs import babyai_expert as bx
from evol_jax.envs import babyai_gen as gen
from evol_jax.envs import babyai_words as bw
from evol_jax.envs.base import Env, InvalidAction, TimeStep, register
from evol_jax.text import TextCodec, expand_words, words_to_text

LEVELS = {
    1: "BabyAI-GoToRedBallGrey-v0",
    2: "BabyAI-GoToRedBall-v0",
    3: "BabyAI-GoToRedBallNoDists-v0",
    4: "BabyAI-GoToObjS6-v0",
    5: "BabyAI-GoToLocalS8N7-v0",
    6: "BabyAI-GoToObjMazeS7-v0",
    7: "BabyAI-GoToImpUnlock-v0",
    8: "BabyAI-GoToSeqS5R2-v0",
    9: "BabyAI-GoToRedBlueBall-v0",
    10: "BabyAI-GoToDoor-v0",
    11: "BabyAI-GoToObjDoor-v0",
    12: "BabyAI-Open-v0",
    13: "BabyAI-OpenRedDoor-v0",
    14: "BabyAI-OpenDoorLoc-v0",
    15: "BabyAI-OpenRedBlueDoorsDebug-v0",
    16: "BabyAI-OpenDoorsOrderN4Debug-v0",
    17: "BabyAI-Pickup-v0",
    18: "BabyAI-UnblockPickup-v0",
    19: "BabyAI-PickupLoc-v0",
    20: "BabyAI-PickupDistDebug-v0",
    21: "BabyAI-PickupAbove-v0",
    22: "BabyAI-PutNextLocalS6N4-v0",
    23: "BabyAI-PutNextS7N4Carrying-v0",
    24: "BabyAI-Unlock-v0",
    25: "BabyAI-UnlockLocalDist-v0",
    26: "BabyAI-KeyInBox-v0",
    27: "BabyAI-UnlockPickupDist-v0",
    28: "BabyAI-BlockedUnlockPickup-v0",
    29: "BabyAI-UnlockToUnlock-v0",
    30: "BabyAI-ActionObjDoor-v0",
    31: "BabyAI-FindObjS7-v0",
    32: "BabyAI-KeyCorridorS6R3-v0",
    33: "BabyAI-OneRoomS20-v0",
    34: "BabyAI-MoveTwoAcrossS8N9-v0",
    35: "BabyAI-SynthS5R2-v0",
    36: "BabyAI-SynthLoc-v0",
    37: "BabyAI-SynthSeq-v0",
    38: "BabyAI-MiniBossLevel-v0",
    39: "BabyAI-BossLevel-v0",
    40: "BabyAI-BossLevelNoUnlock-v0",
}

# Default observation buffer in words. The longest recorded AgentGym observation has 309 words
# (695 tokens); a view full of objects could in principle need ~2,700 words (48 objects, 200 actions
# listed), so the size is an option (`BabyAI(max_words=...)`) and exceeding it sets
# ``state.overflow`` on device and makes the host side (`BabyAI.render_text`) raise.
MAX_WORDS = 1024


@flax.struct.dataclass
class BabyAIState:
    world: core.World
    an: core.Analysis  # postprocess of `world` (upstream's action_space of the last observation)
    goal_words: jax.Array  # int32 [GOAL_WORDS]
    goal_len: jax.Array  # int32 []
    obs_words: jax.Array  # int32 [max_words] the last observation as word ids
    obs_len: jax.Array  # int32 []
    env_reward: jax.Array  # float32 [] upstream's env.reward (stale between primitive steps)
    score: jax.Array  # float32 [] payload "score"
    done: jax.Array  # bool []
    truncated: jax.Array  # bool []
    round: jax.Array  # int32 []
    overflow: jax.Array  # bool [] a buffer was too small: max_words, max_obs_len or bfs_queue
    invalid: jax.Array  # bool [] reset of a level with no generator and no bank (under jit)


def _obs_tail(an, body, n, width):
    """body + "\\nAvailable actions: [...]" ([width], total words; > width: overflow)."""
    body = core.glue(body, n, bw.GLUE_AVAILABLE)
    lst, ln = core.action_list(an, 0, width)
    return core._cat([(body, n), (jnp.asarray(bw.ids("actions:")), 1), (lst, ln)], width)


def draw_world(key, idx, bank, who: str = "BabyAI.reset"):
    """The world of instance ``idx`` (level ``idx % 40 + 1``), shared by the text and primitive
    envs: generated on device for `babyai_gen.NATIVE_LEVELS`, else row ``idx % bank size`` of
    ``bank`` (`BabyAI.bank_from_minigrid`).

    Returns:
      ``(world, goal_words, goal_len, invalid)``; ``invalid``: a non-native level and no bank
      (only under jit: a concrete such ``idx`` raises ``ValueError`` naming ``who``).
    """
    try:
        level = int(idx) % 40 + 1
    except (TypeError, jax.errors.ConcretizationTypeError):
        level = None
    if level is not None and level not in gen.NATIVE_LEVELS and bank is None:
        raise ValueError(
            f"{who}: level {level} ({LEVELS[level]}) has no native generator and there "
            "is no instance bank; call env.use_bank(env.bank_from_minigrid(...)) or use "
            "reset_from_minigrid / reset_from_record"
        )
    idx = jnp.asarray(idx, jnp.int32)
    native = sorted(gen.NATIVE_LEVELS)
    lv = idx % 40 + 1
    branch = jnp.sum(jnp.asarray(native) < lv).astype(jnp.int32)
    is_native = jnp.any(jnp.asarray(native) == lv)
    branch = jnp.where(is_native, branch, len(native))

    def bank_branch(k):
        if bank is None:
            return gen.generate(k, native[0])
        worlds, goals, glens = bank[:3]  # InstanceBank (babyai_import); reset() reads .images
        i = idx % glens.shape[0]
        return jax.tree.map(lambda a: a[i], worlds), goals[i], glens[i]

    branches = [lambda k, lv=lv_: gen.generate(k, lv) for lv_ in native] + [bank_branch]
    world, goal, glen = jax.lax.switch(branch, branches, key)
    return world, goal, glen, ~is_native & (bank is None)


class BufferOverflow(ValueError):
    """A BabyAI observation or search did not fit its fixed-size buffer (see the message)."""


class BabyAI(Env):
    """AgentGym BabyAI (see the module docstring).

    Args:
      agentgym_compat: reproduce upstream's quirks (stale score, dict-printing message, ...).
      max_rounds: steps per episode before truncation (AgentGym's client uses 20); None = no limit.
      max_obs_len: token buffer length of an observation.
      max_words: word buffer length of an observation (`MAX_WORDS`).
      bfs_queue: None (default): the layer-by-layer action search (`babyai_core._bfs`); an int:
        upstream's sequential queue with a ring buffer of that length (`babyai_core.QUEUE`; the
        slower reference, `babyai_core._bfs_sequential`). Both give upstream's plans.
      codec: the environment tokenizer (default: the shipped model).

    A state whose observation or search did not fit has ``state.overflow`` set (device); the host
    methods (`render_text`, `available_actions`) then raise `BufferOverflow` naming the buffer.
    """

    def __init__(
        self,
        agentgym_compat: bool = False,
        max_rounds: int | None = 20,
        max_obs_len: int = 2048,
        max_words: int = MAX_WORDS,
        bfs_queue: int | None = None,
        codec: TextCodec | None = None,
    ):
        for opt, v, lo in (("max_obs_len", max_obs_len, 64), ("max_words", max_words, 64),
                           ("bfs_queue", 16 if bfs_queue is None else bfs_queue, 16)):  # fmt: skip
            if int(v) < lo:
                raise ValueError(f"babyai: {opt}={v} must be >= {lo}")
        self.max_words = int(max_words)
        self.bfs_queue = None if bfs_queue is None else int(bfs_queue)
        self.name = "babyai"
        self.num_actions = core.NUM_ACTIONS
        self.max_obs_len = max_obs_len
        self.max_rounds = max_rounds
        self.agentgym_compat = agentgym_compat
        self.codec = codec or TextCodec()
        self.table = self.codec.word_table(bw.WORDS)
        self._bank = None

    # ------------------------------------------------------------------ device

    def _timestep(self, s: BabyAIState, reward):
        tokens, mask, over = expand_words(s.obs_words, s.obs_len, self.table, self.max_obs_len)
        ts = TimeStep(
            obs_tokens=tokens,
            obs_mask=mask,
            reward=jnp.asarray(reward, jnp.float32),
            done=s.done,
            truncated=s.truncated,
            legal_actions=s.an.legal,
            round=s.round,
        )
        return s.replace(overflow=s.overflow | over), ts

    def init_state(self, world: core.World, goal_words, goal_len, image=None):
        """Reset observation of an imported or generated world (pure; jit/vmap).

        Args:
          world: the instance after reset.
          goal_words: int32 [<= GOAL_WORDS] goal word ids; goal_len: int32 [] their count.
          image: optional int32 [7, 7, 3] observation image the reset text describes (see
            `babyai_core.analyse`; `babyai_import.reset_image`), default the world's view.
        """
        W = self.max_words
        an = core.analyse(world, image, self.bfs_queue)
        desc, dn = core.description(an, world, W)
        goal = jnp.zeros((core.GOAL_WORDS,), jnp.int32).at[: goal_words.shape[0]].set(goal_words)
        goal = core.glue(goal, goal_len, jnp.where(an.any_obj, bw.GLUE_IN, bw.GLUE_YOU))
        body, n = core._cat(
            [(jnp.asarray(bw.ids("Your goal:")), 2), (goal, goal_len), (desc[1:], dn - 1)],
            W,
        )
        over = (dn > W) | (n > W)
        words, n = _obs_tail(an, body, jnp.minimum(n, W), W)
        s = BabyAIState(
            world=world,
            an=an,
            goal_words=goal,
            goal_len=jnp.asarray(goal_len, jnp.int32),
            obs_words=words,
            obs_len=jnp.minimum(n, W),
            env_reward=jnp.float32(0.0),
            score=jnp.float32(0.0),
            done=jnp.bool_(False),
            truncated=jnp.bool_(False),
            round=jnp.int32(0),
            overflow=an.overflow | over | (n > W),
            invalid=jnp.bool_(False),
        )
        return self._timestep(s, 0.0)

    def reset(self, key, idx):
        """Instance ``idx``: level ``idx % 40 + 1``.

        Levels in `babyai_gen.NATIVE_LEVELS` are generated on device from ``key`` (same
        distribution as AgentGym's instance ``idx``, not the same instance: minigrid's Python RNG
        stream is not reproduced). Other levels come from the bank given to `use_bank` (row
        ``idx % bank size``). A concrete ``idx`` of a level with neither raises ``ValueError``;
        under jit (traced ``idx``) such a row comes back with ``state.invalid`` and ``done`` set.
        """
        world, goal, glen, invalid = draw_world(key, idx, self._bank, "BabyAI.reset")
        image = None  # the live view
        if self.agentgym_compat and self._bank is not None:
            # upstream's reset text of a bank row (stale for level 23, see `reset_from_minigrid`)
            from evol_jax.envs.babyai_import import bank_reset_image

            image = bank_reset_image(self._bank, idx, world)
        state, ts = self.init_state(world, goal, glen, image)
        state = state.replace(invalid=invalid, done=state.done | invalid)
        return state, ts.replace(done=state.done)

    def step(self, state: BabyAIState, action):
        compat = self.agentgym_compat
        action = jnp.clip(jnp.asarray(action, jnp.int32), 0, core.NUM_ACTIONS - 1)
        an, w = state.an, state.world
        legal = an.legal[action]
        is_check = action == core.A_CHECK
        plan, plen = core.plan_for(an, action)
        execute = legal & ~is_check & (plen > 0)
        img0 = an.image.astype(jnp.uint8)  # view_image's dtype

        def cond(c):
            i, stop = c[0], c[1]
            return (i < plen) & ~stop & execute

        def body(c):
            i, stop, w, img, rew, term, any_term = c
            w2, r, t = core.prim_step(w, plan[i])
            img2 = core.view_image(w2)
            changed = jnp.any(img2 != img)
            stop = ~changed
            if not compat:
                stop = stop | t
            return i + 1, stop, w2, img2, r, t, any_term | t

        init = (
            jnp.int32(0),
            jnp.bool_(False),
            w,
            img0,
            jnp.float32(0.0),
            jnp.bool_(False),
            jnp.bool_(False),
        )
        _, _, w2, _, rew, term, _ = jax.lax.while_loop(cond, body, init)
        W = self.max_words
        an2 = core.analyse(w2, None, self.bfs_queue)
        # observation body
        desc, dn = core.description(an2, w2, W)
        done_txt = jnp.asarray(bw.ids("The task is completed."), jnp.int32)
        desc_done = core.glue(desc, dn, bw.GLUE_NL)
        body_exec, n_exec = core._cat([(desc_done, dn), (done_txt, 4)], W)
        body_exec = jnp.where(term, body_exec, desc)
        n_exec = jnp.where(term, n_exec, dn)
        err, en = core.error_words(an, w, action, compat)
        chk_head = jnp.asarray(bw.ids("You can take the following actions:"), jnp.int32)
        lst, ln = core.action_list(an, 1, W)
        chk, cn = core._cat([(chk_head, 6), (lst, ln)], W)
        nochange, nn = core._pad(bw.ids("No change in state."), W)
        err = jnp.zeros((W,), jnp.int32).at[: err.shape[0]].set(err)
        body = jnp.select(
            [execute, is_check, legal], [body_exec, chk, nochange], err
        )  # legal with an empty plan: "No change in state."
        bn = jnp.select([execute, is_check, legal], [n_exec, cn, nn], en)
        an_new = jax.tree.map(lambda a, b: jnp.where(execute, a, b), an2, an)
        over = bn > W
        words, n = _obs_tail(an_new, body, jnp.minimum(bn, W), W)
        if compat:
            env_reward = jnp.where(execute, rew, state.env_reward)
            done = jnp.where(execute, term & (rew > 0.5), state.done)
            reward = env_reward
        else:
            env_reward = jnp.where(execute, rew, 0.0)
            done = execute & term
            reward = env_reward
        rnd = state.round + 1
        truncated = jnp.bool_(False)
        if self.max_rounds is not None:
            truncated = ~done & (rnd >= self.max_rounds)
        new = state.replace(
            world=jax.tree.map(lambda a, b: jnp.where(execute, a, b), w2, w),
            an=an_new,
            obs_words=words,
            obs_len=jnp.minimum(n, W),
            env_reward=env_reward.astype(jnp.float32),
            score=(state.score + env_reward).astype(jnp.float32),
            done=done | truncated,
            truncated=truncated,
            round=rnd,
            overflow=state.overflow | an2.overflow | over | (n > W),
        )
        # finished episodes do not move
        new = jax.tree.map(lambda a, b: jnp.where(state.done, b, a), new, state)
        return self._timestep(new, jnp.where(state.done, 0.0, reward))

    # ------------------------------------------------------------------ host import

    def _goal_ids(self, goal: str):
        try:
            ids = bw.ids(goal)
        except KeyError as e:
            raise ValueError(f"babyai: goal {goal!r}: {e}") from None
        if len(ids) > core.GOAL_WORDS:
            raise ValueError(f"babyai: goal {goal!r} longer than {core.GOAL_WORDS} words")
        return jnp.asarray(ids + [0] * (core.GOAL_WORDS - len(ids)), jnp.int32), len(ids)

    def reset_from_world(self, world, goal: str, image=None):
        """Reset state of a host-built ``world`` (jitted `init_state`, compiled once per env)."""
        g, n = self._goal_ids(goal)
        if not hasattr(self, "_init_jit"):
            self._init_jit = jax.jit(self.init_state)
        return self._init_jit(world, g, jnp.int32(n), image)

    def reset_from_minigrid(self, env=None, *, level: int | None = None, seed: int | None = None):
        """Imports a live minigrid env, or makes ``level`` (1..40) with ``seed`` (AgentGym's
        instance ``(seed * 40 + level - 1)``)."""
        from evol_jax.envs.babyai_import import reset_image, world_from_minigrid

        if env is None:
            env = make_minigrid(level, seed)
        world, goal = world_from_minigrid(env)
        # compat: upstream describes the image minigrid rendered at reset (stale for the levels
        # that start carrying an object); corrected: the true view
        image = reset_image(env) if self.agentgym_compat else None
        return self.reset_from_world(world, goal, image)

    def reset_from_record(self, state: dict, box_contents: dict | None = None):
        """Imports a recorded transcript state dict (``babyai_transcripts.jsonl``)."""
        from evol_jax.envs.babyai_import import world_from_record

        world, goal = world_from_record(state, box_contents)
        return self.reset_from_world(world, goal)

    def bank_from_minigrid(self, instances):
        """Stacks imported instances ``[(level, seed), ...]`` into an `InstanceBank` for `reset`
        (with each row's reset image: compat resets of a row equal `reset_from_minigrid`)."""
        from evol_jax.envs.babyai_import import bank_from_minigrid

        return bank_from_minigrid(instances, self._goal_ids)

    def use_bank(self, bank):
        self._bank = bank
        return self

    # ------------------------------------------------------------------ host text

    def check_overflow(self, state: BabyAIState) -> None:
        """Raises `BufferOverflow` naming the buffer if ``state`` (one row) overflowed."""
        if not bool(state.overflow):
            return
        if bool(state.an.overflow):
            if self.bfs_queue is None:
                raise BufferOverflow(
                    "babyai: the layer-by-layer action search met a window outside its proven "
                    "case (a state's entries on both sides of a successor's first entry); build "
                    "the env with BabyAI(bfs_queue=1024) (upstream's sequential queue)"
                )
            raise BufferOverflow(
                f"babyai: the action search needed more than bfs_queue={self.bfs_queue} live "
                "queue entries; build the env with a larger BabyAI(bfs_queue=...)"
            )
        raise BufferOverflow(
            f"babyai: an observation (or an earlier action search, bfs_queue={self.bfs_queue}) "
            f"of this episode did not fit max_words={self.max_words} "
            f"words / max_obs_len={self.max_obs_len} tokens (its text would be cut); build the "
            "env with larger BabyAI(max_words=..., max_obs_len=...)"
        )

    def render_text(self, state: BabyAIState) -> str:
        s = jax.device_get(state)
        self.check_overflow(s)
        return words_to_text(bw.WORDS, s.obs_words, s.obs_len)

    def available_actions(self, state: BabyAIState) -> dict[str, int]:
        """Upstream's action_space keys in order -> action id."""
        state = jax.device_get(state)  # once: the texts below read the host copy
        self.check_overflow(state)
        an = state.an
        ids = [
            i
            for i in np.argsort(np.where(an.legal, an.order, 1 << 20), kind="stable")[
                : an.legal.sum()
            ]
        ]
        return {self.action_text(int(i), state): int(i) for i in ids}

    def action_text(self, action: int, state: BabyAIState | None = None) -> str:
        fixed = [
            "turn left",
            "turn right",
            "move forward",
            "toggle",
            "drop",
            "check available actions",
        ]
        if action < len(fixed):
            return fixed[action]
        if action == core.A_UNKNOWN:
            return "<unrecognised>"
        if action == core.A_EMPTY:
            return ""
        if not 0 <= action < core.NUM_ACTIONS:
            raise ValueError(f"babyai: action id {action} out of range [0, {core.NUM_ACTIONS})")
        if state is None:
            raise ValueError("babyai: object actions need the state to be named")
        an = jax.device_get(state.an)
        k = (action - core.N_FIXED) % core.K
        verb = ("pickup", "go to", "go through", "toggle and go through")[
            (action - core.N_FIXED) // core.K
        ]
        if k >= an.n_slots:
            return f"{verb} <slot {k}>"
        return f"{verb} {_name(an.slot_enc[k])} {int(an.num[action])}"

    def action_from_text(self, text: str, state: BabyAIState | None = None) -> int:
        """Upstream's parsing (lower-case, strip): the id whose effect the server would have.

        Returns ids 6 (unrecognised) / 7 (empty string) for strings the server answers with an
        error and no matching action; raises `InvalidAction` only without a ``state``.
        """
        a = text.lower().strip()
        if state is not None:
            state = jax.device_get(state)  # once: the loops below read the host copy
        if "check" in a:
            return core.A_CHECK
        if a == "":
            return core.A_EMPTY
        fixed = {"turn left": 0, "turn right": 1, "move forward": 2, "toggle": 3, "drop": 4}
        if state is None:
            if a in fixed:
                return fixed[a]
            raise InvalidAction("The action is not recognized. Please check valid actions.")
        avail = self.available_actions(state)
        if a in avail:
            return avail[a]
        if a in fixed:
            return fixed[a]
        # error-message keys: the first object action whose text matches
        for i in range(core.N_FIXED, core.NUM_ACTIONS):
            k = (i - core.N_FIXED) % core.K
            if k < int(state.an.n_slots) and self.action_text(i, state) == a:
                return i
        return core.A_UNKNOWN

    # ------------------------------------------------------------------ expert

    def expert_action(self, state: BabyAIState):
        """The scripted expert (`babyai_expert`): pure, jittable, vmappable; int32 []."""
        return bx.expert_action(state.world, state.an)

    def expert_thought(self, state: BabyAIState, action: int) -> str:
        """Host: "My goal is to <goal>. I need to <subgoal>. I will <action>."."""
        goal = words_to_text(bw.WORDS, jax.device_get(state.goal_words), int(state.goal_len))
        goal = goal.split("\n")[0]
        verb, target, _ = jax.device_get(bx.subgoal(state.world))
        w = jax.device_get(state.world)
        xs, ys = np.nonzero(np.asarray(target))
        names = sorted({_name(w.grid[x, y]) for x, y in zip(xs, ys, strict=True)})
        if int(verb) == bx.G_DROP:
            sub = "put down what I am carrying next to the target"
        elif names:
            sub = f"{bx.VERB_TEXT[int(verb)]} the {' or the '.join(names)}"
        else:
            sub = "find my target"
        return (
            f"My goal is to {goal}. I need to {sub}. I will {self.action_text(int(action), state)}."
        )


def _name(enc) -> str:
    t, c, s = (int(v) for v in enc)
    if t == core.DOOR:
        return f"{bw.COLORS[c]} {bw.STATES[s]} door"
    return f"{bw.COLORS[c]} {bw.OBJECTS[t]}"


def make_minigrid(level: int, seed: int):
    """The minigrid env AgentGym builds for ``level`` (1..40), reset with ``seed``."""
    import gymnasium
    import minigrid  # noqa: F401  (registers the BabyAI ids)

    if level not in LEVELS:
        raise ValueError(f"babyai: level must be in 1..40, got {level}")
    name = LEVELS[level]
    try:
        env = gymnasium.make(name)
    except gymnasium.error.Error:
        # minigrid >= 2.5 renamed GoToObjS6-v0 (room 4) to -v1 (room 6); rebuild the v0 level
        if level != 4:
            raise
        from minigrid.envs.babyai.goto import GoToObj

        env = GoToObj(room_size=4)
    env.reset(seed=seed)
    return env


@register("babyai")
def _factory(**options) -> BabyAI:
    return BabyAI(**options)
