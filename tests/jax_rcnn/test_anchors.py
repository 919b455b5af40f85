"""Tests for jax_rcnn.anchors against Detectron2's DefaultAnchorGenerator fixtures."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import anchors

GEOMETRY = np.load(pathlib.Path(__file__).parents[1] / "data" / "geometry.npz")
SIZES = [[32], [64], [128], [256], [512]]
RATIOS = [[0.5, 1.0, 2.0]]
STRIDES = [4, 8, 16, 32, 64]
LEVELS = ["p2", "p3", "p4", "p5", "p6"]


def test_cell_anchors_worked_example():
    cell = anchors.cell_anchors([32, 64], [0.5, 1.0])
    w = math.sqrt(32 * 32 / 0.5)
    np.testing.assert_allclose(
        cell,
        [
            [-w / 2, -w / 4, w / 2, w / 4],
            [-16, -16, 16, 16],
            [-2 * w / 2, -2 * w / 4, 2 * w / 2, 2 * w / 4],
            [-32, -32, 32, 32],
        ],
        rtol=1e-7,
    )
    assert cell.dtype == np.float32


def test_cell_anchors_fixture():
    for level, size in zip(LEVELS, SIZES, strict=True):
        np.testing.assert_array_equal(
            anchors.cell_anchors(size, RATIOS[0]), GEOMETRY[f"cell_anchors_{level}"]
        )


def test_grid_anchors_fixture_offset0():
    grids = [tuple(int(v) for v in hw) for hw in GEOMETRY["anchors_grid_sizes"]]
    np.testing.assert_array_equal(GEOMETRY["anchors_strides"], STRIDES)
    out = anchors.grid_anchors(grids, STRIDES, SIZES, RATIOS, offset=0.0)
    assert len(out) == 5
    for level, got in zip(LEVELS, out, strict=True):
        expected = GEOMETRY[f"anchors_{level}"]
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_grid_anchors_fixture_offset05_and_flat_broadcast():
    grids = [tuple(int(v) for v in hw) for hw in GEOMETRY["anchors_offset05_grid_sizes"]]
    out = anchors.grid_anchors(grids, STRIDES, SIZES, [0.5, 1.0, 2.0], offset=0.5)
    for level, got in zip(LEVELS, out, strict=True):
        np.testing.assert_array_equal(got, GEOMETRY[f"anchors_offset05_{level}"])


def test_grid_layout_is_y_x_anchor():
    (out,) = anchors.grid_anchors([(2, 3)], [8], [[16]], [[0.5, 1.0]], offset=0.5)
    cell = anchors.cell_anchors([16], [0.5, 1.0])
    grid = out.reshape(2, 3, 2, 4)
    for y in range(2):
        for x in range(3):
            shift = np.array([x * 8 + 4, y * 8 + 4] * 2, np.float32)
            np.testing.assert_allclose(grid[y, x], cell + shift)


def test_bad_configs():
    with pytest.raises(ValueError, match="sizes"):
        anchors.grid_anchors([(2, 2), (1, 1)], [4, 8], [[32], [64], [128]], [[1.0]], 0.0)
    with pytest.raises(ValueError, match="offset"):
        anchors.grid_anchors([(2, 2)], [4], [[32]], [[1.0]], 1.0)
    with pytest.raises(ValueError, match="grid sizes"):
        anchors.grid_anchors([(2, 2)], [4, 8], [[32]], [[1.0]], 0.0)
    (empty,) = anchors.grid_anchors([(0, 5)], [4], [[32]], [[1.0]], 0.0)
    assert empty.shape == (0, 4)


def test_usable_under_jit_and_vmap():
    def shifted(delta):
        (a,) = anchors.grid_anchors([(3, 4)], [16], [[32]], [[0.5, 1.0, 2.0]], 0.0)
        return jnp.asarray(a) + delta

    (ref,) = anchors.grid_anchors([(3, 4)], [16], [[32]], [[0.5, 1.0, 2.0]], 0.0)
    out = jax.jit(jax.vmap(shifted))(jnp.arange(2.0))
    np.testing.assert_array_equal(out[1], ref + 1.0)
