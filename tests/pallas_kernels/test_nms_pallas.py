"""`pallas_kernels.nms.nms` (Pallas) against `nms_reference` and torchvision fixtures.

On CPU the kernels run in the Pallas interpreter and are cross-lowered to Triton IR for CUDA;
the `gpu`-marked tests run them compiled. Each interpreted call costs seconds of compile, so
fixture sets are batched as groups of one call (padded with invalid boxes).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.nms import nms, nms_reference
from tests.pallas_kernels.conftest import lower_for_cuda, random_groups

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "data" / "geometry.npz"


def _run(impl, boxes, scores, valid, thr, k, **kw):
    fn = jax.jit(lambda b, s, v: impl(b, s, v, iou_threshold=thr, max_output=k, **kw))
    return tuple(np.asarray(x) for x in fn(boxes, scores, valid))


@pytest.mark.parametrize("thr,k", [(0.3, 24), (0.7, 200)])
def test_random_groups_match_reference(thr, k):
    """Distinct scores; invalid boxes, an empty group, a dense group, the K cap (24), K > N."""
    rng = np.random.RandomState(int(thr * 10))
    boxes, scores = random_groups(rng, 5, 150)
    boxes[3] = boxes[3] * 0.2  # dense: many suppressions
    valid = rng.rand(5, 150) > 0.3
    valid[2] = False
    valid[4, 70:] = False
    got = _run(nms, boxes, scores, valid, thr, k, interpret=True)
    want = _run(nms_reference, boxes, scores, valid, thr, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert not got[1][2].any()
    if k == 24:
        assert got[1][[0, 1, 3]].all()  # the cap is reached


def _pad_groups(sets):
    """`[(boxes, scores)]` of different sizes -> padded `(boxes, scores, valid)` groups."""
    n = max(len(s) for _, s in sets)
    boxes = np.zeros((len(sets), n, 4), np.float32)
    scores = np.zeros((len(sets), n), np.float32)
    valid = np.zeros((len(sets), n), bool)
    for g, (b, s) in enumerate(sets):
        boxes[g, : len(s)], scores[g, : len(s)], valid[g, : len(s)] = b, s, True
    return boxes, scores, valid


@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_torchvision_fixtures(thr):
    """geometry.npz nms_* keys: plain, heavy overlap, exact-tie IoUs (0.5) and the strict
    threshold worked example, one group each, plus Detectron2 batched_nms by class."""
    data = dict(np.load(FIXTURES))
    prefixes = ["nms", "nms_overlap"] + (["nms_exact"] if thr == 0.5 else [])
    sets = [(data[f"{p}_boxes"], data[f"{p}_scores"]) for p in prefixes]
    worked = np.array([[0, 0, 2, 2], [0, 0, 2, 1], [5, 5, 6, 6]], np.float32)
    sets.append((worked, np.array([0.9, 0.8, 0.7], np.float32)))
    classes = data["nms_classes"]
    num_classes = int(classes.max()) + 1
    for c in range(num_classes):
        sel = classes == c
        sets.append((data["nms_boxes"][sel], data["nms_scores"][sel]))
    boxes, scores, valid = _pad_groups(sets)
    keep, keep_valid = _run(nms, boxes, scores, valid, thr, boxes.shape[1], interpret=True)
    kept = [k[v] for k, v in zip(keep, keep_valid, strict=True)]
    for g, p in enumerate(prefixes):
        np.testing.assert_array_equal(kept[g], data[f"{p}_keep_{int(thr * 10)}"], err_msg=p)
    np.testing.assert_array_equal(kept[len(prefixes)], [0, 1, 2])  # IoU 0.5 is not > 0.5
    # Detectron2 batched_nms: per-class groups merged by descending score.
    index = [np.flatnonzero(classes == c) for c in range(num_classes)]
    merged = np.concatenate([index[c][kept[len(prefixes) + 1 + c]] for c in range(num_classes)])
    merged = merged[np.argsort(-data["nms_scores"][merged], kind="stable")]
    np.testing.assert_array_equal(merged, data[f"batched_nms_keep_{int(thr * 10)}"])


@pytest.mark.slow
def test_large_fixture_batched_by_class():
    data = dict(np.load(FIXTURES))
    b, s, classes = (data[f"nms_large_{k}"] for k in ("boxes", "scores", "classes"))
    num_classes = int(classes.max()) + 1
    index = [np.flatnonzero(classes == c) for c in range(num_classes)]
    boxes, scores, valid = _pad_groups([(b[i], s[i]) for i in index])
    keep, keep_valid = _run(nms, boxes, scores, valid, 0.7, boxes.shape[1], interpret=True)
    merged = np.concatenate([i[k[v]] for i, k, v in zip(index, keep, keep_valid, strict=True)])
    merged = merged[np.argsort(-s[merged], kind="stable")]
    np.testing.assert_array_equal(merged, data["batched_nms_large_keep_7"])


def test_all_invalid_non_finite_and_static_empty_shapes():
    boxes = np.array(
        [[[0, 0, 10, 10], [np.nan, 0, 10, 10], [0, 0, np.inf, 9], [1, 1, 10, 10]]], np.float32
    )
    boxes = np.concatenate([boxes, boxes])
    scores = np.array([[0.5, 0.9, 0.99, 0.4], [0.5, 0.9, 0.99, 0.4]], np.float32)
    valid = np.array([[True, True, True, True], [False] * 4])
    keep, keep_valid = _run(nms, boxes, scores, valid, 0.5, 3, interpret=True)
    np.testing.assert_array_equal(keep, [[0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(keep_valid, [[True, False, False], [False] * 3])
    # Static corner cases never reach a kernel.
    for shape, k in (((0, 8), 4), ((3, 0), 4), ((3, 8), 0)):
        keep, keep_valid = nms(
            jnp.zeros((*shape, 4)),
            jnp.zeros(shape),
            jnp.ones(shape, bool),
            iou_threshold=0.5,
            max_output=k,
            interpret=True,
        )
        assert keep.shape == keep_valid.shape == (shape[0], k)
        assert not np.asarray(keep_valid).any()


# ---- CUDA cross-lowering (no GPU needed; PALLAS.md 5.3) -------------------------------------


@pytest.mark.parametrize(
    "groups,n,k", [(10, 2000, 1000), (160, 1000, 100)], ids=["rpn-2048", "box-head-1024"]
)
def test_lowers_to_triton_for_cuda(groups, n, k):
    sds = jax.ShapeDtypeStruct
    args = (sds((groups, n, 4), jnp.float32), sds((groups, n), jnp.float32))
    args += (sds((groups, n), jnp.bool_),)
    fn = lambda b, s, v: nms(b, s, v, iou_threshold=0.7, max_output=k, interpret=False)
    text = lower_for_cuda(fn, *args)
    assert text.count("__gpu$xla.gpu.triton") == 2
    assert "nms_iou_bitmask" in text and "nms_scan" in text


# ---- compiled on a GPU --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")
@pytest.mark.parametrize("groups,n,k,thr", [(10, 2000, 1000, 0.7), (160, 1000, 100, 0.5)])
def test_compiled_matches_reference_on_gpu(groups, n, k, thr):
    rng = np.random.RandomState(n)
    boxes, scores = random_groups(rng, groups, n, spread=800.0)
    valid = rng.rand(groups, n) > 0.2
    valid[1] = False
    got = _run(nms, boxes, scores, valid, thr, k, interpret=False)
    want = _run(nms_reference, boxes, scores, valid, thr, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    data = dict(np.load(FIXTURES))
    for prefix in ("nms", "nms_overlap", "nms_exact"):
        b, s = data[f"{prefix}_boxes"], data[f"{prefix}_scores"]
        keep, keep_valid = _run(nms, b[None], s[None], np.ones((1, len(s)), bool), 0.5, len(s))
        np.testing.assert_array_equal(keep[0][keep_valid[0]], data[f"{prefix}_keep_5"])
