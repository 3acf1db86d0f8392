"""BabyAI's Gato layout: one discrete token per view cell, and old-layout data is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gato_jax import tasks
from gato_jax.configs.tokenizer import TokenizerConfig


def _image(triples: dict[tuple[int, int], tuple[int, int, int]]) -> np.ndarray:
    img = np.zeros((7, 7, 3), np.uint8)  # all cells (unseen, red, open) = id 0
    for (x, y), t in triples.items():
        img[x, y] = t
    return img


def test_cell_ids_known_answers():
    # (object, colour, state) -> object * 18 + colour * 3 + state, at its own (x, y).
    cases = {
        (0, 0): ((0, 0, 0), 0),  # unseen
        (1, 2): ((1, 0, 0), 18),  # empty
        (2, 0): ((2, 5, 0), 51),  # grey wall
        (3, 5): ((6, 0, 0), 108),  # red ball
        (4, 4): ((4, 4, 1), 85),  # closed yellow door
        (5, 1): ((4, 5, 2), 89),  # locked grey door
        (6, 6): ((5, 2, 0), 96),  # blue key
        (3, 6): ((10, 5, 2), 197),  # the largest id (BABYAI_CELL_HIGH)
    }
    img = _image({xy: t for xy, (t, _) in cases.items()})
    cells = tasks.babyai_cells(img)
    assert cells.shape == (7, 7) and cells.dtype == np.int32
    want = np.zeros((7, 7), np.int32)
    for xy, (_, cid) in cases.items():
        want[xy] = cid
    np.testing.assert_array_equal(cells, want)
    assert tasks.BABYAI_CELL_HIGH == 197
    np.testing.assert_array_equal(tasks.babyai_cells_to_image(cells), img)


def test_cell_ids_are_a_bijection():
    o, c, s = np.meshgrid(
        np.arange(tasks.BABYAI_OBJECTS),
        np.arange(tasks.BABYAI_COLOURS),
        np.arange(tasks.BABYAI_STATES),
        indexing="ij",
    )
    triples = np.stack([o, c, s], -1).reshape(-1, 3)  # 198 triples, in id order
    padded = np.zeros((5 * 49, 3), np.int64)
    padded[: len(triples)] = triples
    ids = np.concatenate(
        [
            tasks.babyai_cells(padded[k * 49 : (k + 1) * 49].reshape(7, 7, 3)).ravel()
            for k in range(5)
        ]
    )[: len(triples)]
    np.testing.assert_array_equal(ids, np.arange(tasks.BABYAI_CELL_HIGH + 1))
    back = tasks.babyai_cells_to_image(np.arange(tasks.BABYAI_CELL_HIGH + 1))
    np.testing.assert_array_equal(back, triples)


def test_cell_ids_bad_input():
    with pytest.raises(ValueError, match=r"expected integer \[7, 7, 3\].*\[7, 7\]"):
        tasks.babyai_cells(np.zeros((7, 7), np.int32))
    with pytest.raises(ValueError, match="expected integer"):
        tasks.babyai_cells(np.zeros((7, 7, 3), np.float32))
    with pytest.raises(ValueError, match=r"colour index 6 outside \[0, 6\) at cell \(1, 2\)"):
        tasks.babyai_cells(_image({(1, 2): (6, 6, 0)}))
    with pytest.raises(ValueError, match=r"object index 11 outside \[0, 11\)"):
        tasks.babyai_cells(_image({(0, 0): (11, 0, 0)}))
    with pytest.raises(ValueError, match=r"id 198 > 197"):
        tasks.babyai_cells_to_image(np.array([198]))


def test_constants_match_minigrid():
    const = pytest.importorskip("minigrid.core.constants")
    assert max(const.OBJECT_TO_IDX.values()) + 1 == tasks.BABYAI_OBJECTS
    assert max(const.COLOR_TO_IDX.values()) + 1 == tasks.BABYAI_COLOURS
    assert max(const.STATE_TO_IDX.values()) + 1 == tasks.BABYAI_STATES


def test_babyai_step_is_84_tokens_and_observation_uses_cells():
    pytest.importorskip("minigrid")
    cfg = TokenizerConfig(seq_len=200)
    task = tasks.get_task("babyai_goto_local", cfg)
    # At most 32 instruction tokens (only the mission's own enter a sequence) + 49 cells +
    # direction + '|' + action.
    assert task.spec.tokens_per_step == 32 + 49 + 1 + 1 + 1
    env, obs = task.new_episode(7)
    o = task.observation(obs, env)
    assert o["view"].shape == (7, 7) and o["instruction"] == obs["mission"]
    np.testing.assert_array_equal(tasks.babyai_cells_to_image(o["view"]), obs["image"])
    env.close()


def test_sources_refuse_data_of_another_layout(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from gato_jax import datagen

    task = tasks.get_task("babyai_goto_redball")
    now = datagen._spec_summary(task)
    old = [
        {**d, "shape": [7, 7, 3], "high": 10.0} if d["name"] == "observation/view" else d
        for d in now
    ]
    for spec in (now, old):
        report = {"tasks": {"babyai_goto_redball": {"spec": spec}}}
        (tmp_path / "tasks.json").write_text(json.dumps(report))
        if spec is now:
            (src,) = datagen.sources(str(tmp_path), ["babyai_goto_redball"])
            assert src.spec == task.spec and src.instruction_key == "instruction"
        else:
            with pytest.raises(
                ValueError,
                match=r"observation/view: recorded .*\[7, 7, 3\].*"
                r"now .*\[7, 7\].*regenerate",
            ):
                datagen.sources(str(tmp_path), ["babyai_goto_redball"])
