"""AgentTraj conversations: build, write, read and validate.

The AgentTraj format (AgentGym's expert trajectories) is a JSON list of items::

    {"item_id": "maze_3",
     "conversations": [
        {"from": "human", "loss": null,  "value": <the client's instruction>},
        {"from": "gpt",   "loss": false, "value": "OK. I'll follow your instructions and ..."},
        {"from": "human", "loss": null,  "value": <first observation, as the client shows it>},
        {"from": "gpt",   "loss": true,  "value": "Thought:\\n...\\n\\nAction:\\n..."},
        {"from": "human", "loss": null,  "value": <observation after the action>},
        ...]}

The first two turns are AgentGym's client ``conversation_start`` (`evol_jax.prompts`); the first
observation is what the client shows: Maze prefixes its fully-observed preamble, Wordle shows its
vocabulary template instead of "Let's start Wordle!", BabyAI and TextCraft show the reset text.
A conversation ends with the last action (the environment's final reply trains nothing).
``loss`` is null on human turns, false on the canned reply, true on every later gpt turn.
Optional top-level ``reward`` / ``success`` keys are written when known (ignored by readers that
do not use them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from evol_jax import prompts

_REACT = re.compile(r"^Thought:\n(?P<thought>.*)\n\nAction:\n(?P<action>.*)$", re.DOTALL)


class AgentTrajError(ValueError):
    """A malformed AgentTraj file or item; the message names the item and turn."""


@dataclass
class Trajectory:
    """One episode as AgentTraj needs it (texts only)."""

    env: str
    idx: int
    first_observation: str  # what the client shows as the first human observation
    thoughts: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)  # env reply after each action
    reward: float | None = None
    success: bool | None = None

    @property
    def item_id(self) -> str:
        return f"{self.env}_{self.idx}"


def react(thought: str, action: str) -> str:
    """The gpt turn text: ``"Thought:\\n{thought}\\n\\nAction:\\n{action}"``."""
    return f"Thought:\n{thought}\n\nAction:\n{action}"


def parse_react(value: str) -> tuple[str, str]:
    """Inverse of `react`; raises `AgentTrajError` if ``value`` is not in that form."""
    m = _REACT.match(value)
    if m is None:
        raise AgentTrajError(f"not a 'Thought:\\n...\\n\\nAction:\\n...' turn: {value[:80]!r}")
    return m.group("thought"), m.group("action")


def client_first_observation(env_name: str, reset_observation: str, vocab=None) -> str:
    """The first observation AgentGym's client shows for ``env_name``.

    Args:
      env_name: ``maze``, ``wordle``, ``babyai``, ``textcraft``, ...
      reset_observation: the server's reset text.
      vocab: Wordle only: the filtered vocabulary right after reset.
    """
    name = env_name.lower()
    if name == "maze":
        return prompts.maze_first_observation(reset_observation)
    if name == "wordle":
        if vocab is None:
            raise ValueError("client_first_observation: wordle needs the vocabulary")
        return prompts.wordle_first_observation(vocab)
    return reset_observation


def to_item(traj: Trajectory, include_reward: bool = True) -> dict:
    """One AgentTraj item (``item_id``, ``conversations``)."""
    if not (len(traj.thoughts) == len(traj.actions) == len(traj.observations)):
        raise AgentTrajError(
            f"{traj.item_id}: {len(traj.thoughts)} thoughts, {len(traj.actions)} actions, "
            f"{len(traj.observations)} observations; they must match"
        )
    conv = prompts.conversation_start(traj.env)
    conv.append({"from": "human", "loss": None, "value": traj.first_observation})
    for t, (thought, action) in enumerate(zip(traj.thoughts, traj.actions, strict=True)):
        conv.append({"from": "gpt", "loss": True, "value": react(thought, action)})
        if t + 1 < len(traj.actions):
            conv.append({"from": "human", "loss": None, "value": traj.observations[t]})
    item = {"item_id": traj.item_id, "conversations": conv}
    if include_reward and traj.reward is not None:
        item["reward"] = float(traj.reward)
    if include_reward and traj.success is not None:
        item["success"] = bool(traj.success)
    return item


def validate_item(item, where: str = "item") -> None:
    """Raises `AgentTrajError` naming the problem unless ``item`` is a well-formed item."""
    if not isinstance(item, dict):
        raise AgentTrajError(f"{where}: expected an object, got {type(item).__name__}")
    item_id = item.get("item_id")
    if not isinstance(item_id, str) or not item_id:
        raise AgentTrajError(f"{where}: 'item_id' must be a non-empty string, got {item_id!r}")
    conv = item.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise AgentTrajError(f"{item_id}: 'conversations' must be a non-empty list")
    for t, turn in enumerate(conv):
        at = f"{item_id} turn {t}"
        if not isinstance(turn, dict):
            raise AgentTrajError(f"{at}: expected an object")
        if turn.get("from") not in ("human", "gpt"):
            raise AgentTrajError(f"{at}: 'from' must be 'human' or 'gpt', got {turn.get('from')!r}")
        if not isinstance(turn.get("value"), str):
            raise AgentTrajError(f"{at}: 'value' must be a string")
        if "loss" in turn and not (turn["loss"] is None or isinstance(turn["loss"], bool)):
            raise AgentTrajError(f"{at}: 'loss' must be null, true or false, got {turn['loss']!r}")
        expected = "human" if t % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise AgentTrajError(f"{at}: turns must alternate human/gpt; got {turn['from']!r}")


def write_agenttraj(path: str | os.PathLike, items: Sequence[dict | Trajectory]) -> None:
    """Writes a JSON list of items (`Trajectory` objects are converted with `to_item`)."""
    out = [to_item(x) if isinstance(x, Trajectory) else x for x in items]
    for i, item in enumerate(out):
        validate_item(item, where=f"item {i}")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(out, fh, ensure_ascii=False, indent=1)
    os.replace(tmp, path)


def read_agenttraj(path: str | os.PathLike) -> list[dict]:
    """Reads and validates an AgentTraj JSON file (a list of items)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"AgentTraj file not found: {path}")
    try:
        with open(path) as fh:
            items = json.load(fh)
    except json.JSONDecodeError as e:
        raise AgentTrajError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise AgentTrajError(f"{path}: expected a JSON list of items")
    for i, item in enumerate(items):
        validate_item(item, where=f"{path} item {i}")
    return items


def actions_of(item: dict) -> list[str]:
    """The actions of an item's ReAct gpt turns (training turns, ``loss`` true)."""
    return [parse_react(t["value"])[1] for t in item["conversations"] if t.get("loss") is True]
