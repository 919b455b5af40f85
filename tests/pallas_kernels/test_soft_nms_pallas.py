"""`pallas_kernels.soft_nms.soft_nms` (Pallas) against `soft_nms_reference`.

On CPU the kernel runs in the Pallas interpreter (the same float32 operations as the reference,
so picks and scores are identical) and is cross-lowered to Triton IR for CUDA; the `gpu`-marked
test runs it compiled. The reference itself is checked against a plain Python loop in
`tests/jax_rcnn/test_research.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.soft_nms import soft_nms, soft_nms_reference
from tests.pallas_kernels.conftest import lower_for_cuda, random_groups


def _run(impl, boxes, scores, valid, method, k, **kw):
    fn = jax.jit(
        lambda b, s, v: impl(
            b,
            s,
            v,
            iou_threshold=0.3,
            max_output=k,
            method=method,
            sigma=0.5,
            min_score=1e-3,
            **kw,
        )
    )
    return tuple(np.asarray(x) for x in fn(boxes, scores, valid))


@pytest.mark.parametrize("method,k", [("linear", 24), ("gaussian", 120)])
def test_random_groups_match_reference(method, k):
    """Scores in (0, 1]; invalid boxes, an empty group, a dense group, a non-finite box and
    a NaN score, the K cap (24) and K > N (120 > 90: N not a power of two)."""
    rng = np.random.RandomState(k)
    boxes, ranks = random_groups(rng, 5, 90)
    scores = (ranks + 1) / ranks.max()
    boxes[3] = boxes[3] * 0.2  # dense: strong decays, some boxes fall below min_score
    valid = rng.rand(5, 90) > 0.3
    valid[2] = False
    boxes[0, 5] = [np.nan, 0, 10, 10]
    scores[1, 7] = np.nan
    got = _run(soft_nms, boxes, scores, valid, method, k, interpret=True)
    want = _run(soft_nms_reference, boxes, scores, valid, method, k)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[0].shape == (5, k)
    assert not got[2][2].any()
    assert got[2][[0, 1, 3, 4]].any(axis=1).all()
    if k == 24:
        assert got[2][[0, 1, 4]].all()  # the cap is reached


def test_worked_example_and_empty_shapes():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 8], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[0.9, 0.6, 0.5]], np.float32)
    valid = np.ones((1, 3), bool)
    keep, keep_s, keep_v = _run(soft_nms, boxes, scores, valid, "linear", 4, interpret=True)
    np.testing.assert_array_equal(keep[0], [0, 2, 1, 0])
    np.testing.assert_array_equal(keep_v[0], [True, True, True, False])
    np.testing.assert_allclose(keep_s[0], [0.9, 0.5, 0.6 * (1 - 0.8), 0.0], rtol=1e-6)
    for shape in ((0, 5), (2, 0)):
        b = np.zeros((*shape, 4), np.float32)
        s, v = np.zeros(shape, np.float32), np.zeros(shape, bool)
        got = _run(soft_nms, b, s, v, "gaussian", 3, interpret=True)
        assert [x.shape for x in got] == [(shape[0], 3)] * 3
        assert not got[2].any()


# ---- CUDA cross-lowering (no GPU needed; PALLAS.md 5.3) -------------------------------------


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_lowers_to_triton_for_cuda(method):
    sds = jax.ShapeDtypeStruct
    groups, n, k = 80, 1000, 100  # the box head: 80 classes x 1000 candidates
    args = (sds((groups, n, 4), jnp.float32), sds((groups, n), jnp.float32))
    args += (sds((groups, n), jnp.bool_),)

    def fn(b, s, v):
        return soft_nms(
            b,
            s,
            v,
            iou_threshold=0.5,
            max_output=k,
            method=method,
            sigma=0.5,
            min_score=1e-3,
            interpret=False,
        )

    text = lower_for_cuda(fn, *args)
    assert text.count("__gpu$xla.gpu.triton") == 1
    assert "soft_nms" in text


# ---- compiled on a GPU --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_compiled_matches_reference_on_gpu(method):
    rng = np.random.RandomState(1)
    boxes, ranks = random_groups(rng, 80, 1000, spread=800.0)
    scores = (ranks + 1) / ranks.max()
    valid = rng.rand(80, 1000) > 0.2
    got = _run(soft_nms, boxes, scores, valid, method, 100, interpret=False)
    want = _run(soft_nms_reference, boxes, scores, valid, method, 100)
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[0], want[0])
    # Triton's exp and division may differ from XLA's by an ulp.
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-7)
