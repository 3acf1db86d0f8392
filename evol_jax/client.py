"""Asynchronous pooled client for AgentGym HTTP environment servers (ours or the originals).

One `AgentGymClient` holds one aiohttp connection pool to one server and talks to many env ids at
once: AgentGym's own client runs one episode per process, one blocking call per step.

::

    async def main(policy):  # policy(idx, observation, history) -> action text
        async with AgentGymClient("http://127.0.0.1:36001", env="maze") as client:
            batch = await client.run_episodes(range(25), policy, max_rounds=15, concurrency=16)
        print(batch.success_rate, sorted(batch.failed))

Behaviour:

* Every request has a timeout (``timeout_s``). Requests that are safe to repeat (create, reset,
  GETs, close) are retried ``retries`` times with exponential back-off on connection errors,
  timeouts and 5xx replies. ``/step`` is not idempotent: it is retried only when the connection
  could not be opened (the request never reached the server).
* A ``{"error": ...}`` reply (AgentGym answers errors with HTTP 200) raises `EnvServerError`
  carrying the message, the route and the env id; other HTTP errors raise `EnvHTTPError`.
* `run_episodes` runs many episodes concurrently (bounded by ``concurrency``) and returns every
  episode's transcript; an episode that fails (server gone, error reply) keeps the steps it
  collected and is listed in ``failed`` with the reason. Env ids are closed afterwards where the
  server has a close route (the official WebShop server leaks envs that are never closed).
* `close` closes the pool; use ``async with``.

Route families: ``env="maze"`` / ``"wordle"`` use the LMRL-Gym server's ``/maze/*`` and
``/wordle/*`` routes with ``game`` / ``seed`` as the reset field; anything else uses ``/create``,
``/reset {id, data_idx}``, ``/step``, ``/close``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from evol_jax.envs.base import success_threshold


class EnvHTTPError(RuntimeError):
    """The server could not be reached or replied with an HTTP error."""


class EnvServerError(RuntimeError):
    """The server replied ``{"error": message}``."""

    def __init__(self, message: str, route: str, env_id: int | None = None):
        super().__init__(f"{route} (env id {env_id}): {message!r}")
        self.message = message
        self.route = route
        self.env_id = env_id


ROUTES = {
    # env: (prefix, reset field, has close route)
    "maze": ("/maze", "game", False),
    "wordle": ("/wordle", "seed", False),
}


@dataclass
class Episode:
    """One episode's transcript as the server replied it."""

    idx: int
    env_id: int | None = None
    reset: Any = None
    actions: list[str] = field(default_factory=list)
    replies: list[dict] = field(default_factory=list)
    done: bool = False
    error: str | None = None

    @property
    def reward(self) -> float:
        """The last step's reward (AgentGym's trajectory reward); 0 before any step."""
        for r in reversed(self.replies):
            if "reward" in r:
                return float(r["reward"])
        return 0.0


@dataclass
class BatchResult:
    episodes: dict[int, Episode]  # idx -> episode (complete or partial)
    failed: dict[int, str]  # idx -> reason, for episodes that did not finish normally
    env: str | None = None  # environment name; `success_rate` needs it (set by `run_episodes`)

    @property
    def completed(self) -> list[int]:
        return sorted(i for i in self.episodes if i not in self.failed)

    @property
    def success_rate(self) -> float:
        """Fraction of completed episodes whose last reward is above the env's success threshold
        (`evol_jax.envs.base.success_threshold`, the rule of the sampler's records and AgentEvol's
        filter: BabyAI pays ``1 - 0.9 t/T`` on success, SciWorld scores 0-100); 0 with none."""
        if self.env is None:
            raise ValueError(
                "BatchResult.success_rate: env is not set (the success threshold depends on it)"
            )
        threshold = success_threshold(self.env)
        done = self.completed
        return sum(self.episodes[i].reward > threshold for i in done) / max(1, len(done))


Policy = Callable[[int, str, list[tuple[str, dict]]], Any]


