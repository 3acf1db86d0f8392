"""AgentGym's client-side prompts: the first turns of every AgentTraj conversation.

These strings are the protocol between AgentGym's clients and the models trained on AgentTraj: the
first human turn (``conversation_start``) and the first observation the client builds. They are
copied verbatim from AgentGym's clients (``agentenv/agentenv/envs/{babyai,textcraft,lmrlgym}.py``,
snapshot 3ef9235d23e68e7c2920c5422ad957dc8ced5c6c).

AgentGym: MIT License, Copyright (c) 2023 FudanNLP-Agent. Permission is hereby granted, free of
charge, to any person obtaining a copy of this software and associated documentation files (the
"Software"), to deal in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software,
and to permit persons to whom the Software is furnished to do so, subject to the following
conditions: The above copyright notice and this permission notice shall be included in all copies
or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY
KIND, EXPRESS OR IMPLIED.
"""

from __future__ import annotations

import copy

_OK = "OK. I'll follow your instructions and try my best to solve the task."

BABYAI_INSTRUCTION = (
    "You are an exploration master that wants to finish every goal you are given. "
    "Every round I will give you an observation, and you have to respond an action "
    "and your thought based on the observation to finish the given task. You are "
    "placed in a room and you need to accomplish the given goal with actions.\n"
    "\n"
    "You can use the following actions: \n"
    "\n"
    "- turn right \n"
    "\n"
    "- turn left \n"
    "\n"
    "- move forward \n"
    "\n"
    "- go to <obj> <id> \n"
    "\n"
    "- pick up <obj> <id> \n"
    "\n"
    "- go through <door> <id>: <door> must be an open door. \n"
    "\n"
    "- toggle and go through <door> <id>: <door> can be a closed door or a locked "
    "door. If you want to open a locked door, you need to carry a key that is of the "
    "same color as the locked door. \n"
    "\n"
    "- toggle: there is a closed or locked door right in front of you and you can "
    "toggle it.\n"
    "Your response should use the following format:\n"
    "Thought:\n"
    "<Your Thought>\n"
    "\n"
    "Action:\n"
    "<Your Action>"
)

TEXTCRAFT_INSTRUCTION = (
    "You are given few useful crafting recipes to craft items in Minecraft. Crafting "
    'commands are of the format "craft [target object] using [input ingredients]".\n'
    "Every round I will give you an observation, you have to respond an action based "
    'on the state and instruction. You can "get" an object (ingredients) from the '
    'inventory or the environment, look-up the game inventory by "inventory", or '
    '"craft" (target) using any of the crafting commands.\n'
    'Your output must strictly follow this format:"Thought:\n'
    "your thoughts.\n"
    "\n"
    "Action:\n"
    'your next action"\n'
    "\n"
    "Reminder: \n"
    '1. Always specify the quantity when using "get" and "craft" commands. - Example '
    "of get: get 1 lapis lazuli - Example1 of craft: craft 1 blue dye using 1 lapis "
    "lazuli - Example2 of craft: craft 1 golden carrot using 8 gold nugget, 1 carrot\n"
    '2. When using "get" command, do not specify whether the item comes from the '
    "inventory or the environment.\n"
    "3. You can use ONLY crafting commands provided, do not use your own crafting "
    "commands. However, if the crafting command uses a generic ingredient like "
    '"planks", you can use special types of the same ingredient e.g. "dark oak '
    'planks" in the command instead.\n'
    "\n"
)

MAZE_INSTRUCTION = "You are an expert maze solver."

WORDLE_INSTRUCTION = "You are an expert wordle player."

