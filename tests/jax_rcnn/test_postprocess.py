"""`fast_rcnn_inference` and `detector_postprocess` against Detectron2 on the fixture photo,
fed with Detectron2's own box-head outputs (so only the post-processing is under test)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn.postprocess import detector_postprocess, fast_rcnn_inference

DATA = pathlib.Path(__file__).parents[1] / "data" / "tiny_maskrcnn"


@pytest.fixture(scope="module")
def inf():
    return np.load(DATA / "inference.npz")


def _infer(boxes, probs, valid, sizes, **kw):
    kwargs = dict(score_thresh=0.05, nms_thresh=0.5, topk_per_image=100, backend="reference")
    kwargs.update(kw)
    return jax.jit(lambda *a: fast_rcnn_inference(*a, **kwargs))(boxes, probs, valid, sizes)


def test_detections_match_detectron2(inf):
    boxes = jnp.asarray(inf["img0_box_decoded"])[None]
    probs = jnp.asarray(inf["img0_box_cls_probs"])[None]
    dets = _infer(boxes, probs, jnp.ones((1, 1000), bool), jnp.asarray(inf["image_sizes"]))
    valid = np.asarray(dets.valid[0])
    n = len(inf["img0_det_scores"])
    assert valid.sum() == n
    assert np.all(valid[:n])
    np.testing.assert_allclose(np.asarray(dets.boxes[0, :n]), inf["img0_det_boxes"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(dets.scores[0, :n]), inf["img0_det_scores"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(dets.classes[0, :n]), inf["img0_det_classes"])
    np.testing.assert_array_equal(
        np.asarray(dets.proposal_idx[0, :n]), inf["img0_det_proposal_idx"]
    )

    out_boxes, out_valid = detector_postprocess(
        dets.boxes, dets.valid, jnp.asarray(inf["image_sizes"]), jnp.asarray(inf["original_sizes"])
    )
    m = len(inf["img0_final_scores"])
    assert int(out_valid.sum()) == m
    np.testing.assert_allclose(np.asarray(out_boxes[0])[np.asarray(out_valid[0])],
                               inf["img0_final_boxes"], atol=1e-4)  # fmt: skip


def test_padding_invariance(inf):
    """Garbage in invalid proposal slots (NaN, huge scores) changes no detection."""
    boxes = np.asarray(inf["img0_box_decoded"])[None].copy()
    probs = np.asarray(inf["img0_box_cls_probs"])[None].copy()
    valid = np.ones((1, 1000), bool)
    base = _infer(jnp.asarray(boxes), jnp.asarray(probs), jnp.asarray(valid),
                  jnp.asarray(inf["image_sizes"]))  # fmt: skip
    rows = np.setdiff1d(np.arange(1000), inf["img0_det_proposal_idx"])[:50]
    valid[0, rows] = False
    boxes[0, rows[:25]] = np.nan
    probs[0, rows[25:], :4] = 0.99
    out = _infer(jnp.asarray(boxes), jnp.asarray(probs), jnp.asarray(valid),
                 jnp.asarray(inf["image_sizes"]))  # fmt: skip
    for a, b in zip(base, out, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_worked_example_per_class_nms_and_topk():
    # Two proposals, two classes (+ background). Boxes overlap with IoU 0.81 for class 0:
    # class 0 keeps only the best; class 1 keeps both (its second score is below threshold).
    b = np.array([[0, 0, 10, 10], [0, 0, 9, 9]], np.float32)
    boxes = np.concatenate([b, b], axis=1)[None]  # [1, 2, 2*4]
    probs = np.array([[[0.6, 0.3, 0.1], [0.5, 0.04, 0.46]]], np.float32)
    dets = _infer(jnp.asarray(boxes), jnp.asarray(probs), jnp.ones((1, 2), bool),
                  jnp.array([[100, 100]]), topk_per_image=3)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(dets.valid[0]), [True, True, False])
    np.testing.assert_allclose(np.asarray(dets.scores[0]), [0.6, 0.3, 0.0])
    np.testing.assert_array_equal(np.asarray(dets.classes[0]), [0, 1, 0])
    np.testing.assert_array_equal(np.asarray(dets.proposal_idx[0]), [0, 0, 0])


def test_no_candidates_gives_all_invalid():
    probs = jnp.tile(jnp.array([0.01, 0.01, 0.98]), (1, 4, 1))
    dets = _infer(jnp.zeros((1, 4, 8)), probs, jnp.ones((1, 4), bool), jnp.array([[10, 10]]))
    assert not bool(dets.valid.any())
    assert np.all(np.asarray(dets.boxes) == 0)


def test_detector_postprocess_scales_clips_and_drops_empty():
    boxes = jnp.array([[[10.0, 20.0, 30.0, 40.0], [190.0, 0.0, 260.0, 5.0], [5.0, 5.0, 5.0, 9.0]]])
    out, valid = detector_postprocess(
        boxes, jnp.ones((1, 3), bool), jnp.array([[100, 200]]), jnp.array([[50, 100]])
    )
    np.testing.assert_allclose(np.asarray(out[0, 0]), [5.0, 10.0, 15.0, 20.0])
    np.testing.assert_allclose(np.asarray(out[0, 1]), [95.0, 0.0, 100.0, 2.5])
    np.testing.assert_array_equal(np.asarray(valid[0]), [True, True, False])
