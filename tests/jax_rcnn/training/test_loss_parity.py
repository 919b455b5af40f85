"""Training-loss parity with Detectron2 on the tiny Mask R-CNN fixture (`training.npz`).

The fixture is one deterministic train-mode forward with `BATCH_SIZE_PER_IMAGE = 1e6` for the
RPN and the ROI heads, so sampling keeps every labelled anchor / proposal and the losses do not
depend on the random draw (README "training.npz"). We feed the same image and gt (full-image
bitmasks: exact Detectron2 mask targets), jit `forward_train` once per module and compare the
five losses, the intermediate targets and (slow) the parameter gradients, in float32 against
`training.npz` and in float64 against `training_f64.npz` (the same capture in float64).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import boxes as box_ops
from jax_rcnn import config as config_lib
from jax_rcnn import losses as loss_ops
from jax_rcnn import modeling, targets
from jax_rcnn.checkpoint import detectron2 as d2
from jax_rcnn.data import transforms as T
from jax_rcnn.meta_arch import rcnn
from jax_rcnn.training import losses as training_losses
from jax_rcnn.training import make_batch

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "data" / "tiny_maskrcnn"
LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask")
K = 4


def _config(batch_size_per_image: int | None = 1_000_000):
    """The fixture's config; the parity batch sizes unless `batch_size_per_image` is None."""
    cfg = config_lib.from_detectron2(FIXTURE / "config.yaml")
    with cfg.unlocked():
        if batch_size_per_image is not None:
            cfg.model.rpn.batch_size_per_image = batch_size_per_image
            cfg.model.roi_heads.batch_size_per_image = batch_size_per_image
        cfg.model.kernels = "reference"
    return cfg


@pytest.fixture(scope="module")
def npz():
    return np.load(FIXTURE / "training.npz")


@pytest.fixture(scope="module")
def setup(npz):
    cfg = _config()
    variables = d2.load_weights(FIXTURE / "model_final.pkl", cfg, modeling.abstract_variables(cfg))
    image = np.load(FIXTURE / "inference.npz")["input_bgr"]
    h, w = npz["img0_image_size"]
    padded = np.zeros((800, 1088, 3), np.uint8)  # size_divisibility 32
    padded[:h, :w] = image
    num_gt = len(npz["img0_gt_classes"])
    batch = {
        "image": padded[None],
        "image_size": npz["img0_image_size"][None].astype(np.int32),
        "gt_boxes": npz["img0_gt_boxes"][None],
        "gt_classes": npz["img0_gt_classes"][None],
        "gt_valid": np.ones((1, num_gt), bool),
        "gt_masks": npz["img0_gt_masks"][None],  # bool full-image: exact Detectron2 targets
    }
    return cfg, modeling.build_model(cfg, train=True), variables, batch


@pytest.fixture(scope="module")
def forward(setup):
    cfg, model, variables, batch = setup
    fn = jax.jit(lambda v, b, k: rcnn.forward_train(model, v, b, k, config=cfg))
    out_losses, aux = fn(variables, batch, jax.random.key(0))
    return jax.tree.map(np.asarray, (out_losses, aux))


def _rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_match_detectron2(forward, npz, name):
    # Float32 reductions over 2e5 anchors / 1e5 mask pixels in another order: ~1e-6.
    assert _rel(forward[0][name], npz[name]) < 1e-4


def test_rpn_sums_and_default_normaliser(forward, npz):
    # loss_rpn_loc is ~1e-6 here, so also check the un-normalised sums.
    out = forward[0]
    assert _rel(out["loss_rpn_cls"] * 1e6, npz["rpn_loss_cls_sum"]) < 1e-4
    assert _rel(out["loss_rpn_loc"] * 1e6, npz["rpn_loss_loc_sum"]) < 1e-4
    assert _rel(out["loss_rpn_cls"] * 1e6 / 256, npz["rpn_loss_cls_default_norm"]) < 1e-4


def test_rpn_anchor_labels(forward, npz):
    labels = forward[1]["rpn_labels"][0]
    np.testing.assert_array_equal(labels, npz["img0_rpn_gt_labels"])
    assert (labels == 1).sum() == npz["rpn_num_pos_anchors"]
    assert (labels == 0).sum() == npz["rpn_num_neg_anchors"]


def _match(ours, theirs):
    """Index into `ours` of the best-IoU box for each of `theirs`, and that IoU."""
    iou = np.asarray(box_ops.pairwise_iou(jnp.asarray(theirs), jnp.asarray(ours)))
    return iou.argmax(1), iou.max(1)


