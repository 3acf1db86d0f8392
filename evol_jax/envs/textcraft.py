"""TextCraft (AgentGym ``agentenv-textcraft``): Minecraft crafting in text, on device.

>>> env = TextCraft()                                   # the package's own small recipe set
>>> state, ts = env.reset(jax.random.key(0), jnp.int32(3))
>>> text = env.render_text(state)  # "Crafting commands:\\n...\\n\\nGoal: craft X."
>>> state, ts = env.step(state, env.action_from_text("inventory"))

Instances: ``idx -> goal`` is upstream's goal table (`RecipeBook.goal_table`: items with a recipe,
stably sorted by crafting depth over the recipe-file order). The observation lists every recipe of
the goal's tree plus up to ``max_distractors`` distractor recipes (recipes using an ingredient of
the tree), in a random order drawn from ``key``. `instance_from` builds the state for an explicit
``(goal, commands)`` pair (e.g. from a recorded reset).

Actions (int32 ids, fixed at construction): ``0`` = ``inventory``; ``get <n> <item>`` for every
base item and ``n`` in ``1..max_get``; ``craft`` commands: every recipe line as listed (tag
ingredients such as ``planks`` included; those always fail, as upstream) and every instantiation of
its tag ingredients with member items (``craft 4 stick using 2 oak planks``). State: inventory
counts over all items plus insertion stamps (the inventory text lists items in insertion order).
Step = gathers/scatters. The reset observation is built as word ids and expanded to tokens on
device; a stepped state's observation (message or inventory) is built directly in tokens from
per-action / per-item / per-count token tables (`TextCraft._step_tokens`). The legal-action mask
depends on the listed recipe lines only, so the state carries it (``legal``).

Text outside the table: `action_from_text` raises `InvalidAction` with upstream's message when the
text fails whatever the state ("Could not execute jump", "Could not find stick", "Wrong item format:
planks"), and `ActionOutsideTable` (a subclass) when upstream would accept it but no table action
has the same effect (arbitrary counts, ``get 1 oak_log``, reordered ingredients).
`step_text(state, text)` is the host path that serves *any* text with upstream's semantics: table
texts go through the device step, the rest through `textcraft_recipes.reference_step`.

``agentgym_compat`` (default False = corrected):

* ``Crafted 4 minecraft:oak_planks`` (compat) vs ``Crafted 4 oak planks``; likewise the item in
  "Could not find enough items to craft ..." (compat prints the id, or ``None`` for a tag).
* ``Got 1 oak_log`` echoes the user's item text (compat) vs the canonical name.
* Output counts of a craft command are not checked (compat: ``craft 3 oak planks using 1 oak logs``
  crafts 4) vs an explicit wrong output count fails.
* A wrong ingredient count reports ``ItemTagWithCount(item_tag=ItemTag(tag=None,
  item_id='minecraft:x'), count=N)`` (compat) vs ``Could not find a valid recipe for N x``.
* ``get 0 x`` adds a zero-count entry shown by ``inventory`` (compat) vs "Could not get 0 x".

In both modes (data, not code): a tag input none of whose members has a recipe becomes a plain item
(upstream recipes: ``oak logs``; ``get 1 oak log`` succeeds but does not satisfy the planks recipe).
Not reproduced: upstream's ``traverse_recipe_tree`` appends sub-tree recipes to the shared recipe
lists on every reset, so on a long-running server crafting ``X`` with the ingredients of one of its
sub-recipes can yield that sub-recipe's output; this depends on the server's reset history (no
recorded step shows it). The distractors are a uniform sample of the distractor pool (upstream
samples up to 10 uses per ingredient first, then 10 of their union).

Episode end: reward 1 and ``done`` when the goal item is obtained; ``truncated`` after
``max_rounds`` steps (AgentGym's client limit, 20). Upstream's server keeps serving after
success; here further steps leave the state unchanged (env contract). Inventory counts above
``count_cap`` render as ``count_cap`` in the device tokens (never reached within ``max_rounds``
with table actions).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evol_jax.envs import textcraft_recipes as tr
from evol_jax.envs.base import Env, InvalidAction, TimeStep, register
from evol_jax.text import PAD_ID, TextCodec, concat_segments, expand_words

DEFAULT_RECIPES = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "assets", "textcraft_recipes"
)
INVENTORY, GET, CRAFT = 0, 1, 2
RESET_OBS, EXTERNAL_OBS = -1, -2


class ActionOutsideTable(InvalidAction):
    """Upstream would accept this text, but no action of the finite table has the same effect."""


@flax.struct.dataclass
class TextCraftState:
    goal: jax.Array  # int32 [], item index
    commands: jax.Array  # int32 [max_commands], recipe-line ids in observation order
    num_commands: jax.Array  # int32 []
    inventory: jax.Array  # int32 [num_items], counts
    stamp: jax.Array  # int32 [num_items], insertion stamp, -1 = not in the inventory dict
    next_stamp: jax.Array  # int32 []
    round: jax.Array  # int32 []
    done: jax.Array  # bool []
    success: jax.Array  # bool []
    last_action: jax.Array  # int32 [], RESET_OBS / EXTERNAL_OBS / action id shown by the obs
    last_pass: jax.Array  # bool [], the last action's preconditions held
    # bool [num_actions]: the legal-action mask, a function of ``commands`` only (fixed for the
    # episode), so it is built once by `_initial` and passed through by `step`
    legal: jax.Array


class _Words:
    def __init__(self):
        self.words: list[str] = []
        self.index: dict[str, int] = {}

    def id(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def ids(self, text: str) -> list[int]:
        return [self.id(w) for w in text.split(" ")]


def _pad(rows: Sequence[Sequence[int]], fill: int = 0, width: int | None = None):
    width = max([1, *(len(r) for r in rows)]) if width is None else width
    out = np.full((len(rows), width), fill, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], np.int32)


def _pack(rows: jax.Array, lens: jax.Array, max_words: int) -> tuple[jax.Array, jax.Array]:
    """Rows [R, W] with lengths [R] -> one flat buffer [max_words] and its length."""
    ends = jnp.cumsum(lens)
    starts = ends - lens
    w = rows.shape[1]
    pos = starts[:, None] + jnp.arange(w)[None, :]
    pos = jnp.where(jnp.arange(w)[None, :] < lens[:, None], pos, max_words)
    out = jnp.zeros((max_words,), jnp.int32).at[pos.reshape(-1)].set(rows.reshape(-1), mode="drop")
    return out, jnp.minimum(ends[-1], max_words)


class TextCraft(Env):
    """TextCraft environment (see the module docstring).

    Args:
      recipe_dir: directory of recipe JSONs; default the package's own set.
      file_order: recipe-file read order (default sorted names); it fixes the goal table.
      agentgym_compat: reproduce upstream's quirks (module docstring).
      max_rounds: steps per episode (AgentGym's client: 20).
      max_get: ``get`` actions exist for ``n`` in ``1..max_get``.
      max_distractors: distractor recipes per instance (upstream: 10).
      codec: the environment tokenizer (default the shipped one).
    """

    name = "textcraft"

    def __init__(
        self,
        recipe_dir: str | None = None,
        file_order: Sequence[str] | None = None,
        agentgym_compat: bool = False,
        max_rounds: int = 20,
        max_get: int = 64,
        max_distractors: int = 10,
        codec: TextCodec | None = None,
    ):
        if max_rounds < 1 or max_get < 1 or max_distractors < 0:
            raise ValueError(
                f"TextCraft: need max_rounds >= 1, max_get >= 1, max_distractors >= 0; got "
                f"{max_rounds}, {max_get}, {max_distractors}"
            )
        self.book = tr.RecipeBook(recipe_dir or DEFAULT_RECIPES, file_order)
        self.agentgym_compat = bool(agentgym_compat)
        self.max_rounds = int(max_rounds)
        self.max_get = int(max_get)
        self.max_distractors = int(max_distractors)
        self.codec = codec or TextCodec()
        book = self.book
        self.items = sorted(book.items)
        self.item_index = {it: i for i, it in enumerate(self.items)}
        self.goals = book.goal_table()
        if not self.goals:
            raise tr.RecipeError(f"TextCraft: no craftable goal in {book.recipe_dir}")
        recipes = [r for rs in book.by_item.values() for r in rs]
        self.lines = sorted({r.line for r in recipes})
        self.line_index = {line: i for i, line in enumerate(self.lines)}
        words = _Words()
        self._words = words
        self._build_actions(recipes, words)
        self._build_instances()
        self._build_text(words)
        self._build_expert()
        self.word_table = self.codec.word_table(words.words)
        self.words = words.words
        self._compute_lengths()
        self._build_step_tokens()

    # -- construction --------------------------------------------------------------------------
    def _build_actions(self, recipes, words: _Words):
        book, compat = self.book, self.agentgym_compat
        texts, kind, item, amount, line, ins, passed, pass_msg, fail_msg = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        texts.append("inventory")
        kind.append(INVENTORY), item.append(0), amount.append(0), line.append(-1), ins.append([])
        passed.append(True), pass_msg.append([]), fail_msg.append([])
        self.get_base = np.full((len(self.items),), -1, np.int32)
        for it in self.items:
            if not book.is_base(it):
                continue
            self.get_base[self.item_index[it]] = len(texts)
            name = tr.item_id_to_str(it)
            for n in range(1, self.max_get + 1):
                texts.append(f"get {n} {name}")
                kind.append(GET), item.append(self.item_index[it]), amount.append(n)
                line.append(-1), ins.append([]), passed.append(True)
                pass_msg.append(words.ids(tr.got_text(it, name, n, compat))), fail_msg.append([])
        seen = set(texts)
        for r in recipes:
            variants = [r.line]
            tag_slots = [k for k, i in enumerate(r.inputs) if i.ref.item_id is None]
            members = [book.tag_members(r.inputs[k].ref.tag) for k in tag_slots]
            for choice in itertools.product(*members):
                names = [tr.item_id_to_str(i.ref.name) for i in r.inputs]
                for k, m in zip(tag_slots, choice, strict=True):
                    names[k] = tr.item_id_to_str(m)
                ing = ", ".join(f"{i.count} {n}" for i, n in zip(r.inputs, names, strict=True))
                out = tr.item_id_to_str(r.output.ref.name)
                variants.append(f"craft {r.output.count} {out} using {ing}")
            for text in variants:
                if text in seen:
                    continue
                seen.add(text)
                _, out_ref, out_count, explicit, inputs = tr.parse_action(book, text)
                target = book.match(out_ref.item_id, inputs)
                ok = target is not None and (compat or target.output.count == out_count)
                need = [
                    (self.item_index.get(i.ref.item_id, -1) if i.ref.item_id else -1, i.count)
                    for i in inputs
                ]
                texts.append(text)
                kind.append(CRAFT), line.append(self.line_index[r.line]), ins.append(need)
                if ok:
                    out_id = target.output.ref.item_id
                    item.append(self.item_index[out_id]), amount.append(target.output.count)
                    pass_msg.append(words.ids(tr.crafted_text(out_id, target.output.count, compat)))
                else:
                    item.append(0), amount.append(0)
                    pass_msg.append(words.ids(tr.no_recipe_text(out_ref, out_count, compat)))
                passed.append(ok and all(i >= 0 for i, _ in need))
                fail_msg.append(words.ids(tr.not_enough_text(out_ref, compat)))
        self.action_texts = texts
        self.num_actions = len(texts)
        self.act_kind = np.array(kind, np.int32)
        self.act_item = np.array(item, np.int32)
        self.act_amount = np.array(amount, np.int32)
        self.act_line = np.array(line, np.int32)
        self.act_ok = np.array([p for p in passed], bool)  # craft succeeds once inputs are held
        k = max(1, max(len(x) for x in ins))
        self.act_in_item = np.full((self.num_actions, k), -1, np.int32)
        self.act_in_count = np.zeros((self.num_actions, k), np.int32)
        for a, need in enumerate(ins):
            for j, (i, c) in enumerate(need):
                self.act_in_item[a, j], self.act_in_count[a, j] = i, c
        self.act_num_in = np.array([len(x) for x in ins], np.int32)
        width = max(len(m) for m in pass_msg + fail_msg)
        self.act_pass_msg, self.act_pass_len = _pad(pass_msg, width=width)
        self.act_fail_msg, self.act_fail_len = _pad(fail_msg, width=width)
        self._action_ids = {t: a for a, t in enumerate(texts)}
        self._action_keys = {}
        for a, t in enumerate(texts):
            self._action_keys.setdefault(self._key(tr.parse_action(book, t)), a)

    def _key(self, parsed):
        if parsed[0] == "get":
            ref = self.book.ref_from_text(parsed[2])
            who = parsed[2] if self.agentgym_compat else ref.item_id
            return ("get", parsed[1], who)
        if parsed[0] == "craft":
            _, out_ref, count, explicit, inputs = parsed
            return ("craft", out_ref, count, explicit, tuple((i.ref, i.count) for i in inputs))
        return ("inventory",)

    def _build_instances(self):
        book = self.book
        trees = [[self.line_index[r.line] for r in book.tree(g)] for g, _ in self.goals]
        trees = [sorted(set(t)) for t in trees]
        pools = [[self.line_index[x] for x in book.distractor_pool(g)] for g, _ in self.goals]
        self.goal_item = np.array([self.item_index[g] for g, _ in self.goals], np.int32)
        self.tree_lines, self.tree_len = _pad(trees)
        self.pool_lines, self.pool_len = _pad(pools)
        self.max_commands = int(
            max(
                t + min(p, self.max_distractors)
                for t, p in zip(self.tree_len, self.pool_len, strict=True)
            )
        )

    def _build_text(self, words: _Words):
        # Recipe lines: row = [joiner, body...]; the joiner glues the previous line's last word.
        self.w_crafting = words.id("Crafting")
        self.w_first = words.id("commands:\ncraft")
        self.w_empty_commands = words.id("commands:\n\n\nGoal:")
        self.w_craft = words.id("craft")
        bodies, join_next, join_goal = [], [], []
        for line in self.lines:
            ws = line.split(" ")
            bodies.append([words.id(w) for w in ws[1:-1]])
            join_next.append(words.id(ws[-1] + "\ncraft"))
            join_goal.append(words.id(ws[-1] + "\n\nGoal:"))
        self.line_body, self.line_body_len = _pad(bodies)
        self.line_join_next = np.array(join_next, np.int32)
        self.line_join_goal = np.array(join_goal, np.int32)
        goal_words, brackets = [], []
        for it in self.items:
            ws = tr.item_id_to_str(it).split(" ")
            goal_words.append([words.id(w) for w in ws[:-1]] + [words.id(ws[-1] + ".")])
            br = list(ws)
            br[0], br[-1] = "[" + br[0], br[-1] + "]"
            if len(ws) == 1:
                br = ["[" + ws[0] + "]"]
            brackets.append([words.id(w) for w in br])
        self.goal_words, self.goal_words_len = _pad(goal_words)
        self.bracket_words, self.bracket_len = _pad(
            brackets, width=max(len(b) for b in brackets) + 1
        )
        self.w_inventory = words.id("Inventory:")
        self.w_nothing = np.array(words.ids("You are not carrying anything."), np.int32)
        self.w_blank = words.id("")
        top = int(max(self.act_amount.max(), self.max_get))
        self.count_cap = self.max_rounds * top + 16
        self.w_count0 = len(words.words)
        for n in range(self.count_cap + 1):
            words.id(f"({n})")
        assert (
            words.index["(0)"] == self.w_count0
            and len(words.words) == self.w_count0 + self.count_cap + 1
        )
        self.max_inv_items = min(len(self.items), self.max_rounds + 1)

    def _compute_lengths(self):
        tok = np.asarray(self.word_table.lengths)
        body_tok = np.array(
            [tok[b[:n]].sum() for b, n in zip(self.line_body, self.line_body_len, strict=True)]
        )
        row_tok = body_tok + max(tok[self.line_join_next].max(), tok[self.w_first])
        line_words = self.line_body_len + 1
        reset_tok, reset_words = 0, 0
        for g in range(len(self.goals)):
            t = self.tree_lines[g, : self.tree_len[g]]
            p = self.pool_lines[g, : self.pool_len[g]]
            d = self.max_distractors
            reset_tok = max(reset_tok, row_tok[t].sum() + np.sort(row_tok[p])[::-1][:d].sum())
            reset_words = max(
                reset_words, line_words[t].sum() + np.sort(line_words[p])[::-1][:d].sum()
            )
        self.max_line_tokens = int(row_tok.max())
        self.max_line_words = int(line_words.max())
        goal_tok = max(
            tok[g[:n]].sum() for g, n in zip(self.goal_words, self.goal_words_len, strict=True)
        )
        tail_tok = tok[self.line_join_goal].max() + tok[self.w_empty_commands] + tok[self.w_craft]
        reset_tok += tok[self.w_crafting] + tail_tok + goal_tok
        reset_words += 3 + self.goal_words.shape[1]
        br_tok = max(
            tok[b[:n]].sum() for b, n in zip(self.bracket_words, self.bracket_len, strict=True)
        )
        cnt_tok = tok[self.w_count0 : self.w_count0 + self.count_cap + 1].max()
        inv_tok = tok[self.w_inventory] + tok[self.w_blank] + tok[self.w_nothing].sum()
        inv_tok += self.max_inv_items * (br_tok + cnt_tok)
        inv_words = 2 + len(self.w_nothing) + self.max_inv_items * self.bracket_words.shape[1]
        msg_tok = max(
            max(
                tok[m[:n]].sum() for m, n in zip(self.act_pass_msg, self.act_pass_len, strict=True)
            ),
            max(
                tok[m[:n]].sum() for m, n in zip(self.act_fail_msg, self.act_fail_len, strict=True)
            ),
        )
        self.max_obs_words = int(
            max(reset_words, inv_words, self.act_pass_msg.shape[1], self.act_fail_msg.shape[1])
        )
        self.max_obs_len = int(max(reset_tok, inv_tok, msg_tok))

    def _build_step_tokens(self):
        """Token tables for the observation after a step (`_step_tokens`).

        An observation after a step is ``prefix + S slots + suffix`` in tokens: the prefix is the
        action's message (pass or fail), ``Inventory:`` or ``Inventory: You are not carrying
        anything.``; slot ``s`` is the inventory item with insertion stamp ``s`` (``[item]
        (count)``, empty if no present item has that stamp); the suffix is the final ``""`` word
        of a non-empty inventory. Stamps of reachable states satisfy ``stamp < next_stamp <=
        round <= max_rounds`` (one new entry per step at most; `step_text` renumbers from 0), so
        ``S = max_rounds`` slots hold every present item, in stamp order.
        """
        pieces = np.asarray(self.word_table.pieces)
        lengths = np.asarray(self.word_table.lengths)

        def tokens(ids) -> list[int]:
            return [int(t) for w in ids for t in pieces[w, : lengths[w]]]

        pre = [tokens(m[:n]) for m, n in zip(self.act_pass_msg, self.act_pass_len, strict=True)]
        pre += [tokens(m[:n]) for m, n in zip(self.act_fail_msg, self.act_fail_len, strict=True)]
        self.pre_inv = len(pre)  # "Inventory:" (some items); pre_inv + 1: nothing carried
        pre.append(tokens([self.w_inventory]))
        pre.append(tokens([self.w_inventory, *self.w_nothing]))
        self.pre_tok, self.pre_len = _pad(pre)
        items = [tokens(b[:n]) for b, n in zip(self.bracket_words, self.bracket_len, strict=True)]
        self.item_tok, self.item_tok_len = _pad(items)
        counts = [tokens([self.w_count0 + c]) for c in range(self.count_cap + 1)]
        count_tok, self.count_tok_len = _pad(counts)
        suffix = tokens([self.w_blank])  # one "▁" with the shipped codec; any length works
        wi, wc = self.item_tok.shape[1], count_tok.shape[1]
        # window width of every piece (prefix, slot, suffix)
        self.slot_width = max(wi + wc, self.pre_tok.shape[1], len(suffix), 1)
        # count_at[c, k] = "(c)"'s tokens placed after a k-token item name, in a slot-wide row
        self.count_at = np.zeros((self.count_cap + 1, wi + 1, self.slot_width), np.int32)
        for k in range(wi + 1):
            self.count_at[:, k, k : k + wc] = count_tok
        self.suffix_tok, self.suffix_len = _pad([suffix], width=self.slot_width)
        self.suffix_tok, self.suffix_len = self.suffix_tok[0], int(self.suffix_len[0])
        if PAD_ID != 0:  # pieces are zero past their lengths and added into a PAD buffer
            raise AssertionError(f"TextCraft: step tokens assume PAD_ID == 0, got {PAD_ID}")
        self.num_slots = self.max_rounds
        longest = int(
            max(
                self.pre_len.max(),
                self.pre_len[self.pre_inv]
                + min(len(self.items), self.num_slots) * (wi + wc)
                + self.suffix_len,
            )
        )
        if longest > self.max_obs_len:
            raise AssertionError(
                f"TextCraft: a step observation can take {longest} tokens > {self.max_obs_len}"
            )

    def _build_expert(self):
        """Per item: the items of a min-depth crafting plan in topological order (item first)."""
        book = self.book
        plans = []
        for item in self.items:
            order, seen = [], set()

            def visit(name, order=order, seen=seen):
                if name in seen:
                    return
                seen.add(name)
                if book.is_base(name):
                    order.append((name, -1))
                    return
                best = min(
                    book.by_item[name],
                    key=lambda r: max(book.depth(i.ref.name) for i in r.inputs),
                )
                names = []
                for i in best.inputs:
                    if i.ref.item_id is not None:
                        names.append(i.ref.item_id)
                    else:
                        cands = [
                            m
                            for m in book.tag_members(i.ref.tag)
                            if m in book.by_item or book.is_base(m)
                        ]
                        names.append(min(cands, key=book.depth))
                for n in names:
                    visit(n)
                ing = ", ".join(
                    f"{i.count} {tr.item_id_to_str(n)}"
                    for i, n in zip(best.inputs, names, strict=True)
                )
                text = f"craft {best.output.count} {tr.item_id_to_str(name)} using {ing}"
                order.append((name, self._action_ids[text]))

            if book.is_base(item) or item in book.by_item:
                visit(item)
            plans.append(list(reversed(order)))
        width = max(len(p) for p in plans)
        self.plan_item = np.full((len(plans), width), -1, np.int32)
        self.plan_action = np.full((len(plans), width), -1, np.int32)
        for g, p in enumerate(plans):
            for j, (name, a) in enumerate(p):
                self.plan_item[g, j], self.plan_action[g, j] = self.item_index[name], a

    # -- device --------------------------------------------------------------------------------
    def _initial(self, goal, commands, num_commands) -> TextCraftState:
        n_items = len(self.items)
        return TextCraftState(
            goal=jnp.asarray(goal, jnp.int32),
            commands=jnp.asarray(commands, jnp.int32),
            num_commands=jnp.asarray(num_commands, jnp.int32),
            inventory=jnp.zeros((n_items,), jnp.int32),
            stamp=jnp.full((n_items,), -1, jnp.int32),
            next_stamp=jnp.int32(0),
            round=jnp.int32(0),
            done=jnp.bool_(False),
            success=jnp.bool_(False),
            last_action=jnp.int32(RESET_OBS),
            last_pass=jnp.bool_(True),
            legal=self._legal(commands, num_commands),
        )

    def reset(self, key: jax.Array, idx: jax.Array) -> tuple[TextCraftState, TimeStep]:
        """Instance ``idx % num_goals``; ``key`` draws the distractors and the line order.

        Args:
          key: PRNG key.
          idx: int32 [] instance index (upstream's ``data_idx``).

        Returns:
          ``(state, timestep)``.
        """
        g = jnp.asarray(idx, jnp.int32) % len(self.goals)
        tree, n_tree = jnp.asarray(self.tree_lines)[g], jnp.asarray(self.tree_len)[g]
        pool, n_pool = jnp.asarray(self.pool_lines)[g], jnp.asarray(self.pool_len)[g]
        k_pick, k_order = jax.random.split(key)
        d = self.max_distractors
        u = jnp.where(
            jnp.arange(pool.shape[0]) < n_pool, jax.random.uniform(k_pick, pool.shape), 2.0
        )
        picked = pool[jnp.argsort(u)][:d]
        n_picked = jnp.minimum(n_pool, d)
        cand = jnp.concatenate([tree, picked])
        valid = jnp.concatenate(
            [jnp.arange(tree.shape[0]) < n_tree, jnp.arange(picked.shape[0]) < n_picked]
        )
        v = jnp.where(valid, jax.random.uniform(k_order, cand.shape), 2.0)
        commands = cand[jnp.argsort(v)][: self.max_commands]
        state = self._initial(jnp.asarray(self.goal_item)[g], commands, n_tree + n_picked)
        return state, self._timestep(state, jnp.float32(0.0), at_reset=True)

    def instance_from(self, goal: str, commands: Sequence[str] | str):
        """Host: the reset state for an explicit goal and recipe-line list (e.g. a recorded reset).

        Args:
          goal: item id (``minecraft:light_blue_dye``) or name (``light blue dye``).
          commands: the recipe lines in observation order (a list, or one ``\\n``-joined string).

        Returns:
          ``(state, timestep)``.
        """
        goal_id = goal if goal.startswith(tr.PREFIX) else tr.str_to_item_id(goal)
        if goal_id not in self.item_index:
            raise ValueError(f"TextCraft.instance_from: unknown goal item {goal!r}")
        lines = commands.split("\n") if isinstance(commands, str) else list(commands)
        unknown = [x for x in lines if x not in self.line_index]
        if unknown:
            raise ValueError(
                f"TextCraft.instance_from: not recipe lines of this book: {unknown[:3]}"
            )
        if len(lines) > self.max_commands:
            raise ValueError(
                f"TextCraft.instance_from: {len(lines)} commands > max_commands {self.max_commands}"
            )
        ids = np.zeros((self.max_commands,), np.int32)
        ids[: len(lines)] = [self.line_index[x] for x in lines]
        state = self._initial(self.item_index[goal_id], ids, len(lines))
        if not hasattr(self, "_jit_start"):
            self._jit_start = jax.jit(
                lambda s: (self._timestep(s, jnp.float32(0.0), at_reset=True), self._overflow(s))
            )
        ts, overflow = self._jit_start(state)
        if bool(overflow):
            raise ValueError("TextCraft.instance_from: the observation exceeds max_obs_len")
        return state, ts

    def step(self, state: TextCraftState, action: jax.Array) -> tuple[TextCraftState, TimeStep]:
        """One action (int32 id; ids outside ``[0, num_actions)`` are clipped under jit).

        Returns:
          ``(state, timestep)``; after ``done`` the state is unchanged and the reward is 0.
        """
        a = jnp.clip(jnp.asarray(action, jnp.int32), 0, self.num_actions - 1)
        n_items = len(self.items)
        kind = jnp.asarray(self.act_kind)[a]
        in_item = jnp.asarray(self.act_in_item)[a]
        in_count = jnp.asarray(self.act_in_count)[a]
        used = jnp.arange(in_item.shape[0]) < jnp.asarray(self.act_num_in)[a]
        have = jnp.where(in_item >= 0, state.inventory[jnp.maximum(in_item, 0)], -1)
        held = jnp.all(~used | (have >= in_count))
        crafts = (kind == CRAFT) & held & jnp.asarray(self.act_ok)[a]
        gains = (kind == GET) | crafts
        consumed = jnp.where(used & crafts, in_item, n_items)
        inventory = state.inventory.at[consumed].add(-in_count, mode="drop")
        touched = jnp.zeros((n_items,), bool).at[consumed].set(True, mode="drop")
        stamp = jnp.where(touched & (inventory == 0), -1, state.stamp)
        out = jnp.asarray(self.act_item)[a]
        new_entry = gains & (stamp[out] < 0)
        stamp = stamp.at[out].set(jnp.where(new_entry, state.next_stamp, stamp[out]))
        inventory = inventory.at[out].add(jnp.where(gains, jnp.asarray(self.act_amount)[a], 0))
        success = gains & (out == state.goal)
        rnd = state.round + 1
        new = state.replace(
            inventory=inventory,
            stamp=stamp,
            next_stamp=state.next_stamp + new_entry.astype(jnp.int32),
            round=rnd,
            done=success | (rnd >= self.max_rounds),
            success=success,
            last_action=a,
            last_pass=(kind != CRAFT) | held,
        )
        active = ~state.done
        new = jax.tree.map(lambda x, y: x if x is y else jnp.where(active, x, y), new, state)
        # a stepped state never shows the reset text: last_action is an action id (or, for a
        # finished state left unchanged, what the step or `step_text` that finished it set)
        reward = jnp.where(active & success, 1.0, 0.0).astype(jnp.float32)
        return new, self._timestep(new, reward)

    def legal_actions(self, state: TextCraftState) -> jax.Array:
        """bool [num_actions]: inventory, every ``get`` and the crafts of the listed lines.

        The state carries it (``state.legal``, built from ``commands`` by `_initial`).
        """
        return state.legal

    def _legal(self, commands: jax.Array, num_commands: jax.Array) -> jax.Array:
        """`legal_actions` from the listed recipe lines (int32 [max_commands], their number)."""
        commands = jnp.asarray(commands, jnp.int32)
        n_lines = len(self.lines)
        valid = jnp.arange(commands.shape[0]) < num_commands
        listed = jnp.zeros((n_lines + 1,), bool).at[jnp.where(valid, commands, n_lines)].set(True)
        listed = listed.at[n_lines].set(False)
        return jnp.where(
            jnp.asarray(self.act_kind) == CRAFT, listed[jnp.asarray(self.act_line)], True
        )

    def _reset_words(self, state: TextCraftState):
        """The reset observation: "Crafting commands:" + the listed recipe lines + the goal."""
        wmax = self.max_obs_words
        cmd, n = state.commands, state.num_commands
        num = cmd.shape[0]
        prev = jnp.concatenate([cmd[:1], cmd[:-1]])
        joiner = jnp.where(
            jnp.arange(num) == 0, self.w_first, jnp.asarray(self.line_join_next)[prev]
        )
        rows = jnp.concatenate([joiner[:, None], jnp.asarray(self.line_body)[cmd]], axis=1)
        lens = jnp.where(jnp.arange(num) < n, jnp.asarray(self.line_body_len)[cmd] + 1, 0)
        flat, n_flat = _pack(rows, lens, wmax)
        last = cmd[jnp.maximum(n - 1, 0)]
        tail = jnp.stack(
            [
                jnp.where(n > 0, jnp.asarray(self.line_join_goal)[last], self.w_empty_commands),
                jnp.int32(self.w_craft),
            ]
        )
        reset_ids, reset_n, over_r = concat_segments(
            [
                (jnp.array([self.w_crafting]), 1),
                (flat, n_flat),
                (tail, 2),
                (
                    jnp.asarray(self.goal_words)[state.goal],
                    jnp.asarray(self.goal_words_len)[state.goal],
                ),
            ],
            wmax,
        )
        return reset_ids, reset_n, over_r

    def _step_tokens(self, state: TextCraftState) -> tuple[jax.Array, jax.Array]:
        """Observation tokens of a stepped state (``last_action`` an action id), built directly
        in tokens from the tables of `_build_step_tokens`: one row per piece (the prefix, a slot
        per insertion stamp, the suffix), each zero past its length, added into the buffer at
        the piece's start (a scatter-add of S + 2 windows; overlapping windows add zeros, so
        write order does not matter). Same tokens and mask as building the words and expanding
        them with `expand_words` (tests: the word-level reference), without the per-word gather
        and per-token scatter.

        Returns:
          ``(tokens int32 [max_obs_len], mask bool [max_obs_len])``.
        """
        n_items, S, W = len(self.items), self.num_slots, self.slot_width
        a = jnp.maximum(state.last_action, 0)
        is_inv = jnp.asarray(self.act_kind)[a] == INVENTORY
        present = state.stamp >= 0
        anyp = present.any()
        pre_row = jnp.where(
            is_inv,
            self.pre_inv + (~anyp).astype(jnp.int32),
            jnp.where(state.last_pass, a, self.num_actions + a),
        )
        pre_len = jnp.asarray(self.pre_len)[pre_row]
        # slot s holds the present item with stamp s (n_items: no item has that stamp)
        by_stamp = (
            jnp.full((S,), n_items, jnp.int32)
            .at[jnp.where(present, state.stamp, S)]
            .set(jnp.arange(n_items, dtype=jnp.int32), mode="drop")
        )
        filled = (by_stamp < n_items) & is_inv
        item = jnp.minimum(by_stamp, n_items - 1)
        ilen = jnp.asarray(self.item_tok_len)[item]
        count = jnp.clip(state.inventory[item], 0, self.count_cap)
        wi = self.item_tok.shape[1]
        rows = jnp.pad(jnp.asarray(self.item_tok)[item], ((0, 0), (0, W - wi)))
        rows = jnp.where(filled[:, None], rows + jnp.asarray(self.count_at)[count, ilen], 0)
        slot_len = jnp.where(filled, ilen + jnp.asarray(self.count_tok_len)[count], 0)
        ends = pre_len + jnp.cumsum(slot_len)
        suffix = is_inv & anyp
        pre = jnp.asarray(self.pre_tok)[pre_row]
        pieces = jnp.concatenate(
            [
                jnp.pad(pre, (0, W - pre.shape[0]))[None],
                rows,
                jnp.where(suffix, jnp.asarray(self.suffix_tok), 0)[None],
            ]
        )
        starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends - slot_len, ends[-1:]])
        # every start is <= the longest step observation <= max_obs_len (`_build_step_tokens`)
        dims = jax.lax.ScatterDimensionNumbers(
            update_window_dims=(1,), inserted_window_dims=(), scatter_dims_to_operand_dims=(0,)
        )
        tokens = jax.lax.scatter_add(
            jnp.full((self.max_obs_len + W,), PAD_ID, jnp.int32),
            starts[:, None],
            pieces.astype(jnp.int32),
            dims,
            indices_are_sorted=True,
            mode="promise_in_bounds",
        )[: self.max_obs_len]
        total = ends[-1] + jnp.where(suffix, self.suffix_len, 0)
        return tokens, jnp.arange(self.max_obs_len) < total

    def _overflow(self, state):
        """The reset observation of ``state`` does not fit (words or tokens)."""
        ids, n, over = self._reset_words(state)
        _, _, over_t = expand_words(ids, n, self.word_table, self.max_obs_len)
        return over | over_t

    def _timestep(self, state: TextCraftState, reward, at_reset: bool = False) -> TimeStep:
        """``at_reset``: ``state`` is a reset state (``last_action == RESET_OBS``, from `reset` or
        `instance_from`), shown by the reset text; otherwise a stepped state (`_step_tokens`)."""
        if at_reset:
            ids, n, _ = self._reset_words(state)
            tokens, mask, _ = expand_words(ids, n, self.word_table, self.max_obs_len)
        else:
            tokens, mask = self._step_tokens(state)
        return TimeStep(
            obs_tokens=tokens,
            obs_mask=mask,
            reward=reward,
            done=state.done,
            truncated=state.done & ~state.success,
            legal_actions=self.legal_actions(state),
            round=state.round,
        )

    def expert_action(self, state: TextCraftState) -> jax.Array:
        """Planner: the deepest unmet step of a min-depth plan for the goal (pure, jittable).

        Quantities are propagated from the goal down the plan's topological order against the
        current inventory (batches = ceil(deficit / output count)); the deepest item with a
        deficit is fetched (``get min(deficit, max_get)``) or crafted once. ``inventory`` when done.
        """
        plan_i = jnp.asarray(self.plan_item)[state.goal]
        plan_a = jnp.asarray(self.plan_action)[state.goal]
        n_items = len(self.items)
        width = plan_i.shape[0]
        in_item, in_count = jnp.asarray(self.act_in_item), jnp.asarray(self.act_in_count)
        num_in, per = jnp.asarray(self.act_num_in), jnp.asarray(self.act_amount)

        def body(j, carry):
            need, deficit = carry
            it, a = plan_i[j], plan_a[j]
            d = jnp.where(
                it >= 0,
                jnp.maximum(need[jnp.maximum(it, 0)] - state.inventory[jnp.maximum(it, 0)], 0),
                0,
            )
            ac = jnp.maximum(a, 0)
            batches = jnp.where(a >= 0, -(-d // jnp.maximum(per[ac], 1)), 0)
            used = jnp.arange(in_item.shape[1]) < num_in[ac]
            need = need.at[jnp.where(used, in_item[ac], n_items)].add(
                batches * in_count[ac], mode="drop"
            )
            return need, deficit.at[j].set(d)

        need0 = jnp.zeros((n_items,), jnp.int32).at[state.goal].set(1)
        _, deficit = jax.lax.fori_loop(0, width, body, (need0, jnp.zeros((width,), jnp.int32)))
        open_ = deficit > 0
        j = width - 1 - jnp.argmax(open_[::-1])
        it, a, d = plan_i[j], plan_a[j], deficit[j]
        get = jnp.asarray(self.get_base)[jnp.maximum(it, 0)] + jnp.clip(d, 1, self.max_get) - 1
        act = jnp.where(a >= 0, a, get)
        return jnp.where(open_.any() & ~state.done & (act >= 0), act, 0).astype(jnp.int32)

    # -- host ----------------------------------------------------------------------------------
    def inventory_dict(self, state: TextCraftState) -> dict[str, int]:
        """Host: the inventory as upstream's insertion-ordered dict (item id -> count)."""
        stamp, inv = np.asarray(state.stamp), np.asarray(state.inventory)
        present = np.nonzero(stamp >= 0)[0]
        return {self.items[i]: int(inv[i]) for i in present[np.argsort(stamp[present])]}

    def inventory_text(self, state: TextCraftState) -> str:
        return tr.inventory_text(self.inventory_dict(state))

    def render_text(self, state: TextCraftState) -> str:
        """Host: the exact AgentGym observation string for ``state`` (one unbatched state)."""
        last = int(state.last_action)
        if last == RESET_OBS:
            cmds = np.asarray(state.commands)[: int(state.num_commands)]
            return tr.reset_text([self.lines[c] for c in cmds], self.items[int(state.goal)])
        if last == EXTERNAL_OBS:
            raise ValueError(
                "TextCraft.render_text: this observation came from an out-of-table text action; "
                "step_text returned it"
            )
        if self.act_kind[last] == INVENTORY:
            return self.inventory_text(state)
        if bool(state.last_pass):
            ids, n = self.act_pass_msg[last], self.act_pass_len[last]
        else:
            ids, n = self.act_fail_msg[last], self.act_fail_len[last]
        return " ".join(self.words[i] for i in ids[:n])

    def action_text(self, action: int, state: Any = None) -> str:
        if not 0 <= int(action) < self.num_actions:
            raise ValueError(f"TextCraft.action_text: id {action} outside [0, {self.num_actions})")
        return self.action_texts[int(action)]

    def action_from_text(self, text: str) -> int:
        """Upstream's parsing (regexes, no normalisation) -> action id.

        Raises:
          InvalidAction: the text fails whatever the state; ``message`` is upstream's reply.
          ActionOutsideTable: upstream accepts the text but no table action has its effect.
        """
        try:
            parsed = tr.parse_action(self.book, text)
        except tr.ActionFailed as e:
            raise InvalidAction(e.args[0]) from None
        a = self._action_keys.get(self._key(parsed))
        if a is not None:
            return a
        book = self.book
        if parsed[0] == "get":
            ref = book.ref_from_text(parsed[2])
            if ref.item_id is None or not book.is_base(ref.item_id):
                raise InvalidAction(f"Could not find {parsed[2]}")
        if parsed[0] == "craft":
            inputs = parsed[4]
            if any(i.ref.item_id is None or i.ref.item_id not in self.item_index for i in inputs):
                raise InvalidAction(tr.not_enough_text(parsed[1], self.agentgym_compat))
        raise ActionOutsideTable(
            f"{text!r} is valid TextCraft text, but no action of the table (get 1..{self.max_get}, "
            "the listed recipe lines and their tag instantiations) has the same effect; "
            "use step_text"
        )

    def step_text(self, state: TextCraftState, text: str):
        """Host: one step for any text with upstream's semantics (one unbatched state).

        Table texts run the device step; other texts run `textcraft_recipes.reference_step`.

        Returns:
          ``(state, timestep, observation_text)``.
        """
        if bool(state.done):
            raise ValueError("TextCraft.step_text: the episode is over (done); reset first")
        try:
            a = self.action_from_text(text)
        except InvalidAction:
            a = None
        if a is not None:
            state, ts = self.jit_step(state, jnp.int32(a))
            return state, ts, self.render_text(state)
        inv = self.inventory_dict(state)
        obs, reward, success = tr.reference_step(
            self.book, inv, self.items[int(state.goal)], text, self.agentgym_compat
        )
        counts = np.zeros((len(self.items),), np.int32)
        stamp = np.full((len(self.items),), -1, np.int32)
        for k, (it, c) in enumerate(inv.items()):
            counts[self.item_index[it]], stamp[self.item_index[it]] = c, k
        rnd = int(state.round) + 1
        state = state.replace(
            inventory=jnp.asarray(counts),
            stamp=jnp.asarray(stamp),
            next_stamp=jnp.int32(len(inv)),
            round=jnp.int32(rnd),
            done=jnp.bool_(success or rnd >= self.max_rounds),
            success=jnp.bool_(success),
            last_action=jnp.int32(EXTERNAL_OBS),
            last_pass=jnp.bool_(True),
        )
        enc = self.codec.encode(obs)[: self.max_obs_len]
        tokens = np.full((self.max_obs_len,), PAD_ID, np.int32)
        tokens[: len(enc)] = enc
        ts = TimeStep(
            obs_tokens=jnp.asarray(tokens),
            obs_mask=jnp.arange(self.max_obs_len) < len(enc),
            reward=jnp.float32(reward),
            done=state.done,
            truncated=state.done & ~state.success,
            legal_actions=self.legal_actions(state),
            round=state.round,
        )
        return state, ts, obs

    @property
    def jit_step(self):
        if not hasattr(self, "_jit_step"):
            self._jit_step = jax.jit(self.step)
        return self._jit_step

    def expert_thought(self, state: TextCraftState, action: int) -> str:
        goal = tr.item_id_to_str(self.items[int(state.goal)])
        kind = int(self.act_kind[int(action)])
        if kind == GET:
            item = tr.item_id_to_str(self.items[int(self.act_item[action])])
            return (
                f"To craft {goal} I still need {int(self.act_amount[action])} {item}. "
                f"{item.capitalize()} is a base material, so I can get it directly."
            )
        if kind == CRAFT:
            item = tr.item_id_to_str(self.items[int(self.act_item[action])])
            if item == goal:
                return f"I have all the ingredients for {goal}, so I can craft it now."
            return f"I have the ingredients for {item}, which I need to craft {goal}. I craft it."
        return f"My goal is to craft {goal}. Let me check my inventory first."


@register("textcraft")
def _make(**options) -> TextCraft:
    return TextCraft(**options)
