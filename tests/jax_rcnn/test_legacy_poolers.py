"""The legacy poolers of Detectron1-Comparisons: ROIAlign (aligned=False) and ROIPool.

References are written here from torchvision's CPU kernels as PARITY_FAMILY.md section 8
describes them (a loop-per-element NumPy transcription, float32 where torchvision computes in
float32), plus worked examples computed by hand.
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import kernels, poolers


def _c_round(x: np.float32) -> float:
    """C's `round`: half away from zero."""
    return math.copysign(math.floor(abs(float(x)) + 0.5), float(x)) if x == x else x


def np_roi_pool(feat, rois, scale, out):
    """torchvision `roi_pool` forward and argmax, one loop per element.

    Args:
      feat: `f32[B, H, W, C]`.
      rois: `f32[R, 5]` (batch index, x1, y1, x2, y2).
      scale: spatial scale.
      out: pooled size.

    Returns:
      `(f32[R, out, out, C], i64[R, out, out, C, 3] argmax (b, h, w), -1 when empty)`.
    """
    _, height, width, channels = feat.shape
    result = np.zeros((len(rois), out, out, channels), np.float32)
    argmax = np.full((len(rois), out, out, channels, 3), -1, np.int64)
    scale = np.float32(scale)
    for r, (b, *box) in enumerate(rois):
        b = int(b)
        x1, y1, x2, y2 = (int(_c_round(np.float32(v) * scale)) for v in box)
        roi_w = max(x2 - x1 + 1, 1)
        roi_h = max(y2 - y1 + 1, 1)
        bin_h = np.float32(roi_h) / np.float32(out)
        bin_w = np.float32(roi_w) / np.float32(out)
        for ph in range(out):
            for pw in range(out):
                hs = int(math.floor(np.float32(ph) * bin_h))
                ws = int(math.floor(np.float32(pw) * bin_w))
                he = int(math.ceil(np.float32(ph + 1) * bin_h))
                we = int(math.ceil(np.float32(pw + 1) * bin_w))
                hs, he = min(max(hs + y1, 0), height), min(max(he + y1, 0), height)
                ws, we = min(max(ws + x1, 0), width), min(max(we + x1, 0), width)
                empty = he <= hs or we <= ws
                for c in range(channels):
                    best, where = (0.0, None) if empty else (-np.finfo(np.float32).max, None)
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if feat[b, h, w, c] > best:
                                best, where = feat[b, h, w, c], (b, h, w)
                    result[r, ph, pw, c] = best
                    if where is not None:
                        argmax[r, ph, pw, c] = where
    return result, argmax


def _bilinear(fm, y, x):
    """torchvision's `bilinear_interpolate` on one `[H, W]` channel map (float32)."""
    height, width = fm.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.float32(0)
    y, x = max(y, np.float32(0)), max(x, np.float32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = np.float32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = np.float32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = np.float32(y - y_low), np.float32(x - x_low)
    hy, hx = np.float32(1) - ly, np.float32(1) - lx
    return (
        hy * hx * fm[y_low, x_low]
        + hy * lx * fm[y_low, x_high]
        + ly * hx * fm[y_high, x_low]
        + ly * lx * fm[y_high, x_high]
    )


def np_roi_align_legacy(feat, rois, scale, out, sampling_ratio):
    """torchvision `roi_align(aligned=False)`: no -0.5 shift, sides clamped to >= 1."""
    result = np.zeros((len(rois), out, out, feat.shape[-1]), np.float32)
    scale = np.float32(scale)
    for r, (b, *box) in enumerate(rois):
        x1, y1, x2, y2 = (np.float32(v) * scale for v in box)
        roi_w = max(x2 - x1, np.float32(1))
        roi_h = max(y2 - y1, np.float32(1))
        bin_h, bin_w = roi_h / np.float32(out), roi_w / np.float32(out)
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / out))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / out))
        for c in range(feat.shape[-1]):
            fm = feat[int(b), :, :, c]
            for ph in range(out):
                for pw in range(out):
                    acc = np.float32(0)
                    for iy in range(gh):
                        y = y1 + ph * bin_h + (np.float32(iy) + np.float32(0.5)) * bin_h / gh
                        for ix in range(gw):
                            x = x1 + pw * bin_w + (np.float32(ix) + np.float32(0.5)) * bin_w / gw
                            acc += _bilinear(fm, np.float32(y), np.float32(x))
                    result[r, ph, pw, c] = acc / max(gh * gw, 1)
    return result


