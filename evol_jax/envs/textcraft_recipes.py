"""TextCraft host side: the recipe graph, the goal table and the reference (upstream) semantics.

The recipe graph is loaded from a directory of Minecraft-format recipe JSONs with the same rules as
AgentGym's ``agentenv-textcraft`` (``CraftingTree``), written afresh:

* only ``minecraft:crafting_shaped`` / ``crafting_shapeless`` recipes count; shaped counts are the
  number of times a key occurs in the pattern; a list of alternatives keeps its first entry;
* single-ingredient recipes whose ingredient name ends in ``_block`` are dropped;
* a recipe's ``group`` becomes a tag of its output (``minecraft:<group>``) unless it equals the id;
* a recipe whose output is already a transitive dependency of one of its inputs is skipped (cycle
  removal), which makes the graph depend on the file order;
* a tag input none of whose members has a recipe is turned into a plain item (``minecraft:oak_logs``
  becomes an item you can ``get``; ``oak log`` is a different item).

The file order is explicit: sorted names by default, or a given list (the order an upstream server
happened to read, e.g. ``textcraft_goals.json["recipe_file_order_of_recorded_run"]``).

`reference_step` is the text semantics of one ``/step`` call on a Python inventory dict: it is the
oracle the device step is tested against and the host path of `TextCraft.step_text`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence

PREFIX = "minecraft:"
ACTION_REGEXES = (
    ("craft", r"craft (.*) using (.*)"),
    ("get", r"get ([0-9]+) (.*)"),
    ("inventory", r"inventory"),
)
COUNT_REGEX = r"([0-9]+) (.*)"


def item_id_to_str(item_id: str) -> str:
    """``minecraft:light_blue_dye`` -> ``light blue dye`` (upstream's display name)."""
    return item_id.replace(PREFIX, "").replace("_", " ")


def str_to_item_id(text: str) -> str:
    return PREFIX + text.replace(" ", "_")


@dataclasses.dataclass(frozen=True)
class Ref:
    """An item or a tag, as upstream's ``ItemTag`` (``tag`` or ``item_id`` may be None)."""

    tag: str | None = None
    item_id: str | None = None

    @property
    def name(self) -> str:
        return self.item_id or self.tag

    def __repr__(self) -> str:  # upstream's dataclass repr, quoted in an error message
        return f"ItemTag(tag={self.tag!r}, item_id={self.item_id!r})"


@dataclasses.dataclass
class Ingredient:
    ref: Ref
    count: int

    def __repr__(self) -> str:
        return f"ItemTagWithCount(item_tag={self.ref!r}, count={self.count!r})"


@dataclasses.dataclass
class Recipe:
    inputs: list[Ingredient]
    output: Ingredient  # output.ref.item_id is always set; output.ref.tag is the group tag

    @property
    def line(self) -> str:
        """The command line shown in the observation (``craft 4 oak planks using 1 oak logs``)."""
        ins = ", ".join(f"{i.count} {item_id_to_str(i.ref.name)}" for i in self.inputs)
        return f"craft {self.output.count} {item_id_to_str(self.output.ref.name)} using {ins}"


class RecipeError(ValueError):
    """A recipe directory or file that cannot be loaded."""


class RecipeBook:
    """The crafting graph of one recipe directory.

    Args:
      recipe_dir: a directory of recipe ``*.json`` files.
      file_order: the order in which the files are read (names relative to ``recipe_dir``); default
        sorted names. It must list exactly the directory's JSON files.
    """

    def __init__(self, recipe_dir: str, file_order: Sequence[str] | None = None):
        if not os.path.isdir(recipe_dir):
            raise RecipeError(f"TextCraft recipe directory not found: {recipe_dir}")
        present = sorted(f for f in os.listdir(recipe_dir) if f.endswith(".json"))
        if not present:
            raise RecipeError(f"TextCraft recipe directory has no *.json files: {recipe_dir}")
        if file_order is None:
            order = present
        else:
            order = list(file_order)
            missing = sorted(set(order) - set(present))
            extra = sorted(set(present) - set(order))
            if missing or extra or len(order) != len(set(order)):
                raise RecipeError(
                    f"file_order does not match the JSON files of {recipe_dir}: "
                    f"missing files {missing[:5]}, files not in file_order {extra[:5]}, "
                    f"duplicates {len(order) - len(set(order))}"
                )
        self.recipe_dir = recipe_dir
        self.file_order = order
        self.by_item: dict[str, list[Recipe]] = {}
        self.by_tag: dict[str, list[Recipe]] = {}
        self.tags: set[str] = set()
        self.items: set[str] = set()
        self.item_tag: dict[str, str] = {}
        self._deps: dict[str, set[str]] = {}
        for name in order:
            self._load(os.path.join(recipe_dir, name))
        self._clean_up()
        self._depth: dict[str, int] = {}

    # -- loading -------------------------------------------------------------------------------
    def _ref(self, spec, path: str) -> tuple[Ref, str]:
        if isinstance(spec, list):
            if not spec:
                raise RecipeError(f"{path}: empty ingredient alternative list")
            spec = spec[0]
        if not isinstance(spec, dict):
            raise RecipeError(f"{path}: ingredient must be an object, got {spec!r}")
        if "item" in spec:
            self.items.add(spec["item"])
            return Ref(item_id=spec["item"]), spec["item"]
        if "tag" in spec:
            self.tags.add(spec["tag"])
            return Ref(tag=spec["tag"]), spec["tag"]
        raise RecipeError(f"{path}: ingredient has neither 'item' nor 'tag': {spec!r}")

    def _load(self, path: str) -> None:
        try:
            with open(path) as fp:
                data = json.load(fp)
        except (OSError, json.JSONDecodeError) as e:
            raise RecipeError(f"{path}: cannot read recipe JSON: {e}") from e
        if not isinstance(data, dict) or "type" not in data:
            raise RecipeError(f"{path}: not a recipe (no 'type' field)")
        inputs: list[Ingredient] = []
        try:
            if data["type"] == "minecraft:crafting_shaped":
                pattern = data["pattern"]
                for key, spec in data["key"].items():
                    count = sum(row.count(key) for row in pattern)
                    ref, _ = self._ref(spec, path)
                    inputs.append(Ingredient(ref, count))
            elif data["type"] == "minecraft:crafting_shapeless":
                position: dict[str, int] = {}
                for spec in data["ingredients"]:
                    ref, name = self._ref(spec, path)
                    if name in position:
                        inputs[position[name]].count += 1
                    else:
                        position[name] = len(inputs)
                        inputs.append(Ingredient(ref, 1))
            else:
                return
            result = data["result"]
        except KeyError as e:
            raise RecipeError(f"{path}: missing field {e}") from e
        if isinstance(result, str):
            out_id, out_count = result, 1
        elif isinstance(result, dict) and "item" in result:
            out_id, out_count = result["item"], result.get("count") or 1
        else:
            raise RecipeError(f"{path}: cannot read 'result': {result!r}")
        self.items.add(out_id)
        if len(inputs) == 1 and inputs[0].ref.name.endswith("_block"):
            return
        out_tag = None
        if "group" in data:
            out_tag = PREFIX + data["group"]
            if out_tag != out_id:
                self.tags.add(out_tag)
                self.item_tag[out_id] = out_tag
        recipe = Recipe(inputs, Ingredient(Ref(tag=out_tag, item_id=out_id), out_count))
        deps = self._deps.setdefault(out_id, set())
        if any(out_id in self._deps.get(i.ref.name, ()) for i in inputs):
            return  # would close a cycle (upstream's transitive-dependency check)
        self.by_item.setdefault(out_id, []).append(recipe)
        for i in inputs:
            deps.add(i.ref.name)
            deps.update(self._deps.get(i.ref.name, ()))
        if out_tag is not None:
            self.by_tag.setdefault(out_tag, []).append(recipe)

    def _clean_up(self) -> None:
        converted = set()
        for recipes in self.by_item.values():
            for recipe in recipes:
                for ing in recipe.inputs:
                    if ing.ref.item_id is None:
                        members = self.tag_members(ing.ref.tag)
                        if not any(m in self.by_item for m in members):
                            converted.add(ing.ref.tag)
                            ing.ref = Ref(item_id=ing.ref.tag)
        for name in converted:
            self.items.add(name)
            self.tags.discard(name)

    # -- queries -------------------------------------------------------------------------------
    def tag_members(self, tag: str) -> list[str]:
        """Items whose group tag is ``tag``, in first-seen order."""
        return [i for i, t in self.item_tag.items() if t == tag]

    def is_craftable(self, name: str) -> bool:
        return name in self.by_item or name in self.by_tag

    def is_tag(self, name: str) -> bool:
        return name in self.tags

    def is_valid_item(self, name: str) -> bool:
        return name in self.items

    def is_base(self, item_id: str) -> bool:
        """Can ``get`` fetch this item?"""
        return (
            self.is_valid_item(item_id)
            and not self.is_tag(item_id)
            and not self.is_craftable(item_id)
        )

    def recipes_of(self, name: str) -> list[Recipe]:
        return self.by_item.get(name) or self.by_tag.get(name) or []

    def depth(self, name: str, _active: frozenset = frozenset()) -> int:
        """Minimum crafting depth (0 for base items): min over recipes of max input depth + 1."""
        if name in self._depth:
            return self._depth[name]
        if name in _active:
            raise RecipeError(f"recipe cycle through {name} in {self.recipe_dir}")
        recipes = self.recipes_of(name)
        if not recipes:
            d = 0
        else:
            active = _active | {name}
            d = min(max(self.depth(i.ref.name, active) + 1 for i in r.inputs) for r in recipes)
        self._depth[name] = d
        return d

    def goal_table(self) -> list[tuple[str, int]]:
        """``data_idx -> goal``: items with a recipe, stably sorted by depth (upstream's order)."""
        items = [(item, self.depth(item)) for item in self.by_item]
        return sorted([x for x in items if x[1] >= 1], key=lambda x: x[1])

    def tree(self, goal: str) -> list[Recipe]:
        """Every recipe reachable from ``goal`` through recipe inputs (the goal's recipe tree)."""
        seen_names, out, seen = {goal}, [], set()
        frontier = [goal]
        while frontier:
            name = frontier.pop(0)
            for r in self.recipes_of(name):
                if id(r) not in seen:
                    seen.add(id(r))
                    out.append(r)
                for i in r.inputs:
                    if i.ref.name not in seen_names:
                        seen_names.add(i.ref.name)
                        frontier.append(i.ref.name)
        return out

    def uses(self, name: str) -> list[Recipe]:
        out = []
        for recipes in self.by_item.values():
            out.extend(r for r in recipes if any(i.ref.name == name for i in r.inputs))
        return out

    def distractor_pool(self, goal: str) -> list[str]:
        """Lines of recipes using an ingredient of the goal's tree, minus the tree's own lines."""
        tree_lines = {r.line for r in self.tree(goal)}
        pool = set()
        for r in self.tree(goal):
            for i in r.inputs:
                pool.update(u.line for u in self.uses(i.ref.name))
        return sorted(pool - tree_lines)

    def ref_from_text(self, text: str) -> Ref:
        """Upstream's ``item_str_to_obj``: a tag if the name is a tag, else an item id."""
        name = str_to_item_id(text)
        return Ref(tag=name) if self.is_tag(name) else Ref(item_id=name)

    def match(self, output_id: str | None, inputs: list[Ingredient]) -> Recipe | None:
        """Upstream's ``CraftingTree.craft``: the first recipe of the output matching ``inputs``."""
        for target in self.by_item.get(output_id, []) if output_id is not None else []:
            remaining = list(inputs)
            ok = True
            for want in target.inputs:
                found = None
                for cand in remaining:
                    if want.ref.item_id is not None:
                        if cand.ref.item_id == want.ref.item_id:
                            found = cand
                            break
                    elif cand.ref.tag == want.ref.tag or (
                        self.item_tag.get(cand.ref.item_id) == want.ref.tag
                    ):
                        found = cand
                        break
                if found is None or found.count != want.count:
                    ok = False
                    break
                remaining.remove(found)
            if ok and not remaining:
                return target
        return None


class ActionFailed(Exception):
    pass


def _parse_craft(book: RecipeBook, out_text: str, in_text: str):
    """Returns ``(out_ref, out_count, explicit_count, inputs)`` or raises `ActionFailed`."""
    m = re.match(COUNT_REGEX, out_text)
    if m:
        out_ref, out_count, explicit = book.ref_from_text(m.group(2)), int(m.group(1)), True
    else:
        out_ref, out_count, explicit = book.ref_from_text(out_text), 1, False
    inputs = []
    for part in in_text.split(","):
        m = re.match(COUNT_REGEX, part.strip())
        if not m:
            raise ActionFailed(f"Wrong item format: {part.strip()}")
        inputs.append(Ingredient(book.ref_from_text(m.group(2)), int(m.group(1))))
    return out_ref, out_count, explicit, inputs


def parse_action(book: RecipeBook, text: str):
    """Upstream's regex dispatch: ``("craft", out_ref, count, explicit, inputs)``,
    ``("get", amount, item_text)``, ``("inventory",)``; raises `ActionFailed` with upstream's text
    for state-independent failures (no pattern matched, bad ingredient format)."""
    parsed = None
    for kind, regex in ACTION_REGEXES:
        m = re.match(regex, text)
        if not m:
            continue
        if kind == "craft":
            parsed = ("craft", *_parse_craft(book, m.group(1), m.group(2)))
        elif kind == "get":
            parsed = ("get", int(m.group(1)), m.group(2))
        else:
            parsed = ("inventory",)
    if parsed is None:
        raise ActionFailed(f"Could not execute {text}")
    return parsed


def crafted_text(item_id: str, count: int, compat: bool) -> str:
    return f"Crafted {count} {item_id if compat else item_id_to_str(item_id)}"


def got_text(item_id: str, item_text: str, amount: int, compat: bool) -> str:
    return f"Got {amount} {item_text if compat else item_id_to_str(item_id)}"


def not_enough_text(out_ref: Ref, compat: bool) -> str:
    name = out_ref.item_id if compat else item_id_to_str(out_ref.name)
    return f"Could not find enough items to craft {name}"


def no_recipe_text(out_ref: Ref, count: int, compat: bool) -> str:
    what = repr(Ingredient(out_ref, count)) if compat else f"{count} {item_id_to_str(out_ref.name)}"
    return f"Could not find a valid recipe for {what}"


def inventory_text(inventory: dict[str, int]) -> str:
    """``Inventory: [oak planks] (4) [stick] (2) `` in insertion order (note the trailing space)."""
    if not inventory:
        return "Inventory: You are not carrying anything."
    return "Inventory: " + "".join(f"[{item_id_to_str(k)}] ({v}) " for k, v in inventory.items())


def reference_step(
    book: RecipeBook, inventory: dict[str, int], goal: str, text: str, compat: bool
) -> tuple[str, int, bool]:
    """One upstream ``TextCraftEnv.step`` on ``inventory`` (an insertion-ordered dict, mutated).

    With ``compat=False`` the corrected behaviour applies: item names instead of ids in messages,
    the output count of a craft command is checked when given, and ``get 0`` adds nothing.

    Returns:
      ``(observation, reward, terminated)``.
    """
    try:
        parsed = parse_action(book, text)
        if parsed[0] == "inventory":
            return inventory_text(inventory), 0, False
        if parsed[0] == "get":
            amount, item_text = parsed[1], parsed[2]
            ref = book.ref_from_text(item_text)
            if (
                book.is_craftable(ref.name)
                or book.is_tag(ref.item_id)
                or ref.item_id is None
                or not book.is_valid_item(ref.item_id)
            ):
                raise ActionFailed(f"Could not find {item_text}")
            if amount == 0 and not compat:
                raise ActionFailed(f"Could not get 0 {item_id_to_str(ref.item_id)}")
            inventory[ref.item_id] = inventory.get(ref.item_id, 0) + amount
            done = ref.item_id == goal
            return got_text(ref.item_id, item_text, amount, compat), int(done), done
        _, out_ref, out_count, explicit, inputs = parsed
        for ing in inputs:
            if ing.ref.item_id not in inventory or inventory[ing.ref.item_id] < ing.count:
                raise ActionFailed(not_enough_text(out_ref, compat))
        target = book.match(out_ref.item_id, inputs)
        if target is None or (not compat and explicit and target.output.count != out_count):
            raise ActionFailed(no_recipe_text(out_ref, out_count, compat))
        for ing in inputs:
            inventory[ing.ref.item_id] -= ing.count
            if inventory[ing.ref.item_id] == 0:
                del inventory[ing.ref.item_id]
        out_id = target.output.ref.item_id
        inventory[out_id] = inventory.get(out_id, 0) + target.output.count
        done = out_id == goal
        return crafted_text(out_id, target.output.count, compat), int(done), done
    except ActionFailed as e:
        return str(e.args[0]), 0, False


def reset_text(commands: Sequence[str], goal: str) -> str:
    return "Crafting commands:\n{}\n\nGoal: craft {}.".format(
        "\n".join(commands), item_id_to_str(goal)
    )
