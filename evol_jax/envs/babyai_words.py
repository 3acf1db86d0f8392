"""The static word list of the BabyAI text environment (host side, built once at import).

Every observation string AgentGym's BabyAI server can produce is a space-joined sequence of words
from this list (see `evol_jax.text`). Upstream glues some segments with ``"\\n"`` instead of a space
("ball\\nIn", "anything.\\nAvailable"); those compound words are in the list too (`GLUE`), as are
the quoted and bracketed forms of action words in the ``Available actions: [...]`` list
(`VARIANT`). Device code only uses the numpy tables below (constants under jit).
"""

from __future__ import annotations

import numpy as np

COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
OBJECTS = (
    "unseen",
    "empty",
    "wall",
    "floor",
    "door",
    "key",
    "ball",
    "box",
    "goal",
    "lava",
    "agent",
)
STATES = ("open", "closed", "locked")
MAX_NUMBER = 64

# Action-list decorations: prefix x suffix of the first / last word of an action in the list.
PREFIXES = ("", '"', '["')
SUFFIXES = ("", '",', '"]', ",")
# Glue kinds: the last word of a segment joined by a newline to a fixed next word.
GLUE_KINDS = ("\nAvailable", "\n", "\nIn", "\nYou")
GLUE_AVAILABLE, GLUE_NL, GLUE_IN, GLUE_YOU = range(4)

_FIXED_TEXTS = [
    "Your goal:",
    "In front of you in this room, you can see several objects:",
    "There is a",
    "right in front of you steps away.",
    "steps in front of you and steps to your right. left.",
    "You cannot see any objects within sight.The room has walls around you.",
    "The room has walls around you.",
    "You are facing a wall box steps away.",
    "You are carrying a",
    "You are not carrying anything.",
    "The task is completed.",
    "Available actions:",
    "You can take the following actions:",
    "No change in state.",
    "The action is not recognized. Please check valid actions.",
    "There is a barrier in front of you, you can't move forward.",
    "You cannot drop the object, as you are not carrying anything.",
    "You cannot drop the object, as there is already an object in front of you.",
    "You cannot pickup go to go through toggle and , as there is no path leading to it.",
    ", as it is closed. You should toggle it first.",
    ", as you are not carrying a key.",
    ", as the color of the key you are carrying does not match the color of door.",
    # mission words ("then" / "after you" become "and" in AgentGym's goal)
    "go to the a pick up open put next after you then in front of you behind on your left "
    "right object",
]
# Words an action name is made of (decorated in the action list).
_ACTION_BASE = (
    ["turn", "left", "right", "move", "forward", "pickup", "go", "to", "through", "toggle"]
    + ["and", "drop", "check", "available", "actions", "goal"]
    + list(COLORS)
    + list(STATES)
    + ["door", "key", "ball", "box", "lava"]
    + [str(i) for i in range(MAX_NUMBER + 1)]
)


def _build():
    words: list[str] = []
    index: dict[str, int] = {}

    def add(w: str) -> int:
        if w not in index:
            index[w] = len(words)
            words.append(w)
        return index[w]

    add("")  # id 0: the empty word (a double space); also the padding word
    for t in _FIXED_TEXTS:
        for w in t.split(" "):
            add(w)
    for c in COLORS:
        add(c)
        add("{'" + c)
        add("'" + c)
    for o in OBJECTS:
        add(o)
        add(o + ".")
        add(o + ",")
        add(o + "':")
    for s in STATES:
        add(s)
    for n in range(MAX_NUMBER + 1):
        add(str(n))
        add(f"{n},")
        add(f"{n}}},")
    for w in ("you,", "left,", "right,", "object,", "you.", "left.", "right.", "away."):
        add(w)
    for w in _ACTION_BASE:
        add(w)
    base = list(words)
    variant = np.zeros((len(words), len(PREFIXES), len(SUFFIXES)), np.int32)
    for i, w in enumerate(base):
        for p, pre in enumerate(PREFIXES):
            for s, suf in enumerate(SUFFIXES):
                variant[i, p, s] = add(pre + w + suf) if (pre or suf) else i
    glue = np.zeros((len(words), len(GLUE_KINDS)), np.int32)
    for i in range(len(base)):
        for g, kind in enumerate(GLUE_KINDS):
            glue[i, g] = add(words[i] + kind)
    return words, index, variant, glue


WORDS, INDEX, VARIANT, GLUE = _build()
NUM_WORDS = len(WORDS)


def wid(word: str) -> int:
    """Id of ``word``; raises ``KeyError`` naming the word when it is not in the list."""
    try:
        return INDEX[word]
    except KeyError:
        raise KeyError(f"babyai word list has no word {word!r}") from None


def ids(text: str) -> list[int]:
    """Word ids of a space-separated text (every word must be in the list)."""
    return [wid(w) for w in text.split(" ")]


NUM = np.array([wid(str(i)) for i in range(MAX_NUMBER + 1)], np.int32)
COLOR_W = np.array([wid(c) for c in COLORS], np.int32)
OBJECT_W = np.array([wid(o) for o in OBJECTS], np.int32)
OBJECT_DOT_W = np.array([wid(o + ".") for o in OBJECTS], np.int32)
STATE_W = np.array([wid(s) for s in STATES], np.int32)
