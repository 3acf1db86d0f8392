"""CLI: ``python -m evol_jax.main --config NAME --workdir DIR`` (configs in ``evol_jax/configs``).

Runs BC then AgentEvol for the named recipe, resuming whatever ``DIR`` already holds, and prints the
results table (also in ``DIR/results.md``, ``DIR/results.json``, ``DIR/evolution.png``).
"""

from __future__ import annotations

import argparse

from evol_jax.configs import get_config
from evol_jax.demo import enable_compile_cache, run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="AgentEvol (BC + evolution) on the native JAX envs.")
    ap.add_argument("--config", default="demo", help="config name in evol_jax/configs")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args(argv)
    enable_compile_cache(args.workdir)
    return run(get_config(args.config), args.workdir)


if __name__ == "__main__":
    main()
