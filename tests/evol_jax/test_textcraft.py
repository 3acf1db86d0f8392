"""TextCraft: recipe graph, goal table, device step == upstream text semantics, AgentGym parity."""

import json
import os
import random
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evol_jax.envs import InvalidAction, make
from evol_jax.envs import textcraft_recipes as tr
from evol_jax.envs.textcraft import (
    CRAFT,
    INVENTORY,
    RESET_OBS,
    ActionOutsideTable,
    TextCraft,
    _pack,
)
from evol_jax.text import concat_segments, expand_words

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "agentgym"
need_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"AgentGym parity data not at {DATA}")


@pytest.fixture(scope="module")
def env():
    return TextCraft()


@pytest.fixture(scope="module")
def env_compat():
    return TextCraft(agentgym_compat=True)


@pytest.fixture(scope="module")
def upstream():
    goals = json.loads((DATA / "textcraft_goals.json").read_text())
    env = TextCraft(
        str(DATA / "textcraft_recipes"),
        goals["recipe_file_order_of_recorded_run"],
        agentgym_compat=True,
        max_rounds=40,  # the recorder allowed 40 rounds; AgentGym's client uses 20
        max_get=72,
    )
    return env, goals


def _rollout_reference(env, rng, idx, n_steps):
    """Random steps through the device env and through `reference_step` side by side."""
    key = jax.random.key(int(rng.integers(1 << 30)))
    state, ts = jax.jit(env.reset)(key, jnp.int32(idx))
    step = env.jit_step
    expert = jax.jit(env.expert_action)
    assert env.observation_text(ts) == env.render_text(state)
    inv: dict[str, int] = {}
    goal = env.items[int(state.goal)]
    for _ in range(n_steps):
        legal = np.nonzero(np.asarray(ts.legal_actions))[0]
        u = rng.random()
        if u < 0.4:
            a = int(expert(state))
        elif u < 0.5:
            a = 0
        else:
            a = int(rng.choice(legal))
        was_done = bool(state.done)
        state, ts = step(state, jnp.int32(a))
        if was_done:
            assert float(ts.reward) == 0.0 and bool(ts.done)
            break
        text, reward, success = tr.reference_step(
            env.book, inv, goal, env.action_text(a), env.agentgym_compat
        )
        assert env.render_text(state) == text, env.action_text(a)
        assert env.observation_text(ts) == text
        assert float(ts.reward) == reward and bool(state.success) == success
        assert env.inventory_dict(state) == inv and list(env.inventory_dict(state)) == list(inv)
        if success:
            assert bool(ts.done) and not bool(ts.truncated)


@pytest.mark.parametrize("compat", [False, True])
def test_device_step_equals_reference_semantics(env, env_compat, compat):
    e = env_compat if compat else env
    rng = np.random.default_rng(1 + compat)
    for _ in range(5):
        _rollout_reference(e, rng, int(rng.integers(len(e.goals))), 10)


def test_goal_table_and_instances(env):
    goals = env.book.goal_table()
    depths = [d for _, d in goals]
    assert depths == sorted(depths) and min(depths) >= 1
    assert env.goals == goals and len(goals) == 55
    # stable sort over the file order: ties keep the first-recipe order of the files
    first_seen = list(env.book.by_item)
    for d in set(depths):
        tied = [g for g, dd in goals if dd == d]
        assert tied == sorted(tied, key=first_seen.index)
    state, _ = jax.jit(env.reset)(jax.random.key(0), jnp.int32(len(goals) + 3))  # wraps
    assert env.items[int(state.goal)] == goals[3][0]
    lines = [env.lines[c] for c in np.asarray(state.commands)[: int(state.num_commands)]]
    tree = {r.line for r in env.book.tree(goals[3][0])}
    assert tree <= set(lines) and len(set(lines) - tree) <= 10
    assert set(lines) - tree <= set(env.book.distractor_pool(goals[3][0]))