def test_training_proposals(forward, npz):
    props = forward[1]["proposals"]
    ours = props.boxes[0][props.valid[0]][:1000]
    _, iou = _match(ours, npz["img0_train_proposal_boxes"])
    # The RPN NMS has a decision within 6e-6 of its threshold (README "Decision margins"):
    # allow a proposal or two to differ.
    assert (iou > 0.99).sum() >= 998


def test_roi_labels_classes_and_fg_set(forward, npz):
    rois = forward[1]["rois"]
    valid = rois.valid[0]
    assert valid.sum() == npz["roi_num_sampled"]
    fg = valid & (rois.gt_classes[0] < K)
    assert fg.sum() == npz["roi_num_fg"]
    assert fg[: fg.sum()].all()  # foreground first
    idx, iou = _match(rois.proposal_boxes[0][valid], npz["img0_roi_boxes"])
    ok = iou > 0.99
    assert ok.sum() >= 1017
    np.testing.assert_array_equal(
        rois.gt_classes[0][valid][idx[ok]], npz["img0_roi_gt_classes"][ok]
    )
    matched_label = (rois.gt_classes[0][valid] < K).astype(np.int32)
    np.testing.assert_array_equal(matched_label[idx[ok]], npz["img0_roi_matched_labels"][ok])
    fg_ok = ok & (npz["img0_roi_matched_labels"] == 1)
    np.testing.assert_array_equal(
        rois.gt_index[0][valid][idx[fg_ok]], npz["img0_roi_matched_idxs"][fg_ok]
    )


def _fg_pairs(forward, npz):
    """(our fg slot, fixture fg row) pairs of identical ROI boxes."""
    rois = forward[1]["rois"]
    num_fg = int(npz["roi_num_fg"])
    theirs = npz["img0_roi_boxes"][npz["img0_roi_fg_idx"]]
    idx, iou = _match(rois.proposal_boxes[0][:num_fg], theirs)
    ok = iou > 0.999
    assert ok.sum() >= num_fg - 2
    return idx[ok], np.flatnonzero(ok)


def test_mask_targets_full_image_exact(forward, npz):
    ours, theirs = _fg_pairs(forward, npz)
    got = forward[1]["mask_targets"][0][ours]
    want = npz["img0_mask_targets"][theirs]
    # Identical boxes and masks: exact up to float ties at exactly 0.5.
    assert (got != want).sum() <= 5


def test_box_relative_masks_loss_close(forward, npz, setup):
    """Representation (a): u8 box-relative gt masks as `make_train_example` stores them.

    Resampling the gt mask at M = 112 moves target pixels on mask boundaries (measured 0.16 %),
    so loss_mask agrees with Detectron2 only loosely (measured 0.7 %; allowed 1.5 %).
    """
    cfg = setup[0]
    gt_boxes, gt_full = npz["img0_gt_boxes"], npz["img0_gt_masks"]
    m = int(cfg.input.gt_mask_size)
    soft = np.stack(
        [
            np.rint(255 * T.roi_align_mask(mk, box, m))
            for mk, box in zip(gt_full, gt_boxes, strict=True)
        ]
    ).astype(np.uint8)
    aux = forward[1]
    rois = aux["rois"]
    num_fg = aux["mask_logits"].shape[1]
    fg_valid = rois.valid[:, :num_fg] & (rois.gt_classes[:, :num_fg] < K)
    approx = targets.mask_targets(
        jnp.asarray(soft)[None],
        jnp.asarray(gt_boxes)[None],
        jnp.asarray(rois.proposal_boxes[:, :num_fg]),
        jnp.asarray(rois.gt_index[:, :num_fg]),
        jnp.asarray(fg_valid),
        28,
        backend="reference",
    )
    flipped = np.mean(np.asarray(approx)[fg_valid] != aux["mask_targets"][fg_valid])
    assert flipped < 0.005
    loss = loss_ops.mask_rcnn_loss(
        jnp.asarray(aux["mask_logits"]),
        jnp.asarray(rois.gt_classes[:, :num_fg]),
        approx,
        jnp.asarray(fg_valid),
    )
    assert _rel(loss, npz["loss_mask"]) < 0.015


