"""AgentGym-compatible HTTP servers for the JAX environments (aiohttp).

``python -m evol_jax.serve --env maze --port 36001`` serves `evol_jax.envs` environments under the
routes, bodies and replies of AgentGym's own servers, so AgentGym's clients (and
`evol_jax.client`) can talk to them unchanged:

* ``maze`` and ``wordle`` (AgentGym's LMRL-Gym server): ``POST /maze/create`` -> ``{"id"}``,
  ``POST /maze/reset {id, game}`` -> ``{"observation"}``, ``POST /maze/step {id, action}`` ->
  ``{observation, reward, done}``, ``GET /maze/observation?id=``, ``GET /maze/detail?id=``,
  ``GET /maze/available_actions``; ``/wordle/*`` likewise with ``{id, seed}`` and
  ``GET /wordle/filtered_vocab?id=``. Neither has a close route (404, as upstream).
  ``--env lmrlgym`` serves both.
* ``babyai`` and ``textcraft`` (and any other registered env): ``POST /create``, ``POST /reset
  {id, data_idx}``, ``POST /step {id, action}``, ``GET /observation?id=``, ``GET /detail?id=``,
  ``POST /close {id}`` (``true``, then ``false``).

Errors are replied as upstream does: ``{"error": message}`` with HTTP 200 for unknown ids ("The id
N is not valid."), finished episodes ("The task with environment N has finished."), failing
resets; a missing or mistyped body field gets HTTP 422 with a FastAPI-style ``detail`` list; an
unknown route 404 ``{"detail": "Not Found"}``. Reply number types follow upstream (maze: ``0`` on
ordinary steps, ``1.0`` / ``-1.0`` at success / failure; wordle: ``0``/``1``, ``0.0`` for an
invalid word). The BabyAI and TextCraft payload shapes follow ``http_protocol_examples.json``;
their env-specific numbers (BabyAI's stale ``score``) come from those envs' own state.

Environments are built with ``agentgym_compat=True`` by default (``--corrected`` for the corrected
behaviour) and a large ``max_rounds`` (upstream servers have no round limit; the client stops).
Steps run the env's jitted ``step`` on one unbatched state per env id: this bridge is for
protocol compatibility and external agents, not throughput (batched rollouts stay on device).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from aiohttp import web

from evol_jax.envs import InvalidAction, make

SERVER_MAX_ROUNDS = 100_000


def _num(x: float):
    """Upstream sends integral rewards as ints in most places."""
    x = float(x)
    return int(x) if x.is_integer() else x


@dataclass
class Session:
    """One env id on the server."""

    info: dict = field(default_factory=lambda: {"done": False, "reward": 0, "deleted": False})
    state: Any = None
    observation: str | None = None


class _BadRequest(Exception):
    def __init__(self, detail: list):
        super().__init__(str(detail))
        self.detail = detail


def _field(body: Any, name: str, kind: type, where: str = "body", required: bool = True):
    """FastAPI-like validation of one field; raises `_BadRequest` with a 422 ``detail``."""
    if not isinstance(body, dict) or name not in body or body[name] is None:
        if not required:
            return None
        raise _BadRequest(
            [{"type": "missing", "loc": [where, name], "msg": "Field required", "input": body}]
        )
    value = body[name]
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            ok = False
        else:
            try:
                value, ok = int(value), True
            except (TypeError, ValueError):
                ok = False
        if not ok:
            raise _BadRequest(
                [
                    {
                        "type": "int_parsing",
                        "loc": [where, name],
                        "msg": "Input should be a valid integer, unable to parse string as an "
                        "integer",
                        "input": body[name],
                    }
                ]
            )
        return value
    if kind is str and not isinstance(value, str):
        raise _BadRequest(
            [
                {
                    "type": "string_type",
                    "loc": [where, name],
                    "msg": "Input should be a valid string",
                    "input": value,
                }
            ]
        )
    return value


class EnvService:
    """Serves one environment under one AgentGym route family.

    Subclasses fix the route prefix, the reset field name and the payload shapes. The env is any
    `evol_jax.envs.Env`; its optional ``step_text(state, text) -> (state, ts, text)`` gives the
    server's handling of arbitrary strings (else ``action_from_text`` + ``step``), and its optional
    ``reset_error_message(state)`` marks resets the original server rejects.
    """

    prefix = ""
    hello = "This is environment {name}."
    index_field = "data_idx"
    index_default: int | None = None  # None: the reset field is required
    has_close = True
    finished_guard = True

    def __init__(self, env):
        self.env = env
        self.sessions: dict[int, Session] = {}
        self._next_id = 0
        self._reset = jax.jit(env.reset)
        self._step = jax.jit(env.step)

    # ---------------------------------------------------------------------------- env calls
    def env_reset(self, idx: int, key_seed: int = 0):
        state, ts = self._reset(jax.random.key(key_seed), jnp.int32(idx))
        err = getattr(self.env, "reset_error_message", None)
        message = err(state) if err is not None else None
        return state, ts, message

    def env_step(self, state, text: str):
        if hasattr(self.env, "step_text"):
            out = self.env.step_text(state, text)
            if len(out) == 3:
                return out
            state, ts = out
            return state, ts, self.env.render_text(state)
        params = inspect.signature(self.env.action_from_text).parameters
        try:
            if "state" in params:
                action = self.env.action_from_text(text, state)
            else:
                action = self.env.action_from_text(text)
        except InvalidAction as e:
            return state, None, e.message
        state, ts = self._step(state, jnp.int32(action))
        return state, ts, self.env.render_text(state)

    # ----------------------------------------------------------------------------- checks
    def check(self, sid: int, is_reset: bool = False) -> Session:
        if sid not in self.sessions:
            raise NameError(f"The id {sid} is not valid.")
        sess = self.sessions[sid]
        if sess.info.get("deleted"):
            raise NameError(f"The task with environment {sid} has been deleted.")
        if self.finished_guard and not is_reset and sess.info.get("done"):
            raise NameError(f"The task with environment {sid} has finished.")
        return sess

    # ---------------------------------------------------------------------------- payloads
    def create(self, body) -> Any:
        sid = self._next_id
        self._next_id += 1
        self.sessions[sid] = Session()
        return {"id": sid}

    def reset(self, body) -> Any:
        sid = _field(body, "id", int)
        idx = _field(body, self.index_field, int, required=self.index_default is None)
        idx = self.index_default if idx is None else idx
        try:
            sess = self.check(sid, is_reset=True)
            state, ts, message = self.env_reset(idx)
            if message is not None:
                return {"error": message}
        except Exception as e:  # upstream turns every failure into {"error": str(e)}
            return {"error": str(e)}
        obs = self.env.render_text(state)
        sess.state, sess.observation = state, obs
        return self.reset_payload(sid, sess, idx, obs, ts)

    def reset_payload(self, sid, sess, idx, obs, ts) -> Any:
        sess.info = {"observation": obs, "done": False, "reward": 0, "deleted": False}
        return {"observation": obs, "reward": 0, "done": False}

    def step(self, body) -> Any:
        sid = _field(body, "id", int)
        text = _field(body, "action", str)
        try:
            sess = self.check(sid)
            if sess.state is None:
                raise KeyError(sid)
            state, ts, obs = self.env_step(sess.state, text)
        except KeyError as e:
            return {"error": str(e)}
        except Exception as e:
            return {"error": str(e)}
        sess.state, sess.observation = state, obs
        return self.step_payload(sess, state, ts, obs)

    def step_payload(self, sess, state, ts, obs) -> Any:
        reward = _num(ts.reward) if ts is not None else 0
        done = bool(ts.done) if ts is not None else False
        sess.info.update(
            {"observation": obs, "reward": sess.info.get("reward", 0) + reward, "done": done}
        )
        return {"observation": obs, "reward": reward, "done": done}

    def observation(self, sid: int) -> Any:
        try:
            return self.check(sid).info["observation"]
        except Exception as e:
            return {"error": str(e)}

    def detail(self, sid: int) -> Any:
        try:
            return dict(self.check(sid).info)
        except Exception as e:
            return {"error": str(e)}

    def close(self, body) -> Any:
        sid = _field(body, "id", int)
        sess = self.sessions.get(sid)
        if sess is None or sess.info.get("deleted"):
            return False
        sess.info["deleted"] = True
        sess.state = None  # free the device state
        return True

    def extra_routes(self) -> list:
        return []


class MazeService(EnvService):
    """AgentGym's LMRL-Gym maze routes (``/maze/*``)."""

    prefix = "/maze"
    hello = "This is environment LMRL-Gym."
    index_field = "game"
    has_close = False

    def reset_payload(self, sid, sess, idx, obs, ts):
        sess.info = {
            "maze_name": "double_t_maze",
            "observation": obs,
            "done": False,
            "reward": 0,
            "deleted": False,
        }
        return {"observation": obs}

    def step_payload(self, sess, state, ts, obs):
        if bool(state.success):
            reward = 1.0
        elif obs == "Failure\n":
            reward = -1.0
        else:
            reward = 0
        done = bool(ts.done)
        sess.info.update({"observation": obs, "reward": sess.info["reward"] + reward, "done": done})
        return {"observation": obs, "reward": reward, "done": done}

    def extra_routes(self):
        from evol_jax.envs.maze import ACTIONS

        async def available_actions(request):
            return web.json_response(list(ACTIONS))

        return [web.get(self.prefix + "/available_actions", available_actions)]