def test_recipe_quirks_own_set(env):
    book = env.book
    assert book.is_tag("minecraft:planks") and book.tag_members("minecraft:planks") == [
        "minecraft:birch_planks",  # sorted file names: first-seen order
        "minecraft:oak_planks",
        "minecraft:spruce_planks",
    ]
    # single-ingredient *_block recipe dropped; smelting ignored; alternatives keep the first
    assert "minecraft:iron_ingot" not in book.by_item and book.is_base("minecraft:iron_ingot")
    assert "minecraft:glass" not in book.items
    assert [i.ref.item_id for i in book.by_item["minecraft:torch"][0].inputs] == [
        "minecraft:stick",
        "minecraft:coal",
    ]
    assert book.by_item["minecraft:book"][0].line == "craft 1 book using 3 paper, 1 leather"


def test_text_actions_and_messages(env, env_compat):
    s, _ = env.instance_from("stick", ["craft 4 stick using 2 planks"])
    for e in (env, env_compat):
        with pytest.raises(InvalidAction, match="^Could not execute jump$"):
            e.action_from_text("jump")
        with pytest.raises(InvalidAction, match="^Could not find stick$"):
            e.action_from_text("get 1 stick")
        with pytest.raises(InvalidAction, match="^Wrong item format: planks$"):
            e.action_from_text("craft stick using planks")
        with pytest.raises(ActionOutsideTable):
            e.action_from_text("get 65 oak log")
        assert e.action_text(e.action_from_text("get 2 oak log")) == "get 2 oak log"
        assert e.action_from_text("inventory please") == 0  # upstream's regex is a prefix match
    with pytest.raises(ActionOutsideTable):
        env_compat.action_from_text("get 1 oak_log")  # compat echoes the text: not a table action
    assert env.action_text(env.action_from_text("get 1 oak_log")) == "get 1 oak log"
    with pytest.raises(InvalidAction, match="^Could not find enough items to craft stick$"):
        env.action_from_text("craft 4 stick using 3 planks")  # a tag: never in the inventory
    with pytest.raises(InvalidAction, match="craft None$"):
        env_compat.action_from_text("craft 4 planks using 3 planks")
    listed = env.action_from_text("craft 4 stick using 2 planks")  # a listed line is in the table
    _, ts = env.jit_step(s, jnp.int32(listed))
    assert env.observation_text(ts) == "Could not find enough items to craft stick"
    with pytest.raises(ValueError, match="outside"):
        env.action_text(env.num_actions)

    def play(e, texts):
        state, _ = e.instance_from("stick", ["craft 4 stick using 2 planks"])
        out = []
        for t in texts:
            state, ts, text = e.step_text(state, t)
            out.append(text)
        return state, out

    texts = [
        "get 1 oak log",
        "craft 3 oak planks using 1 oak log",
        "craft 4 stick using 3 oak planks",
    ]
    _, out = play(env, texts)
    assert out == [
        "Got 1 oak log",
        "Could not find a valid recipe for 3 oak planks",
        "Could not find enough items to craft stick",
    ]
    state, out = play(env_compat, [*texts, "craft 4 stick using 2 oak planks"])
    assert out[:2] == ["Got 1 oak log", "Crafted 4 minecraft:oak_planks"]  # output count unchecked
    assert out[2] == (
        "Could not find a valid recipe for ItemTagWithCount(item_tag=ItemTag(tag=None, "
        "item_id='minecraft:stick'), count=4)"
    )
    assert out[3] == "Crafted 4 minecraft:stick" and bool(state.success)
    with pytest.raises(ValueError, match="episode is over"):
        env_compat.step_text(state, "inventory")
    assert env_compat.inventory_text(state) == "Inventory: [oak planks] (2) [stick] (4) "
    _, out = play(env_compat, ["get 0 oak log", "inventory"])
    assert out == ["Got 0 oak log", "Inventory: [oak log] (0) "]
    _, out = play(env, ["get 0 oak log", "inventory"])
    assert out == ["Could not get 0 oak log", "Inventory: You are not carrying anything."]
    with pytest.raises(ValueError, match="unknown goal"):
        env.instance_from("diamond sword", [])
    with pytest.raises(ValueError, match="not recipe lines"):
        env.instance_from("stick", ["craft 1 diamond using 9 dirt"])