@pytest.mark.slow
def test_num_sampled_masks_averages_the_drawn_foreground(forward, setup):
    """`roi_mask_head.num_sampled_masks`: loss_mask is the mean of the per-ROI mask losses of
    the drawn foreground ROIs (the same ROIs, heads and targets as the full run)."""
    cfg, model, variables, batch = setup
    cfg = cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.model.roi_mask_head.num_sampled_masks = 4
    out, aux = jax.jit(lambda v, b, k: rcnn.forward_train(model, v, b, k, config=cfg))(
        variables, batch, jax.random.key(0)
    )
    full = forward[1]
    num_fg = full["mask_logits"].shape[1]
    rois = full["rois"]
    fg_valid = rois.valid[0, :num_fg] & (rois.gt_classes[0, :num_fg] < K)
    assert fg_valid.sum() > 4
    assert aux["mask_logits"].shape[1] == 4
    cls = rois.gt_classes[0, :num_fg]
    full_logits = full["mask_logits"][0][np.arange(num_fg), ..., np.minimum(cls, K - 1)]
    per_roi = np.mean(
        np.logaddexp(0, full_logits) - full_logits * full["mask_targets"][0], axis=(1, 2)
    )
    drawn = []
    for logits in np.asarray(aux["mask_logits"])[0]:
        dist = np.abs(full["mask_logits"][0] - logits).max(axis=(1, 2, 3))
        dist[~fg_valid] = np.inf
        drawn.append(int(np.argmin(dist)))
        assert dist[drawn[-1]] < 1e-3
    assert len(set(drawn)) == 4
    np.testing.assert_allclose(float(out["loss_mask"]), per_roi[drawn].mean(), rtol=1e-4)
    for name in ("loss_cls", "loss_box_reg", "loss_rpn_cls"):  # the rest is unchanged
        np.testing.assert_allclose(float(out[name]), float(forward[0][name]), rtol=1e-6)


def test_make_batch_from_records_matches_the_mapper(npz):
    cfg = _config()
    coco = json.loads((FIXTURE / "annotations.json").read_text())
    anns = [
        {
            "bbox": a["bbox"],
            "bbox_mode": 1,  # XYWH_ABS
            "category_id": a["category_id"] - 1,
            "segmentation": a["segmentation"],
            "iscrowd": a["iscrowd"],
        }
        for a in coco["annotations"]
    ]
    image = T.read_image(FIXTURE / "image.jpg", "BGR")
    batch = make_batch([{"image": image, "annotations": anns}], cfg, rng=0)
    from_file = make_batch([{"file_name": str(FIXTURE / "image.jpg"), "annotations": anns}], cfg)
    np.testing.assert_array_equal(batch["image"], from_file["image"])
    np.testing.assert_array_equal(batch["image_size"][0], npz["img0_image_size"])
    assert batch["image"].shape == (1, 800, 1088, 3)
    np.testing.assert_array_equal(
        batch["image"][0, :800, :1067], np.load(FIXTURE / "inference.npz")["input_bgr"]
    )
    num_gt = len(npz["img0_gt_classes"])
    assert batch["gt_valid"][0].sum() == num_gt
    np.testing.assert_allclose(batch["gt_boxes"][0, :num_gt], npz["img0_gt_boxes"], atol=1e-3)
    np.testing.assert_array_equal(batch["gt_classes"][0, :num_gt], npz["img0_gt_classes"])
    assert batch["gt_masks"].shape == (1, cfg.input.max_gt, 112, 112)


# Relative L2 error `|ours - ref| / |ref|` of our float32 gradients against training.npz: <= 1e-3
# (measured <= 1.2e-5), except for FLOAT64_ONLY, whose float32 value is only determined to
# ~1e-3 and which test_gradients_match_detectron2_float64 checks in float64 instead:
# Detectron2's own float32 capture of res3.0.conv1 is 1.8e-3 from its float64 one (a sum over
# 10^5 positions with heavy cancellation and ReLUs whose input is ~0); ours is 1.0e-3 / 9.3e-4
# from the float32 capture and 1.5e-6 / 2e-8 from the float64 one.
FLOAT64_ONLY = (
    "grad/backbone.bottom_up.res3.0.conv1.weight",
    "grad_default_rpn_norm/backbone.bottom_up.res3.0.conv1.weight",
)


def _losses_and_gradients(model, variables, batch, cfg):
    """The losses, RPN anchor labels and d(loss)/d(params) as Detectron2 names them.

    Gradients of `total_loss` (RPN / 1e6, as returned) under `grad/` and of
    `total_loss_default_rpn_norm` (RPN / 256) under `grad_default_rpn_norm/`.
    """

    def parts(params):
        out, aux = rcnn.forward_train(
            model, {**variables, "params": params}, batch, jax.random.key(0), config=cfg
        )
        roi = out["loss_cls"] + out["loss_box_reg"] + out["loss_mask"]
        return jnp.stack([roi, out["loss_rpn_cls"] + out["loss_rpn_loc"]]), (out, aux)

    @jax.jit
    def both(params):
        total, vjp, (out, aux) = jax.vjp(parts, params, has_aux=True)
        weights = jnp.array([[1.0, 1.0], [1.0, 1e6 / 256]], total.dtype)
        return out, aux["rpn_labels"], jax.vmap(vjp)(weights)[0]

    losses, labels, g = jax.device_get(both(variables["params"]))
    grads = {}
    for i, prefix in enumerate(("grad/", "grad_default_rpn_norm/")):
        gi = jax.tree.map(lambda a, i=i: np.asarray(a[i]), g)
        grads[prefix] = d2.convert_flax_to_detectron2({**variables, "params": gi}, cfg)
    return losses, labels, grads


