"""`find_top_rpn_proposals` against Detectron2's proposals on the fixture photo.

The fixture stores every level's objectness logits and the anchor deltas at each level's pre-NMS
top-k indices (the only deltas the proposal step reads), so the proposal step can be reproduced
exactly from stored inputs, independently of the network.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import anchors as anchor_ops
from jax_rcnn import boxes as box_ops
from jax_rcnn.proposals import Proposals, add_ground_truth_to_proposals, find_top_rpn_proposals

DATA = pathlib.Path(__file__).parents[1] / "data" / "tiny_maskrcnn"
LEVELS = ("p2", "p3", "p4", "p5", "p6")


@pytest.fixture(scope="module")
def fixture():
    return np.load(DATA / "inference.npz")


def _inputs(inf):
    grids = [tuple(int(s) for s in inf[f"{n}_shape"][2:]) for n in LEVELS]
    anchors = anchor_ops.grid_anchors(
        grid_sizes=grids,
        strides=[4, 8, 16, 32, 64],
        sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=((0.5, 1.0, 2.0),),
        offset=0.0,
    )
    logits, deltas = [], []
    for n in LEVELS:
        lg = inf[f"rpn_objectness_logits_{n}"]
        d = np.zeros(lg.shape + (4,), np.float32)
        d[0, inf[f"rpn_topk_idx_{n}"][0]] = inf[f"rpn_topk_anchor_deltas_{n}"][0]
        logits.append(jnp.asarray(lg))
        deltas.append(jnp.asarray(d))
    return anchors, logits, deltas


# Detectron2's RPN test settings on the fixture.
_SETTINGS = dict(
    box2box=box_ops.Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
    nms_thresh=0.7,
    pre_nms_topk=1000,
    post_nms_topk=1000,
    min_box_size=0.0,
    backend="reference",
)


def _run(inf, **overrides):
    anchors, logits, deltas = _inputs(inf)
    kwargs = {**_SETTINGS, **overrides}
    fn = jax.jit(lambda a, lg, d, s: find_top_rpn_proposals(a, lg, d, s, **kwargs))
    return fn(anchors, logits, deltas, jnp.asarray(inf["image_sizes"]))


def test_proposals_match_detectron2(fixture):
    out = _run(fixture)
    ref_boxes = fixture["img0_proposal_boxes"]
    ref_logits = fixture["img0_proposal_objectness_logits"]
    assert bool(out.all_finite[0])
    valid = np.asarray(out.valid[0])
    boxes, logits = np.asarray(out.boxes[0])[valid], np.asarray(out.logits[0])[valid]
    assert len(boxes) == len(ref_boxes) == 1000
    # Match by box (the RPN NMS has an IoU within 6e-6 of 0.7: one proposal may flip).
    dist = np.abs(boxes[:, None, :] - ref_boxes[None, :, :]).max(-1)
    nearest = dist.argmin(1)
    matched = dist[np.arange(len(boxes)), nearest] <= 0.01
    assert matched.mean() >= 0.99, matched.mean()
    np.testing.assert_allclose(logits[matched], ref_logits[nearest[matched]], rtol=1e-4, atol=1e-4)
    # Sorted by descending logit, like Detectron2.
    assert np.all(np.diff(logits) <= 0)


def test_padding_when_fewer_candidates_than_slots(fixture):
    out = _run(fixture, pre_nms_topk=10, post_nms_topk=80)
    # 5 levels x at most 10 kept each: the remaining slots are padding with canonical values.
    num_valid = int(out.valid[0].sum())
    assert 0 < num_valid <= 50
    assert np.all(np.asarray(out.boxes[0])[num_valid:] == 0)
    assert np.all(np.asarray(out.logits[0])[num_valid:] == 0)
    assert not np.any(np.asarray(out.valid[0])[num_valid:])


def test_non_finite_deltas_are_dropped_and_reported(fixture):
    anchors, logits, deltas = _inputs(fixture)
    top = int(fixture["rpn_topk_idx_p5"][0, 0])
    deltas[3] = deltas[3].at[0, top].set(jnp.nan)
    out = find_top_rpn_proposals(
        anchors,
        logits,
        deltas,
        jnp.asarray(fixture["image_sizes"]),
        **_SETTINGS,
    )
    assert not bool(out.all_finite[0])
    assert np.all(np.isfinite(np.asarray(out.boxes)))


def test_boxes_are_clipped_and_nonempty(fixture):
    out = _run(fixture)
    h, w = (int(v) for v in fixture["image_sizes"][0])
    b = np.asarray(out.boxes[0])[np.asarray(out.valid[0])]
    assert b[:, 0].min() >= 0 and b[:, 1].min() >= 0
    assert b[:, 2].max() <= w and b[:, 3].max() <= h
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])


def test_add_ground_truth_to_proposals():
    props = Proposals(
        boxes=jnp.ones((2, 3, 4)),
        logits=jnp.zeros((2, 3)),
        valid=jnp.ones((2, 3), bool),
        all_finite=jnp.ones((2,), bool),
    )
    gt = jnp.full((2, 2, 4), 7.0).at[1, 1].set(jnp.nan)
    gt_valid = jnp.array([[True, False], [True, False]])
    out = add_ground_truth_to_proposals(props, gt, gt_valid)
    assert out.boxes.shape == (2, 5, 4)
    np.testing.assert_array_equal(out.valid[:, 3:], gt_valid)
    # Padded gt slots (even NaN garbage) become canonical zeros, never NaN.
    assert np.all(np.isfinite(np.asarray(out.boxes)))
    np.testing.assert_allclose(out.logits[:, 3], np.log((1 - 1e-10) / 1e-10), rtol=1e-6)
