"""Tests for jax_rcnn.matching against every Detectron2 Matcher fixture."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import matching

GEOMETRY = np.load(pathlib.Path(__file__).parents[1] / "data" / "geometry.npz")
SETTINGS = {
    "rpn": dict(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True),
    "roi": dict(thresholds=(0.5,), labels=(0, 1), allow_low_quality_matches=False),
}
CASES = ["random", "ties", "gt_no_overlap", "real"]
# Jitted entry point: one compile per call instead of one per primitive keeps the file fast.
match = jax.jit(
    matching.match, static_argnames=("thresholds", "labels", "allow_low_quality_matches")
)


def _fixture_quality(case):
    if case == "zero_gt":
        return np.zeros((0, 7), np.float32)
    if case == "zero_pred":
        return np.zeros((3, 0), np.float32)
    return GEOMETRY[f"matcher_{case}_iou"]


@pytest.mark.parametrize("setting", ["rpn", "roi"])
@pytest.mark.parametrize("case", [*CASES, "zero_gt", "zero_pred"])
def test_fixture(case, setting):
    quality = _fixture_quality(case)
    gt_valid = jnp.ones((quality.shape[0],), bool)
    idx, labels = match(jnp.asarray(quality), gt_valid, **SETTINGS[setting])
    assert idx.dtype == jnp.int32 and labels.dtype == jnp.int32
    np.testing.assert_array_equal(idx, GEOMETRY[f"matcher_{case}_{setting}_matches"])
    np.testing.assert_array_equal(labels, GEOMETRY[f"matcher_{case}_{setting}_labels"])


@pytest.mark.parametrize("setting", ["rpn", "roi"])
@pytest.mark.parametrize("case", ["random", "ties", "gt_no_overlap", "zero_gt"])
def test_padding_invariance(case, setting):
    """Garbage in padded gt rows (anywhere in the gt axis) changes nothing."""
    quality = _fixture_quality(case)
    num_gt, num_pred = quality.shape
    rng = np.random.RandomState(0)
    garbage = rng.uniform(0, 1, (4, num_pred)).astype(np.float32)
    garbage[0] = 1.0  # would win every argmax and every low-quality tie if it counted
    garbage[1] = 0.0  # an all-zero row would make everything low-quality positive
    garbage[2, :] = np.nan
    padded = np.concatenate([garbage[:2], quality, garbage[2:]], axis=0)
    valid = np.array([False] * 2 + [True] * num_gt + [False] * 2)
    idx, labels = jax.jit(lambda q, v: matching.match(q, v, **SETTINGS[setting]))(padded, valid)
    expected_idx = GEOMETRY[f"matcher_{case}_{setting}_matches"]
    if num_gt:
        np.testing.assert_array_equal(idx, expected_idx + 2)
    else:
        np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_array_equal(labels, GEOMETRY[f"matcher_{case}_{setting}_labels"])


def test_low_quality_ties_keep_match_index():
    # Prediction 1 attains gt 1's max (0.4) but its argmax is gt 0 (0.45): it becomes positive
    # while keeping match 0. Prediction 2 ties with it for gt 1 and is also promoted.
    q = jnp.array([[0.9, 0.45, 0.1], [0.1, 0.4, 0.4]])
    idx, labels = match(q, jnp.array([True, True]), **SETTINGS["rpn"])
    np.testing.assert_array_equal(idx, [0, 0, 1])
    np.testing.assert_array_equal(labels, [1, 1, 1])
    idx, labels = match(q, jnp.array([True, True]), **SETTINGS["roi"])
    np.testing.assert_array_equal(labels, [1, 0, 0])


def test_boundaries_are_half_open():
    q = jnp.array([[0.3, 0.7, 0.2999999, 0.6999999, 1.0]])
    _, labels = match(
        q,
        jnp.array([True]),
        thresholds=(0.3, 0.7),
        labels=(0, -1, 1),
        allow_low_quality_matches=False,
    )
    np.testing.assert_array_equal(labels, [-1, 1, 0, -1, 1])


def test_nan_quality_reads_as_zero():
    q = jnp.array([[jnp.nan, 0.8], [0.2, jnp.nan]])
    idx, labels = match(q, jnp.array([True, True]), **SETTINGS["roi"])
    np.testing.assert_array_equal(idx, [1, 0])
    np.testing.assert_array_equal(labels, [0, 1])


def test_bad_config():
    with pytest.raises(ValueError):
        matching.match(
            jnp.zeros((1, 1)),
            jnp.ones(1, bool),
            thresholds=(0.5,),
            labels=(0,),
            allow_low_quality_matches=False,
        )
    with pytest.raises(ValueError):
        matching.match(
            jnp.zeros((1, 1)),
            jnp.ones(1, bool),
            thresholds=(0.0,),
            labels=(0, 1),
            allow_low_quality_matches=False,
        )


def test_vmap_over_images():
    """Two images with different numbers of valid gt, batched with vmap under jit."""
    a = GEOMETRY["matcher_random_iou"]  # [6, 50]
    b = GEOMETRY["matcher_ties_iou"]  # [4, 20]
    qb = np.zeros((6, 50), np.float32)
    qb[:4, :20] = b
    quality = np.stack([a, qb])
    valid = np.array([[True] * 6, [True] * 4 + [False] * 2])
    fn = jax.jit(jax.vmap(lambda q, v: matching.match(q, v, **SETTINGS["rpn"])))
    idx, labels = fn(quality, valid)
    np.testing.assert_array_equal(idx[0], GEOMETRY["matcher_random_rpn_matches"])
    np.testing.assert_array_equal(labels[0], GEOMETRY["matcher_random_rpn_labels"])
    np.testing.assert_array_equal(idx[1, :20], GEOMETRY["matcher_ties_rpn_matches"])
    np.testing.assert_array_equal(labels[1, :20], GEOMETRY["matcher_ties_rpn_labels"])
