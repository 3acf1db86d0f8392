"""Gato evaluation CLI (spec section 9): normalised scores per task, per-domain means, a table and
a bar chart.

    python -m gato_jax.evaluate --workdir /tmp/run --tasks cartpole,pendulum --episodes 10 \
        --out /tmp/eval [--tokenizer /tmp/gato_data/tokenizer.model] [--max_steps 200]

For every environment task (:mod:`gato_jax.tasks`):

1. a successful demonstration is recorded with the task's expert (seeds ``demo_seed``,
   ``demo_seed + 1``, ... until one scores ``>= demo_min_score``; otherwise the best of
   ``demo_attempts``); its first ``prompt_tokens`` tokens prompt every rollout (spec section 6);
2. ``--episodes`` rollouts run **at once** in a batched :class:`~gato_jax.policy.GatoPolicy`
   (seeds ``env_seed + seed, env_seed + seed + 1, ...``, default ``env_seed`` 4,000,000:
   disjoint from the generator's training seeds ``0, 1, ...``, its return seeds and the
   demonstration seeds, so rollouts start from held-out initial states; finished environments
   idle until all are done);
3. the normalised score is ``100 * (R - random_return) / (expert_return - random_return)``
   with ``R`` the mean return (:func:`normalized_score`; returns from
   ``gato_jax/task_returns.json``): 0 = uniform random policy, 100 = the expert.

``vl`` / ``text`` tasks have no environment and no return: their row reports the per-token
perplexity of the text (captions / sentences) under the model, teacher-forced, on
``--episodes`` freshly sampled episodes (seeds from ``sample_seed + seed``, default
3,000,000: disjoint from the generator's seeds, so held out), and no normalised score. For
``vl`` tasks (``image | caption``) every image of those episodes is also captioned greedily
(:func:`decode_captions`: KV-cached, restricted to the text vocabulary, cut at the first ".")
and compared with its reference: exact-match rate, token accuracy and sample pairs (printed
under the table).
``--max_steps`` below a task's own limit caps its episodes for a quick look; their returns are
reported but not normalised (the random/expert returns are for full-length episodes).

Outputs in ``--out``: ``results.json`` (per task: returns, normalised score, demonstration,
timing; summary: per-domain mean score and the fraction of tasks ``>= 50``), ``results.md``
(the same as a markdown table) and ``scores.png`` (bar chart of normalised scores, one colour
per domain).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gato_jax.policy import GatoPolicy, load_checkpoint

SAMPLE_SEED = 3_000_000  # first seed of evaluated vl / text episodes (held out from datagen's)
EVAL_SEED = 4_000_000  # first seed of evaluated environment rollouts (held out from datagen's)


def normalized_score(episode_return: float, random_return: float, expert_return: float) -> float:
    """``100 * (R - random) / (expert - random)``: 0 = random policy, 100 = expert.

    Raises:
      ValueError: for non-finite returns or ``expert_return == random_return``.
    """
    vals = (episode_return, random_return, expert_return)
    if not all(math.isfinite(float(v)) for v in vals):
        raise ValueError(f"normalized_score: non-finite return in {vals}")
    if expert_return == random_return:
        raise ValueError(f"normalized_score: expert_return == random_return == {random_return}")
    return 100.0 * (float(episode_return) - random_return) / (expert_return - random_return)


def summarize(rows: Sequence[Mapping[str, Any]], threshold: float = 50.0) -> dict[str, Any]:
    """Per-domain mean normalised score and the fraction of scored tasks ``>= threshold``.

    Args:
      rows: per-task dicts with ``domain`` and ``score`` (None for unscored vl/text tasks).
      threshold: the "fraction of tasks above" threshold (spec: 50 = half of the expert).

    Returns:
      ``{"domain_mean": {domain: mean}, "mean": overall mean over scored tasks,
      "fraction_at_least": fraction, "threshold": threshold, "scored_tasks": n}``.
    """
    scored = [r for r in rows if r.get("score") is not None]
    domains: dict[str, list[float]] = {}
    for r in scored:
        domains.setdefault(r["domain"], []).append(float(r["score"]))
    return {
        "domain_mean": {d: float(np.mean(v)) for d, v in sorted(domains.items())},
        "mean": float(np.mean([r["score"] for r in scored])) if scored else None,
        "fraction_at_least": (
            float(np.mean([r["score"] >= threshold for r in scored])) if scored else None
        ),
        "threshold": threshold,
        "scored_tasks": len(scored),
    }


# ------------------------------------------------------------------------------ rollouts


def _stack_tree(items: list) -> Any:
    first = items[0]
    if isinstance(first, Mapping):
        return {k: _stack_tree([it[k] for it in items]) for k in first}
    if isinstance(first, str):
        return list(items)
    return np.stack([np.asarray(x) for x in items])


def record_demonstration(
    task, seed: int, *, attempts: int = 5, min_score: float = 80.0, keep_steps: int | None = None
) -> tuple[dict, float, int]:
    """Rolls out the task's expert until an episode scores ``>= min_score`` (or the best of
    ``attempts``).

    Args:
      task: a :class:`gato_jax.tasks.Task` with an environment and an expert.
      seed: first episode seed.
      attempts: episodes tried at most.
      min_score: normalised score that counts as successful (needs the task's returns; without
        them the first episode is taken).
      keep_steps: keep only the first steps of the recording (a prompt uses its first tokens).

    Returns:
      ``(episode, return, seed)``: the episode as ``{"observation": ..., "action": ...}`` with
      a leading time axis, ready for :meth:`GatoPolicy.reset`.
    """
    if task.expert is None or task.from_env_action is None:
        raise ValueError(f"task {task.name!r} has no expert to record a demonstration with")
    best = None
    for k in range(attempts):
        s = seed + k
        env, obs = task.new_episode(s)
        expert = task.expert(s)
        expert.reset(env, obs)
        observations, actions, total = [], [], 0.0
        for _ in range(task.max_steps):
            a = expert.act(obs, env)
            if keep_steps is None or len(observations) < keep_steps:
                observations.append(task.observation(obs, env))
                actions.append(task.from_env_action(a))
            obs, r, term, trunc, _ = env.step(a)
            total += float(r)
            if term or trunc:
                break
        env.close()
        episode = {"observation": _stack_tree(observations), "action": _stack_tree(actions)}
        if best is None or total > best[1]:
            best = (episode, total, s)
        try:
            if normalized_score(total, task.random_return, task.expert_return) >= min_score:
                break
        except ValueError:
            break
    return best


def rollout(policy: GatoPolicy, task, seeds: Sequence[int], max_steps: int) -> list[float]:
    """Runs ``len(seeds)`` episodes at once (one per policy row); returns their returns."""
    if len(seeds) != policy.batch_size:
        raise ValueError(f"{len(seeds)} seeds for a policy of batch {policy.batch_size}")
    envs, obs = zip(*[task.new_episode(s) for s in seeds], strict=True)
    obs = list(obs)
    returns = [0.0] * len(seeds)
    live = [True] * len(seeds)
    for _ in range(max_steps):
        if not any(live):
            break
        inputs = [
            task.observation(o, e) if ok else None for o, e, ok in zip(obs, envs, live, strict=True)
        ]
        actions = policy.act_batch(inputs)
        for i, a in enumerate(actions):
            if not live[i]:
                continue
            obs[i], r, term, trunc, _ = envs[i].step(a)
            returns[i] += float(r)
            live[i] = not (term or trunc)
    for e in envs:
        e.close()
    return returns


# ------------------------------------------------------------------------------ captions


def caption_inputs(spec, images: np.ndarray, max_tokens: int | None = None):
    """Model inputs for captioning: each image as a one-step episode ``image | caption``.

    The sequences are built by the training code (:func:`gato_jax.sequence.build_batch`,
    window ``start``, no prompt) with a placeholder caption of ``max_tokens`` ids, so the
    image tokens, the separator and the caption's local positions are exactly training's.

    Args:
      spec: the task's :class:`~gato_jax.spec.EpisodeSpec` (one image observation, one text
        action field, e.g. ``vl_shapes``).
      images: uint8 ``[B, H, W, C]``.
      max_tokens: caption tokens to decode (default: the text field's maximum).

    Returns:
      ``(inputs, prefix_len, caption_local)``: :class:`~gato_jax.sequence.GatoInputs`
      ``[B, L]``, int32 ``[B]`` tokens up to and including '|', int32 ``[B, max_tokens]``
      local positions of the caption tokens.

    Raises:
      ValueError: a spec without exactly one text action field, or a window too short for the
        image, the separator and ``max_tokens`` caption tokens.
    """
    from gato_jax.sequence import build_batch, encode_episode, stack_episodes
    from gato_jax.spec import TokenKind

    texts = [f for f in spec.action if f.spec.kind == "text"]
    if len(texts) != 1 or len(spec.action) != 1:
        raise ValueError(f"captioning needs exactly one text action field, spec has {spec.action}")
    field = texts[0]
    n = field.num_tokens if max_tokens is None else int(max_tokens)
    if not 1 <= n <= field.num_tokens:
        raise ValueError(f"max_tokens={n} outside [1, {field.num_tokens}]")
    images = np.asarray(images)
    obs_names = [f.path[-1] for f in spec.observation]
    if len(obs_names) != 1:
        raise ValueError(f"captioning needs one image observation field, spec has {obs_names}")
    arrays = [
        encode_episode(
            {
                "observation": {obs_names[0]: img[None]},
                "action": {field.path[-1]: [np.zeros(n, np.int32)]},
            },
            spec,
        )
        for img in images
    ]
    keys = jax.random.split(jax.random.key(0), len(arrays))
    inputs = build_batch(stack_episodes(arrays), keys, spec, prompt_mode="none", window="start")
    kinds = np.asarray(inputs.kinds)
    sep = np.argmax(kinds == TokenKind.SEPARATOR, axis=1)
    has_sep = (kinds == TokenKind.SEPARATOR).any(axis=1)
    room = kinds.shape[1] - sep - 1
    if not has_sep.all() or (room < n).any() or bool(np.asarray(inputs.patch_overflow).any()):
        raise ValueError(
            f"window of {kinds.shape[1]} tokens cannot hold the image, '|' and {n} caption tokens "
            "(raise TokenizerConfig.seq_len / max_patches)"
        )
    local = np.asarray(inputs.local_positions)
    caption_local = np.stack([local[b, s + 1 : s + 1 + n] for b, s in enumerate(sep)])
    return inputs, (sep + 1).astype(np.int32), caption_local.astype(np.int32)


_DECODERS: dict = {}


def _caption_decoder(model_config, num_tokens: int, vocab: int):
    """Jitted greedy KV-cached decoder (one compile per model config / length / vocabulary)."""
    key = (model_config, num_tokens, vocab)
    if key in _DECODERS:
        return _DECODERS[key]
    from core_jax.nn import KVCache, restrict_logits
    from gato_jax.models import Gato
    from gato_jax.policy import ModelInputs

    model = Gato(model_config)

    @jax.jit
    def decode(params, inputs, prefix_len, caption_local):
        b, length = inputs.tokens.shape
        prefix = ModelInputs(
            tokens=inputs.tokens,
            local_positions=inputs.local_positions,
            patch_index=inputs.patch_index,
            patches=inputs.patches,
            patch_rows=inputs.patch_rows,
            patch_cols=inputs.patch_cols,
        )
        cache = KVCache.init(model_config.transformer, b, length)
        # Prefill the image and '|' (the placeholder caption after them is right padding:
        # written but not counted, then overwritten by the decoded tokens).
        _, hidden, cache = model.apply(
            {"params": params}, prefix, cache=cache, num_valid=prefix_len, return_hidden=True
        )
        h = jnp.take_along_axis(hidden, (prefix_len - 1)[:, None, None], axis=1)[:, 0]
        first = model.apply(
            {"params": params}, h, method=lambda m, x: m.transformer.logits_from_hidden(x)
        )
        ps, c = inputs.patches.shape[-3], inputs.patches.shape[-1]

        def pick(lg):
            return jnp.argmax(restrict_logits(lg, id_range=(0, vocab)), axis=-1).astype(jnp.int32)

        def body(carry, i):
            cache, lg = carry
            tok = pick(lg)
            step = ModelInputs.token_step(
                tok[:, None], jax.lax.dynamic_slice_in_dim(caption_local, i, 1, axis=1), ps, c
            )
            new_lg, cache = model.apply({"params": params}, step, cache=cache)
            return (cache, new_lg[:, 0]), tok

        (_, last), toks = jax.lax.scan(body, (cache, first), jnp.arange(num_tokens - 1))
        return jnp.concatenate([toks.T, pick(last)[:, None]], axis=1)

    _DECODERS[key] = decode
    return decode


def decode_captions(
    model_config, params, spec, images: np.ndarray, *, vocab: int, max_tokens: int | None = None
) -> np.ndarray:
    """Greedy captions of ``images``: the image tokens and '|' are prefilled into a KV cache,
    then the caption tokens are decoded one at a time, each the argmax of the logits restricted
    to the text vocabulary ``[0, vocab)``.

    Args:
      model_config: :class:`~gato_jax.configs.base.GatoModelConfig`.
      params: the model's parameters.
      spec: the task spec (``image | caption``; see :func:`caption_inputs`).
      images: uint8 ``[B, H, W, C]``.
      vocab: text ids allowed (the tokenizer's ``vocab_size``; at most the spec's
        ``text_vocab_size``).
      max_tokens: tokens to decode (default: the caption field's maximum).

    Returns:
      int32 ``[B, max_tokens]`` ids (decode with the tokenizer and cut at the caption end).
    """
    if not 1 <= vocab <= spec.cfg.text_vocab_size:
        raise ValueError(f"vocab={vocab} outside [1, {spec.cfg.text_vocab_size}]")
    inputs, prefix_len, caption_local = caption_inputs(spec, images, max_tokens)
    fn = _caption_decoder(model_config, caption_local.shape[1], int(vocab))
    return np.asarray(fn(params, inputs, jnp.asarray(prefix_len), jnp.asarray(caption_local)))


def cut_caption(text: str, end: str = ".") -> str:
    """The caption up to and including the first ``end`` (the whole text if there is none)."""
    i = text.find(end)
    return (text if i < 0 else text[: i + len(end)]).strip()


def caption_scores(task, model_config, params, seeds: Sequence[int], tokenizer, samples=5) -> dict:
    """Greedy captions of the images of ``task.sample_episode(seed)`` vs their references.

    Returns:
      ``caption_exact`` (fraction of captions equal to the reference), ``caption_token_acc``
      (fraction of reference tokens matched position by position by the decoded ids),
      ``captions`` (number scored) and ``caption_samples`` (the first ``samples``
      ``{"generated", "reference"}`` pairs).
    """
    if tokenizer is None:
        raise ValueError(f"task {task.name!r} has text: pass --tokenizer (SentencePiece model)")
    (field,) = task.spec.action
    obs_key = task.spec.observation[0].path[-1]
    images, refs = [], []
    for s in seeds:
        ep = task.sample_episode(s)
        images.extend(np.asarray(ep["observation"][obs_key]))
        refs.extend(ep["action"][field.path[-1]])
    ids = decode_captions(
        model_config, params, task.spec, np.stack(images), vocab=tokenizer.vocab_size
    )
    exact, matched, total, pairs = 0, 0, 0, []
    gens = []
    for row, ref in zip(ids, refs, strict=True):
        gen = cut_caption(tokenizer.decode(row))
        gens.append(gen)
        ref_ids = tokenizer.encode(ref)[: row.shape[0]]
        matched += int((row[: ref_ids.size] == ref_ids).sum())
        total += int(ref_ids.size)
        exact += int(gen == ref.strip())
        pairs.append({"generated": gen, "reference": ref.strip()})
    out = {
        "caption_exact": exact / len(refs),
        "caption_token_acc": matched / max(total, 1),
        "captions": len(refs),
        "caption_samples": pairs[:samples],
    }
    if task.parse_caption is not None:
        out["caption_attributes"] = caption_attribute_scores(task.parse_caption, gens, refs)
    return out


def caption_attribute_scores(parse, generated: Sequence[str], references: Sequence[str]) -> dict:
    """Per-attribute accuracy of parsed captions (tasks with a caption grammar).

    Objects are compared in order (the i-th described object with the i-th reference object);
    a reference object with no generated counterpart, or a generated caption outside the
    grammar, counts as wrong on every attribute.

    Returns:
      ``{"count": fraction of captions naming as many objects as the reference,
      "parsed": fraction of generated captions inside the grammar, attribute: fraction of
      reference objects whose attribute is matched, ...}``.
    """
    counts, parsed, hits, objects = 0, 0, {}, 0
    for gen, ref in zip(generated, references, strict=True):
        ref_objs = parse(ref)
        if ref_objs is None:
            raise ValueError(f"reference caption {ref!r} is outside the task's grammar")
        gen_objs = parse(gen)
        parsed += gen_objs is not None
        gen_objs = gen_objs or []
        counts += len(gen_objs) == len(ref_objs)
        objects += len(ref_objs)
        for i, r in enumerate(ref_objs):
            for k, v in r.items():
                hits[k] = hits.get(k, 0) + int(i < len(gen_objs) and gen_objs[i].get(k) == v)
    n = max(len(references), 1)
    return {
        "count": counts / n,
        "parsed": parsed / n,
        **{k: v / max(objects, 1) for k, v in hits.items()},
    }


def text_perplexity(model_config, params, task, seeds: Sequence[int], tokenizer) -> dict:
    """Teacher-forced per-token perplexity of the text of ``task.sample_episode(seed)``."""
    from gato_jax.models import Gato
    from gato_jax.sequence import build_batch, encode_episode, stack_episodes
    from gato_jax.train import gato_loss

    if tokenizer is None:
        raise ValueError(f"task {task.name!r} has text: pass --tokenizer (SentencePiece model)")
    spec = task.spec
    arrays = [encode_episode(task.sample_episode(s), spec, text_tokenizer=tokenizer) for s in seeds]
    batch = build_batch(
        stack_episodes(arrays), jax.random.split(jax.random.key(0), len(arrays)), spec,
        prompt_mode="none", window="start",
    )  # fmt: skip
    model = Gato(model_config)

    @jax.jit
    def metrics(params, batch):
        return gato_loss(model.apply({"params": params}, batch), batch)[1]

    m = jax.device_get(metrics(params, batch))
    # Text observations are "text" targets; a caption is a text *action* (vl_shapes).
    kind = "text" if any(f.spec.kind == "text" for f in spec.observation) else "action"
    n = float(m[f"{kind}_tokens"])
    loss = float(m[f"{kind}_loss"])
    return {"text_loss": loss, "perplexity": math.exp(loss), "text_tokens": n}


def evaluate(
    workdir: str,
    task_names: Sequence[str],
    *,
    episodes: int,
    seed: int = 0,
    demo_seed: int = 2_000_000,
    sample_seed: int = SAMPLE_SEED,
    env_seed: int = EVAL_SEED,
    demo_attempts: int = 5,
    demo_min_score: float = 80.0,
    max_steps: int | None = None,
    temperature: float = 0.0,
    prompt_tokens: int | None = None,
    tokenizer_path: str | None = None,
    step: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Evaluates a checkpoint on tasks; returns the JSON-able results (see the module doc)."""
    from gato_jax.tasks import get_task
    from gato_jax.tokenizer import TextTokenizer

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    cfg, params = load_checkpoint(workdir, step)
    if tokenizer_path is None and os.path.isfile(os.path.join(workdir, "tokenizer.model")):
        tokenizer_path = os.path.join(workdir, "tokenizer.model")
    tokenizer = TextTokenizer.load(tokenizer_path) if tokenizer_path else None
    tasks = [get_task(n, cfg.tokenizer) for n in task_names]  # unknown names fail here, early
    rows = []
    for task in tasks:
        t0 = time.perf_counter()
        # Rollouts and vl / text episodes use seeds far from the generator's (datagen uses
        # 0, 1, ...), so the model is scored on initial states and images it was not trained on.
        first = (env_seed if task.has_env else sample_seed) + seed
        seeds = [first + i for i in range(episodes)]
        row: dict[str, Any] = {"task": task.name, "domain": task.domain, "episodes": episodes}
        if not task.has_env:
            row.update(text_perplexity(cfg.model, params, task, seeds, tokenizer))
            if any(f.spec.kind == "text" for f in task.spec.action):
                row.update(caption_scores(task, cfg.model, params, seeds, tokenizer))
            row["score"] = None
        else:
            policy = GatoPolicy(
                cfg.model,
                params,
                task,
                batch_size=episodes,
                temperature=temperature,
                seed=seed,
                prompt_tokens=prompt_tokens,
                text_tokenizer=tokenizer,
            )
            min_step = max(1, policy.spec.tokens_per_step - policy.max_obs_tokens)
            keep = policy.prompt_tokens // min_step + 2
            demo, demo_return, used_seed = record_demonstration(
                task, demo_seed, attempts=demo_attempts, min_score=demo_min_score, keep_steps=keep
            )
            policy.reset(prompt_episode=demo if policy.prompt_tokens > 0 else None)
            limit = task.max_steps if max_steps is None else min(max_steps, task.max_steps)
            returns = rollout(policy, task, seeds, limit)
            mean = float(np.mean(returns))
            # Returns of capped episodes are not comparable with the full-length random and
            # expert returns (a capped Pendulum episode loses less reward whatever the policy),
            # so a capped run reports returns but no normalised score.
            capped = limit < task.max_steps
            known = math.isfinite(task.random_return) and math.isfinite(task.expert_return)
            row.update(
                mean_return=mean,
                std_return=float(np.std(returns)),
                returns=returns,
                random_return=task.random_return,
                expert_return=task.expert_return,
                score=(
                    normalized_score(mean, task.random_return, task.expert_return)
                    if known and not capped
                    else None
                ),
                max_steps=limit,
                capped=capped,
                demo_return=demo_return,
                demo_seed=used_seed,
                prompt_tokens=policy.prompt_tokens,
                context_len=policy.context_len,
            )
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        log(_row_line(row))
    return {
        "workdir": os.path.abspath(workdir),
        "config": {"d_model": cfg.model.transformer.d_model, "seq_len": cfg.tokenizer.seq_len},
        "temperature": temperature,
        "seed": seed,
        "env_seed": env_seed,
        "sample_seed": sample_seed,
        "tasks": rows,
        "summary": summarize(rows),
    }


def _json_safe(x):
    """NaN/Inf (tasks without measured returns) -> None, so the file is strict JSON."""
    if isinstance(x, Mapping):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _row_line(row: Mapping[str, Any]) -> str:
    if "caption_exact" in row:
        return (
            f"{row['task']}: caption perplexity {row['perplexity']:.2f}, exact-match "
            f"{100 * row['caption_exact']:.0f}%, token accuracy "
            f"{100 * row['caption_token_acc']:.0f}% ({row['captions']} held-out images)"
            + _attribute_text(row)
        )
    if "perplexity" in row:
        return f"{row['task']}: text perplexity {row['perplexity']:.2f}"
    score = "n/a" if row["score"] is None else f"{row['score']:.1f}"
    if row.get("capped"):
        score += f" (episodes capped at {row['max_steps']} steps: not comparable)"
    return f"{row['task']}: mean return {row['mean_return']:.2f}, normalised score {score}"


def _attribute_text(row: Mapping[str, Any]) -> str:
    attrs = row.get("caption_attributes")
    if not attrs:
        return ""
    return "; per object: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in attrs.items())


def _fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def markdown(results: Mapping[str, Any]) -> str:
    """The results as markdown: one row per task, then the per-domain summary."""
    lines = [
        "| task | domain | episodes | mean return | random | expert | normalised score | "
        "text perplexity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["tasks"]:
        lines.append(
            f"| {r['task']} | {r['domain']} | {r.get('episodes', '')} | "
            f"{_fmt(r.get('mean_return'), '.2f')} | {_fmt(r.get('random_return'), '.2f')} | "
            f"{_fmt(r.get('expert_return'), '.2f')} | {_fmt(r.get('score'))} | "
            f"{_fmt(r.get('perplexity'), '.2f')} |"
        )
    s = results["summary"]
    lines += ["", "| domain | mean normalised score |", "|---|---|"]
    lines += [f"| {d} | {v:.1f} |" for d, v in s["domain_mean"].items()]
    frac = s["fraction_at_least"]
    lines += [
        "",
        f"Mean normalised score over {s['scored_tasks']} scored tasks: {_fmt(s['mean'])}; "
        f"fraction of tasks >= {s['threshold']:.0f}: "
        f"{'n/a' if frac is None else f'{100 * frac:.0f}%'}.",
    ]
    for r in results["tasks"]:
        if "caption_exact" not in r:
            continue
        lines += [
            "",
            f"{r['task']}: greedy captions of {r['captions']} held-out images: exact match "
            f"{100 * r['caption_exact']:.0f}%, token accuracy {100 * r['caption_token_acc']:.0f}%"
            + _attribute_text(r),
            "",
            "| generated | reference |",
            "|---|---|",
        ]
        lines += [f"| {p['generated']} | {p['reference']} |" for p in r["caption_samples"]]
    return "\n".join(lines) + "\n"


def bar_chart(results: Mapping[str, Any], path: str) -> None:
    """Normalised score per task (bars coloured by domain; 0 = random, 100 = expert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["tasks"] if r.get("score") is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 2), 3.5))
    domains = sorted({r["domain"] for r in rows})
    colours = {d: plt.cm.tab10(i) for i, d in enumerate(domains)}
    ax.bar(
        range(len(rows)),
        [r["score"] for r in rows],
        color=[colours[r["domain"]] for r in rows],
    )
    ax.set_xticks(range(len(rows)), [r["task"] for r in rows], rotation=45, ha="right")
    for y, style in ((0, "-"), (50, ":"), (100, "--")):
        ax.axhline(y, color="grey", lw=0.8, ls=style)
    ax.set_ylabel("normalised score")
    ax.set_title("Gato: 0 = random, 100 = expert")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[d]) for d in domains]
    if handles:
        ax.legend(handles, domains, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a gato_jax.main run directory")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--episodes", type=int, default=10, help="rollouts per task (batched)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--seed", type=int, default=0, help="offset added to --env_seed / --sample_seed"
    )
    parser.add_argument(
        "--env_seed", type=int, default=EVAL_SEED, help="first environment rollout seed"
    )
    parser.add_argument("--demo_seed", type=int, default=2_000_000, help="first demo seed")
    parser.add_argument(
        "--sample_seed", type=int, default=SAMPLE_SEED, help="first vl/text sample seed"
    )
    parser.add_argument("--max_steps", type=int, help="cap episode length (default: the task's)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--prompt_tokens", type=int, help="default: the checkpoint's config")
    parser.add_argument("--tokenizer", help="SentencePiece model for text fields")
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    if not names:
        parser.error("--tasks is empty")
    try:
        results = evaluate(
            args.workdir,
            names,
            episodes=args.episodes,
            seed=args.seed,
            demo_seed=args.demo_seed,
            sample_seed=args.sample_seed,
            env_seed=args.env_seed,
            max_steps=args.max_steps,
            temperature=args.temperature,
            prompt_tokens=args.prompt_tokens,
            tokenizer_path=args.tokenizer,
            step=args.step,
        )
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(_json_safe(results), f, indent=2, allow_nan=False)
        f.write("\n")
    table = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    bar_chart(results, os.path.join(args.out, "scores.png"))
    print(table)
    print(f"wrote {args.out}/results.json, results.md, scores.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