def _pool(feat, rois, scale, out, pooler_type="ROIPool", sampling_ratio=0, backend="reference"):
    """`poolers.roi_pool` on one level with explicit per-ROI images, as `[R, S, S, C]`."""
    if pooler_type == "ROIPool":
        return poolers.roi_max_pool(
            [jnp.asarray(feat)],
            jnp.asarray(rois[:, 1:], jnp.float32),
            jnp.asarray(rois[:, 0], jnp.int32),
            jnp.zeros(len(rois), jnp.int32),
            spatial_scales=(scale,),
            output_size=out,
        )
    return kernels.roi_align(
        [jnp.asarray(feat)],
        jnp.asarray(rois[:, 1:], jnp.float32),
        jnp.asarray(rois[:, 0], jnp.int32),
        jnp.zeros(len(rois), jnp.int32),
        spatial_scales=(scale,),
        output_size=out,
        sampling_ratio=sampling_ratio,
        aligned=pooler_type == "ROIAlignV2",
        backend=backend,
    )


def _random_rois(rng, n, extent):
    xy = rng.uniform(-6, extent, (n, 2))
    wh = rng.uniform(0, extent / 2, (n, 2))
    rois = np.concatenate([rng.integers(0, 2, (n, 1)), xy, xy + wh], axis=1)
    # Corners on exact halves (C round vs round-half-even), inverted, tiny and outside boxes.
    special = [
        [0, 2.5, 1.5, 10.5, 7.5],
        [1, -0.5, -2.5, 3.5, 4.5],
        [0, 9.0, 9.0, 3.0, 3.0],
        [1, 4.2, 4.2, 4.3, 4.3],
        [0, 50.0, 40.0, 70.0, 60.0],
        [0, 0.0, 0.0, 1e4, 1e4],
    ]
    return np.concatenate([np.asarray(special), rois]).astype(np.float32)


def test_roi_pool_worked_examples():
    feat = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    # Corners (0, 0, 1.4, 1.6) round to (0, 0, 1, 2): rows 0-2 x cols 0-1, max 7.
    rois = np.array([[0, 0, 0, 1.4, 1.6]], np.float32)
    assert float(_pool(feat, rois, 1.0, 1)[0, 0, 0, 0]) == 7.0
    # x1 = 1.5 rounds up to 2 (half away from zero; round-half-even would give 2 as well) and
    # x1 = 0.5 rounds to 1 (half-even gives 0): the window starts at column 1.
    rois = np.array([[0, 0.5, 0, 2, 0]], np.float32)
    assert float(_pool(feat, rois, 1.0, 1)[0, 0, 0, 0]) == 2.0  # row 0, cols 1-2
    # 2x2 output of the whole map: sides 3, bins [0, 2) and [1, 3) overlap on the middle.
    rois = np.array([[0, 0, 0, 2, 2]], np.float32)
    np.testing.assert_array_equal(_pool(feat, rois, 1.0, 2)[0, ..., 0], [[4, 5], [7, 8]])
    # A box entirely right of the map: every bin is empty and gives 0.
    rois = np.array([[0, 5, 0, 9, 2]], np.float32)
    np.testing.assert_array_equal(_pool(feat, rois, 1.0, 2), 0.0)
    # Negative values: the max is taken over real elements, never the empty-bin 0.
    np.testing.assert_array_equal(
        _pool(-1 - feat, np.array([[0, 0, 0, 2, 2]], np.float32), 1.0, 1)[0, 0, 0, 0], -1.0
    )