class WordleService(EnvService):
    """AgentGym's LMRL-Gym wordle routes (``/wordle/*``)."""

    prefix = "/wordle"
    hello = "This is environment LMRL-Gym."
    index_field = "seed"
    has_close = False

    def create(self, body):
        payload = super().create(body)
        # Upstream builds the game at create time with an unseeded rng: stepping before a reset
        # works there and plays a random game.
        state, _, _ = self.env_reset(int.from_bytes(os.urandom(3), "little"))
        self.sessions[payload["id"]].state = state
        return payload

    def reset_payload(self, sid, sess, idx, obs, ts):
        sess.info.update(
            {"seed": idx, "observation": obs, "done": False, "reward": 0, "deleted": False}
        )
        return {"id": sid, "observation": obs}

    def step_payload(self, sess, state, ts, obs):
        reward = 0.0 if obs == "invalid word" else int(float(ts.reward))
        done = bool(ts.done)
        sess.info.update({"observation": obs, "reward": sess.info["reward"] + reward, "done": done})
        return {"observation": obs, "reward": reward, "done": done}

    def extra_routes(self):
        async def filtered_vocab(request):
            try:
                sid = _field(dict(request.query), "id", int, where="query")
            except _BadRequest as e:
                return web.json_response({"detail": e.detail}, status=422)
            try:
                sess = self.check(sid)
                return web.json_response(self.env.filtered_words(sess.state))
            except Exception as e:
                return web.json_response({"error": str(e)})

        return [web.get(self.prefix + "/filtered_vocab", filtered_vocab)]