def test_jit_vmap_no_retrace(env):
    n = 6
    keys = jax.random.split(jax.random.key(3), n)
    idx = jnp.arange(n, dtype=jnp.int32) * 7
    step = jax.jit(chex.assert_max_traces(env.step, n=1))
    reset = jax.jit(chex.assert_max_traces(env.reset, n=1))
    vreset, vstep = jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step))
    vexpert = jax.jit(jax.vmap(env.expert_action))
    bstate, bts = vreset(keys, idx)
    singles = [reset(keys[i], idx[i]) for i in range(n)]
    for _ in range(4):
        acts = vexpert(bstate)
        bstate, bts = vstep(bstate, acts)
        singles = [step(s, acts[i]) for i, (s, _) in enumerate(singles)]
        for i, (s, ts) in enumerate(singles):
            chex.assert_trees_all_equal(jax.tree.map(lambda x, i=i: x[i], (bstate, bts)), (s, ts))
    eager_state, eager_ts = env.step(singles[0][0], jnp.int32(0))
    chex.assert_trees_all_equal((eager_state, eager_ts), step(singles[0][0], jnp.int32(0)))


def test_after_done_and_round_limit(env):
    state, ts = env.instance_from("oak planks", ["craft 4 oak planks using 1 oak log"])
    a = env.action_from_text("get 1 oak log")
    for _ in range(env.max_rounds):
        state, ts = env.jit_step(state, jnp.int32(a))
    assert bool(ts.done) and bool(ts.truncated) and int(ts.round) == env.max_rounds
    again, ts2 = env.jit_step(
        state, jnp.int32(env.action_from_text("craft 4 oak planks using 1 oak log"))
    )
    chex.assert_trees_all_equal(again, state)
    assert float(ts2.reward) == 0.0


def test_expert_solves_own_recipes(env):
    def episode(key, idx):
        s, ts = env.reset(key, idx)

        def body(c, _):
            s, _ = c
            return env.step(s, env.expert_action(s)), None

        (s, _), _ = jax.lax.scan(body, (s, ts), None, length=env.max_rounds)
        return s.success

    n = 2 * len(env.goals)
    ok = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(5), n), jnp.arange(n))
    assert bool(ok.all()), [env.goals[i % len(env.goals)] for i in np.nonzero(~np.asarray(ok))[0]]
    state, _ = env.reset(jax.random.key(0), jnp.int32(len(env.goals) - 1))
    a = int(env.expert_action(state))
    assert "base material" in env.expert_thought(state, a) or "craft" in env.expert_thought(
        state, a
    )


def test_bad_recipe_dirs(tmp_path):
    with pytest.raises(tr.RecipeError, match="not found"):
        TextCraft(str(tmp_path / "missing"))
    with pytest.raises(tr.RecipeError, match="no \\*.json"):
        TextCraft(str(tmp_path))
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(tr.RecipeError, match="a.json: cannot read recipe JSON"):
        TextCraft(str(tmp_path))
    (tmp_path / "a.json").write_text(json.dumps({"type": "minecraft:crafting_shaped", "key": {}}))
    with pytest.raises(tr.RecipeError, match="a.json: missing field 'pattern'"):
        TextCraft(str(tmp_path))
    recipe = {"type": "minecraft:crafting_shapeless", "ingredients": [{"x": 1}], "result": "m:y"}
    (tmp_path / "a.json").write_text(json.dumps(recipe))
    with pytest.raises(tr.RecipeError, match="neither 'item' nor 'tag'"):
        TextCraft(str(tmp_path))
    recipe["ingredients"] = [{"item": "minecraft:x"}]
    (tmp_path / "a.json").write_text(json.dumps(recipe))
    with pytest.raises(tr.RecipeError, match="file_order does not match"):
        TextCraft(str(tmp_path), file_order=["a.json", "b.json"])
    with pytest.raises(ValueError, match="max_rounds"):
        TextCraft(max_rounds=0)
    assert isinstance(make("textcraft"), TextCraft)


@need_data
def test_goal_tables_match_upstream():
    goals = json.loads((DATA / "textcraft_goals.json").read_text())
    recorded = tr.RecipeBook(
        str(DATA / "textcraft_recipes"), goals["recipe_file_order_of_recorded_run"]
    )
    assert [list(g) for g in recorded.goal_table()] == goals["goals_listdir_order_of_recorded_run"]
    by_name = tr.RecipeBook(str(DATA / "textcraft_recipes"))
    assert [list(g) for g in by_name.goal_table()] == goals["goals_sorted_filename_order"]
    assert by_name.file_order == sorted(os.listdir(DATA / "textcraft_recipes"))