MAZE_FULLY_FIRST_OBSERVATION = (
    "Your objective is to reach the goal in as few steps as possible. At each step "
    "you will be given information about where the goal is, your current position,\n"
    "and the walls that surround you. \n"
    "\n"
    "When you move right you increase your y position by 1, when you move down you "
    "increase your x position by 1. \n"
    "\n"
    "Here is an example.\n"
    "\n"
    "```\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 6. There is a wall above you.\n"
    "action: move left\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 5. There are walls above you, below you.\n"
    "action: move left\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 4. There are walls above you, below you.\n"
    "action: move up\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 4. There are walls above you, below you.\n"
    "action: move left\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 3. There are walls to your left, below you.\n"
    "action: move down\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 3. There are walls to your left, below you.\n"
    "action: move left\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 3. There are walls to your left, below you.\n"
    "action: move down\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 3. There are walls to your left, below you.\n"
    "action: move left\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 3. There are walls to your left, below you.\n"
    "action: move right\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 4. There are walls above you, below you.\n"
    "action: move down\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 4. There are walls above you, below you.\n"
    "action: move right\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 5. There are walls above you, below you.\n"
    "action: move right\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "5, 6. There is a wall above you.\n"
    "action: move down\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "6, 6. There are walls to your right, to your left.\n"
    "action: move down\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "7, 6. There are walls to your right, to your left.\n"
    "action: move right\n"
    "environment: The goal is at position 8, 6. Your current position is at position "
    "7, 6. There are walls to your right, to your left.\n"
    "action: move down\n"
    "environment: Success\n"
    "```\n"
    "\n"
    'Your possible actions are "move up", "move down", "move left", "move right". '
    "Formally, your return should be in this format:\n"
    "Thought:\n"
    "<Your Thought>\n"
    "\n"
    "Action:\n"
    "<Your Action>\n"
    "\n"
    "Now let's start a new game. Return your action and your thought in the format "
    "above strictly. Now, make the optimal action given the current environment state:"
)

MAZE_PARTIALLY_FIRST_OBSERVATION = (
    "Your objective is to reach the goal in as few steps as possible. At each step "
    "you will see your move history, and the walls that surround you.\n"
    "\n"
    "Here is an example. \n"
    "```\n"
    "environment: There are walls above you, below you.\n"
    "action: move up\n"
    "environment: There are walls above you, below you.\n"
    "action: move left\n"
    "environment: There is a wall above you.\n"
    "action: move left\n"
    "environment: There are walls above you, below you.\n"
    "action: move up\n"
    "environment: There are walls above you, below you.\n"
    "action: move up\n"
    "environment: There are walls above you, below you.\n"
    "action: move up\n"
    "environment: There are walls above you, below you.\n"
    "action: move right\n"
    "environment: There is a wall above you.\n"
    "action: move down\n"
    "environment: There are walls to your right, to your left.\n"
    "action: move down\n"
    "environment: There are walls to your right, to your left.\n"
    "action: move right\n"
    "environment: There are walls to your right, to your left.\n"
    "action: move down\n"
    "environment: Success\n"
    "```\n"
    "\n"
    'Your possible actions are "move up", "move down", "move left", "move right". '
    "Formally, your return should be in this format:\n"
    "Thought:\n"
    "<Your Thought>\n"
    "\n"
    "Action:\n"
    "<Your Action>\n"
    "\n"
    "Now let's start a new game. Return your action and your thought in the format "
    "above strictly. Now, make the optimal action given the current environment state:"
)

