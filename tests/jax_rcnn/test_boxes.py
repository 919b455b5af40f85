"""Tests for jax_rcnn.boxes: worked examples, Detectron2 fixtures, jit/vmap, bad input."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import boxes as box_ops

GEOMETRY = np.load(pathlib.Path(__file__).parents[1] / "data" / "geometry.npz")
# Jitted entry points: one compile per call instead of one per primitive keeps the file fast.
pairwise_iou = jax.jit(box_ops.pairwise_iou)
W10 = box_ops.Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
W1 = box_ops.Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
get_deltas = jax.jit(lambda t, s, g: t.get_deltas(s, g), static_argnums=0)
apply_deltas = jax.jit(lambda t, d, b: t.apply_deltas(d, b), static_argnums=0)


def test_area_not_clamped():
    b = jnp.array([[0, 0, 10, 20], [100, 100, 50, 50], [0, 0, 0, 5]], jnp.float32)
    np.testing.assert_array_equal(box_ops.area(b), [200.0, 2500.0, 0.0])


def test_format_round_trip():
    xyxy = jnp.array([[1.5, 2.0, 11.5, 7.0]])
    xywh = box_ops.xyxy_to_xywh(xyxy)
    np.testing.assert_allclose(xywh, [[1.5, 2.0, 10.0, 5.0]])
    np.testing.assert_allclose(box_ops.xywh_to_xyxy(xywh), xyxy)


def test_clip_and_nonempty():
    b = jnp.array(
        [[-5, -5, 50, 50], [10, 10, 200, 90], [30, 30, 30, 40], [-jnp.inf, 0, jnp.inf, 9]]
    )
    clipped = box_ops.clip(b, 60, 100)
    np.testing.assert_array_equal(
        clipped, [[0, 0, 50, 50], [10, 10, 100, 60], [30, 30, 30, 40], [0, 0, 100, 9]]
    )
    np.testing.assert_array_equal(box_ops.nonempty(clipped), [True, True, False, True])
    # Inf coordinates are not a real box; NaN and inverted boxes are empty.
    np.testing.assert_array_equal(box_ops.nonempty(b), [True, True, False, False])
    bad = jnp.array([[jnp.nan, 0, 5, 5], [5, 5, 1, 1], [0, 0, 2, 2]])
    np.testing.assert_array_equal(box_ops.nonempty(bad, threshold=1.5), [False, False, True])


def test_clip_traced_size():
    b = jnp.array([[-5.0, -5.0, 50.0, 50.0]])
    f = jax.jit(lambda b, hw: box_ops.clip(b, hw[0], hw[1]))
    np.testing.assert_array_equal(f(b, jnp.array([20, 30])), [[0, 0, 30, 20]])


def test_pairwise_iou_worked_example():
    a = jnp.array([[0, 0, 10, 10], [0, 0, 0, 0]], jnp.float32)
    b = jnp.array([[5, 0, 15, 10], [10, 0, 20, 10], [0, 0, 10, 10]], jnp.float32)
    np.testing.assert_allclose(
        pairwise_iou(a, b), [[50 / 150, 0.0, 1.0], [0.0, 0.0, 0.0]], rtol=1e-6
    )


def test_pairwise_iou_fixture():
    g = GEOMETRY
    iou = pairwise_iou(g["iou_boxes1"], g["iou_boxes2"])
    np.testing.assert_allclose(iou, g["iou"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(iou) == 0, g["iou"] == 0)


def test_pairwise_iou_non_finite_and_empty():
    a = jnp.array([[jnp.nan, 0, 10, 10], [0, 0, jnp.inf, 10], [10, 10, 0, 0], [0, 0, 10, 10]])
    b = jnp.array([[0, 0, 10, 10], [jnp.nan] * 4])
    iou = pairwise_iou(a, b)
    assert np.all(np.isfinite(iou))
    np.testing.assert_array_equal(iou, [[0, 0], [0, 0], [0, 0], [1, 0]])
    assert pairwise_iou(jnp.zeros((0, 4)), b).shape == (0, 2)
    assert pairwise_iou(a, jnp.zeros((0, 4))).shape == (4, 0)
    grad = jax.jit(jax.grad(lambda x: box_ops.pairwise_iou(x, b).sum()))(a)
    assert np.all(np.isfinite(grad))


def test_sanitize_and_check():
    b = np.array([[0, 0, 1, 1], [np.nan, 0, 1, 1], [5, 5, 2, 2]], np.float32)
    clean, finite = box_ops.sanitize_boxes(jnp.asarray(b))
    np.testing.assert_array_equal(clean, [[0, 0, 1, 1], [0, 0, 0, 0], [5, 5, 2, 2]])
    np.testing.assert_array_equal(finite, [True, False, True])
    with pytest.raises(ValueError, match="gt_boxes"):
        box_ops.check_finite_boxes(b, "gt_boxes")
    with pytest.raises(ValueError, match="shape"):
        box_ops.check_finite_boxes(np.zeros((3, 5)), "proposals")
    # Negative sizes and empty arrays are valid inputs.
    out = box_ops.check_finite_boxes(b[[0, 2]], "gt_boxes")
    assert out.shape == (2, 4)
    assert box_ops.check_finite_boxes(np.zeros((0, 4)), "gt_boxes").shape == (0, 4)


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_get_deltas_fixture(weights):
    g = GEOMETRY
    name = "w" + "_".join(str(int(w)) for w in weights)
    t = box_ops.Box2BoxTransform(weights)
    deltas = get_deltas(t, g["b2b_src_boxes"], g["b2b_target_boxes"])
    np.testing.assert_allclose(deltas, g[f"b2b_get_deltas_{name}"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(deltas[0], [0, 0, 0, 0])


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)])
def test_apply_deltas_fixture(weights):
    g = GEOMETRY
    name = "w" + "_".join(str(int(w)) for w in weights)
    t = box_ops.Box2BoxTransform(weights)
    assert t.scale_clamp == pytest.approx(float(g["b2b_scale_clamp"]))
    out = apply_deltas(t, g["b2b_apply_deltas"], g["b2b_apply_boxes"])
    expected = g[f"b2b_apply_deltas_{name}"]
    # Clamped rows reach ~1e5 px: relative 1e-5 there, absolute 1e-4 px near 0.
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_deltas_round_trip_and_batch_shapes():
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 100, (2, 5, 2)).astype(np.float32)
    wh = rng.uniform(1, 50, (2, 5, 2)).astype(np.float32)
    src = np.concatenate([xy, xy + wh], -1)
    tgt = src[:, ::-1] + 3.0
    deltas = get_deltas(W10, src, tgt)
    assert deltas.shape == (2, 5, 4)
    np.testing.assert_allclose(apply_deltas(W10, deltas, src), tgt, rtol=1e-5, atol=1e-3)
    out = apply_deltas(W10, jnp.tile(deltas, (1, 1, 3)), src)
    assert out.shape == (2, 5, 12)
    np.testing.assert_allclose(out[..., 8:], tgt, rtol=1e-5, atol=1e-3)


def test_get_deltas_degenerate_rows_are_zero():
    src = jnp.array([[0, 0, 0, 0], [0, 0, 10, 10], [jnp.nan, 0, 1, 1], [0, 0, 10, 10]])
    tgt = jnp.array([[0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 20, 20]])
    d = get_deltas(W1, src, tgt)
    np.testing.assert_array_equal(d[:3], 0.0)
    np.testing.assert_allclose(d[3], [0.5, 0.5, math.log(2), math.log(2)], rtol=1e-6)
    grad = jax.jit(jax.grad(lambda s: W1.get_deltas(s, tgt).sum()))(src)
    assert np.all(np.isfinite(grad))


def test_apply_deltas_extremes():
    box = jnp.array([[0.0, 0.0, 16.0, 16.0]])
    out = apply_deltas(W1, jnp.array([[0, 0, jnp.inf, -1e4], [jnp.nan, 0, 0, 0]]), box)
    # dw clamped to log(1000/16): width 1000; dh -> exp underflows to a zero-height box.
    np.testing.assert_allclose(out[0], [8 - 500, 8, 8 + 500, 8], rtol=1e-5)
    assert np.all(np.isnan(out[1, ::2]))


def test_jit_and_vmap():
    g = GEOMETRY
    src, tgt = g["b2b_src_boxes"], g["b2b_target_boxes"]
    flat = np.asarray(get_deltas(W10, src, tgt))
    batched = jax.jit(jax.vmap(W10.get_deltas))(src.reshape(4, 16, 4), tgt.reshape(4, 16, 4))
    np.testing.assert_allclose(batched.reshape(64, 4), flat, rtol=1e-6, atol=1e-6)
    applied = jax.jit(jax.vmap(W10.apply_deltas))(flat.reshape(4, 16, 4), src.reshape(4, 16, 4))
    np.testing.assert_allclose(applied.reshape(64, 4), tgt, rtol=1e-5, atol=1e-3)
    iou = jax.jit(jax.vmap(box_ops.pairwise_iou))(src.reshape(4, 16, 4), tgt.reshape(4, 16, 4))
    full = np.asarray(pairwise_iou(src, tgt))
    for i in range(4):
        np.testing.assert_array_equal(iou[i], full[16 * i : 16 * i + 16, 16 * i : 16 * i + 16])
    for fn in (box_ops.area, box_ops.nonempty, box_ops.xywh_to_xyxy, box_ops.xyxy_to_xywh):
        np.testing.assert_array_equal(
            jax.jit(jax.vmap(fn))(src.reshape(4, 16, 4)).reshape(64, -1).squeeze(),
            jax.jit(fn)(src).reshape(64, -1).squeeze(),
        )
    clipped = jax.jit(jax.vmap(box_ops.clip))(
        src.reshape(4, 16, 4), jnp.array([50.0, 60, 70, 80]), jnp.array([90.0, 80, 70, 60])
    )
    np.testing.assert_array_equal(clipped[2], np.clip(src[32:48], 0, 70))
    sane, finite = jax.jit(jax.vmap(box_ops.sanitize_boxes))(src.reshape(4, 16, 4))
    np.testing.assert_array_equal(sane.reshape(64, 4), src)
    assert finite.all()
