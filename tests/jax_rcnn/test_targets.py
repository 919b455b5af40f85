"""Tests for jax_rcnn.targets: RPN anchor labels, ROI sampling, mask targets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import targets
from jax_rcnn.data import batching
from jax_rcnn.data import transforms as T

K = 3  # classes in the ROI examples; background = 3

anchor_labels = jax.jit(
    functools.partial(
        targets.label_and_sample_anchors, iou_thresholds=(0.3, 0.7), iou_labels=(0, -1, 1)
    ),
    static_argnames=("batch_size_per_image", "positive_fraction", "boundary_thresh"),
)
sample_rois = jax.jit(
    functools.partial(
        targets.label_and_sample_proposals,
        num_classes=K,
        iou_thresholds=(0.5,),
        iou_labels=(0, 1),
    ),
    static_argnames=("batch_size_per_image", "positive_fraction"),
)
mask_targets = jax.jit(targets.mask_targets, static_argnums=5)

ANCHORS = jnp.array(
    [[0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60], [0, 0, 10, 12], [45, 45, 62, 62]],
    jnp.float32,
)


def _anchor_call(gt_boxes, gt_valid, *, bspi=1000, fraction=0.5, thresh=-1.0, key=0):
    return anchor_labels(
        jax.random.key(key),
        ANCHORS,
        jnp.asarray(gt_boxes, jnp.float32),
        jnp.asarray(gt_valid),
        jnp.array([100, 100]),
        batch_size_per_image=bspi,
        positive_fraction=fraction,
        boundary_thresh=thresh,
    )


def test_anchor_worked_example():
    # IoUs with gt [0, 0, 10, 10]: 1, 0.5, 0, 10/12, 0 -> 1, ignore, 0, 1, 0.
    out = _anchor_call([[0, 0, 10, 10], [0, 0, 0, 0]], [True, False])
    np.testing.assert_array_equal(out.labels, [1, -1, 0, 1, 0])
    np.testing.assert_array_equal(out.matched_gt_boxes[0], [0, 0, 10, 10])


def test_anchor_low_quality_match():
    # gt [40, 40, 60, 60]: IoUs 0, 0, 0.25 (< 0.3: background), 0, and 225 / 464 = 0.48 for
    # [45, 45, 62, 62], below 0.7 but the gt's best anchor, hence positive.
    out = _anchor_call([[40, 40, 60, 60]], [True])
    np.testing.assert_array_equal(out.labels, [0, 0, 0, 0, 1])


def test_anchor_zero_gt_all_background():
    out = _anchor_call(np.zeros((2, 4)), [False, False])
    np.testing.assert_array_equal(out.labels, [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out.matched_gt_boxes, np.zeros((5, 4)))
    # With a budget of 2, exactly 2 negatives are drawn.
    out = _anchor_call(np.zeros((2, 4)), [False, False], bspi=2)
    assert int(jnp.sum(out.labels == 0)) == 2 and int(jnp.sum(out.labels == -1)) == 3


def test_anchor_sampling_caps_positives():
    # Two positives (anchors 0, 3) but at most int(2 * 0.5) = 1 may be kept.
    out = _anchor_call([[0, 0, 10, 10]], [True], bspi=2, fraction=0.5)
    labels = np.asarray(out.labels)
    assert (labels == 1).sum() == 1 and (labels == 0).sum() == 1
    assert labels[1] == -1  # ignored anchors stay ignored


def test_anchor_boundary_thresh():
    anchors = jnp.array([[-5, 0, 10, 10], [0, 0, 10, 10]], jnp.float32)
    out = anchor_labels(
        jax.random.key(0),
        anchors,
        jnp.array([[0, 0, 10, 10]], jnp.float32),
        jnp.array([True]),
        jnp.array([100, 100]),
        batch_size_per_image=100,
        positive_fraction=0.5,
        boundary_thresh=0.0,
    )
    np.testing.assert_array_equal(out.labels, [-1, 1])


def test_anchor_padding_invariance():
    real = np.array([[0, 0, 10, 10], [44, 44, 60, 61]], np.float32)
    clean = np.zeros((4, 4), np.float32)
    clean[:2] = real
    garbage = np.array([[np.nan, 0, 5, 5], [0, 0, 10, 10], [1e9, -1e9, 3, np.inf], [0, 0, 10, 10]])
    dirty = clean.copy()
    dirty[2:] = garbage[:2]
    valid = np.array([True, True, False, False])
    a = _anchor_call(clean, valid, bspi=3, key=7)
    b = _anchor_call(dirty, valid, bspi=3, key=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.matched_gt_boxes, b.matched_gt_boxes)


def _rois(proposals, proposal_valid, gt_boxes, gt_classes, gt_valid, *, bspi=16, frac=0.25, key=0):
    return sample_rois(
        jax.random.key(key),
        jnp.asarray(proposals, jnp.float32),
        jnp.asarray(proposal_valid, bool),
        jnp.asarray(gt_boxes, jnp.float32),
        jnp.asarray(gt_classes, jnp.int32),
        jnp.asarray(gt_valid, bool),
        batch_size_per_image=bspi,
        positive_fraction=frac,
    )


PROPOSALS = np.array(
    [[0, 0, 10, 30], [0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 0, 0], [60, 60, 80, 80]], np.float32
)


def test_roi_worked_example():
    # gt [0, 0, 10, 10] class 2. IoUs: 1/3, 1, 0.5, 0 (invalid slot), 0 -> bg, fg, fg, -, bg.
    out = _rois(PROPOSALS, [1, 1, 1, 0, 1], [[0, 0, 10, 10], [0, 0, 0, 0]], [2, 0], [1, 0])
    assert out.valid.shape == (5,)  # R = min(16, 5)
    # Foreground first, each group in index order; the invalid slot 3 is never sampled.
    np.testing.assert_array_equal(out.index[:4], [1, 2, 0, 4])
    np.testing.assert_array_equal(out.valid, [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(out.gt_classes, [2, 2, K, K, K])
    np.testing.assert_array_equal(out.proposal_boxes[:4], PROPOSALS[[1, 2, 0, 4]])
    np.testing.assert_array_equal(out.proposal_boxes[4], [0, 0, 0, 0])
    np.testing.assert_array_equal(out.gt_boxes[:2], [[0, 0, 10, 10]] * 2)


def test_roi_fg_cap_and_slot_counts():
    assert targets.num_roi_slots(512, 1019) == 512
    assert targets.num_roi_slots(1_000_000, 1019) == 1019
    assert targets.num_fg_slots(512, 0.25, 1019) == 128
    assert targets.num_fg_slots(1_000_000, 0.25, 1019) == 1019
    assert targets.num_fg_slots(512, 0.25, 100) == 100
    # bspi 4 at 25 %: one foreground at most, three background.
    props = np.array([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]] * 5, np.float32)
    out = _rois(props, np.ones(8, bool), [[0, 0, 10, 10]], [1], [True], bspi=4)
    assert out.valid.shape == (4,)
    np.testing.assert_array_equal(out.gt_classes, [1, K, K, K])
    assert bool(out.valid.all())


def test_roi_zero_gt_all_background():
    out = _rois(PROPOSALS, [1, 1, 1, 0, 1], np.zeros((2, 4)), [0, 0], [0, 0])
    np.testing.assert_array_equal(out.gt_classes, [K] * 5)
    np.testing.assert_array_equal(out.valid, [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(out.gt_boxes, np.zeros((5, 4)))


def test_roi_padding_invariance():
    gt = np.array([[0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    dirty = gt.copy()
    dirty[1] = [0, 0, 10, 20]  # would match proposal 2 perfectly if it were valid
    dirty[2] = [np.nan, np.inf, -1, 5]
    classes, dirty_classes = [2, 0, 0], [2, 1, -7]
    valid = [True, False, False]
    a = _rois(PROPOSALS, [1, 1, 1, 0, 1], gt, classes, valid, key=3)
    b = _rois(PROPOSALS, [1, 1, 1, 0, 1], dirty, dirty_classes, valid, key=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_vmap_over_images():
    props = jnp.stack([jnp.asarray(PROPOSALS)] * 2)
    gt = jnp.array([[[0, 0, 10, 10]], [[60, 60, 80, 80]]], jnp.float32)
    f = jax.vmap(
        lambda k, p, v, b, c, gv: sample_rois(
            k, p, v, b, c, gv, batch_size_per_image=16, positive_fraction=0.25
        )
    )
    out = f(
        jax.random.split(jax.random.key(0), 2),
        props,
        jnp.ones((2, 5), bool),
        gt,
        jnp.array([[0], [1]]),
        jnp.ones((2, 1), bool),
    )
    np.testing.assert_array_equal(out.gt_classes[0, :2], [0, 0])
    np.testing.assert_array_equal(out.gt_classes[1, :1], [1])
    assert int(jnp.sum(out.gt_classes[1] < K)) == 1


def _disc_mask(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_mask_targets_full_image_is_detectron2_crop_and_resize():
    rng = np.random.default_rng(0)
    masks = np.stack([_disc_mask(40, 50, 20, 25, 12), _disc_mask(40, 50, 10, 10, 6)])
    boxes = np.array([[13, 8, 38, 33], [4, 4, 17, 17]], np.float32)
    rois = boxes[[0, 0, 1, 1]] + rng.uniform(-3, 3, (4, 4)).astype(np.float32)
    gt_index = np.array([0, 0, 1, 1], np.int32)
    valid = np.array([True, True, True, False])
    out = mask_targets(
        jnp.asarray(masks)[None],
        jnp.asarray(boxes)[None],
        jnp.asarray(rois)[None],
        jnp.asarray(gt_index)[None],
        jnp.asarray(valid)[None],
        28,
    )[0]
    for i in range(3):
        expected = T.crop_and_resize_mask(masks[gt_index[i]], rois[i], 28)
        np.testing.assert_array_equal(out[i], expected)
    assert not bool(out[3].any())  # padded slot


def test_mask_targets_box_relative_matches_reference():
    rng = np.random.default_rng(1)
    full = np.stack([_disc_mask(40, 50, 20, 25, 12), _disc_mask(40, 50, 10, 10, 6)])
    boxes = np.array([[13, 8, 38, 33], [4, 4, 17, 17]], np.float32)
    m = 32
    soft = np.stack([np.rint(255 * T.roi_align_mask(full[g], boxes[g], m)) for g in range(2)])
    soft = soft.astype(np.uint8)
    rois = boxes[[0, 1, 1]] + rng.uniform(-2, 2, (3, 4)).astype(np.float32)
    gt_index = np.array([0, 1, 1], np.int32)
    out = mask_targets(
        jnp.asarray(soft)[None],
        jnp.asarray(boxes)[None],
        jnp.asarray(rois)[None],
        jnp.asarray(gt_index)[None],
        jnp.ones((1, 3), bool),
        28,
    )[0]
    for i in range(3):
        ref = batching.mask_target_reference(soft[gt_index[i]], boxes[gt_index[i]], rois[i], 28)
        # Float32 (ours) vs float64 (reference) can only disagree on values within ~1e-6 of 0.5.
        assert np.mean(np.asarray(out[i]) != ref) <= 2 / 784
        exact = T.crop_and_resize_mask(full[gt_index[i]], rois[i], 28)
        # The box-relative representation approximates the exact target (boundary pixels).
        assert np.mean(np.asarray(out[i]) != exact) < 0.05


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_])
def test_mask_targets_garbage_in_padded_gt(dtype):
    size = 32 if dtype == np.uint8 else 40
    masks = np.zeros((1, 3, size, size), dtype)
    masks[0, 0, 5:20, 5:20] = 255 if dtype == np.uint8 else True
    dirty = masks.copy()
    dirty[0, 1:] = 255 if dtype == np.uint8 else True
    boxes = np.array([[[5, 5, 20, 20], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    dirty_boxes = boxes.copy()
    dirty_boxes[0, 2] = [np.nan, 1, 2, 3]
    args = (jnp.array([[[4, 4, 21, 21]]], jnp.float32), jnp.zeros((1, 1), jnp.int32))
    a = mask_targets(masks, boxes, *args, jnp.ones((1, 1), bool), 28)
    b = mask_targets(dirty, dirty_boxes, *args, jnp.ones((1, 1), bool), 28)
    np.testing.assert_array_equal(a, b)
    assert bool(a.any())


def test_label_anchors_dense_worked_example():
    from jax_rcnn.targets import label_anchors_dense

    anchors = jnp.array(
        [[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 14], [50, 50, 60, 60.0]], jnp.float32
    )
    gt = jnp.array([[0, 0, 10, 10], [0, 0, 0, 0.0]])
    classes = jnp.array([3, 0])
    valid = jnp.array([True, False])
    labels, matched = label_anchors_dense(
        anchors, gt, classes, valid, iou_thresholds=(0.4, 0.5), iou_labels=(0, -1, 1),
        num_classes=5,
    )  # fmt: skip
    # IoU 1 -> class 3; 0.5 -> fg (>= 0.5); 0.714 -> fg; 0 -> background (K = 5).
    np.testing.assert_array_equal(labels, [3, 3, 3, 5])
    np.testing.assert_array_equal(matched[:3], np.broadcast_to(gt[0], (3, 4)))
    none, zeros = label_anchors_dense(
        anchors, gt, classes, jnp.zeros(2, bool), iou_thresholds=(0.4, 0.5),
        iou_labels=(0, -1, 1), num_classes=5,
    )  # fmt: skip
    np.testing.assert_array_equal(none, [5, 5, 5, 5])
    assert float(jnp.abs(zeros).sum()) == 0.0
