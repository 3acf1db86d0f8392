"""Vectorised JAX text environments with AgentGym semantics: BabyAI, TextCraft, Maze, Wordle."""

from evol_jax.envs.base import Env, InvalidAction, TimeStep, available, make, register

__all__ = ["Env", "InvalidAction", "TimeStep", "available", "make", "register"]
