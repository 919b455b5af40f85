"""Tests for jax_rcnn.losses: elementwise formulas, Detectron2's normalisers, masking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import boxes as box_ops
from jax_rcnn import losses

BOX2BOX = box_ops.Box2BoxTransform((10.0, 10.0, 5.0, 5.0))


def _bce(x, t):
    return max(x, 0) - x * t + math.log1p(math.exp(-abs(x)))


def test_smooth_l1_worked_examples():
    x = jnp.array([0.5, -2.0, 0.0])
    np.testing.assert_allclose(losses.smooth_l1(x, 0.0), [0.5, 2.0, 0.0])
    np.testing.assert_allclose(losses.smooth_l1(x, 1.0), [0.125, 1.5, 0.0])
    np.testing.assert_allclose(losses.smooth_l1(x, 1e-6), [0.5, 2.0, 0.0])  # fvcore: < 1e-5 is L1


def test_sigmoid_bce_matches_formula_and_is_stable():
    x = np.array([0.0, 2.0, -3.0, 50.0, -80.0], np.float32)
    t = np.array([1.0, 0.0, 1.0, 0.0, 0.0], np.float32)
    out = np.asarray(losses.sigmoid_bce_with_logits(jnp.asarray(x), jnp.asarray(t)))
    # PyTorch's `(1 - t) x - log_sigmoid(x)` gives 0 (not 1.8e-35) at x = -80, like ours.
    expected = [_bce(a, b) for a, b in zip(x, t, strict=True)]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-30)
    assert np.all(np.isfinite(out))
    g = jax.grad(lambda z: losses.sigmoid_bce_with_logits(z, jnp.asarray(t)).sum())(jnp.asarray(x))
    np.testing.assert_allclose(g, 1 / (1 + np.exp(-x.astype(np.float64))) - t, atol=1e-6)


def test_softmax_cross_entropy_worked_example():
    logits = jnp.array([[0.0, 0.0, 0.0], [2.0, 0.0, -1.0]])
    out = losses.softmax_cross_entropy(logits, jnp.array([1, 0]))
    lse = math.log(math.exp(2) + 1 + math.exp(-1))
    np.testing.assert_allclose(out, [math.log(3), lse - 2], rtol=1e-6)


def test_rpn_losses_worked_example():
    # 2 images x 3 anchors. Labels: image 0 (1, 0, -1), image 1 (-1, -1, 0).
    logits = jnp.array([[0.0, 2.0, 5.0], [1.0, 1.0, -1.0]])
    labels = jnp.array([[1, 0, -1], [-1, -1, 0]])
    pred = jnp.zeros((2, 3, 4)).at[0, 0].set(jnp.array([0.5, -0.5, 1.0, 0.0]))
    gt = jnp.zeros((2, 3, 4)).at[0, 0].set(jnp.array([0.0, 0.0, 0.0, 2.0]))
    gt = gt.at[1, 2].set(100.0)  # a negative anchor's target is never read
    out = losses.rpn_losses(logits, pred, labels, gt, batch_size_per_image=4)
    cls_sum = _bce(0.0, 1) + _bce(2.0, 0) + _bce(-1.0, 0)
    np.testing.assert_allclose(out["loss_rpn_cls"], cls_sum / 8, rtol=1e-6)
    np.testing.assert_allclose(out["loss_rpn_loc"], (0.5 + 0.5 + 1.0 + 2.0) / 8, rtol=1e-6)
    weighted = losses.rpn_losses(
        logits, pred, labels, gt, batch_size_per_image=4, loss_weight=2.0, bbox_reg_loss_weight=3
    )
    np.testing.assert_allclose(weighted["loss_rpn_cls"], 2 * out["loss_rpn_cls"], rtol=1e-6)
    np.testing.assert_allclose(weighted["loss_rpn_loc"], 6 * out["loss_rpn_loc"], rtol=1e-6)


def test_rpn_losses_smooth_l1_beta():
    labels = jnp.array([[1]])
    pred = jnp.array([[[0.05, 0.0, 0.0, 0.3]]])
    out = losses.rpn_losses(
        jnp.zeros((1, 1)),
        pred,
        labels,
        jnp.zeros((1, 1, 4)),
        batch_size_per_image=1,
        smooth_l1_beta=0.1,
    )
    np.testing.assert_allclose(out["loss_rpn_loc"], 0.5 * 0.05**2 / 0.1 + (0.3 - 0.05), rtol=1e-6)


def _roi_case():
    # Two images x 3 ROI slots, K = 2 classes (background 2). Image 1's last slot is padding.
    props = jnp.array(
        [
            [[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 9, 9]],
            [[0, 0, 8, 8], [1, 1, 2, 2], [0, 0, 0, 0]],
        ],
        jnp.float32,
    )
    gt_boxes = jnp.array(
        [[[1, 0, 11, 10], [0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 8, 10], [0, 0, 0, 0], [0, 0, 0, 0]]],
        jnp.float32,
    )
    gt_classes = jnp.array([[1, 2, 2], [0, 2, 2]])
    valid = jnp.array([[True, True, True], [True, True, False]])
    rng = np.random.default_rng(0)
    cls_logits = jnp.asarray(rng.normal(size=(2, 3, 3)), jnp.float32)
    deltas = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
    return cls_logits, deltas, props, gt_classes, gt_boxes, valid


def test_fast_rcnn_losses_worked_example():
    cls_logits, deltas, props, gt_classes, gt_boxes, valid = _roi_case()
    out = losses.fast_rcnn_losses(
        cls_logits, deltas, props, gt_classes, gt_boxes, valid, box2box=BOX2BOX
    )
    ce = losses.softmax_cross_entropy(cls_logits, gt_classes)
    np.testing.assert_allclose(out["loss_cls"], (ce[0].sum() + ce[1, :2].sum()) / 5, rtol=1e-6)
    # Foreground: (0, 0) class 1 and (1, 0) class 0; deltas of the gt class only.
    t0 = BOX2BOX.get_deltas(props[0, 0], gt_boxes[0, 0])
    t1 = BOX2BOX.get_deltas(props[1, 0], gt_boxes[1, 0])
    np.testing.assert_allclose(t0, [1.0, 0.0, 0.0, 0.0], atol=1e-6)  # 10 * (6 - 5) / 10
    l1 = jnp.abs(deltas[0, 0, 4:8] - t0).sum() + jnp.abs(deltas[1, 0, 0:4] - t1).sum()
    np.testing.assert_allclose(out["loss_box_reg"], l1 / 5, rtol=1e-6)


def test_fast_rcnn_losses_class_agnostic_and_weight():
    cls_logits, deltas, props, gt_classes, gt_boxes, valid = _roi_case()
    out = losses.fast_rcnn_losses(
        cls_logits,
        deltas[..., :4],
        props,
        gt_classes,
        gt_boxes,
        valid,
        box2box=BOX2BOX,
        bbox_reg_loss_weight=2.0,
    )
    t0 = BOX2BOX.get_deltas(props[0, 0], gt_boxes[0, 0])
    t1 = BOX2BOX.get_deltas(props[1, 0], gt_boxes[1, 0])
    l1 = jnp.abs(deltas[0, 0, :4] - t0).sum() + jnp.abs(deltas[1, 0, :4] - t1).sum()
    np.testing.assert_allclose(out["loss_box_reg"], 2 * l1 / 5, rtol=1e-6)


def test_fast_rcnn_losses_padding_invariance():
    cls_logits, deltas, props, gt_classes, gt_boxes, valid = _roi_case()
    base = losses.fast_rcnn_losses(
        cls_logits, deltas, props, gt_classes, gt_boxes, valid, box2box=BOX2BOX
    )
    dirty = losses.fast_rcnn_losses(
        cls_logits.at[1, 2].set(1e4),
        deltas.at[1, 2].set(-1e4),
        props.at[1, 2].set(jnp.array([3.0, 3.0, 1e6, 7.0])),
        gt_classes.at[1, 2].set(0),
        gt_boxes.at[1, 2].set(jnp.array([jnp.nan, 0, 1, 1])),
        valid,
        box2box=BOX2BOX,
    )
    for k in base:
        np.testing.assert_allclose(dirty[k], base[k], rtol=1e-6)


def test_fast_rcnn_losses_empty_is_zero_with_finite_grads():
    cls_logits, deltas, props, gt_classes, gt_boxes, _ = _roi_case()
    none = jnp.zeros((2, 3), bool)

    def total(c, d):
        out = losses.fast_rcnn_losses(c, d, props, gt_classes, gt_boxes, none, box2box=BOX2BOX)
        return out["loss_cls"] + out["loss_box_reg"]

    assert float(total(cls_logits, deltas)) == 0.0
    grads = jax.grad(total, argnums=(0, 1))(cls_logits, deltas)
    assert all(bool(jnp.all(g == 0)) for g in grads)


def test_mask_rcnn_loss_worked_example():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4, 4, 2)), jnp.float32)  # B=2, F=3, M=4, K=2
    targets = jnp.asarray(rng.random((2, 3, 4, 4)) > 0.5)
    classes = jnp.array([[1, 0, 0], [0, 1, 1]])
    fg = jnp.array([[True, True, False], [True, False, False]])
    out = losses.mask_rcnn_loss(logits, classes, targets, fg)
    picked = [(0, 0, 1), (0, 1, 0), (1, 0, 0)]
    ref = np.mean(
        [
            _bce(float(logits[b, f, i, j, c]), float(targets[b, f, i, j]))
            for b, f, c in picked
            for i in range(4)
            for j in range(4)
        ]
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    agnostic = losses.mask_rcnn_loss(logits[..., :1], classes, targets, fg)
    ref = np.mean(
        [
            _bce(float(logits[b, f, i, j, 0]), float(targets[b, f, i, j]))
            for b, f, _ in picked
            for i in range(4)
            for j in range(4)
        ]
    )
    np.testing.assert_allclose(agnostic, ref, rtol=1e-5)


def test_mask_rcnn_loss_no_foreground():
    logits = jnp.ones((1, 2, 4, 4, 3))
    f = lambda x: losses.mask_rcnn_loss(  # noqa: E731
        x, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2, 4, 4), bool), jnp.zeros((1, 2), bool)
    )
    assert float(f(logits)) == 0.0
    g = jax.grad(f)(logits)
    assert bool(jnp.all(g == 0))


@pytest.mark.parametrize("fn", ["rpn", "roi", "mask"])
def test_losses_jit(fn):
    if fn == "rpn":
        args = (jnp.zeros((1, 5)), jnp.zeros((1, 5, 4)), jnp.array([[1, 0, -1, 0, 0]]))
        out = jax.jit(
            lambda a, b, c: losses.rpn_losses(a, b, c, jnp.ones((1, 5, 4)), batch_size_per_image=2)
        )(*args)
        np.testing.assert_allclose(out["loss_rpn_cls"], 4 * math.log(2) / 2, rtol=1e-6)
        np.testing.assert_allclose(out["loss_rpn_loc"], 2.0, rtol=1e-6)
    elif fn == "roi":
        out = jax.jit(lambda *a: losses.fast_rcnn_losses(*a, box2box=BOX2BOX))(*_roi_case())
        assert np.isfinite(float(out["loss_cls"])) and np.isfinite(float(out["loss_box_reg"]))
    else:
        out = jax.jit(losses.mask_rcnn_loss)(
            jnp.zeros((1, 1, 2, 2, 1)),
            jnp.zeros((1, 1), jnp.int32),
            jnp.ones((1, 1, 2, 2), bool),
            jnp.ones((1, 1), bool),
        )
        np.testing.assert_allclose(out, math.log(2), rtol=1e-6)


def test_sigmoid_focal_loss_worked_examples():
    x = jnp.array([0.0, 0.0, 2.0])
    t = jnp.array([1.0, 0.0, 0.0])
    out = np.asarray(losses.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0))
    p = 1 / (1 + math.exp(-2.0))
    expected = [
        math.log(2) * 0.25 * 0.25,  # p_t = 0.5, alpha_t = 0.25
        math.log(2) * 0.25 * 0.75,  # negative: alpha_t = 0.75
        _bce(2.0, 0.0) * p**2 * 0.75,  # confident false positive: (1 - p_t) = p
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # alpha < 0 disables the weighting; gamma 0 is plain BCE.
    np.testing.assert_allclose(
        losses.sigmoid_focal_loss(x, t, alpha=-1, gamma=0.0),
        [_bce(0, 1), _bce(0, 0), _bce(2, 0)],
        rtol=1e-6,
    )


def test_giou_loss_worked_examples():
    a = jnp.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = jnp.array([[1.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0]])
    # Touching: IoU 0, enclosing 2, union 2 -> 1. Identical -> 0. Half -> 1 - 0.5.
    np.testing.assert_allclose(losses.giou_loss(a, b), [1.0, 0.0, 0.5], atol=1e-6)


def test_retinanet_losses_normaliser_ignored_and_background():
    anchors = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 15.0, 15.0]])
    logits = jnp.zeros((1, 3, 2))
    deltas = jnp.full((1, 3, 4), 0.5)
    gt_labels = jnp.array([[1, 2, -1]])  # fg class 1, background (K = 2), ignored
    matched = jnp.broadcast_to(anchors, (1, 3, 4))  # zero target deltas
    out = losses.retinanet_losses(
        logits, deltas, anchors, gt_labels, matched, jnp.asarray(4.0),
        box2box=box_ops.Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), focal_alpha=0.25,
        focal_gamma=2.0, bbox_reg_loss_type="smooth_l1", smooth_l1_beta=0.0,
    )  # fmt: skip
    pos, neg = math.log(2) * 0.25 * 0.25, math.log(2) * 0.25 * 0.75
    # fg anchor: class 1 positive, class 0 negative; bg anchor: two negatives; ignored: nothing.
    np.testing.assert_allclose(float(out["loss_cls"]), (pos + 3 * neg) / 4, rtol=1e-6)
    np.testing.assert_allclose(float(out["loss_box_reg"]), 4 * 0.5 / 4, rtol=1e-6)
    giou = losses.retinanet_losses(
        logits, jnp.zeros((1, 3, 4)), anchors, gt_labels, matched, jnp.asarray(1.0),
        box2box=box_ops.Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), focal_alpha=0.25,
        focal_gamma=2.0, bbox_reg_loss_type="giou", smooth_l1_beta=0.0,
    )  # fmt: skip
    assert float(giou["loss_box_reg"]) == pytest.approx(0.0, abs=1e-6)  # exact boxes
