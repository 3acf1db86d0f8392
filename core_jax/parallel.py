"""Meshes, logical-axis sharding rules, sharded initialisation and train-step building.

The same code runs on 1 CPU device, 8 simulated CPU devices, one GPU and many hosts:

    >>> mesh = make_mesh(MeshConfig(data=-1, fsdp=2, model=1))
    >>> state, state_sharding = init_sharded(lambda: create_state(...), mesh)
    >>> step = make_train_step(train_step, mesh=mesh, state_sharding=state_sharding)
    >>> state, metrics = step(state, host_to_global(batch, mesh))

Model code only names logical axes (``embed``, ``mlp``, ``heads``, ...); which mesh axis each one
is split over is decided here, by ``rules`` that live in config. A dimension that a mesh axis
does not divide is replicated over that axis instead of failing at compile time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "model")

# Logical axis -> mesh axis (or tuple of axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("head_dim", None),
    ("norm", None),
    ("max_len", None),
    ("length", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ``data``, ``fsdp`` and ``model`` mesh axes.

    At most one size may be ``-1``: it takes whatever devices the others leave. The product must
    equal the number of devices used.

    Attributes:
      data: pure data parallelism (parameters replicated).
      fsdp: data parallelism with parameters and optimizer state sharded (ZeRO-3 style).
      model: tensor parallelism over heads / MLP / vocab.
      rules: logical-axis -> mesh-axis rules (see ``DEFAULT_RULES``).
    """

    data: int = -1
    fsdp: int = 1
    model: int = 1
    rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = {"data": self.data, "fsdp": self.fsdp, "model": self.model}
        for name, v in sizes.items():
            if not isinstance(v, int) or (v <= 0 and v != -1):
                raise ValueError(f"MeshConfig.{name}={v!r}: must be a positive int or -1")
        free = [n for n, v in sizes.items() if v == -1]
        if len(free) > 1:
            raise ValueError(f"MeshConfig: only one axis may be -1, got {free}")
        fixed = math.prod(v for v in sizes.values() if v != -1)
        if free:
            if num_devices % fixed:
                raise ValueError(
                    f"MeshConfig.{free[0]}=-1: {num_devices} devices are not "
                    f"divisible by the other axes' product {fixed}"
                )
            sizes[free[0]] = num_devices // fixed
        if math.prod(sizes.values()) != num_devices:
            raise ValueError(
                f"MeshConfig: data*fsdp*model = {math.prod(sizes.values())} but "
                f"{num_devices} devices are available"
            )
        return sizes["data"], sizes["fsdp"], sizes["model"]


