"""Tests for `pallas_kernels.roi_align.roi_align_reference` (torchvision ROIAlign semantics)."""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.roi_align import roi_align_reference

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "data" / "geometry.npz"
SCALES = {"1_4": 0.25, "1_16": 1.0 / 16}
_roi_align = jax.jit(
    roi_align_reference,
    static_argnames=("spatial_scales", "output_size", "sampling_ratio", "aligned"),
)


@pytest.fixture(scope="module")
def geometry():
    return dict(np.load(FIXTURES))


def _run(features, rois, level_idx=None, **kw):
    """`features` NHWC list, `rois` (R, 5) = (batch, x1, y1, x2, y2)."""
    rois = np.asarray(rois, np.float32)
    if level_idx is None:
        level_idx = np.zeros(len(rois), np.int32)
    return _roi_align(
        features,
        jnp.asarray(rois[:, 1:]),
        jnp.asarray(rois[:, 0].astype(np.int32)),
        jnp.asarray(level_idx, jnp.int32),
        **kw,
    )


def _tv_roi_align(feat_nhwc, rois, scale, out, sampling_ratio, aligned=True):
    """Scalar numpy transcription of torchvision's CPU `roi_align` forward (test oracle)."""
    _, height, width, channels = feat_nhwc.shape
    result = np.zeros((len(rois), out, out, channels), np.float64)

    def bilinear(img, y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return np.zeros(channels)
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_low = y_high = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_low = x_high = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1 - ly, 1 - lx
        return (
            hy * hx * img[y_low, x_low]
            + hy * lx * img[y_low, x_high]
            + ly * hx * img[y_high, x_low]
            + ly * lx * img[y_high, x_high]
        )

    off = 0.5 if aligned else 0.0
    for r, (b, *box) in enumerate(rois):
        x1, y1, x2, y2 = (v * scale - off for v in box)
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / out, rh / out
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / out)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / out)
        count = max(gh * gw, 1)
        for p in range(out):
            for q in range(out):
                acc = np.zeros(channels)
                for iy in range(gh):
                    y = y1 + p * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = x1 + q * bw + (ix + 0.5) * bw / gw
                        acc += bilinear(feat_nhwc[int(b)], y, x)
                result[r, p, q] = acc / count
    return result.astype(np.float32)