class BabyAIService(EnvService):
    """AgentGym's BabyAI routes: reset and step replies carry ``score`` (and reset ``deleted``)."""

    hello = "This is environment BabyAI."

    def _score(self, state, fallback):
        score = getattr(state, "score", None)
        return _num(score) if score is not None else fallback

    def reset_payload(self, sid, sess, idx, obs, ts):
        score = self._score(sess.state, 0)
        sess.info = {"observation": obs, "reward": 0, "score": score, "done": False,
                     "deleted": False}  # fmt: skip
        return {"observation": obs, "reward": 0, "score": score, "deleted": False, "done": False}

    def step_payload(self, sess, state, ts, obs):
        reward = _num(ts.reward) if ts is not None else 0
        score = self._score(state, _num(sess.info.get("score", 0) + reward))
        done = bool(ts.done) if ts is not None else False
        sess.info.update({"observation": obs, "reward": reward, "score": score, "done": done})
        return {"observation": obs, "reward": reward, "score": score, "done": done}

    def observation(self, sid):
        try:
            info = self.check(sid).info
            keys = ("observation", "reward", "score", "done", "deleted")
            return {k: info[k] for k in keys}
        except Exception as e:
            return {"error": str(e)}


class TextCraftService(EnvService):
    """AgentGym's TextCraft routes: ``/create`` resets to ``data_idx = id``; no finished guard."""

    hello = "This is environment TextCraft."
    finished_guard = False
    index_default = 0  # upstream's body model defaults data_idx to 0

    def create(self, body):
        payload = super().create(body)
        sid = payload["id"]
        out = self.reset({"id": sid, "data_idx": sid})
        if "error" in out:
            return out
        return {"id": sid, **{k: v for k, v in out.items() if k != "id"}}

    def reset_payload(self, sid, sess, idx, obs, ts):
        sess.info = {"observation": obs, "done": False, "reward": 0, "deleted": False}
        return {"id": sid, "observation": obs, "done": False, "reward": 0}