class AgentGymClient:
    """Pooled asynchronous client; see the module docstring.

    Args:
      base_url: ``http://host:port`` of the server.
      env: environment name (selects the route family).
      max_connections: connection-pool size.
      timeout_s: per-request timeout.
      retries: extra attempts for retry-safe requests.
      backoff_s: first back-off delay (doubles each retry).
    """

    def __init__(
        self,
        base_url: str,
        env: str,
        max_connections: int = 64,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.1,
    ):
        if retries < 0 or timeout_s <= 0 or max_connections < 1:
            raise ValueError(
                "AgentGymClient: need retries >= 0, timeout_s > 0, max_connections >= 1"
            )
        self.base_url = base_url.rstrip("/")
        self.env = env.lower()
        self.prefix, self.reset_field, self.has_close = ROUTES.get(self.env, ("", "data_idx", True))
        self.retries, self.backoff_s = retries, backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self):
        self._ensure()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        """Closes the connection pool (server-side envs are closed by `close_env`)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        route: str,
        json_body: dict | None = None,
        params: dict | None = None,
        idempotent: bool = True,
        env_id: int | None = None,
    ) -> Any:
        """One call; returns the decoded JSON reply or raises (see the module docstring)."""
        session = self._ensure()
        url = self.base_url + route
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                async with session.request(method, url, json=json_body, params=params) as resp:
                    if resp.status >= 500 and idempotent and not last:
                        raise _Retry(f"HTTP {resp.status}")
                    if resp.status != 200:
                        text = await resp.text()
                        raise EnvHTTPError(f"{method} {route}: HTTP {resp.status}: {text[:300]}")
                    payload = await resp.json(content_type=None)
                break
            except _Retry:
                pass
            except aiohttp.ClientConnectorError as e:
                # The connection was never opened: safe to retry even a step.
                if last:
                    raise EnvHTTPError(f"{method} {route}: cannot connect: {e}") from e
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                if last or not idempotent:
                    kind = type(e).__name__
                    raise EnvHTTPError(f"{method} {route}: {kind}: {e}") from e
            await asyncio.sleep(delay)
            delay *= 2
        if isinstance(payload, dict) and "error" in payload:
            raise EnvServerError(payload["error"], route, env_id)
        return payload

    # ------------------------------------------------------------------------------ routes
    async def create(self) -> int:
        reply = await self.request("POST", self.prefix + "/create", {})
        return int(reply["id"])

    async def reset(self, env_id: int, idx: int) -> dict:
        body = {"id": env_id, self.reset_field: idx}
        return await self.request("POST", self.prefix + "/reset", body, env_id=env_id)

    async def step(self, env_id: int, action: str) -> dict:
        body = {"id": env_id, "action": action}
        return await self.request(
            "POST", self.prefix + "/step", body, idempotent=False, env_id=env_id
        )

    async def observation(self, env_id: int) -> Any:
        return await self.request(
            "GET", self.prefix + "/observation", params={"id": env_id}, env_id=env_id
        )

    async def close_env(self, env_id: int) -> bool | None:
        """``POST /close``; None where the server has no close route (LMRL-Gym)."""
        if not self.has_close:
            return None
        return await self.request("POST", self.prefix + "/close", {"id": env_id}, env_id=env_id)

    # ------------------------------------------------------------------------------- batch
    async def run_episode(self, idx: int, policy: Policy, max_rounds: int) -> Episode:
        """One episode; on failure the partial `Episode` is attached to the exception."""
        ep = Episode(idx=idx)
        try:
            ep.env_id = await self.create()
            ep.reset = await self.reset(ep.env_id, idx)
            obs = _observation(ep.reset)
            for _ in range(max_rounds):
                history = list(zip(ep.actions, ep.replies, strict=True))
                action = policy(idx, obs, history)
                if inspect.isawaitable(action):
                    action = await action
                reply = await self.step(ep.env_id, action)
                ep.actions.append(action)
                ep.replies.append(reply)
                obs = reply.get("observation", "")
                if reply.get("done"):
                    ep.done = True
                    break
        except Exception as e:
            ep.error = f"{type(e).__name__}: {e}"
            raise _EpisodeFailed(ep) from e
        finally:
            if ep.env_id is not None and self.has_close:
                try:
                    await self.close_env(ep.env_id)
                except Exception:
                    pass  # the server may be gone; the episode's outcome stands
        return ep

    async def run_episodes(
        self, indices: Iterable[int], policy: Policy, max_rounds: int, concurrency: int = 32
    ) -> BatchResult:
        """Runs one episode per index, at most ``concurrency`` at a time.

        Args:
          indices: instance indices (``data_idx`` / ``game`` / ``seed``); must be distinct.
          policy: ``policy(idx, observation, history) -> action text`` (may be async);
            ``history`` is the list of ``(action, reply)`` so far.
          max_rounds: steps per episode at most (AgentGym: maze 15, babyai/textcraft 20).
          concurrency: episodes in flight.

        Returns:
          `BatchResult`: every episode (complete or partial) and the failed ones with reasons.
        """
        indices = list(indices)
        if len(set(indices)) != len(indices):
            raise ValueError("run_episodes: indices must be distinct")
        sem = asyncio.Semaphore(concurrency)
        episodes: dict[int, Episode] = {}
        failed: dict[int, str] = {}

        async def one(idx):
            async with sem:
                try:
                    episodes[idx] = await self.run_episode(idx, policy, max_rounds)
                except _EpisodeFailed as f:
                    episodes[idx] = f.episode
                    failed[idx] = f.episode.error

        await asyncio.gather(*(one(i) for i in indices))
        return BatchResult(episodes=dict(sorted(episodes.items())), failed=failed, env=self.env)


def _observation(reply: Any) -> str:
    if isinstance(reply, dict):
        return str(reply.get("observation", ""))
    return str(reply)


class _Retry(Exception):
    pass


class _EpisodeFailed(Exception):
    def __init__(self, episode: Episode):
        super().__init__(episode.error)
        self.episode = episode