WORDLE_FIRST_OBSERVATION_TEMPLATE = (
    "Welcome to the game of Wordle. Your objective is to guess a hidden 5 letter "
    "word. You have 6 attempts to guess it correctly and you should try to guess it "
    "in as few attempts as possible. When guessing the word, you should format your "
    'word as a space separated sequence of letters, like "s h i r e" for example. '
    "After guessing the word, you will receive feedback from the game environment in "
    'the form of a sequence of 5 space separated letters like "b y g g b", where '
    "each letter indicates some information about the hidden word. The environment "
    'will return one of three letters – "b", "g", or "y" – for each letter in the '
    "word you guessed. We describe the meaning of each letter below:\n"
    "\n"
    '"b": If the environment returns a "b", it means that the letter at that '
    "position in your guessed word is not in the hidden word.\n"
    '"y": If the environment returns a "y", it means that the letter at that '
    "position in your guessed word is in the hidden word but is not in the correct "
    "position.\n"
    '"g": If the environment returns a "g", it means that the letter at that '
    "position in your guessed word is in the hidden word and is in the correct position.\n"
    "\n"
    "As a note, if you guess an invalid word (e.g. not a 5 letter word or a word not "
    'in the vocabulary), the environment will respond with an "invalid word" '
    "message. In general though, you should use this information returned by the "
    "environment to update your belief about what the hidden word might be and "
    "adjust your next guess accordingly.\n"
    "\n"
    "Here is the complete list of valid vocabulary words that are accepted by the game:\n"
    "```\n"
    "{{vocab}}\n"
    "```\n"
    "\n"
    "Here is an example. If the current status of the game is given as:\n"
    "```\n"
    "guess 1: p a n i c\n"
    "feedback 1: b b y b b\n"
    "guess 2: f e l o n\n"
    "feedback 2: g b b y g\n"
    "```\n"
    "Based on the feedback from the environment, you know that the first letter is "
    '"f", the last letter is "n", and there is an "o" somewhere in the word, but it '
    'is not in the second to last position. You also know that there is not a "p", '
    '"a", "i", "c", "e", or "l" in the word. Knowing this, you might guess the next '
    "word to be:\n"
    "Thought:\n"
    'I know that the first letter is "f", the last letter is "n", and there is an '
    '"o" somewhere in the word, but it is not in the second to last position. I also '
    'know that there is not a "p", "a", "i", "c", "e", or "l" in the word. A good '
    'word from the vocabulary to try might therefore be "f r o w n", since it is in '
    "the vocabulary, meets all known letter constraints, and we get to gain more "
    'information about the position of "o". Therefore this is a good guess to try next.\n'
    "\n"
    "Action:\n"
    "f r o w n\n"
    "\n"
    "Formally, your return should be in this format:\n"
    "Thought:\n"
    "<Your Thought>\n"
    "\n"
    "Action:\n"
    "<The Word You Guess>\n"
    "\n"
    "The guessed word is in the vocabulary, meets all known letter constraints, and "
    'we get to gain more information about the position of "o", so it is a good '
    "guess to try next.\n"
    "\n"
    "Now let's start a new game. Remember, the word you guess should be strictly in "
    "the vocabulary. You should return your thought and your word strictly in the "
    "formation mentioned above."
)

ENV_NAMES = {
    "babyai": "BabyAI",
    "textcraft": "TextCraft",
    "maze": "LMRL-Gym.maze",
    "wordle": "LMRL-Gym.wordle",
}

_INSTRUCTIONS = {
    "babyai": BABYAI_INSTRUCTION,
    "textcraft": TEXTCRAFT_INSTRUCTION,
    "maze": MAZE_INSTRUCTION,
    "wordle": WORDLE_INSTRUCTION,
}


def conversation_start(env: str) -> list[dict]:
    """The client's first two turns: the instruction (human, ``loss`` None) and the canned reply.

    Args:
      env: ``"babyai"``, ``"textcraft"``, ``"maze"`` or ``"wordle"``.

    Returns:
      A fresh list ``[{"from": "human", "loss": None, "value": ...}, {"from": "gpt", "loss": False,
      "value": "OK. I'll follow ..."}]`` (safe to modify).
    """
    key = env.lower()
    if key not in _INSTRUCTIONS:
        raise ValueError(
            f"conversation_start: no AgentGym prompt for {env!r}; have {sorted(_INSTRUCTIONS)}"
        )
    return copy.deepcopy(
        [
            {"from": "human", "loss": None, "value": _INSTRUCTIONS[key]},
            {"from": "gpt", "loss": False, "value": _OK},
        ]
    )


def maze_first_observation(observation: str) -> str:
    """What the maze client shows first: the fully-observed preamble, a newline, the observation."""
    return MAZE_FULLY_FIRST_OBSERVATION + "\n" + observation


def wordle_first_observation(vocab) -> str:
    """The wordle client's first observation: the template with ``{{vocab}}`` = one word a line.

    Args:
      vocab: the words of ``GET /wordle/filtered_vocab`` right after reset (vocabulary order).
    """
    return WORDLE_FIRST_OBSERVATION_TEMPLATE.replace("{{vocab}}", "\n".join(vocab))