def make_mesh(
    config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a ``(data, fsdp, model)`` mesh over ``devices`` (default: all global devices)."""
    config = config or MeshConfig()
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    try:
        from jax.experimental import mesh_utils

        if len(devices) == len(jax.devices()):
            arr = mesh_utils.create_device_mesh(shape, devices=devices)
        else:
            arr = np.asarray(devices).reshape(shape)
    except (ValueError, NotImplementedError, AssertionError):
        # mesh_utils has no physical-topology layout for this backend / device kind (it raises
        # one of these; CPU and some GPU setups): fall back to the devices in their given order
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES)


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Replicates dimensions that their mesh axes do not divide evenly."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        if entry is None:
            fitted.append(None)
            continue
        axes = (entry,) if isinstance(entry, str) else tuple(entry)
        kept = []
        for ax in axes:
            size = mesh.shape[ax] * math.prod(mesh.shape[a] for a in kept)
            if dim % size == 0:
                kept.append(ax)
        if len(kept) < len(axes):
            log.debug(
                "dimension %d not divisible by %s: replicating over %s",
                dim,
                axes,
                sorted(set(axes) - set(kept)),
            )
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*fitted)


def logical_sharding(abstract_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Shardings for a pytree whose leaves may be Flax ``LogicallyPartitioned`` boxes.

    Args:
      abstract_tree: output of ``jax.eval_shape`` on something that returns boxed params
        (unboxed leaves are replicated).
      mesh: the device mesh.
      rules: logical-axis -> mesh-axis rules.

    Returns:
      A pytree of ``NamedSharding`` matching the *unboxed* tree.
    """
    specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.meta.unbox(abstract_tree)
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
        mesh_specs,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def init_sharded(
    init_fn: Callable[..., Any], mesh: Mesh, *args, rules=DEFAULT_RULES
) -> tuple[Any, Any]:
    """Initialises a pytree directly in its sharding (never materialised on one device).

    Args:
      init_fn: function of ``*args`` returning a pytree (e.g. a train state) that may contain
        Flax ``LogicallyPartitioned`` parameters; optax states built from boxed params keep
        the boxes, so optimizer moments are sharded like their parameters.
      mesh: the device mesh.
      *args: arguments of ``init_fn`` (e.g. a PRNG key); they are replicated.
      rules: logical-axis -> mesh-axis rules.

    Returns:
      ``(tree, shardings)``: the unboxed pytree and its ``NamedSharding`` tree.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_sharding(abstract, mesh, rules)
    # Static pytree metadata (an optax transformation's closures, say) differs between two calls
    # of init_fn, so jit returns only the leaves; the tree is rebuilt with the abstract treedef.
    leaf_shardings, treedef = jax.tree.flatten(shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    fn = jax.jit(
        lambda *a: jax.tree.leaves(nn.meta.unbox(init_fn(*a))),
        out_shardings=leaf_shardings,
        in_shardings=tuple(replicated for _ in args) or None,
    )
    tree = jax.tree.unflatten(treedef, fn(*args))
    return tree, shardings


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES, ndim: int = 1) -> NamedSharding:
    """Sharding of an array whose leading dimension is the batch (``batch`` logical axis)."""
    spec = nn.logical_to_mesh(PartitionSpec("batch", *([None] * (ndim - 1))), rules)
    return NamedSharding(mesh, spec)


def host_to_global(batch: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Turns this process's slice of a batch into global arrays sharded over the batch axes.

    On one process the host batch is the global batch. On several processes each passes its
    own ``global_batch / process_count`` rows (processes read disjoint shards) and the result
    is one global array.

    Args:
      batch: pytree of host (numpy) arrays with a leading batch dimension.
      mesh: the device mesh.
      rules: logical-axis -> mesh-axis rules.

    Returns:
      The same pytree of global ``jax.Array`` s.
    """

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("host_to_global: every batch leaf needs a leading batch axis")
        sharding = batch_sharding(mesh, rules, x.ndim)
        spec0 = sharding.spec[0]
        axes = () if spec0 is None else (spec0,) if isinstance(spec0, str) else tuple(spec0)
        shards = math.prod(mesh.shape[a] for a in axes)
        global_rows = x.shape[0] * jax.process_count()
        if global_rows % shards:
            raise ValueError(
                f"host_to_global: global batch {global_rows} is not divisible by "
                f"the {shards} batch shards of mesh axes {axes}"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def make_train_step(
    step_fn: Callable, *, mesh: Mesh, state_sharding: Any, rules=DEFAULT_RULES, donate: bool = True
) -> Callable:
    """Jits ``step_fn(state, batch) -> (state, metrics)`` with shardings and donation.

    The state keeps its sharding, the batch is split over the batch axes and metrics are
    replicated. The old state's buffers are donated (updated in place).
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def batch_shardings(batch):
        return jax.tree.map(lambda x: batch_sharding(mesh, rules, np.ndim(x)), batch)

    compiled: dict[Any, Callable] = {}

    def step(state, batch):
        key = jax.tree.structure(batch), tuple(np.ndim(x) for x in jax.tree.leaves(batch))
        if key not in compiled:
            compiled[key] = jax.jit(
                step_fn,
                in_shardings=(state_sharding, batch_shardings(batch)),
                out_shardings=(state_sharding, replicated),
                donate_argnums=(0,) if donate else (),
            )
        return compiled[key](state, batch)

    step.jitted = compiled  # exposed for AOT compilation / trace counting
    return step


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Starts multi-host JAX (``jax.distributed.initialize``) when more than one process is used.

    Arguments default to the environment variables ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; on Cloud TPU and SLURM, JAX detects them
    itself when all are None. A single process (``num_processes == 1``) is a no-op. On CPU the
    cross-process collectives use gloo.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    if num_processes == 1:
        return
    if coordinator_address is None and num_processes is None and process_id is None:
        # Let JAX auto-detect only on clusters it knows (Cloud TPU pods, SLURM, Open MPI);
        # otherwise this is a plain single-process run.
        markers = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
        multi = any(env.get(m) for m in markers)
        for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
            multi |= env.get(count_var, "1").isdigit() and int(env.get(count_var, "1")) > 1
        if not multi:
            return
    if num_processes is not None and process_id is not None:
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} outside [0, {num_processes})")
    if coordinator_address is None and num_processes is not None:
        raise ValueError(
            "initialize_distributed: num_processes given without a "
            "coordinator_address (or JAX_COORDINATOR_ADDRESS)"
        )
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # older/newer JAX without the option
        pass
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
