"""Tests for `jax_rcnn.masks` (Detectron2 mask pasting and mask-target cropping)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import masks

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "data" / "geometry.npz"


@pytest.fixture(scope="module")
def geometry():
    return dict(np.load(FIXTURES))


_paste = jax.jit(masks.paste_masks_in_image, static_argnums=(2, 3))


def test_paste_masks_detectron2_fixture(geometry):
    height, width = (int(v) for v in geometry["paste_image_size"])
    got = np.asarray(_paste(geometry["paste_mask_probs"], geometry["paste_boxes"], (height, width)))
    assert got.dtype == np.bool_ and got.shape == geometry["paste_masks"].shape
    # Bit-exact: the float32 arithmetic follows PyTorch's grid_sample CPU kernel.
    np.testing.assert_array_equal(got, geometry["paste_masks"])


def test_paste_worked_example_and_degenerate_boxes():
    probs = np.ones((4, 28, 28), np.float32)
    boxes = np.array(
        [[10, 10, 20, 20], [5, 5, 5, 9], [np.nan, 0, 4, 4], [-50, -50, -20, -20]], np.float32
    )
    got = np.asarray(_paste(probs, boxes, (32, 40)))
    want = np.zeros((32, 40), bool)
    want[10:20, 10:20] = True
    np.testing.assert_array_equal(got[0], want)
    assert not got[1:].any()  # zero width, non-finite, outside the image


def test_paste_box_edge_samples_half_zero_padding():
    # Box x1 = 10.5: pixel 10's centre lies on the edge, i.e. mask position -0.5, so it reads
    # half the border cell and half zero padding: 1.0 -> 0.5 (set, >=), 0.9 -> 0.45 (not set).
    box = np.array([[10.5, 10, 20, 20]], np.float32)
    ones = np.asarray(_paste(np.ones((1, 28, 28)), box, (24, 24)))
    assert ones[0, 15, 10] and not ones[0, 15, 9]
    high = np.asarray(_paste(np.full((1, 28, 28), 0.9), box, (24, 24)))
    assert not high[0, 15, 10] and high[0, 15, 11]


def test_crop_and_resize_detectron2_fixture(geometry):
    crop = jax.jit(lambda m, b, i: masks.crop_and_resize(m, b, i, 28))
    gt_masks = geometry["crop_masks"]
    got = np.asarray(crop(gt_masks, geometry["crop_boxes"], jnp.arange(len(gt_masks))))
    assert got.shape == (19, 28, 28) and got.dtype == np.float32
    np.testing.assert_array_equal(got >= 0.5, geometry["crop_targets_28"])


def test_crop_and_resize_gt_index_and_worked_example():
    gt = np.zeros((2, 16, 16), bool)
    gt[1, 4:12, 4:12] = True
    boxes = np.array([[4, 4, 12, 12], [4, 4, 12, 12], [0, 0, 8, 8]], np.float32)
    got = np.asarray(masks.crop_and_resize(gt, boxes, jnp.array([1, 0, 1]), 4))
    np.testing.assert_array_equal(got[0], 1.0)  # box == mask: every sample inside
    np.testing.assert_array_equal(got[1], 0.0)  # empty gt 0
    # Box [0, 8): the mask covers x, y >= 4, i.e. the lower-right 2x2 output cells.
    want = np.zeros((4, 4), np.float32)
    want[2:, 2:] = 1.0
    np.testing.assert_array_equal(got[2], want)