SERVICES = {
    "maze": MazeService,
    "wordle": WordleService,
    "babyai": BabyAIService,
    "textcraft": TextCraftService,
}


def build_service(name: str, agentgym_compat: bool = True, **options) -> EnvService:
    """The service for env ``name`` (unknown names get the generic AgentGym routes)."""
    options = {"agentgym_compat": agentgym_compat, "max_rounds": SERVER_MAX_ROUNDS, **options}
    env = make(name, **options)
    return SERVICES.get(name.lower(), EnvService)(env)


def build_app(services: list[EnvService]) -> web.Application:
    """An aiohttp application serving ``services`` (their route prefixes must differ)."""
    app = web.Application(middlewares=[_fastapi_errors])
    prefixes = [s.prefix for s in services]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"serve: two environments want the same routes: {prefixes}")
    hello = services[0].hello.format(name=services[0].env.name)

    async def root(request):
        return web.json_response(hello)

    routes = [web.get("/", root)]
    for svc in services:
        routes += _service_routes(svc)
    app.add_routes(routes)
    return app


@web.middleware
async def _fastapi_errors(request, handler):
    """Unknown routes and methods answer as FastAPI does (JSON ``detail``), never a crash."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status in (404, 405):
            text = "Not Found" if e.status == 404 else "Method Not Allowed"
            return web.json_response({"detail": text}, status=e.status)
        raise
    except Exception as e:  # a bug in a handler: report it the way uvicorn would
        return web.Response(status=500, text=f"Internal Server Error: {type(e).__name__}")


async def _json_body(request):
    if not request.body_exists:
        return None
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError as e:
        raise _BadRequest(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", e.pos],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": e.msg},
                }
            ]
        ) from None


def _service_routes(svc: EnvService) -> list:
    def post(fn, needs_body=True):
        async def handler(request):
            try:
                body = await _json_body(request)
                return web.json_response(fn(body))
            except _BadRequest as e:
                return web.json_response({"detail": e.detail}, status=422)

        return handler

    def get(fn):
        async def handler(request):
            try:
                sid = _field(dict(request.query), "id", int, where="query")
            except _BadRequest as e:
                return web.json_response({"detail": e.detail}, status=422)
            return web.json_response(fn(sid))

        return handler

    p = svc.prefix
    routes = [
        web.post(p + "/create", post(svc.create)),
        web.post(p + "/reset", post(svc.reset)),
        web.post(p + "/step", post(svc.step)),
        web.get(p + "/observation", get(svc.observation)),
        web.get(p + "/detail", get(svc.detail)),
    ]
    if svc.has_close:
        routes.append(web.post(p + "/close", post(svc.close)))
    return routes + svc.extra_routes()


async def _serve(services, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(services))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # the real port when asked for port 0
    print(f"EVOL_JAX_SERVE_READY http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", required=True, help="maze, wordle, lmrlgym (both), babyai, ...")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=36001, help="0 picks a free port (printed)")
    ap.add_argument("--corrected", action="store_true", help="agentgym_compat=False")
    ap.add_argument("--vocab", default=None, help="wordle vocabulary file (default: built-in)")
    args = ap.parse_args(argv)
    names = ["maze", "wordle"] if args.env == "lmrlgym" else args.env.split(",")
    services = []
    for name in names:
        opts = {"vocab": args.vocab} if name == "wordle" and args.vocab else {}
        services.append(build_service(name, agentgym_compat=not args.corrected, **opts))
    try:
        asyncio.run(_serve(services, args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
