"""Tests for jax_rcnn.poolers: FPN level assignment and multi-level ROIAlignV2 pooling."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import poolers

GEOMETRY = np.load(pathlib.Path(__file__).parents[1] / "data" / "geometry.npz")


def test_levels_fixture():
    levels = poolers.assign_boxes_to_levels(jnp.asarray(GEOMETRY["levels_boxes"]), 2, 5)
    assert levels.dtype == jnp.int32
    np.testing.assert_array_equal(levels, GEOMETRY["levels_assigned"])


def test_levels_worked_examples():
    sides = jnp.array([224.0, 112.0, 111.99, 448.0, 447.99, 56.0, 10_000.0, 0.0])
    boxes = jnp.stack([jnp.zeros_like(sides)] * 2 + [sides] * 2, axis=-1)
    np.testing.assert_array_equal(
        poolers.assign_boxes_to_levels(boxes, 2, 5), [4, 3, 2, 5, 4, 2, 5, 2]
    )
    # Other pyramids: absolute levels, clamped to their own range.
    np.testing.assert_array_equal(
        poolers.assign_boxes_to_levels(boxes, 3, 6, canonical_level=5), [5, 4, 3, 6, 5, 3, 6, 3]
    )


def test_levels_bad_boxes():
    boxes = jnp.array(
        [
            [100, 100, 50, 50],
            [0, 0, 0, 1000],
            [jnp.nan, 0, 1, 1],
            [0, 0, jnp.inf, jnp.inf],
            [0, 0, -500, 1000],
            [0, 0, 1000, 1000],
        ]
    )
    # Inverted: area +2500 -> level 2 (Detectron2 does not clamp the area). Non-finite boxes and
    # negative areas (sqrt -> NaN; pooled nowhere by Detectron2) go to the min level.
    np.testing.assert_array_equal(poolers.assign_boxes_to_levels(boxes, 2, 5), [2, 2, 2, 2, 2, 5])
    assert poolers.assign_boxes_to_levels(jnp.zeros((0, 4)), 2, 5).shape == (0,)


def test_levels_jit_vmap():
    boxes = jnp.asarray(GEOMETRY["levels_boxes"][:60]).reshape(3, 20, 4)
    fn = jax.jit(jax.vmap(lambda b: poolers.assign_boxes_to_levels(b, 2, 5)))
    np.testing.assert_array_equal(fn(boxes).reshape(-1), GEOMETRY["levels_assigned"][:60])


def _kernels_available():
    try:
        from pallas_kernels import roi_align  # noqa: F401

        return hasattr(roi_align, "roi_align_reference")
    except ImportError:
        return False


needs_roi_align = pytest.mark.skipif(
    not _kernels_available(), reason="pallas_kernels.roi_align.roi_align_reference missing"
)


def _pyramid_and_boxes():
    """p2..p5 of a 128x160 image; p2 and p4 are the Detectron2 ROIAlign fixture features."""
    g = GEOMETRY
    rng = np.random.RandomState(0)
    p2 = np.transpose(g["roialign_features_scale1_4"], (0, 2, 3, 1))  # [2, 32, 40, 8]
    p4 = np.transpose(g["roialign_features_scale1_16"], (0, 2, 3, 1))  # [2, 8, 10, 8]
    p3 = rng.normal(size=(2, 16, 20, 8)).astype(np.float32)
    p5 = rng.normal(size=(2, 4, 5, 8)).astype(np.float32)
    rois = g["roialign_rois"]
    per_image = [np.flatnonzero(rois[:, 0] == b) for b in range(2)]
    num_boxes = max(len(i) for i in per_image) + 2  # + padding slots
    boxes = np.zeros((2, num_boxes, 4), np.float32)
    for b, rows in enumerate(per_image):
        boxes[b, : len(rows)] = rois[rows, 1:]
    return [p2, p3, p4, p5], boxes, per_image


@needs_roi_align
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_pool_matches_detectron2_roialign(sampling_ratio):
    """Boxes on p2 equal Detectron2 ROIAlignV2 at scale 1/4; boxes on p3 equal a p3-only pool."""
    features, boxes, per_image = _pyramid_and_boxes()
    kwargs = dict(output_size=7, sampling_ratio=sampling_ratio, backend="reference")
    out = poolers.roi_pool(
        [jnp.asarray(f) for f in features], jnp.asarray(boxes), min_level=2, **kwargs
    )
    assert out.shape == (2, boxes.shape[1], 7, 7, 8)
    only_p3 = poolers.roi_pool(
        [jnp.asarray(features[1])], jnp.asarray(boxes), min_level=3, **kwargs
    )
    levels = np.asarray(poolers.assign_boxes_to_levels(jnp.asarray(boxes), 2, 5))
    expected = GEOMETRY[f"roialign_scale1_4_sr{sampling_ratio}_out7_out"]  # [R, C, 7, 7]
    checked = {2: 0, 3: 0}
    for b, rows in enumerate(per_image):
        for slot, row in enumerate(rows):
            level = int(levels[b, slot])
            want = np.transpose(expected[row], (1, 2, 0)) if level == 2 else only_p3[b, slot]
            np.testing.assert_allclose(out[b, slot], want, rtol=1e-5, atol=1e-5)
            checked[level] += 1
    # The fixture ROIs (128x160 image) are 14 small boxes on p2 and the whole image on p3.
    assert checked == {2: 14, 3: 2}
    assert np.all(np.isfinite(out))


@needs_roi_align
def test_roi_pool_padding_invariance_jit_vmap():
    features, boxes, per_image = _pyramid_and_boxes()
    features = [jnp.asarray(f) for f in features]
    fn = jax.jit(
        lambda f, b: poolers.roi_pool(
            f, b, min_level=2, output_size=7, sampling_ratio=0, backend="reference"
        )
    )
    clean = fn(features, jnp.asarray(boxes))
    dirty_boxes = boxes.copy()
    garbage = [[np.nan, 1, 2, 3], [-50, -40, 300, 400], [30, 5, 10, 50], [0, 0, np.inf, 9]]
    for b, rows in enumerate(per_image):
        for j, slot in enumerate(range(len(rows), boxes.shape[1])):
            dirty_boxes[b, slot] = garbage[j % len(garbage)]
    dirty = fn(features, jnp.asarray(dirty_boxes))
    for b, rows in enumerate(per_image):
        np.testing.assert_array_equal(dirty[b, : len(rows)], clean[b, : len(rows)])
    assert np.all(np.isfinite(dirty))
    # Per-image pooling via vmap over the batch gives the same values.
    per_image_fn = jax.vmap(
        lambda f2, f3, f4, f5, b: poolers.roi_pool(
            [f2[None], f3[None], f4[None], f5[None]],
            b[None],
            min_level=2,
            output_size=7,
            sampling_ratio=0,
            backend="reference",
        )[0]
    )
    vmapped = jax.jit(per_image_fn)(*features, jnp.asarray(boxes))
    np.testing.assert_allclose(vmapped, clean, rtol=1e-6, atol=1e-6)


@needs_roi_align
def test_roi_pool_single_level_takes_every_box():
    g = GEOMETRY
    p4 = jnp.asarray(np.transpose(g["roialign_features_scale1_16"], (0, 2, 3, 1)))
    rois = g["roialign_rois"]
    rows = np.flatnonzero(rois[:, 0] == 0)
    out = poolers.roi_pool(
        [p4],
        jnp.asarray(rois[rows, 1:])[None],
        min_level=4,
        output_size=14,
        sampling_ratio=2,
        backend="reference",
    )
    expected = np.transpose(g["roialign_scale1_16_sr2_out14_out"][rows], (0, 2, 3, 1))
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)