@need_data
def test_transcript_parity(upstream):
    """All 50 recorded episodes: reset from (goal, commands), then every step byte-identical."""
    env, goals = upstream
    table = env.book.goal_table()
    records = [
        json.loads(x) for x in (DATA / "textcraft_transcripts.jsonl").read_text().splitlines()
    ]
    n_steps = n_device = 0
    for r in records:
        p = r["payload"]
        if r["step"] == 0:
            assert table[r["idx"] % len(table)][0] == r["goal"]
            assert sorted({x.line for x in env.book.tree(r["goal"])}) == r["goal_recipes"]
            state, ts = env.instance_from(r["goal"], r["commands"])
            assert env.render_text(state) == p["observation"] == env.observation_text(ts)
            continue
        n_steps += 1
        if bool(state.done):  # upstream serves a step after success; the env contract freezes
            assert r["action"] == "inventory" and env.inventory_text(state) == p["observation"]
            continue
        try:
            env.action_from_text(r["action"])
            n_device += 1
        except InvalidAction:
            pass
        state, ts, text = env.step_text(state, r["action"])
        assert text == p["observation"] == env.observation_text(ts), r["action"]
        assert float(ts.reward) == p["reward"] and bool(ts.done) == p["done"]
        assert list(env.inventory_dict(state).items()) == list(r["inventory"].items())
    assert n_steps == 487 and n_device >= 300


@pytest.mark.slow
@need_data
def test_expert_upstream_recipes():
    env = TextCraft(str(DATA / "textcraft_recipes"))

    def episode(key, idx):
        s, ts = env.reset(key, idx)

        def body(c, _):
            s, _ = c
            return env.step(s, env.expert_action(s)), None

        (s, _), _ = jax.lax.scan(body, (s, ts), None, length=env.max_rounds)
        return s.success

    n = len(env.goals)
    ok = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(0), n), jnp.arange(n))
    assert float(ok.mean()) >= 0.95  # measured 0.971 within 20 rounds (banners need > 20 steps)


def test_random_free_text_host_path(env_compat):
    """step_text on arbitrary texts equals the reference on a copied inventory."""
    e = env_compat
    rng = random.Random(0)
    state, _ = e.reset(jax.random.key(1), jnp.int32(30))
    goal = e.items[int(state.goal)]
    inv: dict[str, int] = {}
    names = ["oak log", "oak_log", "oak planks", "stick", "planks", "string", "paper"]
    for _ in range(15):
        if bool(state.done):
            break
        n = rng.randint(0, 70)
        text = rng.choice(
            [
                f"get {n} {rng.choice(names)}",
                f"craft {rng.randint(1, 5)} {rng.choice(names)} using {n % 5} {rng.choice(names)}",
                "inventory",
                "look around",
            ]
        )
        state, ts, out = e.step_text(state, text)
        want, reward, _ = tr.reference_step(e.book, inv, goal, text, True)
        assert out == want and e.observation_text(ts) == want and float(ts.reward) == reward
        assert list(e.inventory_dict(state).items()) == list(inv.items())


