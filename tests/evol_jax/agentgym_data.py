"""Locates the AgentGym parity data (../shared/data/agentgym next to the repository).

``AGENTGYM_DATA`` overrides the location (e.g. for a clone elsewhere). If the folder does not
exist at all, the tests that need it are skipped with the path in the reason; if the folder
exists but a file is missing, that is an error.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

DATA = Path(
    os.environ.get(
        "AGENTGYM_DATA", Path(__file__).resolve().parents[3] / "shared" / "data" / "agentgym"
    )
)


def path(name: str) -> Path:
    p = DATA / name
    if not DATA.is_dir():
        import pytest

        pytest.skip(f"AgentGym parity data not found at {DATA} (set AGENTGYM_DATA)")
    if not p.exists():
        raise FileNotFoundError(f"AgentGym parity data missing: {p} (set AGENTGYM_DATA)")
    return p


def load_jsonl(name: str) -> list[dict]:
    with open(path(name)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_json(name: str):
    with open(path(name)) as fh:
        return json.load(fh)


def episodes(records: list[dict]) -> list[list[dict]]:
    """Records grouped by ``episode`` (in file order), each list ordered by ``step``."""
    groups = defaultdict(list)
    for r in records:
        groups[r["episode"]].append(r)
    return [sorted(g, key=lambda r: r["step"]) for _, g in sorted(groups.items())]
