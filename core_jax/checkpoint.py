"""Checkpointing: a thin, documented wrapper over ``orbax.checkpoint.CheckpointManager``.

One checkpoint step is a directory ``<directory>/<step>/`` holding three items:

* ``state``  -- the training-state pytree (params, optimizer state, PRNG keys, step counter),
  written with ``ocp.args.StandardSave`` (tensorstore/OCDBT; every process writes its own shards).
* ``config`` -- the run's config as JSON (optional), so a checkpoint says how it was made.
* ``data``   -- the input pipeline's iterator state as JSON (optional), for exact resume.

Guarantees, and where they come from:

* **Atomic.** Orbax writes into ``<step>.orbax-checkpoint-tmp-<n>/`` and renames it to ``<step>/``
  only once every item is on disk. A run killed mid-save leaves only the temp directory, which
  orbax and this module ignore. As a second line of defence (a half-copied directory, a file system
  without atomic rename) a step directory only counts as a checkpoint if its ``state/_METADATA``
  file exists; see :meth:`Checkpointer.all_steps`.
* **Keep-N.** ``max_to_keep`` newest steps are kept; older ones are deleted after each save.
* **Exact resume.** Arrays come back bit-identical with their dtypes (bf16 included) and directly in
  the shardings of ``abstract_state``, so this works on multi-device meshes and multi-host.
  Typed PRNG keys (``jax.random.key``) are supported natively by orbax 0.12: they are stored as
  their raw ``uint32`` key data and re-wrapped on restore when the abstract leaf has a key dtype.
* **Multi-process.** Every process must call ``save``/``restore`` with the same arguments; orbax
  coordinates the writes. This module itself never writes files. Every ``jax.Array`` leaf must be
  a *global* array (e.g. a key made under ``jax.jit(..., out_shardings=replicated)``); host-local
  arrays are rejected by orbax. ``config`` and ``data_state`` are written by the primary process
  only, so per-host iterator states must be gathered into one dict by the caller.
* **Python scalars** in the state (e.g. an ``int`` step field) come back as numpy scalars/arrays;
  keep counters as ``jnp`` arrays if the type matters.

Example::

    ckpt = Checkpointer("/tmp/run/checkpoints", max_to_keep=3)
    ckpt.save(step, state, config=config_dict, data_state=loader.state())
    abstract = jax.eval_shape(init_fn)  # ShapeDtypeStructs; set sharding= on a mesh
    restored = ckpt.restore(abstract)  # latest complete step
    state, start_step = restored.state, restored.step
    ckpt.close()  # waits for the last async save
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

__all__ = ["Checkpointer", "Restored"]

PyTree = Any

_STATE, _CONFIG, _DATA = "state", "config", "data"
# Written by orbax's PyTree handler once the item's arrays are committed; restore cannot work
# without it, so its absence marks an incomplete step directory.
_STATE_METADATA_FILE = "_METADATA"

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    """What :meth:`Checkpointer.restore` returns.

    Attributes:
        step: The step that was restored.
        state: The state pytree, with the structure, dtypes and shardings of ``abstract_state``.
        config: The JSON config saved with the step, or None if none was saved.
        data_state: The JSON data-pipeline state saved with the step, or None if none was saved.
    """

    step: int
    state: PyTree
    config: dict | None
    data_state: dict | None


def _absolute(directory: str | os.PathLike) -> epath.Path:
    """Returns ``directory`` as an absolute path (orbax requires one); URLs pass unchanged."""
    path = os.fspath(directory)
    if "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    return epath.Path(path)


def _find_json_problem(obj: Any, where: str) -> str | None:
    """Returns a description of the first non-JSON value inside ``obj``, or None if all is fine."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{where} = {obj!r} (NaN/inf is not valid JSON)"
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                return f"{where} has a non-string key {key!r} of type {type(key).__name__}"
            problem = _find_json_problem(value, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            problem = _find_json_problem(value, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return f"{where} = {obj!r} of type {type(obj).__name__}"


def _check_json(obj: Any, name: str) -> dict | None:
    """Validates that ``obj`` is a JSON-serialisable dict (or None) and returns it as a dict."""
    if obj is None:
        return None
    if not isinstance(obj, Mapping) and hasattr(obj, "to_dict"):  # ml_collections.ConfigDict
        obj = obj.to_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"`{name}` must be a dict of JSON values, got {type(obj).__name__}.")
    problem = _find_json_problem(obj, name)
    if problem:
        raise TypeError(
            f"`{name}` is not JSON-serialisable: {problem}. Convert it to a Python "
            "bool/int/float/str/list/dict (e.g. `float(x)`, `int(x)`, `x.tolist()`)."
        )
    # Round-trip to plain dicts/lists so tuples and Mapping subclasses are stored uniformly.
    return json.loads(json.dumps(obj, allow_nan=False))


def _path_str(path: tuple) -> str:
    """Renders a jax key path like ``state.params['w']`` -> ``params/w`` (one name per level)."""
    return "/".join(_key_name(k) for k in path) or "<root>"


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey/FlattenedIndexKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _short(error: BaseException, limit: int = 500) -> str:
    """``Type: message`` of an exception, cut to ``limit`` chars (tensorstore dumps whole specs)."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _is_key_dtype(dtype: Any) -> bool:
    try:
        return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def _to_abstract(leaf: Any) -> Any:
    """Turns a ``jax.Array`` leaf into a ``ShapeDtypeStruct`` with its sharding; others pass."""
    if isinstance(leaf, jax.Array):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
    return leaf


def _stored_shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype] | None:
    """The (shape, dtype) orbax stores for an abstract leaf, or None if the leaf has no shape."""
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
        return None
    if _is_key_dtype(leaf.dtype):
        # Typed keys are stored as their key data: shape + impl key shape, uint32.
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


class Checkpointer:
    """Saves and restores (state, config, data_state) per step, atomically, keeping the newest N.

    Args:
        directory: Root directory of the checkpoints (local path or a URL such as ``gs://...``).
            Made absolute. Created if missing when ``create`` is True.
        max_to_keep: Number of newest steps to keep; older ones are deleted. None keeps all.
        save_interval_steps: :meth:`save` only writes when ``step`` is a multiple of this (unless
            ``force=True``).
        async_save: Write in a background thread; :meth:`save` returns once the arrays have been
            copied off the device, so the training loop may continue (and donate buffers).
            Call :meth:`wait_until_finished` (or :meth:`close`) before reading the files.
        create: Create ``directory`` if it does not exist. With False a missing directory raises
            ``FileNotFoundError`` (useful for evaluation jobs that must not start from scratch).

    Raises:
        FileNotFoundError: ``create`` is False and ``directory`` does not exist.
        ValueError: ``max_to_keep`` or ``save_interval_steps`` is not positive.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        async_save: bool = True,
        create: bool = True,
    ):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}.")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}.")
        self.directory = _absolute(directory)
        if not create and not self.directory.exists():
            raise FileNotFoundError(f"Checkpoint directory {self.directory} does not exist.")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=create,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                _STATE: ocp.StandardCheckpointHandler(),
                _CONFIG: ocp.JsonCheckpointHandler(),
                _DATA: ocp.JsonCheckpointHandler(),
            },
        )

    # ----------------------------------------------------------------------------------- saving

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        config: Mapping | None = None,
        data_state: Mapping | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` (and optionally ``config`` and ``data_state``) as checkpoint ``step``.

        All processes must call this with the same step. With ``async_save`` the write finishes in
        the background; a new save first waits for the previous one.

        Args:
            step: Non-negative training step; names the checkpoint directory.
            state: Pytree of ``jax.Array`` / numpy arrays / Python scalars (None leaves are
                dropped). Typed PRNG keys are fine.
            config: JSON-serialisable dict (or an object with ``to_dict()``) describing the run.
            data_state: JSON-serialisable dict with the input pipeline's position.
            force: Save even if ``step`` is not a multiple of ``save_interval_steps``.

        Returns:
            True if a checkpoint was written (started); False if skipped by ``save_interval_steps``
            or because ``step`` is already the latest checkpoint (so a final ``force=True`` save
            after the loop is harmless). The first save into an empty directory is always written.

        Raises:
            TypeError: ``config`` or ``data_state`` is not JSON-serialisable (names the key).
            ValueError: ``step`` is negative, or older than the latest checkpoint on disk (orbax
                would silently skip it and every later save).
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"Checkpoint step must be >= 0, got {step}.")
        items = {_STATE: ocp.args.StandardSave(state)}
        config = _check_json(config, "config")
        data_state = _check_json(data_state, "data_state")
        if config is not None:
            items[_CONFIG] = ocp.args.JsonSave(config)
        if data_state is not None:
            items[_DATA] = ocp.args.JsonSave(data_state)
        latest = self._manager.latest_step()
        if latest is not None and step == latest:
            # Typically a final `save(last_step, force=True)` after the loop already saved it.
            log.info(
                "Checkpoint for step %d already exists in %s; not saving.", step, self.directory
            )
            return False
        # Orbax silently skips (returns False) a step < the latest one on disk, which after
        # restoring an older step would quietly stop all checkpointing; make it an error instead.
        if latest is not None and step < latest:
            raise ValueError(
                f"Cannot save step {step} in {self.directory}: it is older than the latest "
                f"checkpoint step {latest}. Delete the newer step directories or save to a new "
                "directory."
            )
        try:
            return self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        except ocp.checkpoint_manager.StepAlreadyExistsError as e:
            raise ValueError(
                f"A checkpoint for step {step} already exists in {self.directory}; "
                "restore from it or delete it before saving again."
            ) from e

    def wait_until_finished(self) -> None:
        """Blocks until any in-flight asynchronous save has been committed to disk."""
        self._manager.wait_until_finished()

    # ---------------------------------------------------------------------------------- listing

    def _is_complete(self, step: int) -> bool:
        return (self.directory / str(step) / _STATE / _STATE_METADATA_FILE).exists()

    def all_steps(self) -> list[int]:
        """Returns the sorted steps of all complete checkpoints on disk.

        A step whose asynchronous save is still in flight is not listed until it is committed.

        Temporary directories of interrupted saves never count; a step directory without
        ``state/_METADATA`` (copied half-way, or written by a non-atomic file system) is skipped
        with a warning.
        """
        # Re-scan the directory (other runs may have written to it) unless our own async save is
        # in flight: reloading then would drop that step from orbax's bookkeeping.
        saving = self._manager.is_saving_in_progress()
        if not saving:
            self._manager.reload()
        steps = []
        for step in sorted(self._manager.all_steps()):
            if self._is_complete(step):
                steps.append(int(step))
            elif not saving:
                log.warning(
                    "Ignoring incomplete checkpoint directory %s (no %s/%s).",
                    self.directory / str(step),
                    _STATE,
                    _STATE_METADATA_FILE,
                )
        return steps

    def latest_step(self) -> int | None:
        """Returns the newest complete checkpoint step, or None if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -------------------------------------------------------------------------------- restoring

    def restore(
        self, abstract_state: PyTree, step: int | None = None, *, allow_dtype_cast: bool = False
    ) -> Restored:
        """Restores checkpoint ``step`` (default: the latest) into the layout of ``abstract_state``.

        Args:
            abstract_state: Pytree with the same structure as the saved state whose leaves are
                ``jax.Array`` or ``jax.ShapeDtypeStruct`` (with ``sharding=`` set on multi-device
                or multi-host runs; without one a leaf lands on the first device). Arrays are
                read directly into these shardings. Leaves with a PRNG key dtype come back as
                typed keys. Typically ``jax.eval_shape(init_fn, ...)`` plus shardings.
            step: Step to restore; None means the latest complete one.
            allow_dtype_cast: If False (default), a dtype differing from the stored one is an error;
                if True the stored values are cast (e.g. fp32 checkpoint into bf16 for inference).

        Returns:
            A :class:`Restored` with ``step``, ``state``, ``config`` and ``data_state``.

        Raises:
            FileNotFoundError: The directory holds no complete checkpoint, or not ``step``.
            ValueError: The checkpoint is incomplete or corrupt, or its tree structure, shapes or
                dtypes differ from ``abstract_state`` (names the leaf and the path).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"No complete checkpoint found in {self.directory}.")
        step = int(step)
        step_dir = self.directory / str(step)
        if not step_dir.exists():
            raise FileNotFoundError(
                f"No checkpoint for step {step} in {self.directory}; "
                f"available steps: {self.all_steps()}."
            )
        if not self._is_complete(step):
            raise ValueError(
                f"Checkpoint {step_dir} is incomplete or corrupt: {_STATE}/{_STATE_METADATA_FILE} "
                "is missing (interrupted copy?). Restore another step or delete it."
            )

        abstract_state = jax.tree.map(_to_abstract, abstract_state)
        self._check_against_metadata(step, abstract_state, allow_dtype_cast)

        items = {_STATE: ocp.args.StandardRestore(abstract_state)}
        for name in (_CONFIG, _DATA):
            if (step_dir / name).exists():
                items[name] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # tensorstore/JSON errors deep inside orbax: say which checkpoint.
            raise ValueError(
                f"Failed to restore checkpoint {step_dir} (corrupt or incompatible files?): "
                f"{_short(e)}"
            ) from e
        return Restored(
            step=step,
            state=restored[_STATE],
            config=restored[_CONFIG] if _CONFIG in items else None,
            data_state=restored[_DATA] if _DATA in items else None,
        )

    def _check_against_metadata(
        self, step: int, abstract_state: PyTree, allow_dtype_cast: bool
    ) -> None:
        """Compares structure, shapes and dtypes with the stored metadata; raises a clear error."""
        step_dir = self.directory / str(step)
        try:
            metadata = self._manager.item_metadata(step)[_STATE]
            tree = metadata.tree if hasattr(metadata, "tree") else metadata
        except Exception as e:
            raise ValueError(
                f"Cannot read the metadata of checkpoint {step_dir} (corrupt?): {_short(e)}"
            ) from e
        if tree is None:
            raise ValueError(f"Checkpoint {step_dir} has no readable '{_STATE}' metadata.")
        stored = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
        wanted = {
            _path_str(p): leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
        }
        missing = sorted(set(wanted) - set(stored))
        extra = sorted(set(stored) - set(wanted))
        if missing or extra:
            raise ValueError(
                f"State structure does not match checkpoint {step_dir}: "
                f"in abstract_state but not in the checkpoint: {missing[:10]}; "
                f"in the checkpoint but not in abstract_state: {extra[:10]}."
            )
        for name, leaf in wanted.items():
            expected = _stored_shape_dtype(leaf)
            meta = stored[name]
            if expected is None or not hasattr(meta, "shape"):
                continue
            shape, dtype = expected
            if tuple(meta.shape) != shape:
                raise ValueError(
                    f"Shape mismatch for '{name}' restoring {step_dir}: checkpoint has "
                    f"{tuple(meta.shape)}, abstract_state wants {shape}"
                    + (" (typed PRNG key data)" if _is_key_dtype(leaf.dtype) else "")
                    + "."
                )
            is_scalar_meta = type(meta).__name__ == "ScalarMetadata"  # Python scalars: int64/f64
            meta_dtype = getattr(meta, "dtype", None)
            if (
                not allow_dtype_cast
                and not is_scalar_meta
                and meta_dtype is not None
                and np.dtype(meta_dtype) != dtype
            ):
                raise ValueError(
                    f"Dtype mismatch for '{name}' restoring {step_dir}: checkpoint has "
                    f"{np.dtype(meta_dtype)}, abstract_state wants {dtype}. Pass "
                    "allow_dtype_cast=True to cast on restore."
                )

    # -------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources. Idempotent."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r})"


def resume(
    ckpt: Checkpointer,
    state: PyTree,
    sharding: PyTree,
    *,
    data: Any,
    writer: Any,
    config: Mapping,
    check_key: str = "model",
) -> tuple[PyTree, int | None]:
    """Restores the latest checkpoint of a training run, if there is one (shared by every CLI).

    Args:
        ckpt: the run's checkpointer.
        state: the freshly initialised train state (its shapes and dtypes are the target).
        sharding: the state's ``NamedSharding`` tree; arrays are restored straight into it.
        data: the data iterator; ``data.restore(data_state)`` is called with the saved position.
        writer: the :class:`core_jax.metrics.MetricWriter`; lines after the restored step go.
        config: this run's config as a dict; ``config[check_key]`` must equal the saved one.
        check_key: the config entry that must not change across a resume.

    Returns:
        ``(state, restored_step)``: the input state and None when the run starts fresh.

    Raises:
        ValueError: the checkpoint was written with a different ``config[check_key]``.
    """
    if ckpt.latest_step() is None:
        return state, None
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sharding
    )
    restored = ckpt.restore(abstract)
    if restored.config is not None and restored.config.get(check_key) != config.get(check_key):
        raise ValueError(
            f"{ckpt.directory} holds a checkpoint of a different {check_key} config; "
            "use a new --workdir"
        )
    data.restore(restored.data_state)
    writer.truncate_after(restored.step)
    return restored.state, restored.step