def test_round_half_away_from_zero():
    x = jnp.asarray([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 2.4999998, -1.2])
    np.testing.assert_array_equal(poolers._round_half_away(x), [1, 2, 3, -1, -3, 0, 2, -1])


@pytest.mark.parametrize("scale, out", [(1.0, 3), (0.25, 7), (0.5, 2)])
def test_roi_pool_matches_numpy_transcription(scale, out):
    rng = np.random.default_rng(int(scale * 100) + out)
    feat = rng.normal(size=(2, 11, 13, 3)).astype(np.float32)
    rois = _random_rois(rng, 12, 13 / scale)
    want, _ = np_roi_pool(feat, rois, scale, out)
    got = jax.jit(lambda f, r: _pool(f, r, scale, out))(feat, rois)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_roi_pool_gradient_goes_to_the_first_maximum():
    rng = np.random.default_rng(3)
    # Small integers: many ties, so "first maximum in row-major order" is exercised.
    feat = rng.integers(0, 3, (2, 9, 10, 2)).astype(np.float32)
    rois = _random_rois(rng, 8, 10)
    _, argmax = np_roi_pool(feat, rois, 1.0, 3)
    gout = rng.normal(size=(len(rois), 3, 3, 2)).astype(np.float32)
    want = np.zeros_like(feat)
    for idx in np.ndindex(*gout.shape):
        b, h, w = argmax[idx]
        if b >= 0:
            want[b, h, w, idx[-1]] += gout[idx]
    grad = jax.grad(lambda f: jnp.sum(_pool(f, rois, 1.0, 3) * gout))(jnp.asarray(feat))
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-6, atol=1e-6)


def test_roi_pool_multi_level_and_vmap():
    rng = np.random.default_rng(5)
    p2 = rng.normal(size=(2, 16, 20, 3)).astype(np.float32)
    p3 = rng.normal(size=(2, 8, 10, 3)).astype(np.float32)
    boxes = np.array(
        [
            [[0, 0, 20, 24], [4, 4, 70, 60], [0, 0, 0, 0]],
            [[10, 8, 30, 40], [0, 0, 80, 64], [1, 1, 2, 2]],
        ],
        np.float32,
    )
    got = poolers.roi_pool(
        [jnp.asarray(p2), jnp.asarray(p3)],
        jnp.asarray(boxes),
        min_level=2,
        output_size=2,
        sampling_ratio=0,
        pooler_type="ROIPool",
        canonical_box_size=32,
        canonical_level=2,
    )
    levels = np.asarray(poolers.assign_boxes_to_levels(jnp.asarray(boxes), 2, 3, 32, 2))
    for b in range(2):
        for r in range(3):
            feat, scale = (p2, 0.25) if levels[b, r] == 2 else (p3, 0.125)
            want, _ = np_roi_pool(feat, np.array([[b, *boxes[b, r]]], np.float32), scale, 2)
            np.testing.assert_array_equal(np.asarray(got[b, r]), want[0])
    per_image = jax.vmap(
        lambda a, c, bx: poolers.roi_pool(
            [a[None], c[None]],
            bx[None],
            min_level=2,
            output_size=2,
            sampling_ratio=0,
            pooler_type="ROIPool",
            canonical_box_size=32,
            canonical_level=2,
        )[0]
    )(jnp.asarray(p2), jnp.asarray(p3), jnp.asarray(boxes))
    np.testing.assert_array_equal(np.asarray(per_image), np.asarray(got))