def _gradient_errors(grads, ref):
    """Relative L2 error of every `grad*` key of the capture `ref`."""
    errors = {}
    for key in ref.files:
        if key.startswith("grad"):
            prefix, name = key.split("/", 1)
            ours, want = grads[prefix + "/"][name], ref[key]
            assert ours.shape == want.shape, key
            errors[key] = float(np.linalg.norm(ours - want) / np.linalg.norm(want))
    assert set(FLOAT64_ONLY) <= set(errors)
    return errors


@pytest.fixture(scope="module")
def gradients(setup):
    cfg, model, variables, batch = setup
    return _losses_and_gradients(model, variables, batch, cfg)[2]


@pytest.mark.slow
def test_gradients_match_detectron2(gradients, npz):
    errors = _gradient_errors(gradients, npz)
    bad = {k: v for k, v in errors.items() if k not in FLOAT64_ONLY and v > 1e-3}
    assert not bad, bad


@pytest.fixture(scope="module")
def npz_f64():
    return np.load(FIXTURE / "training_f64.npz")


@pytest.fixture(scope="module")
def float64_run(setup, npz_f64):
    """Our losses, RPN labels and gradients computed in float64 (x64 only inside this fixture).

    Inputs as in `training_f64.npz`: the same image, gt boxes as float64 (widened float32), so
    the anchor IoUs are float64 and the RPN labels are the float64 capture's (in float32, 6
    anchors tie with gt 14's best IoU and become positive: README "A float32 tie").
    """
    cfg, _, variables, batch = setup
    batch = {**batch, "gt_boxes": npz_f64["img0_gt_boxes"][None]}
    with jax.enable_x64(True):
        model = modeling.build_model(cfg, train=True, dtype=jnp.float64)
        variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
        return _losses_and_gradients(model, variables, batch, cfg)


@pytest.mark.slow
def test_gradients_match_detectron2_float64(float64_run, npz_f64):
    """Float64 against Detectron2's float64 capture: every gradient, FLOAT64_ONLY included.

    Measured: every gradient <= 4e-6 (FLOAT64_ONLY <= 1.5e-6), losses <= 8e-7. What
    is left is float32 on both sides of the port boundary: our anchors and pooled ROI boxes
    are float32-rounded (Detectron2's float64 anchors are exact), the mask targets are cropped
    from float32 bitmasks.
    """
    losses, labels, grads = float64_run
    assert {str(v.dtype) for v in losses.values()} == {"float64"}  # no float32 left on the way
    np.testing.assert_array_equal(labels[0], npz_f64["img0_rpn_gt_labels"])
    for name in LOSS_NAMES:
        assert _rel(losses[name], npz_f64[name]) < 1e-6, name
    errors = _gradient_errors(grads, npz_f64)
    bad = {k: v for k, v in errors.items() if v > 1e-5}
    assert not bad, bad


@pytest.mark.slow
def test_public_losses_with_default_sampling():
    """`jax_rcnn.training.losses` on a `make_batch` batch (box-relative masks, 256/512)."""
    cfg = _config(batch_size_per_image=None)
    variables = d2.load_weights(FIXTURE / "model_final.pkl", cfg, modeling.abstract_variables(cfg))
    coco = json.loads((FIXTURE / "annotations.json").read_text())
    anns = [{**a, "bbox_mode": 1, "category_id": a["category_id"] - 1} for a in coco["annotations"]]
    batch = make_batch(
        [{"image": T.read_image(FIXTURE / "image.jpg", "BGR"), "annotations": anns}], cfg, rng=0
    )
    fn = jax.jit(lambda v, b, k: training_losses(cfg, v, b, k))
    out = fn(
        variables,
        {
            k: batch[k]
            for k in ("image", "image_size", "gt_boxes", "gt_classes", "gt_valid", "gt_masks")
        },
        jax.random.key(1),
    )
    assert set(out) == set(LOSS_NAMES)
    assert all(np.isfinite(float(v)) for v in out.values())
    # A trained model: every loss is small; mask loss close to the fixture's full-sample value.
    assert float(out["loss_mask"]) < 0.4 and float(out["loss_cls"]) < 0.2
