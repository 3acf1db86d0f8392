"""Tests for core_jax.progress."""

import io

import pytest
from tqdm import tqdm

from core_jax import progress as progress_lib
from core_jax.progress import PlainProgress, progress


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_non_tty_prints_plain_line_every_tenth(monkeypatch):
    monkeypatch.delenv("CORE_JAX_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress(range(100), desc="train", file=out)
    assert isinstance(bar, PlainProgress)
    seen = []
    for i in bar:
        seen.append(i)
        if i == 55:
            bar.set_postfix({"loss": 0.123456})
    assert seen == list(range(100))
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("train: 10/100 (10%)")
    assert lines[-1].startswith("train: 100/100 (100%)")
    assert lines[-1].endswith("loss=0.1235")
    assert "\r" not in out.getvalue()


def test_total_with_update_initial_and_early_close(monkeypatch):
    monkeypatch.delenv("CORE_JAX_PROGRESS", raising=False)
    out = io.StringIO()
    with progress(1000, desc="eval", initial=250, file=out) as bar:
        for _ in range(100):
            bar.update(1)
        bar.set_postfix(acc=0.5)
    lines = out.getvalue().splitlines()
    # 250 -> 350 crosses 300 once; close() prints the final count.
    assert [line.split()[1] for line in lines] == ["300/1000", "350/1000"]
    assert lines[-1].endswith("acc=0.5")


def test_unknown_total_reports_once_at_close(monkeypatch):
    monkeypatch.delenv("CORE_JAX_PROGRESS", raising=False)
    out = io.StringIO()
    assert list(progress(iter(range(5)), desc="gen", file=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue().startswith("gen: 5 ")


def test_tty_or_env_gives_tqdm(monkeypatch):
    monkeypatch.delenv("CORE_JAX_PROGRESS", raising=False)
    bar = progress(10, desc="x", file=_TTY())
    assert isinstance(bar, tqdm)
    bar.set_postfix({"loss": 1.0})
    bar.update(3)
    assert bar.n == 3
    bar.close()
    monkeypatch.setenv("CORE_JAX_PROGRESS", "1")
    out = io.StringIO()
    bar = progress(range(4), desc="forced", file=out, initial=2)
    assert isinstance(bar, tqdm)
    assert bar.total == 6
    assert list(bar) == [0, 1, 2, 3]
    assert "forced" in out.getvalue()


def test_disabled_on_other_processes_and_explicitly(monkeypatch):
    monkeypatch.setenv("CORE_JAX_PROGRESS", "1")
    out = io.StringIO()
    monkeypatch.setattr(progress_lib.jax, "process_index", lambda: 3)
    bar = progress(range(20), desc="quiet", file=out)
    assert list(bar) == list(range(20))
    bar.set_postfix({"loss": 1.0})
    assert out.getvalue() == ""
    monkeypatch.setattr(progress_lib.jax, "process_index", lambda: 0)
    bar = progress(5, desc="quiet", disable=True, file=out)
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""


def test_bad_total_raises():
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        progress(-1, desc="x")
    with pytest.raises(TypeError, match="wraps no iterable"):
        list(PlainProgress(total=3, desc="x"))
