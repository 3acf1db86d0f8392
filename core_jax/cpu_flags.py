"""Default XLA:CPU flags for core_jax (measured in ``benchmarks/``, see ``benchmarks/NOTES.md``).

XLA reads ``XLA_FLAGS`` once, when the first backend starts, so these defaults only take effect
if :func:`apply_default_cpu_flags` runs before JAX computes anything::

    from core_jax import cpu_flags
    cpu_flags.apply_default_cpu_flags()   # before the first jax computation
    import jax

A flag the user already put in ``XLA_FLAGS`` is left alone, and ``CORE_JAX_CPU_FLAGS=0`` turns
the defaults off. Flags are only added for jaxlib versions on which they were tested (an unknown
flag name makes XLA abort at start-up). For code that cannot set the environment early enough,
:func:`compiler_options` gives the same settings per compilation::

    jax.jit(f).lower(*args).compile(compiler_options=cpu_flags.compiler_options())

Current defaults:

* ``--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution,reduce,eltwise``:
  XLA's default list plus ``eltwise``, i.e. elementwise fusions also run through YNNPACK. On the
  2-core AVX-512 development VM this makes the 29M-parameter transformer training step of
  ``benchmarks/transformer_step.py`` ~30% faster (540 -> 700 tokens/s); fp32 results agree with
  the default to ~1e-6 (checked on logits, gradients, prefill/decode). Adding ``dot`` (dots
  fused with their elementwise neighbours) instead of ``individual_dot`` measured the same or
  1% slower. GPU/TPU backends ignore the flag.
"""

from __future__ import annotations

import os
import warnings

# flag name -> value, for the jaxlib (major, minor) versions in TESTED_JAXLIB.
DEFAULT_CPU_FLAGS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "individual_dot,individual_convolution,reduce,eltwise",
}
# Same settings in DebugOptions (proto enum) spelling, for ``compile(compiler_options=...)``.
_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": ",".join(
        "LIBRARY_FUSION_TYPE_" + v.upper()
        for v in DEFAULT_CPU_FLAGS["xla_cpu_experimental_ynn_fusion_type"].split(",")
    ),
}
TESTED_JAXLIB: tuple[tuple[int, int], ...] = ((0, 10),)
DISABLE_ENV = "CORE_JAX_CPU_FLAGS"


def _jaxlib_version() -> tuple[int, int] | None:
    try:
        from importlib.metadata import version

        major, minor = version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except Exception:  # noqa: BLE001 - no jaxlib / odd version string: add nothing
        return None


def supported() -> bool:
    """Whether the installed jaxlib is one the default flags were tested on."""
    return _jaxlib_version() in TESTED_JAXLIB


def _backend_started() -> bool:
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # noqa: BLE001
        return False


def apply_default_cpu_flags(environ: dict[str, str] | None = None) -> list[str]:
    """Appends the default flags the user has not set to ``XLA_FLAGS``.

    Args:
      environ: the environment to edit (default ``os.environ``).

    Returns:
      The flags added (``--name=value``); empty if disabled, unsupported or already set.
    """
    env = os.environ if environ is None else environ
    if env.get(DISABLE_ENV, "1").lower() in ("0", "false", "no", "off") or not supported():
        return []
    current = env.get("XLA_FLAGS", "")
    added = [f"--{k}={v}" for k, v in DEFAULT_CPU_FLAGS.items() if f"--{k}" not in current]
    if added:
        if environ is None and _backend_started():
            warnings.warn(
                "core_jax.cpu_flags: a JAX backend is already running; XLA_FLAGS changes take "
                "effect only in new processes (use compiler_options() instead)",
                stacklevel=2,
            )
        env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def compiler_options() -> dict[str, str]:
    """The defaults as ``jax.stages.Lowered.compile(compiler_options=...)`` (CPU only)."""
    return dict(_COMPILER_OPTIONS) if supported() else {}


# XLA's own default list, without ``eltwise``.
_NO_ELTWISE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
_NO_ELTWISE += "LIBRARY_FUSION_TYPE_REDUCE"


def optimizer_compiler_options(backend: str | None = None) -> dict[str, str]:
    """Per-compilation options for optimizer updates on CPU: YNNPACK ``eltwise`` fusion off.

    YNNPACK elementwise fusions cannot take broadcast scalars, so in an optimizer update (all
    elementwise, full of scalar hyper-parameters) XLA materialises every broadcast constant as a
    parameter-sized tensor: with the ``eltwise`` default the AdamW update of a 29M-parameter
    model is ~4x slower than without it (``benchmarks/NOTES.md``). These options override the
    process-wide ``XLA_FLAGS`` value for one compilation, whatever it is. Empty (no change) on
    other backends or untested jaxlib versions.

    Args:
      backend: ``"cpu"``, ``"gpu"``, ... (default ``jax.default_backend()``).
    """
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend != "cpu" or not supported():
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": _NO_ELTWISE}