def _reference_step_obs(env, state):
    """The word-level observation builder that `TextCraft._step_tokens` replaced (kept verbatim
    as the reference): message or inventory word ids (items ordered by stamp comparisons),
    then `expand_words` (a per-word gather of pieces and a per-token scatter)."""
    wmax = env.max_obs_words
    present = state.stamp >= 0
    earlier = present[None, :] & (state.stamp[None, :] < state.stamp[:, None])
    place = jnp.where(present, jnp.sum(earlier, axis=1), -1)
    slots = jnp.arange(env.max_inv_items)
    order = jnp.argmax(place[None, :] == slots[:, None], axis=1)
    shown = slots < jnp.sum(present)
    br, bl = jnp.asarray(env.bracket_words)[order], jnp.asarray(env.bracket_len)[order]
    count = env.w_count0 + jnp.clip(state.inventory[order], 0, env.count_cap)
    rows = jnp.where(jnp.arange(br.shape[1])[None, :] == bl[:, None], count[:, None], br)
    flat, n_flat = _pack(rows, jnp.where(shown, bl + 1, 0), wmax)
    anyp = present.any()
    nothing = jnp.asarray(env.w_nothing)
    inv_ids, inv_n, _ = concat_segments(
        [
            (jnp.array([env.w_inventory]), 1),
            (nothing, jnp.where(anyp, 0, nothing.shape[0])),
            (flat, n_flat),
            (jnp.array([env.w_blank]), anyp.astype(jnp.int32)),
        ],
        wmax,
    )
    a = jnp.maximum(state.last_action, 0)
    ok = state.last_pass
    msg = jnp.where(ok, jnp.asarray(env.act_pass_msg)[a], jnp.asarray(env.act_fail_msg)[a])
    msg_n = jnp.where(ok, jnp.asarray(env.act_pass_len)[a], jnp.asarray(env.act_fail_len)[a])
    msg = jnp.zeros((wmax,), jnp.int32).at[: msg.shape[0]].set(msg)
    is_inv = jnp.asarray(env.act_kind)[a] == INVENTORY
    ids, n = jnp.where(is_inv, inv_ids, msg), jnp.where(is_inv, inv_n, msg_n)
    tokens, mask, _ = expand_words(ids, n, env.word_table, env.max_obs_len)
    return tokens, mask


@pytest.mark.parametrize("compat", [False, True])
def test_step_tokens_equal_word_level_reference(env, env_compat, compat):
    """A/B: every stepped observation built in tokens (`_step_tokens`) equals the word-level
    builder it replaced, and the carried legal mask equals the listed-lines mask, over a batch
    of games mixing expert, random legal and inventory actions (items consumed by crafts leave
    stamp gaps; an empty inventory shows "not carrying anything")."""
    e = env_compat if compat else env
    batch = 32
    state, ts = jax.jit(jax.vmap(e.reset))(
        jax.random.split(jax.random.key(7 + compat), batch), jnp.arange(batch, dtype=jnp.int32)
    )
    step, expert = jax.jit(jax.vmap(e.step)), jax.jit(jax.vmap(e.expert_action))
    ref = jax.jit(jax.vmap(lambda s: _reference_step_obs(e, s)))
    rng = np.random.default_rng(3 + compat)
    kinds = np.asarray(e.act_kind)
    lines = np.asarray(e.act_line)
    seen = {"inventory": 0, "empty": 0, "gap": 0, "fail": 0}
    for t in range(e.max_rounds):
        legal = np.asarray(ts.legal_actions)
        cmds, n = np.asarray(state.commands), np.asarray(state.num_commands)
        listed = (lines[None, :, None] == cmds[:, None, :]) & (
            np.arange(cmds.shape[1]) < n[:, None]
        )[:, None, :]
        np.testing.assert_array_equal(legal, (kinds != CRAFT)[None] | listed.any(2))
        u = rng.random(batch)
        rand = np.array([rng.choice(np.flatnonzero(m)) for m in legal])
        craft = np.array([rng.choice(np.flatnonzero(m & (kinds == CRAFT))) for m in legal])
        a = np.asarray(expert(state))
        a = np.where(u < 0.4, a, np.where(u < 0.6, 0, np.where(u < 0.8, craft, rand)))
        if t == 0:
            a[:4] = 0  # inventory before anything is held
        state, ts = step(state, jnp.asarray(a, jnp.int32))
        tok, mask = ref(state)
        np.testing.assert_array_equal(np.asarray(ts.obs_tokens), np.asarray(tok))
        np.testing.assert_array_equal(np.asarray(ts.obs_mask), np.asarray(mask))
        inv = np.asarray(state.last_action) == 0
        held = (np.asarray(state.stamp) >= 0).sum(1)
        seen["inventory"] += int(inv.sum())
        seen["empty"] += int((inv & (held == 0)).sum())
        seen["gap"] += int((inv & (held > 0) & (held < np.asarray(state.next_stamp))).sum())
        seen["fail"] += int((~np.asarray(state.last_pass)).sum())
        assert not (np.asarray(state.last_action) == RESET_OBS).any()
    assert min(seen.values()) > 0, seen
