"""Box-regression losses against Detectron2's / fvcore's own numbers (`tests/data/box_losses.npz`,
see `tests/data/README_detectron2_fixtures.md`): per box, summed, and through Detectron2's dense
(RPN / RetinaNet) `_dense_box_regression_loss`, including degenerate boxes."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import boxes as box_ops
from jax_rcnn import losses

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "data" / "box_losses.npz"
ZERO_AREA_ROW = 64  # Detectron2's CIoU is NaN there (0 / 0 in the aspect term)
IOU_LOSSES = {"giou": losses.giou_loss, "diou": losses.diou_loss, "ciou": losses.ciou_loss}


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("name", sorted(IOU_LOSSES))
def test_iou_losses_per_box_and_sum(fx, name):
    out = np.asarray(
        IOU_LOSSES[name](jnp.asarray(fx["pred_boxes"]), jnp.asarray(fx["target_boxes"]))
    )
    ref = fx[f"{name}_none"]
    finite = np.isfinite(ref)
    # float32 both sides; the rows with tiny IoU differences are far from 0.
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(out)), "the port stays finite on the zero-area box"
    if name == "ciou":
        assert not finite[ZERO_AREA_ROW] and finite.sum() == len(ref) - 1
        np.testing.assert_allclose(out[finite].sum(), np.nansum(ref), rtol=1e-5)
    else:
        assert finite.all()
        np.testing.assert_allclose(out.sum(), fx[f"{name}_sum"], rtol=1e-5)


def test_iou_losses_worked_examples():
    a, b = jnp.array([0.0, 0, 1, 1]), jnp.array([1.0, 0, 2, 1])
    np.testing.assert_allclose(losses.giou_loss(a, b), 1.0, rtol=1e-6)
    np.testing.assert_allclose(losses.diou_loss(a, b), 1.2, rtol=1e-6)  # d^2 1 / c^2 5
    np.testing.assert_allclose(losses.ciou_loss(a, a), 0.0, atol=1e-6)  # same aspect: v = 0


@pytest.mark.parametrize("name", sorted(IOU_LOSSES))
def test_iou_loss_gradients_finite_on_degenerate_boxes(fx, name):
    grad = jax.grad(lambda p: IOU_LOSSES[name](p, jnp.asarray(fx["target_boxes"])).sum())
    assert np.all(np.isfinite(np.asarray(grad(jnp.asarray(fx["pred_boxes"])))))


# The fixture's key rounds beta to 4 digits; 0.1111 is 1/9 (Detectron2's old default).
@pytest.mark.parametrize(
    ("beta", "key"), [(0.0, "0.0000"), (0.1, "0.1000"), (1 / 9, "0.1111"), (0.5, "0.5000")]
)
def test_smooth_l1_betas(fx, beta, key):
    out = losses.smooth_l1(jnp.asarray(fx["deltas_pred"] - fx["deltas_target"]), beta)
    np.testing.assert_allclose(out, fx[f"smooth_l1_beta{key}_none"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["smooth_l1", "giou", "diou", "ciou"])
def test_dense_box_regression_loss(fx, name):
    """Detectron2's `_dense_box_regression_loss` with Box2BoxTransform((1, 1, 1, 1))."""
    out = losses.box_regression_loss(
        jnp.asarray(fx["dense_pred_deltas"]),
        jnp.asarray(fx["dense_anchors"])[None],
        jnp.asarray(fx["dense_gt_boxes"]),
        jnp.asarray(fx["dense_fg_mask"]),
        box2box=box_ops.Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        box_reg_loss=name,
        smooth_l1_beta=0.0,
    )
    np.testing.assert_allclose(out, fx[f"dense_{name}_sum"], rtol=1e-5)


@pytest.mark.parametrize("name", ["smooth_l1", "giou", "diou", "ciou"])
def test_rpn_and_retinanet_losses_use_the_dense_loss(fx, name):
    """The same fixture through `rpn_losses` (normaliser 256 x B) and `retinanet_losses`."""
    b2b = box_ops.Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    anchors = jnp.asarray(fx["dense_anchors"])
    deltas, gt = jnp.asarray(fx["dense_pred_deltas"]), jnp.asarray(fx["dense_gt_boxes"])
    fg = np.asarray(fx["dense_fg_mask"])
    labels = jnp.asarray(np.where(fg, 1, 0).astype(np.int32))
    rpn = losses.rpn_losses(
        jnp.zeros(fg.shape),
        deltas,
        labels,
        b2b.get_deltas(anchors[None], gt),
        batch_size_per_image=256,
        box_reg_loss=name,
        anchors=anchors,
        matched_gt_boxes=gt,
        box2box=b2b,
    )
    np.testing.assert_allclose(rpn["loss_rpn_loc"], fx[f"dense_{name}_sum"] / 256, rtol=1e-5)
    ret = losses.retinanet_losses(
        jnp.zeros((*fg.shape, 3)),
        deltas,
        anchors,
        jnp.asarray(np.where(fg, 0, 3)),
        gt,
        jnp.asarray(2.0),
        box2box=b2b,
        focal_alpha=0.25,
        focal_gamma=2.0,
        bbox_reg_loss_type=name,
        smooth_l1_beta=0.0,
    )
    np.testing.assert_allclose(ret["loss_box_reg"], fx[f"dense_{name}_sum"] / 2, rtol=1e-5)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_fast_rcnn_iou_loss_decodes_on_proposals(name):
    """ROI head: gt-class deltas decoded on the proposals, summed over fg / all sampled."""
    b2b = box_ops.Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    rng = np.random.RandomState(0)
    props = np.array([[0, 0, 10, 10], [5, 5, 20, 25], [3, 4, 9, 12], [0, 0, 1, 1]], np.float32)
    gt = props + rng.uniform(-1, 1, props.shape).astype(np.float32)
    deltas = rng.normal(0, 0.5, (4, 3 * 4)).astype(np.float32)
    classes = np.array([2, 0, 3, 1])  # 3 = background
    valid = np.array([True, True, True, False])
    out = losses.fast_rcnn_losses(
        jnp.zeros((4, 4)),
        jnp.asarray(deltas),
        jnp.asarray(props),
        jnp.asarray(classes),
        jnp.asarray(gt),
        jnp.asarray(valid),
        box2box=b2b,
        box_reg_loss=name,
    )
    fg = [0, 1]
    pred = np.stack(
        [b2b.apply_deltas(deltas[i, 4 * classes[i] : 4 * classes[i] + 4], props[i]) for i in fg]
    )
    ref = np.asarray(IOU_LOSSES[name](jnp.asarray(pred), jnp.asarray(gt[fg]))).sum() / 3
    np.testing.assert_allclose(out["loss_box_reg"], ref, rtol=1e-5)
