"""`pallas_kernels.roi_align.roi_align` (Pallas) against `roi_align_reference`.

On CPU the kernels run in the Pallas interpreter and are cross-lowered to Triton IR for CUDA;
the `gpu`-marked tests run them compiled (`pytest -m gpu tests/pallas_kernels` on a GPU box).
Each interpreted variant costs a few seconds of compile, so one call checks forward and
gradient together over a box set that holds every edge case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.roi_align import roi_align, roi_align_reference
from tests.pallas_kernels.conftest import lower_for_cuda

SCALES = (0.5, 0.25)
# Two images, two levels (16 x 20 at 1/2, 8 x 10 at 1/4); C=12 is not a power of two, so the
# wrapper's channel padding is exercised.
LEVEL_SHAPES = ((2, 16, 20, 12), (2, 8, 10, 12))
# (image, level, x1, y1, x2, y2) in image px.
EDGE_ROIS = np.array(
    [
        [0, 0, 4.0, 4.0, 4.0, 4.0],  # zero size
        [1, 0, 3.0, 5.0, 2.0, 9.0],  # inverted: no samples
        [0, 1, -40.0, -30.0, -12.0, -9.0],  # fully outside
        [1, 0, 20.0, 14.0, 60.0, 40.0],  # past the bottom-right border
        [0, 0, 31.0, 22.0, 39.9, 31.9],  # at the border: y_low >= H - 1 collapses corners
        [1, 0, 38.5, 30.5, 40.0, 32.0],  # corner: all four corners are one table row
        [0, 1, 36.0, 28.0, 40.0, 32.0],  # the same on the coarse level
        [1, 0, 0.0, 10.0, 40.0, 11.0],  # thin and long
        [0, 1, 2.0, 0.0, 6.0, 32.0],  # tall and thin
        [1, 1, 0.0, 0.0, 40.0, 32.0],  # whole image
        [0, 0, 5.3, 7.1, 5.9, 7.4],  # sub-pixel
        [1, 0, -6.0, -3.0, 12.0, 9.0],  # partly outside, top-left
    ],
    np.float32,
)


def _inputs(seed, num_random=8, dtype=jnp.float32):
    rng = np.random.RandomState(seed)
    feats = [jnp.asarray(rng.randn(*s), dtype) for s in LEVEL_SHAPES]
    xy = rng.uniform(-8, 40, (num_random, 2))
    wh = rng.uniform(0.5, 30, (num_random, 2))
    random_rois = np.concatenate([rng.randint(0, 2, (num_random, 2)), xy, xy + wh], axis=1)
    rois = np.concatenate([EDGE_ROIS, random_rois.astype(np.float32)])
    boxes = jnp.asarray(rois[:, 2:])
    batch_idx = jnp.asarray(rois[:, 0].astype(np.int32))
    level_idx = jnp.asarray(rois[:, 1].astype(np.int32))
    return feats, boxes, batch_idx, level_idx, rng


def _forward_and_grad(impl, output_size, sampling_ratio, gout, **kw):
    """jit: `(out, d(sum(out * gout))/dfeatures)` of `impl` in one compile."""

    def loss(feats, boxes, batch_idx, level_idx):
        out = impl(
            feats,
            boxes,
            batch_idx,
            level_idx,
            spatial_scales=SCALES,
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            **kw,
        )
        return jnp.sum(out * gout), out

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _compare_with_reference(
    output_size, sampling_ratio, *, interpret, num_random=8, dtype=jnp.float32, aligned=True
):
    """Kernel vs reference on `_inputs`: asserts equal outputs, returns them and both gradients.

    Returns:
      `(out, kernel feature grads, reference feature grads)`.
    """
    feats, boxes, batch_idx, level_idx, rng = _inputs(
        output_size + sampling_ratio, num_random, dtype
    )
    r = boxes.shape[0]
    gout = jnp.asarray(rng.randn(r, output_size, output_size, 12), jnp.float32)
    args = (feats, boxes, batch_idx, level_idx)
    (_, got), got_grad = _forward_and_grad(
        roi_align, output_size, sampling_ratio, gout, interpret=interpret, aligned=aligned
    )(*args)
    (_, want), want_grad = _forward_and_grad(
        roi_align_reference, output_size, sampling_ratio, gout, aligned=aligned
    )(*args)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return got, got_grad, want_grad


def _check(output_size, sampling_ratio):
    got, got_grad, want_grad = _compare_with_reference(output_size, sampling_ratio, interpret=True)
    if sampling_ratio == 0:  # empty, inverted and outside boxes pool nothing
        np.testing.assert_array_equal(np.asarray(got)[:3], 0.0)
    for level, (g, w) in enumerate(zip(got_grad, want_grad, strict=True)):
        scale = float(np.abs(w).max())
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale, err_msg=f"level {level}")


@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 0), (14, 2)])
def test_matches_reference_forward_and_grad(output_size, sampling_ratio):
    _check(output_size, sampling_ratio)


def test_legacy_aligned_false_matches_reference_forward_and_grad():
    """Detectron1-Comparisons' `ROIAlign` (aligned=False, sampling 2) on the kernel path."""
    _, got_grad, want_grad = _compare_with_reference(7, 2, interpret=True, aligned=False)
    for level, (g, w) in enumerate(zip(got_grad, want_grad, strict=True)):
        scale = float(np.abs(w).max())
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale, err_msg=f"level {level}")


