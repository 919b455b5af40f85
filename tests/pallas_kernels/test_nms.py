"""Tests for `pallas_kernels.nms.nms_reference` (torchvision greedy NMS semantics)."""

from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np
import pytest

from pallas_kernels.nms import nms_reference
from tests.pallas_kernels.conftest import random_groups

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "data" / "geometry.npz"


@pytest.fixture(scope="module")
def geometry():
    return dict(np.load(FIXTURES))


@functools.partial(jax.jit, static_argnames=("iou_threshold", "max_output"))
def _nms(boxes, scores, valid, iou_threshold, max_output):
    return nms_reference(boxes, scores, valid, iou_threshold=iou_threshold, max_output=max_output)


def _kept(keep, keep_valid):
    """Per group: the kept indices as a numpy list."""
    keep, keep_valid = np.asarray(keep), np.asarray(keep_valid)
    return [k[v] for k, v in zip(keep, keep_valid, strict=True)]


def _greedy_numpy(boxes, scores, valid, thr):
    """Textbook greedy NMS (float32 IoU, strict >), the oracle for random tests."""
    boxes = boxes.astype(np.float32)
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep, removed = [], np.zeros(len(scores), bool)
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        xx1 = np.maximum(boxes[i, 0], boxes[:, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[:, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[:, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.maximum(xx2 - xx1, np.float32(0)) * np.maximum(yy2 - yy1, np.float32(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            removed |= inter / (areas[i] + areas - inter) > thr
    return np.asarray(keep, np.int64)


@pytest.mark.parametrize(
    "prefix,thr",
    [("nms", 0.5), ("nms", 0.7), ("nms_overlap", 0.5), ("nms_overlap", 0.7), ("nms_exact", 0.5)],
)
def test_torchvision_fixture(geometry, prefix, thr):
    boxes, scores = geometry[f"{prefix}_boxes"], geometry[f"{prefix}_scores"]
    n = len(scores)
    keep, keep_valid = _nms(boxes[None], scores[None], np.ones((1, n), bool), thr, n)
    np.testing.assert_array_equal(
        _kept(keep, keep_valid)[0], geometry[f"{prefix}_keep_{int(thr * 10)}"]
    )


def _batched_by_class(boxes, scores, classes, thr):
    """Detectron2 `batched_nms` via one group per class, merged by descending score."""
    num_classes, n = int(classes.max()) + 1, len(scores)
    valid = classes[None, :] == np.arange(num_classes)[:, None]
    keep, keep_valid = _nms(
        np.broadcast_to(boxes, (num_classes, n, 4)),
        np.broadcast_to(scores, (num_classes, n)),
        valid,
        thr,
        n,
    )
    kept = np.concatenate(_kept(keep, keep_valid))
    return kept[np.argsort(-scores[kept], kind="stable")]


@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_detectron2_batched_nms_fixture(geometry, thr):
    got = _batched_by_class(
        geometry["nms_boxes"], geometry["nms_scores"], geometry["nms_classes"], thr
    )
    np.testing.assert_array_equal(got, geometry[f"batched_nms_keep_{int(thr * 10)}"])


def test_detectron2_batched_nms_large_fixture(geometry):
    got = _batched_by_class(
        geometry["nms_large_boxes"],
        geometry["nms_large_scores"],
        geometry["nms_large_classes"],
        0.7,
    )
    np.testing.assert_array_equal(got, geometry["batched_nms_large_keep_7"])


def test_worked_example_threshold_is_strict():
    boxes = np.array([[[0, 0, 2, 2], [0, 0, 2, 1], [5, 5, 6, 6]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7]], np.float32)
    keep, keep_valid = _nms(boxes, scores, np.ones((1, 3), bool), 0.5, 4)
    np.testing.assert_array_equal(keep, [[0, 1, 2, 0]])
    np.testing.assert_array_equal(keep_valid, [[True, True, True, False]])
    keep, keep_valid = _nms(boxes, scores, np.ones((1, 3), bool), 0.49, 4)
    np.testing.assert_array_equal(keep, [[0, 2, 0, 0]])
    np.testing.assert_array_equal(keep_valid, [[True, True, False, False]])


@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_random_groups_match_greedy_oracle_with_cap_and_invalid(thr):
    rng = np.random.RandomState(0)
    boxes, scores = random_groups(rng, 4, 96)
    valid = rng.rand(4, 96) > 0.3
    valid[2] = False  # an empty group
    k = 24
    keep, keep_valid = _nms(boxes, scores, valid, thr, k)
    for g, got in enumerate(_kept(keep, keep_valid)):
        want = _greedy_numpy(boxes[g], scores[g], valid[g], thr)[:k]
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(keep)[~np.asarray(keep_valid)], 0)


def test_invalid_and_non_finite_boxes_never_keep_nor_suppress():
    boxes = np.array(
        [[[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [np.nan, 0, 10, 10], [0, 0, np.inf, 9]]],
        np.float32,
    )
    scores = np.array([[0.5, 0.9, 0.4, 0.95, 0.99]], np.float32)
    valid = np.array([[True, False, True, True, True]])
    keep, keep_valid = _nms(boxes, scores, valid, 0.5, 5)
    # Box 1 (invalid) would suppress 0 and 2; boxes 3, 4 are non-finite.
    np.testing.assert_array_equal(_kept(keep, keep_valid)[0], [0])
    scores_nan = scores.copy()
    scores_nan[0, 0] = np.nan
    keep, keep_valid = _nms(boxes, scores_nan, valid, 0.5, 5)
    np.testing.assert_array_equal(_kept(keep, keep_valid)[0], [2])


def test_zero_area_boxes_and_ties():
    boxes = np.array([[[3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 4, 4], [0, 0, 4, 4]]], np.float32)
    scores = np.array([[0.5, 0.5, 0.7, 0.7]], np.float32)
    keep, keep_valid = _nms(boxes, scores, np.ones((1, 4), bool), 0.5, 4)
    # Equal scores: lower index first. Zero-area boxes never suppress each other (0/0).
    np.testing.assert_array_equal(_kept(keep, keep_valid)[0], [2, 0, 1])


def test_vmap_matches_loop():
    rng = np.random.RandomState(1)
    boxes, scores = random_groups(rng, 6, 64, spread=80.0)
    valid = rng.rand(6, 64) > 0.1
    fn = jax.vmap(lambda b, s, v: _nms(b, s, v, 0.5, 16))
    keep, keep_valid = fn(
        boxes.reshape(3, 2, 64, 4), scores.reshape(3, 2, 64), valid.reshape(3, 2, 64)
    )
    want_keep, want_valid = _nms(boxes, scores, valid, 0.5, 16)
    np.testing.assert_array_equal(np.asarray(keep).reshape(6, 16), want_keep)
    np.testing.assert_array_equal(np.asarray(keep_valid).reshape(6, 16), want_valid)


def test_threshold_compared_like_torchvision_double():
    # 0.1 rounds *up* in float32; an IoU equal to float32(0.1) is > 0.1 (double) in torchvision.
    t = np.float32(0.1)
    assert float(t) > 0.1
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 1]]], np.float32)
    # Second box: IoU with the first is exactly the float32 value of its area ratio.
    widths = np.append(np.linspace(0.05, 0.15, 41, dtype=np.float32), [t, np.nextafter(t, 0)])
    for w in widths:
        boxes[0, 1] = [0, 0, w, 1]
        one = np.float32(1)
        iou = (w * one) / (one + w - w)
        scores = np.array([[1.0, 0.5]], np.float32)
        _, keep_valid = _nms(boxes, scores, np.ones((1, 2), bool), 0.1, 2)
        assert bool(np.asarray(keep_valid)[0, 1]) == (not float(iou) > 0.1)
