"""Gato input pipeline: RLDS episodes from TFDS datasets -> batches of :class:`GatoInputs`.

Sources are TFDS datasets in the RLDS layout: each example is an episode
``{"steps": Dataset({"observation": ..., "action": ..., "reward": ..., "is_first": ...,
"is_last": ..., "is_terminal": ...}), "episode_metadata": {...}}``.

* ``array_record`` datasets are read by random access through
  ``builder_from_directory(...).as_data_source(split)`` -- no TensorFlow at read time.
* ``tfrecord`` datasets (e.g. published RLDS datasets) are read once through
  ``builder.as_dataset`` (needs ``tensorflow``, the ``[rlds]`` extra); this process's shard of
  episodes is kept in host memory (convert big datasets to ``array_record``).

Per source (:class:`Source`): the task's :class:`~gato_jax.spec.EpisodeSpec` (given, or inferred
from the dataset's features by :func:`infer_episode_spec`) is checked against the dataset's
features before anything is read (:class:`DataError` names the dataset, the field and the shape
and dtype found vs expected); episodes below ``expert_fraction`` (0.8) of their task's expert
return are dropped (:func:`expert_return`, :func:`expert_filter`); the remaining episodes are
split over processes (process ``p`` of ``n`` keeps episodes ``p, p + n, ...``).

:class:`GatoDataPipeline` is a deterministic, resumable iterator of host batches (the same
interface as :class:`gato_jax.synthetic.SyntheticData`): batch ``i`` depends only on
``(seed, i, process_index)`` (:meth:`GatoDataPipeline.plan`): each row draws its source with the
mixture weights, an episode, a same-task prompt episode and a PRNG key; a grain
``MapDataset`` loads, validates and builds batches in ``num_threads`` threads ahead of the
consumer. ``state()`` / ``restore()`` save and restore the position with the checkpoint.

Windows: an episode longer than ``K = ceil(L / m) + 1`` steps (``m``: fewest tokens of a
step) is cropped on the host to ``K`` steps at a uniformly random step, and
:func:`gato_jax.sequence.build_batch` cuts the ``L``-token window at a uniformly random token
offset inside the crop (``cfg.window="random"``). Prompts (spec section 6,
:func:`gato_jax.prompt.sample_prompt`): the prompt kind is drawn from the row's key (25% of rows;
half from the episode end, half uniform); the prompt episode is cropped to its last ``Kp`` steps
(end prompts) or ``Kp`` steps at a random step (uniform prompts).

    >>> write_rlds_dataset(episodes, "/data", "toy", file_format="array_record")
    >>> sources = parse_data_spec("tfds:toy@/data*3,tfds:other@/data*1")
    >>> data = GatoDataPipeline(sources, tok_cfg, batch_size=8, seed=0)
    >>> batch = next(data)                     # GatoInputs of NumPy arrays, [8, L]
    >>> saved = data.state()                   # {"index": 1, "sources": "..."}
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from gato_jax.configs.tokenizer import TokenizerConfig
from gato_jax.prompt import PromptKind, sample_prompt
from gato_jax.sequence import GatoInputs, build_batch, encode_episode, stack_episodes
from gato_jax.spec import EpisodeSpec, Field, FieldSpec
from gato_jax.tokenizer import TextTokenizer

FILE_FORMATS = ("array_record", "tfrecord")
STEP_FLAGS = ("is_first", "is_last", "is_terminal")


class DataError(ValueError):
    """A dataset cannot be read as its spec says (names the dataset, field, found/expected)."""


# --------------------------------------------------------------------------------------------
# Expert-return filter (spec section 7; the window is the paper's section 3.1).


def expert_return(returns: Sequence[float] | np.ndarray, window: int | None = None) -> float:
    """Expert return of a task: the best mean return over ``W`` consecutive episodes.

    The paper (section 3.1): the expert return is the maximum over all windowed average
    returns, ``max_j sum_{i=j}^{j+W-1} R_i / W`` for ``j in [0, N - W]``, where episodes are in
    collection order, with ``W = min(1000, 0.1 N)``. **[decision]** ``W = max(1, floor(min(1000,
    0.1 N)))`` (a task with fewer than 10 episodes uses ``W = 1``: its best episode).

    Args:
      returns: float ``[N]`` total return of each episode, in collection (dataset) order.
      window: override ``W``.

    Returns:
      The expert return.
    """
    r = np.asarray(returns, np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"expert_return: expected a non-empty 1-D array of returns, got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("expert_return: returns contain NaN or Inf")
    n = r.size
    w = max(1, int(math.floor(min(1000, 0.1 * n)))) if window is None else int(window)
    if not 1 <= w <= n:
        raise ValueError(f"expert_return: window {w} outside [1, {n}]")
    c = np.concatenate([[0.0], np.cumsum(r)])
    return float(np.max((c[w:] - c[:-w]) / w))


def expert_filter(
    returns: Sequence[float] | np.ndarray,
    tasks: Sequence[str] | None = None,
    fraction: float = 0.8,
) -> np.ndarray:
    """Keeps episodes with return ``>= fraction *`` their task's :func:`expert_return`.

    **[decision]** The threshold is ``E - (1 - fraction) |E|`` for expert return ``E``: exactly
    ``fraction * E`` when ``E >= 0`` (the spec's rule), and for tasks whose returns are all
    negative (Pendulum, Acrobot, Pong) the same relative margin below ``E``. The literal rule
    would put the threshold above the best episode there and drop the whole task.

    Args:
      returns: float ``[N]`` episode returns in collection order.
      tasks: ``[N]`` task name of each episode (default: one task).
      fraction: spec section 7: 0.8.

    Returns:
      bool ``[N]`` mask of kept episodes.
    """
    r = np.asarray(returns, np.float64)
    tasks = np.zeros(r.shape[0], np.int64) if tasks is None else np.asarray(tasks)
    if tasks.shape != r.shape:
        raise ValueError(f"expert_filter: {tasks.shape[0]} tasks for {r.shape[0]} returns")
    keep = np.zeros(r.shape, bool)
    for t in np.unique(tasks):
        idx = np.nonzero(tasks == t)[0]
        e = expert_return(r[idx])
        keep[idx] = r[idx] >= e - (1.0 - fraction) * abs(e)
    return keep


# --------------------------------------------------------------------------------------------
# Writing RLDS datasets (test fixtures and the data-generation CLI).


def _is_text(x) -> bool:
    if isinstance(x, str | bytes):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "USO"
    return isinstance(x, list | tuple) and bool(x) and all(isinstance(v, str | bytes) for v in x)


def _step_feature(x: np.ndarray, name: str):
    import tensorflow_datasets as tfds

    f = tfds.features
    if x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        return f.Image(shape=x.shape[1:], dtype=np.uint8)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: unsupported dtype {x.dtype}")
    if x.ndim == 1:
        return f.Scalar(dtype=x.dtype)
    return f.Tensor(shape=x.shape[1:], dtype=x.dtype)


def _episode_features(episode: Mapping, where: str):
    """Features of one episode: steps leaves are per-step (leading T axis removed)."""
    import tensorflow_datasets as tfds

    f = tfds.features

    def steps_tree(node, name):
        if isinstance(node, Mapping):
            return f.FeaturesDict({k: steps_tree(v, f"{name}/{k}") for k, v in node.items()})
        if _is_text(node):
            return f.Text()
        return _step_feature(np.asarray(node), name)

    def meta_tree(node, name):
        if isinstance(node, Mapping):
            return f.FeaturesDict({k: meta_tree(v, f"{name}/{k}") for k, v in node.items()})
        if isinstance(node, str | bytes):
            return f.Text()
        x = np.asarray(node)
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where}: {name}: unsupported metadata dtype {x.dtype}")
        return f.Scalar(dtype=x.dtype) if x.ndim == 0 else f.Tensor(shape=x.shape, dtype=x.dtype)

    steps = episode["steps"]
    feats = {"steps": f.Dataset(steps_tree(steps, "steps"))}
    if "episode_metadata" in episode:
        feats["episode_metadata"] = meta_tree(episode["episode_metadata"], "episode_metadata")
    return f.FeaturesDict(feats)


def _signature(tree, prefix=""):
    """Flat {path: (per-step shape, dtype kind)} of a steps tree, for consistency checks."""
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_signature(v, f"{prefix}/{k}"))
        return out
    if _is_text(tree):
        return {prefix: ("text",)}
    x = np.asarray(tree)
    return {prefix: (x.shape[1:], x.dtype.str)}


def _per_step(tree, t):
    if isinstance(tree, Mapping):
        return {k: _per_step(v, t) for k, v in tree.items()}
    if _is_text(tree):
        return tree[t]
    return np.asarray(tree)[t]


@functools.cache
def _writer_class():
    from tensorflow_datasets.core.dataset_builders.adhoc_builder import AdhocBuilder

    class RldsWriter(AdhocBuilder, skip_registration=True):
        # tfds looks up checksum files next to a builder's code via `importlib_resources`,
        # which tensorflow-datasets does not declare; an ad-hoc builder has none.
        code_path = None

    return RldsWriter


def write_rlds_dataset(
    episodes: Sequence[Mapping[str, Any]],
    data_dir: str | os.PathLike,
    name: str,
    file_format: str = "array_record",
    *,
    split: str = "train",
    version: str = "1.0.0",
) -> str:
    """Writes episodes as a TFDS dataset in the RLDS layout (needs ``tensorflow``).

    Episodes are written in the given order (no shuffling), which is the collection order the
    expert-return filter assumes.

    Args:
      episodes: each ``{"steps": {"observation": tree, "action": tree or array, "reward":
        [T], ...}, "episode_metadata": {...} (optional)}``; every ``steps`` leaf has a leading
        time axis ``T`` (text leaves: ``T`` strings). uint8 ``[T, H, W, C]`` leaves become
        ``Image`` features (PNG, lossless); ``is_first``/``is_last``/``is_terminal`` are added
        when absent (``is_terminal = is_last``). Metadata leaves: str or numbers. All episodes
        must share field names, per-step shapes and dtypes.
      data_dir: TFDS data directory; the dataset lands in ``data_dir/name/version``.
      name: dataset name (lower case letters, digits and ``_``).
      file_format: ``"array_record"`` or ``"tfrecord"``.
      split: split name.
      version: dataset version ``"x.y.z"``.

    Returns:
      The dataset directory ``data_dir/name/version``.

    Raises:
      DataError: episodes without steps, or disagreeing in fields, shapes or dtypes.
    """
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format={file_format!r}: expected one of {FILE_FORMATS}")
    if not episodes:
        raise DataError(f"{name}: no episodes to write")
    examples = []
    sig0 = None
    for i, ep in enumerate(episodes):
        where = f"{name}: episode {i}"
        if not isinstance(ep, Mapping) or not isinstance(ep.get("steps"), Mapping):
            raise DataError(f"{where}: expected a mapping with a 'steps' mapping")
        steps = dict(ep["steps"])
        sig = _signature(steps)
        lengths = {len(_leaf(steps, p)) for p in sig}
        if len(lengths) != 1:
            raise DataError(f"{where}: steps leaves have different lengths {sorted(lengths)}")
        (n,) = lengths
        if n < 1:
            raise DataError(f"{where}: no steps")
        for flag in STEP_FLAGS:
            if flag not in steps:
                last = np.arange(n) == n - 1
                steps[flag] = np.arange(n) == 0 if flag == "is_first" else last
        sig = _signature(steps)
        if sig0 is None:
            sig0 = sig
            features = _episode_features({**ep, "steps": steps}, where)
        elif sig != sig0:
            diff = sorted(set(sig.items()) ^ set(sig0.items()))
            raise DataError(
                f"{where}: fields differ from episode 0 (per-step shape, dtype): {diff[:4]}"
            )
        example = {"steps": [_per_step(steps, t) for t in range(n)]}
        if "episode_metadata" in ep:
            example["episode_metadata"] = ep["episode_metadata"]
        examples.append((i, example))

    with tempfile.TemporaryDirectory() as downloads:
        builder = _writer_class()(
            name=name,
            version=version,
            features=features,
            split_datasets={split: examples},
            data_dir=os.fspath(data_dir),
            disable_shuffling=True,
        )
        builder.download_and_prepare(file_format=file_format, download_dir=downloads)
    return os.fspath(builder.data_dir)


def _leaf(tree, path: str):
    for k in path.strip("/").split("/"):
        tree = tree[k]
    return tree


# --------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class Source:
    """One dataset of the mixture.

    Attributes:
      name: TFDS dataset name (the directory under ``data_dir``), optionally ``name:version``.
      data_dir: TFDS data directory.
      split: TFDS split (any split syntax, e.g. ``train[:90%]``).
      weight: mixture weight (sampling probability proportional to it).
      spec: the episodes' :class:`EpisodeSpec`; ``None`` infers it from the dataset's features
        (:func:`infer_episode_spec`) with the pipeline's tokenizer config.
      task_key: episode-metadata key naming the task (prompts come from the same task; the
        expert return is per task). Missing key: the whole dataset is one task.
      instruction_key: episode-metadata text put in every step as the text observation field
        ``observation/instruction`` (needs a text tokenizer and ``instruction_tokens``).
      instruction_tokens: tokens of that field.
    """

    name: str
    data_dir: str
    split: str = "train"
    weight: float = 1.0
    spec: EpisodeSpec | None = None
    task_key: str = "task"
    instruction_key: str | None = None
    instruction_tokens: int = 16

    def __post_init__(self):
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"{self.name}: mixture weight {self.weight} must be > 0")

    def fingerprint(self) -> str:
        return f"{self.name}@{os.path.abspath(self.data_dir)}:{self.split}*{self.weight:g}"


def parse_data_spec(text: str) -> tuple[Source, ...]:
    """Parses ``--data``: ``tfds:NAME@DATA_DIR[:SPLIT][*WEIGHT]``, comma-separated.

    Examples: ``tfds:cartpole@/data`` (split ``train``, weight 1);
    ``tfds:cartpole@/data:train[:90%]*3,tfds:pendulum:1.0.0@/data*1`` (a 3:1 mixture).

    Raises:
      ValueError: naming the malformed item.
    """
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item.startswith("tfds:"):
            raise ValueError(
                f"--data item {item!r}: expected 'tfds:NAME@DATA_DIR[:SPLIT][*WEIGHT]' "
                "or 'synthetic'"
            )
        rest = item[len("tfds:") :]
        weight = 1.0
        if "*" in rest:
            rest, w = rest.rsplit("*", 1)
            try:
                weight = float(w)
            except ValueError:
                raise ValueError(f"--data item {item!r}: weight {w!r} is not a number") from None
        if "@" not in rest:
            raise ValueError(f"--data item {item!r}: missing '@DATA_DIR'")
        name, loc = rest.split("@", 1)
        split, depth = "train", 0
        for pos in range(len(loc) - 1, -1, -1):  # the last ':' outside [...] starts the split
            depth += {"]": 1, "[": -1}.get(loc[pos], 0)
            if loc[pos] == ":" and depth == 0:
                if "/" not in loc[pos + 1 :]:
                    loc, split = loc[:pos], loc[pos + 1 :]
                break
        if not name or not loc or not split:
            raise ValueError(f"--data item {item!r}: empty name, data dir or split")
        try:
            out.append(Source(name, loc, split, weight))
        except ValueError as e:
            raise ValueError(f"--data item {item!r}: {e}") from None
    return tuple(out)


def _dataset_dir(src: Source) -> str:
    name, _, version = src.name.partition(":")
    base = os.path.join(src.data_dir, *name.split("/"))
    if not os.path.isdir(src.data_dir):
        raise DataError(f"dataset {src.name!r}: data_dir {src.data_dir!r} does not exist")
    if not os.path.isdir(base):
        have = sorted(os.listdir(src.data_dir))[:10]
        raise DataError(
            f"dataset {src.name!r}: no directory {base!r} (data_dir holds: {', '.join(have)})"
        )
    if version:
        path = os.path.join(base, version)
        if not os.path.isfile(os.path.join(path, "dataset_info.json")):
            raise DataError(f"dataset {src.name!r}: no prepared version at {path!r}")
        return path
    versions = []
    for v in os.listdir(base):
        if os.path.isfile(os.path.join(base, v, "dataset_info.json")):
            try:
                versions.append((tuple(int(p) for p in v.split(".")), v))
            except ValueError:
                continue
    if not versions:
        raise DataError(f"dataset {src.name!r}: no prepared version (x.y.z/) under {base!r}")
    return os.path.join(base, max(versions)[1])


def _feature_leaves(feat, prefix: str) -> dict[str, Any]:
    import tensorflow_datasets as tfds

    if isinstance(feat, tfds.features.FeaturesDict):
        out = {}
        for k, v in feat.items():
            out.update(_feature_leaves(v, f"{prefix}/{k}"))
        return out
    return {prefix: feat}


def _describe(feat) -> tuple[tuple[int, ...] | None, str]:
    import tensorflow_datasets as tfds

    if isinstance(feat, tfds.features.Text):
        return (), "string"
    shape = getattr(feat, "shape", None)
    dtype = np.dtype(feat.np_dtype).name if hasattr(feat, "np_dtype") else str(feat.dtype)
    return (tuple(shape) if shape is not None else None), dtype


def infer_episode_spec(
    features, cfg: TokenizerConfig | None = None, *, name: str = "dataset"
) -> EpisodeSpec:
    """An :class:`EpisodeSpec` from RLDS features: ``steps/observation`` and ``steps/action``.

    uint8 ``Image`` -> ``image``; ``ClassLabel`` -> ``discrete`` in ``[0, num_classes)``;
    integer or bool tensors -> ``discrete``; float tensors -> ``continuous`` (no bounds, so
    continuous actions are mu-law companded). Text steps fields need an explicit spec.

    Raises:
      DataError: naming the dataset and field, when a field has no Gato kind.
    """
    import tensorflow_datasets as tfds

    steps = features["steps"] if "steps" in features else None
    if steps is None:
        raise DataError(f"dataset {name!r}: no 'steps' feature (not an RLDS dataset)")
    inner = steps.feature
    roots = {}
    for root in ("observation", "action"):
        if root not in inner:
            raise DataError(f"dataset {name!r}: field steps/{root} missing")
        leaves = _feature_leaves(inner[root], root)
        tree: dict[str, Any] = {}
        for path, feat in leaves.items():
            shape, dtype = _describe(feat)
            if isinstance(feat, tfds.features.Image):
                fs = FieldSpec("image", shape)
            elif isinstance(feat, tfds.features.ClassLabel):
                fs = FieldSpec("discrete", (), low=0, high=feat.num_classes - 1)
            elif isinstance(feat, tfds.features.Text):
                raise DataError(
                    f"dataset {name!r}: text field steps/{path} needs an explicit EpisodeSpec "
                    "(its token budget)"
                )
            elif dtype == "bool" or np.issubdtype(np.dtype(dtype), np.integer):
                fs = FieldSpec("discrete", shape)
            elif np.issubdtype(np.dtype(dtype), np.floating):
                fs = FieldSpec("continuous", shape)
            else:
                raise DataError(f"dataset {name!r}: field steps/{path} of dtype {dtype}")
            keys = path.split("/")[1:]
            if not keys:
                tree = fs
                break
            node = tree
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = fs
        roots[root] = tree
    try:
        return EpisodeSpec(roots["observation"], roots["action"], cfg)
    except ValueError as e:
        raise DataError(f"dataset {name!r}: {e}") from None


def _check_features(name: str, features, spec: EpisodeSpec, instruction: bool = False) -> None:
    """Every spec field exists in ``steps`` with a compatible shape and dtype."""
    import tensorflow_datasets as tfds

    if "steps" not in features:
        raise DataError(f"dataset {name!r}: no 'steps' feature (not an RLDS dataset)")
    leaves = _feature_leaves(features["steps"].feature, "")
    have = {k.lstrip("/"): v for k, v in leaves.items()}
    for f in spec.fields:
        if instruction and f.name == "observation/instruction":
            continue  # filled from episode metadata (Source.instruction_key)
        if f.name not in have:
            raise DataError(
                f"dataset {name!r}: field steps/{f.name} missing (steps fields: "
                f"{', '.join(sorted(have))})"
            )
        feat = have[f.name]
        shape, dtype = _describe(feat)
        kind = f.spec.kind
        if kind == "text":
            ok = isinstance(feat, tfds.features.Text)
            want = "text (string)"
        elif kind == "image":
            ok = shape == f.spec.shape and dtype == "uint8"
            want = f"shape {f.spec.shape} uint8 (image)"
        elif kind == "discrete":
            ok = shape == f.spec.shape and (
                dtype == "bool" or np.issubdtype(np.dtype(dtype), np.integer)
            )
            want = f"shape {f.spec.shape} integer (discrete)"
        else:
            ok = (
                shape == f.spec.shape
                and dtype not in ("string", "object")
                and np.dtype(dtype).kind in "biuf"
            )
            want = f"shape {f.spec.shape} float or integer (continuous)"
        if not ok:
            raise DataError(
                f"dataset {name!r}: field steps/{f.name} has shape {shape} dtype {dtype}, "
                f"expected {want}"
            )


def _stack_steps(steps, fields: Sequence[str]) -> dict[str, np.ndarray | list]:
    """A sequence of step dicts -> {field path: [T, ...]} for the requested paths."""
    out = {}
    for path in fields:
        vals = [_leaf(s, path) for s in steps]
        if vals and isinstance(vals[0], bytes | str):
            out[path] = [v.decode() if isinstance(v, bytes) else v for v in vals]
        else:
            out[path] = np.stack([np.asarray(v) for v in vals]) if vals else np.zeros((0,))
    return out


def _nest(flat: Mapping[str, Any], root: str) -> Any:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        keys = path.split("/")
        if keys[0] != root:
            continue
        if len(keys) == 1:
            return v
        node = tree
        for k in keys[1:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = v
    return tree


def _decode_meta(x):
    return x.decode() if isinstance(x, bytes) else x


class RLDSDataset:
    """Random access to the (filtered, sharded) episodes of one :class:`Source`.

    Args:
      source: the dataset.
      cfg: tokenizer config (for the spec, inferred or checked).
      expert_fraction: expert-return filter threshold (0 keeps everything); applied per task
        when the steps have a ``reward`` field.
      process_index, process_count: this process keeps episodes ``process_index::process_count``
        of the filtered list.
      text_tokenizer: SentencePiece tokenizer for text fields given as strings.

    Attributes:
      spec: the :class:`EpisodeSpec`.
      num_episodes: episodes in the split; ``returns`` ``[num_episodes]`` (NaN when not filtering);
      kept: indices (into the split) after filtering; ``shard``: this process's part of it.
      tasks: ``[num_episodes]`` task names; ``by_task``: task -> indices in ``shard``.
    """

    def __init__(
        self,
        source: Source,
        cfg: TokenizerConfig,
        *,
        expert_fraction: float = 0.8,
        process_index: int = 0,
        process_count: int = 1,
        text_tokenizer: TextTokenizer | None = None,
    ):
        import tensorflow_datasets as tfds

        self.source, self.text_tokenizer = source, text_tokenizer
        name = source.name
        path = _dataset_dir(source)
        try:
            builder = tfds.builder_from_directory(path)
        except Exception as e:  # tfds raises several types for unreadable metadata
            raise DataError(f"dataset {name!r}: cannot open {path!r}: {e}") from e
        self.path, self.file_format = path, builder.info.file_format.value
        features = builder.info.features
        spec = source.spec
        instruction = source.instruction_key is not None
        if spec is None:
            spec = infer_episode_spec(features, cfg, name=name)
            if instruction:
                obs, act = _spec_trees(spec)
                if isinstance(obs, FieldSpec):
                    raise DataError(
                        f"dataset {name!r}: instruction_key needs a dict observation; pass a spec"
                    )
                obs = {**obs, "instruction": FieldSpec("text", (source.instruction_tokens,))}
                spec = EpisodeSpec(obs, act, cfg)
        elif spec.cfg != cfg:
            spec = EpisodeSpec(*_spec_trees(spec), cfg)
        _check_features(name, features, spec, instruction)
        self.spec = spec
        inner = features["steps"].feature
        self.has_reward = "reward" in inner
        self._fields = [f.name for f in spec.fields if f.name in _flat_names(inner)]
        meta_keys = (
            set(features["episode_metadata"].keys()) if "episode_metadata" in features else set()
        )
        if source.instruction_key is not None and source.instruction_key not in meta_keys:
            raise DataError(
                f"dataset {name!r}: field episode_metadata/{source.instruction_key} missing"
            )
        self._task_in_meta = source.task_key in meta_keys

        if self.file_format == "array_record":
            try:
                self._source = builder.as_data_source(source.split)
            except Exception as e:
                raise DataError(f"dataset {name!r}: split {source.split!r}: {e}") from e
            n = len(self._source)
            self._memory = None
        else:
            try:
                ds = builder.as_dataset(source.split, shuffle_files=False)
            except Exception as e:
                raise DataError(f"dataset {name!r}: split {source.split!r}: {e}") from e
            self._memory = {}
            self._source = None
            returns, tasks, n = [], [], 0
            mine = []
            for i, ep in enumerate(tfds.as_numpy(ds)):
                steps = list(ep["steps"])
                returns.append(self._return(steps))
                tasks.append(self._task(ep))
                mine.append((i, ep, steps))
                n += 1
            self._scan = (np.asarray(returns, np.float64), tasks)
            self._raw = mine
        if n == 0:
            raise DataError(f"dataset {name!r}: split {source.split!r} has no episodes")
        self.num_episodes = n
        filtering = self.has_reward and expert_fraction > 0
        if self._memory is None and not (filtering or self._task_in_meta):
            self.returns, self.tasks = np.full(n, np.nan), [source.name] * n
        elif self._memory is None:
            # One pass over the split (every process: the expert return is a statistic of the
            # whole task, in collection order); it decodes whole episodes.
            returns, tasks = [], []
            for i in range(n):
                ep = self._source[i]
                returns.append(self._return(ep["steps"]) if filtering else np.nan)
                tasks.append(self._task(ep))
            self.returns, self.tasks = np.asarray(returns, np.float64), tasks
        else:
            self.returns, self.tasks = self._scan
        if filtering:
            keep = expert_filter(self.returns, self.tasks, expert_fraction)
        else:
            keep = np.ones(n, bool)
        self.kept = np.nonzero(keep)[0]
        self.shard = self.kept[process_index::process_count]
        if self.shard.size == 0:
            raise DataError(
                f"dataset {name!r}: no episodes for process {process_index} of {process_count} "
                f"({self.kept.size} of {n} episodes pass the expert-return filter)"
            )
        self.by_task: dict[str, np.ndarray] = {}
        for t in sorted(set(self.tasks[i] for i in self.shard)):
            self.by_task[t] = np.asarray([i for i in self.shard if self.tasks[i] == t], np.int64)
        if self._memory is not None:
            wanted = set(self.shard.tolist())
            for i, ep, steps in self._raw:
                if i in wanted:
                    self._memory[i] = (self._convert(i, ep, steps), len(steps))
            del self._raw, self._scan

    def _return(self, steps) -> float:
        if not self.has_reward:
            return float("nan")
        total = 0.0
        for s in steps:
            total += float(np.sum(np.asarray(s["reward"], np.float64)))
        return total

    def _task(self, ep) -> str:
        if self._task_in_meta:
            return str(_decode_meta(ep["episode_metadata"][self.source.task_key]))
        return self.source.name

    def _convert(self, index: int, ep, steps) -> dict[str, Any]:
        steps = [steps[t] for t in range(len(steps))]
        if not steps:
            raise DataError(f"dataset {self.source.name!r}: episode {index} has no steps")
        flat = _stack_steps(steps, self._fields)
        if self.source.instruction_key is not None:
            text = _decode_meta(ep["episode_metadata"][self.source.instruction_key])
            flat["observation/instruction"] = [text] * len(steps)
        return {"observation": _nest(flat, "observation"), "action": _nest(flat, "action")}

    def episode(self, index: int) -> tuple[dict[str, Any], int]:
        """Raw episode ``index`` of the split: ``({"observation": ..., "action": ...}, T)``."""
        if self._memory is not None:
            if index not in self._memory:
                raise KeyError(f"dataset {self.source.name!r}: episode {index} not in this shard")
            return self._memory[index]
        ep = self._source[int(index)]
        return self._convert(index, ep, ep["steps"]), len(ep["steps"])

    def encode(self, episode: Mapping[str, Any], index: int, **kw):
        """:func:`encode_episode` of a raw episode; errors name the dataset and episode."""
        try:
            return encode_episode(episode, self.spec, text_tokenizer=self.text_tokenizer, **kw)
        except DataError:
            raise
        except ValueError as e:
            raise DataError(f"dataset {self.source.name!r}, episode {index}: {e}") from e


def _flat_names(inner) -> set[str]:
    return {k.lstrip("/") for k in _feature_leaves(inner, "")}


def _spec_trees(spec: EpisodeSpec):
    def tree(fields: tuple[Field, ...]):
        if len(fields) == 1 and fields[0].path == ():
            return fields[0].spec
        out: dict[str, Any] = {}
        for f in fields:
            node = out
            for k in f.path[:-1]:
                node = node.setdefault(k, {})
            node[f.path[-1]] = f.spec
        return out

    return tree(spec.observation), tree(spec.action)


# --------------------------------------------------------------------------------------------
# The pipeline.


def _min_tokens_per_step(spec: EpisodeSpec) -> int:
    fixed = sum(f.num_tokens for f in spec.fields if f.spec.kind != "text")
    return max(1, fixed + int(spec.has_separator))


@dataclasses.dataclass(frozen=True)
class RowPlan:
    """Where one batch row comes from (:meth:`GatoDataPipeline.plan`)."""

    source: int  # index into the pipeline's sources
    episode: int  # episode index in the source's split
    start_step: int  # random draw of the crop start (see :meth:`GatoDataPipeline.crop_start`)
    prompt_episode: int  # another episode of the same task (read only with a prompt)
    prompt_start: int  # random draw of the prompt crop start (uniform prompts)
    prompt_kind: int  # the PromptKind build_sequence draws from the row's key
    seed: int  # the row's PRNG key is ``jax.random.key(seed)``


def _kinds_fn(cfg: TokenizerConfig):
    @jax.jit
    def kinds(seeds):
        # The kind build_sequence will draw: key -> split -> k_prompt -> sample_prompt (the
        # kind does not depend on the prompt episode's length once it is > 0).
        def one(s):
            k_prompt, _ = jax.random.split(jax.random.key(s))
            return sample_prompt(k_prompt, jax.numpy.int32(1), cfg, "train")[2]

        return jax.vmap(one)(seeds)

    return kinds


class GatoDataPipeline:
    """Deterministic, resumable, threaded iterator of host batches from a mixture of sources.

    Args:
      sources: the datasets (:class:`Source` s, e.g. from :func:`parse_data_spec`).
      cfg: tokenizer config (``seq_len``, prompts, window).
      batch_size: global batch size (each process builds ``batch_size / process_count`` rows).
      seed: data seed.
      expert_fraction: expert-return filter threshold (spec: 0.8; 0 disables).
      num_threads: grain read threads (0: load in the calling thread).
      prefetch: batches loaded ahead.
      process_index, process_count: this process's shard (default from JAX).
      text_tokenizer: for text fields given as strings (e.g. ``instruction_key``).

    ``next()`` returns :class:`GatoInputs` of NumPy arrays ``[batch_size / process_count, ...]``.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        cfg: TokenizerConfig,
        *,
        batch_size: int,
        seed: int = 0,
        expert_fraction: float = 0.8,
        num_threads: int = 4,
        prefetch: int = 4,
        process_index: int | None = None,
        process_count: int | None = None,
        text_tokenizer: TextTokenizer | None = None,
    ):
        if not sources:
            raise ValueError("GatoDataPipeline: no sources")
        self.process_index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        if not 0 <= self.process_index < count:
            raise ValueError(f"process_index={self.process_index} outside [0, {count})")
        if batch_size % count:
            raise ValueError(f"batch_size={batch_size} not divisible by {count} processes")
        if not 0 <= expert_fraction <= 1:
            raise ValueError(f"expert_fraction={expert_fraction} outside [0, 1]")
        self.cfg, self.seed, self.local_batch = cfg, int(seed), batch_size // count
        self.num_threads, self.prefetch = int(num_threads), max(1, int(prefetch))
        self.sources = tuple(sources)
        self.datasets = [
            RLDSDataset(
                s,
                cfg,
                expert_fraction=expert_fraction,
                process_index=self.process_index,
                process_count=count,
                text_tokenizer=text_tokenizer,
            )
            for s in self.sources
        ]
        w = np.asarray([s.weight for s in self.sources], np.float64)
        self.weights = w / w.sum()
        L = cfg.seq_len  # noqa: N806
        self.steps, self.prompt_steps = [], []
        for d in self.datasets:
            m = _min_tokens_per_step(d.spec)
            self.steps.append(-(-L // m) + 1)
            self.prompt_steps.append(-(-max(1, min(cfg.prompt_tokens, L)) // m) + 1)
        self._kinds = _kinds_fn(cfg)
        self.fingerprint = hashlib.sha256(
            json.dumps([s.fingerprint() for s in self.sources] + [self.seed]).encode()
        ).hexdigest()[:16]
        self.index = 0
        self._it = None

    # -- position ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"index": self.index, "sources": self.fingerprint}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("sources", self.fingerprint) != self.fingerprint:
            raise ValueError(
                "GatoDataPipeline.restore: the checkpoint's data position belongs to a different "
                "mixture (sources, weights or seed changed); use a new --workdir"
            )
        self.index = int(state["index"])
        self._it = None

    # -- planning (pure function of (seed, index, process_index)) --------------------------
    def plan(self, index: int) -> list[RowPlan]:
        """The rows of batch ``index``: source, episode, crops and key seed of each."""
        rng = np.random.default_rng([self.seed, int(index), self.process_index])
        b = self.local_batch
        src = rng.choice(len(self.datasets), size=b, p=self.weights)
        seeds = rng.integers(0, 2**31 - 1, size=b)
        kinds = np.asarray(self._kinds(seeds.astype(np.int32)))
        rows = []
        for r in range(b):
            d = self.datasets[src[r]]
            ep = int(rng.choice(d.shard))
            same = d.by_task[d.tasks[ep]]
            others = same[same != ep]
            pep = int(rng.choice(others)) if others.size else ep  # single-episode task: itself
            rows.append(
                RowPlan(
                    source=int(src[r]),
                    episode=ep,
                    start_step=int(rng.integers(0, 1 << 62)),  # reduced modulo the slack below
                    prompt_episode=pep,
                    prompt_start=int(rng.integers(0, 1 << 62)),
                    prompt_kind=int(kinds[r]),
                    seed=int(seeds[r]),
                )
            )
        return rows

    @staticmethod
    def crop_start(num_steps: int, keep: int, draw: int, from_end: bool = False) -> int:
        """First step of a ``keep``-step host crop of a ``num_steps``-step episode."""
        slack = max(0, num_steps - keep)
        return slack if from_end else draw % (slack + 1)

    def row_arrays(self, row: RowPlan):
        """The encoded main and prompt episode crops of one planned row.

        Returns:
          ``(episode, prompt, start_step, prompt_start)``: :class:`EpisodeArrays` padded to
          ``self.steps[row.source]`` and ``self.prompt_steps[row.source]`` steps, and the first
          step of each crop. Rows without a prompt reuse the main episode (``prompt_start=0``).
        """
        d, k, kp = self.datasets[row.source], self.steps[row.source], self.prompt_steps[row.source]
        raw, n = d.episode(row.episode)
        start = self.crop_start(n, k, row.start_step)
        ep = d.encode(raw, row.episode, start_step=start, max_steps=k)
        if row.prompt_kind == PromptKind.NONE:  # the prompt is not used: no read
            return ep, d.encode(raw, row.episode, max_steps=kp), start, 0
        p_raw, p_n = d.episode(row.prompt_episode)
        p_start = self.crop_start(
            p_n, kp, row.prompt_start, from_end=row.prompt_kind == PromptKind.END
        )
        prompt = d.encode(p_raw, row.prompt_episode, start_step=p_start, max_steps=kp)
        return ep, prompt, start, p_start

    # -- loading --------------------------------------------------------------------------
    def load(self, index: int) -> GatoInputs:
        """Builds batch ``index`` (thread-safe; what the grain workers run)."""
        plan = self.plan(index)
        b = self.local_batch
        out = None
        for s in range(len(self.datasets)):
            rows = [r for r, p in enumerate(plan) if p.source == s]
            if not rows:
                continue
            eps, prompts = [], []
            for r in rows:
                ep, prompt, _, _ = self.row_arrays(plan[r])
                eps.append(ep)
                prompts.append(prompt)
            # Fixed batch shape b per source (one compilation each): unused rows repeat row 0.
            fill = [0] * (b - len(rows))
            eps = stack_episodes(eps + [eps[i] for i in fill])
            prompts = stack_episodes(prompts + [prompts[i] for i in fill])
            seeds = np.asarray([plan[r].seed for r in rows] + [plan[rows[0]].seed] * len(fill))
            keys = jax.vmap(jax.random.key)(seeds.astype(np.int32))
            built = jax.device_get(build_batch(eps, keys, self.datasets[s].spec, prompts))
            if out is None:
                out = jax.tree.map(np.array, built)
            sel = np.zeros(b, bool)
            sel[rows] = True
            src = np.cumsum(sel) - 1  # row r of this source sits at built[src[r]]

            def put(o, n, sel=sel, src=src):
                o[sel] = n[src[sel]]
                return o

            out = jax.tree.map(put, out, built)
        return out

    def _iterator(self):
        import grain

        ds = grain.MapDataset.range(self.index, 2**62).map(self.load)
        if self.num_threads == 0:
            return iter(ds)
        opts = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
        return iter(ds.to_iter_dataset(opts))

    def __iter__(self):
        return self

    def __next__(self) -> GatoInputs:
        if self._it is None:
            self._it = self._iterator()
        batch = next(self._it)
        self.index += 1
        return batch


def from_config(
    cfg, text_tokenizer: TextTokenizer | None = None, sources: list | None = None
) -> GatoDataPipeline:
    """The pipeline for a :class:`gato_jax.configs.base.GatoConfig` whose ``data`` is a spec
    (or over ``sources`` given explicitly, e.g. `gato_jax.datagen.sources`)."""
    return GatoDataPipeline(
        parse_data_spec(cfg.data) if sources is None else sources,
        cfg.tokenizer,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        expert_fraction=cfg.expert_fraction,
        num_threads=cfg.data_threads,
        prefetch=cfg.data_prefetch,
        text_tokenizer=text_tokenizer,
    )


__all__ = [
    "DataError",
    "GatoDataPipeline",
    "RLDSDataset",
    "RowPlan",
    "Source",
    "expert_filter",
    "expert_return",
    "from_config",
    "infer_episode_spec",
    "parse_data_spec",
    "write_rlds_dataset",
]