@pytest.mark.slow
@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 2), (14, 0), (5, 3)])
def test_matches_reference_forward_and_grad_more_variants(output_size, sampling_ratio):
    _check(output_size, sampling_ratio)


def test_bf16_features_forward_and_grad_dtype():
    feats, boxes, batch_idx, level_idx, rng = _inputs(11, dtype=jnp.bfloat16)
    kw = dict(spatial_scales=SCALES, output_size=7, sampling_ratio=0)
    fn = jax.jit(lambda f: roi_align(f, boxes, batch_idx, level_idx, interpret=True, **kw))
    got = fn(feats)
    assert got.dtype == jnp.float32
    want = roi_align_reference(feats, boxes, batch_idx, level_idx, **kw)
    # Same bf16 reads, both accumulate in f32: only the summation order could differ.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    f32 = [f.astype(jnp.float32) for f in feats]
    exact = roi_align_reference(f32, boxes, batch_idx, level_idx, **kw)
    # Loose: bf16 inputs already carry ~3 significant digits.
    np.testing.assert_allclose(got, exact, rtol=2e-2, atol=2e-2)
    grad = jax.grad(lambda f: jnp.sum(fn(f)))(feats)
    assert all(g.dtype == jnp.bfloat16 for g in grad)


def test_no_rois_and_overflowing_boxes():
    feats = [jnp.ones((1, 8, 8, 3), jnp.float32)]
    kw = dict(spatial_scales=(1.0,), output_size=7, sampling_ratio=0, interpret=True)
    none = jnp.zeros((0,), jnp.int32)

    def loss(f, boxes, idx):
        return jnp.sum(roi_align(f, boxes, idx, idx, **kw))

    assert float(loss(feats, jnp.zeros((0, 4)), none)) == 0.0
    np.testing.assert_array_equal(jax.grad(loss)(feats, jnp.zeros((0, 4)), none)[0], 0.0)
    # Finite boxes whose size overflows float32, and non-finite boxes, pool to zeros.
    boxes = jnp.asarray([[-3e38, 0, 3e38, 5], [np.nan, 0, 4, 4], [0, 0, 4, 4]], jnp.float32)
    out = roi_align(feats, boxes, jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32), **kw)
    np.testing.assert_array_equal(out[:2], 0.0)
    np.testing.assert_allclose(out[2], 1.0, rtol=1e-6)


def test_dispatch_uses_pallas_kernels():
    from jax_rcnn import kernels

    assert kernels.resolve_backend("pallas") == "pallas"


# ---- CUDA cross-lowering (no GPU needed; PALLAS.md 5.3) -------------------------------------

# Detectron2 shapes: P2-P5 of two 800 x 1333 images (padded to 800 x 1344), C=256.
_LEVELS = tuple((2, 200 >> i, 336 >> i, 256) for i in range(4))
_D2_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("sampling_ratio", [0, 2], ids=["adaptive", "sr2"])
@pytest.mark.parametrize("output_size,num_rois", [(7, 1024), (14, 256)], ids=["7x7", "14x14"])
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_lowers_to_triton_for_cuda(direction, output_size, num_rois, sampling_ratio, dtype):
    sds = jax.ShapeDtypeStruct
    args = (
        [sds(shape, dtype) for shape in _LEVELS],
        sds((num_rois, 4), jnp.float32),
        sds((num_rois,), jnp.int32),
        sds((num_rois,), jnp.int32),
    )
    kw = dict(
        spatial_scales=_D2_SCALES,
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        interpret=False,
    )

    def fwd(feats, boxes, batch_idx, level_idx):
        return roi_align(feats, boxes, batch_idx, level_idx, **kw)

    def bwd(feats, boxes, batch_idx, level_idx, g):
        _, vjp = jax.vjp(lambda f: fwd(f, boxes, batch_idx, level_idx), feats)
        return vjp(g)

    if direction == "fwd":
        text = lower_for_cuda(fwd, *args)
    else:
        g = sds((num_rois, output_size, output_size, 256), jnp.float32)
        text = lower_for_cuda(bwd, *args, g)
    assert "__gpu$xla.gpu.triton" in text
    assert f"roi_align_{direction}_{output_size}x{output_size}" in text


# ---- compiled on a GPU --------------------------------------------------------------------

gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 0), (7, 2), (14, 0), (14, 2)])
def test_compiled_matches_reference_on_gpu(output_size, sampling_ratio, dtype):
    _, got_grad, want_grad = _compare_with_reference(
        output_size, sampling_ratio, interpret=False, num_random=500, dtype=dtype
    )
    for g, w in zip(got_grad, want_grad, strict=True):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        tol = 1e-4 if dtype == jnp.float32 else 1e-2  # bf16: one final rounding of each sum
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())