@pytest.mark.parametrize("scale", ["1_4", "1_16"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("out", [7, 14])
def test_detectron2_fixture_forward_and_grad(geometry, scale, sampling_ratio, out):
    key = f"roialign_scale{scale}_sr{sampling_ratio}_out{out}"
    feats = geometry[f"roialign_features_scale{scale}"].transpose(0, 2, 3, 1)
    rois = geometry["roialign_rois"]
    gout = jnp.asarray(geometry[f"roialign_gout_out{out}"].transpose(0, 2, 3, 1))
    kw = dict(spatial_scales=(SCALES[scale],), output_size=out, sampling_ratio=sampling_ratio)

    def loss(f):
        return jnp.sum(_run([f], rois, **kw) * gout)

    got = np.asarray(jax.jit(lambda f: _run([f], rois, **kw))(feats))
    want = geometry[key + "_out"].transpose(0, 2, 3, 1)
    # 1e-5 relative to the output's scale: float32 sums in a different order.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    grad = np.asarray(jax.jit(jax.grad(loss))(feats))
    want_grad = geometry[key + "_grad_features"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-4 * np.abs(want_grad).max())


def test_legacy_aligned_false_fixture(geometry):
    feats = geometry["roialign_features_scale1_4"].transpose(0, 2, 3, 1)
    got = _run(
        [feats],
        geometry["roialign_rois"],
        spatial_scales=(0.25,),
        output_size=7,
        sampling_ratio=0,
        aligned=False,
    )
    want = geometry["roialign_scale1_4_sr0_out7_alignedFalse_out"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_multi_level_equals_single_level(geometry):
    """Two fixture maps as two levels; each ROI must equal its single-level result."""
    f4 = geometry["roialign_features_scale1_4"].transpose(0, 2, 3, 1)
    f16 = geometry["roialign_features_scale1_16"].transpose(0, 2, 3, 1)
    rois = geometry["roialign_rois"]
    levels = np.arange(len(rois), dtype=np.int32) % 2
    kw = dict(output_size=7, sampling_ratio=0)
    got = _run([f4, f16], rois, levels, spatial_scales=(0.25, 1.0 / 16), **kw)
    single = [_run([f], rois, spatial_scales=(s,), **kw) for f, s in ((f4, 0.25), (f16, 1 / 16))]
    want = np.where(levels[:, None, None, None] == 0, single[0], single[1])
    np.testing.assert_array_equal(got, want)

    gout = np.random.RandomState(0).randn(*got.shape).astype(np.float32)

    def level_grads(fs, rois, levels, gout, scales):
        loss = lambda fs: jnp.sum(_run(fs, rois, levels, spatial_scales=scales, **kw) * gout)
        return jax.jit(jax.grad(loss))(fs)

    both = level_grads([f4, f16], rois, levels, gout, (0.25, 1 / 16))
    for lvl, (f, s) in enumerate(((f4, 0.25), (f16, 1 / 16))):
        sel = levels == lvl
        want = level_grads([f], rois[sel], None, gout[sel], (s,))[0]
        np.testing.assert_allclose(both[lvl], want, rtol=1e-6, atol=1e-6)


EDGE_ROIS = np.array(
    [
        [0, 4.0, 4.0, 4.0, 4.0],  # zero size
        [1, 3.0, 5.0, 2.0, 9.0],  # inverted
        [0, -40.0, -30.0, -12.0, -9.0],  # fully outside
        [1, 20.0, 14.0, 60.0, 40.0],  # past the bottom-right border (H=16, W=20 at scale 1/2)
        [0, 31.0, 22.0, 39.9, 31.9],  # at the border: y_low >= H - 1 collapses corners
        [1, 0.0, 10.0, 40.0, 11.0],  # thin and long: grid 1 x 3 at S=7
        [0, 0.0, 0.0, 40.0, 32.0],  # whole image
        [1, 5.3, 7.1, 5.9, 7.4],  # sub-pixel
    ],
    np.float32,
)


@pytest.mark.parametrize("sampling_ratio", [0, 3])
def test_edge_cases_match_torchvision_transcription(sampling_ratio):
    rng = np.random.RandomState(1)
    feats = rng.randn(2, 16, 20, 3).astype(np.float32)
    got = _run(
        [feats], EDGE_ROIS, spatial_scales=(0.5,), output_size=7, sampling_ratio=sampling_ratio
    )
    want = _tv_roi_align(feats, EDGE_ROIS, 0.5, 7, sampling_ratio)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if sampling_ratio == 0:
        np.testing.assert_array_equal(got[:3], 0.0)


def test_thin_long_box_large_adaptive_grid():
    """A 4 x 400 px box on a stride-4 level needs 15 samples per bin along x."""
    rng = np.random.RandomState(2)
    feats = rng.randn(1, 32, 128, 2).astype(np.float32)
    rois = np.array([[0, 10.0, 50.0, 410.0, 54.0], [0, 60.0, 2.0, 64.0, 126.0]], np.float32)
    got = _run([feats], rois, spatial_scales=(0.25,), output_size=7, sampling_ratio=0)
    np.testing.assert_allclose(got, _tv_roi_align(feats, rois, 0.25, 7, 0), rtol=1e-5, atol=1e-5)


def test_worked_example():
    feats = np.array([[[[0.0], [1.0]], [[2.0], [3.0]]]], np.float32)  # (1, 2, 2, 1)
    got = _run([feats], [[0, 0, 0, 2, 2]], spatial_scales=(1.0,), output_size=1, sampling_ratio=1)
    np.testing.assert_allclose(got.reshape(()), 1.5)


def test_padded_rois_do_not_affect_valid_rows_jit_vmap():
    rng = np.random.RandomState(3)
    feats = [rng.randn(2, 16, 20, 4).astype(np.float32), rng.randn(2, 8, 10, 4).astype(np.float32)]
    valid_rois = EDGE_ROIS[3:]
    kw = dict(spatial_scales=(0.5, 0.25), output_size=5, sampling_ratio=0)
    garbage = np.array(
        [[7, -1e30, 3, 1e30, 4], [-3, np.nan, 0, np.inf, 5], [1, 100, 100, 300, 250]],
        np.float32,
    )
    padded = np.concatenate([valid_rois, garbage])
    levels = np.array([0, 1, 0, 1, 0, 5, -1, 1], np.int32)
    fn = jax.jit(
        lambda fs, r, lv: roi_align_reference(fs, r[:, 1:], r[:, 0].astype(jnp.int32), lv, **kw)
    )
    got = fn(feats, jnp.asarray(padded), jnp.asarray(levels))
    want = fn(feats, jnp.asarray(valid_rois), jnp.asarray(levels[:5]))
    np.testing.assert_array_equal(got[:5], want)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[6], 0.0)  # non-finite box pools to zeros

    # vmap over two ROI sets (with the features shared).
    batched = jax.vmap(fn, in_axes=(None, 0, 0))(
        feats, jnp.stack([padded, padded[::-1]]), jnp.stack([levels, levels[::-1]])
    )
    np.testing.assert_array_equal(batched[0], got)
    np.testing.assert_allclose(batched[1], got[::-1], rtol=1e-6, atol=1e-6)


def test_no_rois():
    feats = np.ones((1, 8, 8, 3), np.float32)
    fn = jax.jit(
        lambda f, b: jnp.sum(
            roi_align_reference(
                [f],
                b,
                jnp.zeros((0,), jnp.int32),
                jnp.zeros((0,), jnp.int32),
                spatial_scales=(1.0,),
                output_size=7,
                sampling_ratio=0,
            )
        )
    )
    boxes = jnp.zeros((0, 4), jnp.float32)
    assert float(fn(feats, boxes)) == 0.0
    np.testing.assert_array_equal(jax.grad(fn)(feats, boxes), 0.0)


def test_bf16_features_accumulate_in_f32():
    rng = np.random.RandomState(4)
    feats = rng.randn(1, 16, 20, 8).astype(np.float32)
    feats_bf16 = jnp.asarray(feats, jnp.bfloat16)
    rois = EDGE_ROIS[3:]
    kw = dict(spatial_scales=(0.5,), output_size=7, sampling_ratio=0)
    rois = rois.copy()
    rois[:, 0] = 0
    got = _run([feats_bf16], rois, **kw)
    assert got.dtype == jnp.float32
    want = _run([np.asarray(feats_bf16.astype(jnp.float32))], rois, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda f: jnp.sum(_run([f], rois, **kw)))(feats_bf16)
    assert grad.dtype == jnp.bfloat16


def test_grad_matches_finite_differences_and_boxes_get_none():
    rng = np.random.RandomState(5)
    feats = rng.randn(1, 6, 7, 2)
    rois = np.array([[0, 1.0, 0.5, 12.0, 11.0], [0, 10.0, 9.0, 13.9, 11.9]], np.float32)
    gout = rng.randn(2, 3, 3, 2)

    def loss(f, b):
        out = roi_align_reference(
            [f],
            b,
            jnp.zeros(2, jnp.int32),
            jnp.zeros(2, jnp.int32),
            spatial_scales=(0.5,),
            output_size=3,
            sampling_ratio=0,
        )
        return jnp.sum(out * gout)

    boxes = jnp.asarray(rois[:, 1:])
    grad_f, grad_b = jax.grad(loss, argnums=(0, 1))(jnp.asarray(feats, jnp.float32), boxes)
    np.testing.assert_array_equal(grad_b, 0.0)
    # ROIAlign is linear in the features: the gradient is the oracle's output coefficients.
    basis = np.eye(feats.size).reshape(-1, *feats.shape)
    coeffs = [np.sum(_tv_roi_align(e, rois, 0.5, 3, 0) * gout) for e in basis]
    coeffs = np.asarray(coeffs).reshape(feats.shape)
    np.testing.assert_allclose(grad_f, coeffs, rtol=1e-5, atol=1e-6)


def test_rois_grouped_by_sample_count_give_the_one_loop_result(monkeypatch):
    """Many ROIs (grouped by sample count, `_segments`) pool and differentiate as one loop.

    400 ROIs from 1x1-sample to 9x2-sample grids, in random order, including padded
    `[0, 0, 0, 0]` slots: the forward is bitwise the single-loop result (same per-ROI sample
    order) and matches the torchvision transcription; the feature gradient agrees to f32
    rounding (scatter order differs).
    """
    from pallas_kernels import roi_align as ra

    rng = np.random.RandomState(3)
    feats = [rng.randn(2, 24, 32, 5).astype(np.float32), rng.randn(2, 12, 16, 5).astype(np.float32)]
    n = 400
    xy = rng.uniform(0, 60, (n, 2))
    wh = rng.uniform(1, 40, (n, 2)) * rng.choice([1.0, 0.25], (n, 2))
    wh[::7, 0] = 120.0  # a few long ROIs: grid 9 on level 0
    rois = np.concatenate([rng.randint(0, 2, (n, 1)), xy, xy + wh], 1).astype(np.float32)
    rois[::11, 1:] = 0.0
    levels = rng.randint(0, 2, n).astype(np.int32)
    kw = dict(spatial_scales=(0.5, 0.25), output_size=7, sampling_ratio=0)
    gout = rng.randn(n, 7, 7, 5).astype(np.float32)

    def both(fs):
        out = _run(fs, rois, levels, **kw)
        grad = jax.grad(lambda fs: jnp.sum(_run(fs, rois, levels, **kw) * gout))(fs)
        return np.asarray(out), [np.asarray(g) for g in grad]

    assert ra.NUM_SEGMENTS > 1 and n // ra.MIN_SEGMENT > 1
    grouped, grouped_grad = both(feats)
    monkeypatch.setattr(ra, "NUM_SEGMENTS", 1)
    single, single_grad = both(feats)
    np.testing.assert_array_equal(grouped, single)
    for g, s in zip(grouped_grad, single_grad, strict=True):
        np.testing.assert_allclose(g, s, rtol=1e-5, atol=1e-5)
    for i in range(0, n, 37):
        f = feats[levels[i]]
        want = _tv_roi_align(f, rois[i : i + 1], kw["spatial_scales"][levels[i]], 7, 0)
        np.testing.assert_allclose(grouped[i : i + 1], want, rtol=1e-5, atol=1e-5)