def test_legacy_roi_align_worked_example():
    """aligned=False samples without the half-pixel shift and clamps the ROI to >= 1 px."""
    feat = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # value = 4 y + x
    rois = np.array([[0, 1, 1, 3, 3]], np.float32)
    # Legacy: bin 2 px, one sample per bin side at (2, 2) -> 10; V2: (1.5, 1.5) -> 7.5.
    legacy = _pool(feat, rois, 1.0, 1, "ROIAlign", sampling_ratio=1)
    v2 = _pool(feat, rois, 1.0, 1, "ROIAlignV2", sampling_ratio=1)
    assert float(legacy[0, 0, 0, 0]) == 10.0 and float(v2[0, 0, 0, 0]) == 7.5
    # A 0.2 x 0.2 box is clamped to 1 x 1 px: one sample at (1.6, 1.6), not (1.1, 1.1).
    tiny = np.array([[0, 1.1, 1.1, 1.3, 1.3]], np.float32)
    got = _pool(feat, tiny, 1.0, 1, "ROIAlign", sampling_ratio=1)
    assert float(got[0, 0, 0, 0]) == pytest.approx(4 * 1.6 + 1.6, abs=1e-5)


@pytest.mark.parametrize("scale, out, sampling_ratio", [(1.0, 3, 0), (0.25, 7, 2), (0.5, 2, 0)])
def test_legacy_roi_align_matches_numpy_transcription(scale, out, sampling_ratio):
    rng = np.random.default_rng(out + sampling_ratio)
    feat = rng.normal(size=(2, 11, 13, 3)).astype(np.float32)
    rois = _random_rois(rng, 10, 13 / scale)
    rois = rois[rois[:, 3] < 1000]  # not the 1e4 box: ~10^7 adaptive samples per bin
    want = np_roi_align_legacy(feat, rois, scale, out, sampling_ratio)
    got = _pool(feat, rois, scale, out, "ROIAlign", sampling_ratio=sampling_ratio)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_roi_pool_dispatches_each_pooler_type():
    rng = np.random.default_rng(0)
    p2 = jnp.asarray(rng.normal(size=(1, 8, 8, 2)).astype(np.float32))
    boxes = jnp.asarray([[[1.0, 2.0, 20.0, 17.0]]])
    kw = dict(min_level=2, output_size=2, sampling_ratio=2, backend="reference")
    for pooler_type, aligned in (("ROIAlignV2", True), ("ROIAlign", False)):
        got = poolers.roi_pool([p2], boxes, pooler_type=pooler_type, **kw)
        want = kernels.roi_align(
            [p2],
            boxes[0],
            jnp.zeros(1, jnp.int32),
            jnp.zeros(1, jnp.int32),
            spatial_scales=(0.25,),
            output_size=2,
            sampling_ratio=2,
            aligned=aligned,
            backend="reference",
        )
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want))
    with pytest.raises(ValueError, match="pooler_type = 'ROIAlignRotated'"):
        poolers.roi_pool([p2], boxes, pooler_type="ROIAlignRotated", **kw)


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIPool"])
def test_roi_heads_pool_with_the_detectron1_comparison_config(pooler_type):
    """`Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml`: both heads pool with the legacy
    pooler its YAML names (ROIAlign, sampling 2); ROIPool is selected the same way."""
    from jax_rcnn.config import from_detectron2
    from jax_rcnn.meta_arch import roi_heads

    yml = "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml"
    config = from_detectron2(pathlib.Path(__file__).parents[1] / "data/detectron2_configs" / yml)
    m = config.model
    with config.unlocked():
        m.roi_box_head.pooler_type = m.roi_mask_head.pooler_type = pooler_type
    rng = np.random.default_rng(1)
    features = {
        f"p{k}": jnp.asarray(rng.normal(size=(1, 64 >> (k - 2), 64 >> (k - 2), 4)), jnp.float32)
        for k in (2, 3, 4, 5, 6)
    }
    boxes = jnp.asarray([[[3.0, 5.0, 40.0, 60.0], [0.0, 0.0, 250.0, 200.0]]])
    for head in (m.roi_box_head, m.roi_mask_head):
        got = roi_heads.pool(config, features, boxes, head, "reference")
        want = poolers.roi_pool(
            [features[f"p{k}"] for k in (2, 3, 4, 5)],
            boxes,
            min_level=2,
            output_size=head.pooler_resolution,
            sampling_ratio=2,
            backend="reference",
            pooler_type=pooler_type,
        )
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
