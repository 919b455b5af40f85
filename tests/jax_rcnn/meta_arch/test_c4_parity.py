"""Mask R-CNN R50-C4 (`Res5ROIHeads`) against Detectron2 on the `tiny_c4_maskrcnn` fixture.

The fixture is Detectron2's mask_rcnn_R_50_C4_1x with narrow widths (res4 128, res5 256
channels) and 4 classes, trained on one photo; FrozenBN of the backbone and of
`roi_heads.res5` calibrated (tests/data/tiny_c4_maskrcnn/README.md). The config comes from the
fixture's `cfg.dump()` through `from_detectron2`, the weights from its model-zoo pickle. The
600x800 input is not padded (C4 has size_divisibility 0).
Tolerances: features, logits and deltas within 1e-4 of the reference's largest magnitude;
proposals >= 99 % within 0.01 px; detections same count and classes, boxes within 0.05 px,
scores within 1e-4; pasted masks IoU >= 0.99; losses within 1e-4 relative; gradients within
1e-3 relative L2 error per tensor (see GRAD_RTOL).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools import mask as mask_util

from jax_rcnn import anchors as anchor_ops
from jax_rcnn import masks
from jax_rcnn.data import transforms as T
from jax_rcnn.meta_arch import common, rcnn, roi_heads, rpn
from tests.jax_rcnn.fixture_parity import (
    DETECTION_CASES,
    assert_close,
    assert_detections,
    gradient_errors,
    parity_fixtures,
    sample_everything,
)

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "tiny_c4_maskrcnn"
K = 4


inference_npz, training_npz, setup = parity_fixtures(DATA)


def _input(npz):
    h, w = (int(v) for v in npz["padded_size"])
    bgr = npz["input_bgr"]
    assert bgr.shape[:2] == (h, w)  # one image: Detectron2 pads nothing
    return jnp.asarray(bgr[None]), jnp.asarray(npz["image_sizes"])


def test_config_from_the_fixture_yaml(setup):
    m = setup[0].model
    assert m.backbone.name == "build_resnet_backbone" and "fpn" not in m
    assert m.roi_heads.name == "Res5ROIHeads"
    assert m.resnets.out_features == ("res4",)
    assert m.rpn.in_features == m.roi_heads.in_features == ("res4",)
    assert (m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test) == (6000, 1000)
    assert (m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train) == (12000, 2000)
    assert m.roi_box_head.pooler_resolution == 14
    assert setup[0].input.size_divisibility == 0


@pytest.fixture(scope="module")
def stages(setup, inference_npz):
    """Backbone, RPN, proposals and the box branch on Detectron2's own proposals."""
    config, model, variables = setup
    images, sizes = _input(inference_npz)
    ref_props = jnp.asarray(inference_npz["img0_proposal_boxes"][None])

    @jax.jit
    def run(variables, images, sizes, ref_props):
        nets = common.Networks(model, variables)
        feats = common.backbone_features(config, nets, images, sizes)
        out = rpn.rpn_head(config, nets, feats)
        props = rpn.select_proposals(config, out, sizes, training=False, backend="reference")
        pooled = roi_heads.pool(config, feats, ref_props, config.model.roi_box_head, "reference")
        res5 = nets.res5_head(pooled)
        cls_logits, box_deltas = nets.box_head(res5)
        return dict(
            res4=feats["res4"],
            rpn=out,
            proposals=props,
            pooled=pooled[0, :4],
            res5=res5[0, :4],
            res5_mean=res5[0].mean(axis=(1, 2)),
            cls_logits=cls_logits[0],
            box_deltas=box_deltas[0],
        )

    return jax.device_get(run(variables, images, sizes, ref_props))


def test_res4_features(stages, inference_npz):
    """No padding to 32: res4 is ceil(600/16) x ceil(800/16) = 38 x 50."""
    assert_close(stages["res4"].transpose(0, 3, 1, 2), inference_npz["res4"])


def test_anchors_fifteen_per_location_size_major(setup, stages, inference_npz):
    ag = setup[0].model.anchor_generator
    cell = anchor_ops.cell_anchors(ag.sizes[0], ag.aspect_ratios[0])
    np.testing.assert_array_equal(cell, inference_npz["cell_anchors_res4"])
    anchors = stages["rpn"].anchors[0]
    assert anchors.shape == (38 * 50 * 15, 4)
    np.testing.assert_allclose(anchors[15 * 51 : 15 * 52], cell + [16, 16, 16, 16])  # (y1, x1)


def test_rpn_logits_and_deltas(stages, inference_npz):
    out = stages["rpn"]
    assert_close(out.logits[0], inference_npz["rpn_objectness_logits_res4"])
    assert_close(out.deltas[0], inference_npz["rpn_anchor_deltas_res4"])


def test_proposals(stages, inference_npz):
    props = stages["proposals"]
    valid = props.valid[0]
    want = inference_npz["img0_proposal_boxes"]
    assert valid.sum() == len(want)
    close = np.all(np.abs(props.boxes[0][valid] - want) <= 0.01, axis=1)
    assert close.mean() >= 0.99
    assert_close(props.logits[0][valid], inference_npz["img0_proposal_objectness_logits"])


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("pooled", "img0_roi_pooled_first4"),
        ("res5", "img0_res5_out_first4"),
        ("res5_mean", "img0_res5_mean"),
        ("cls_logits", "img0_box_cls_logits"),
        ("box_deltas", "img0_box_deltas"),
    ],
)
def test_res5_box_branch(stages, inference_npz, ours, theirs):
    """14x14 pool on res4 -> res5 (14 -> 7) -> mean over 7x7 -> predictor."""
    got = stages[ours]
    if got.ndim == 4:
        got = got.transpose(0, 3, 1, 2)
    assert_close(got, inference_npz[theirs])


@pytest.fixture(scope="module")
def detections(setup, inference_npz):
    config, model, variables = setup
    images, sizes = _input(inference_npz)
    originals = jnp.asarray(inference_npz["original_sizes"])
    run = jax.jit(lambda v, x, s, o: rcnn.inference(model, v, x, s, o, config=config))
    return jax.device_get(run(variables, images, sizes, originals))


@pytest.mark.parametrize(**DETECTION_CASES)
def test_detections(detections, inference_npz, ours, theirs):
    assert_detections(detections, inference_npz, ours, theirs)


def test_mask_logits_from_res5_run_again(detections, inference_npz):
    """14x14 masks: res4 pooled again at the detections, res5 again, deconv, predictor."""
    valid = detections["det_valid"][0]
    probs = detections["mask_probs"][0][valid]
    assert probs.shape[1:] == (14, 14)
    want = 1 / (1 + np.exp(-inference_npz["img0_mask_logits"][:, 0].astype(np.float64)))
    np.testing.assert_allclose(probs, want, atol=1e-4)


def test_pasted_masks(detections, inference_npz):
    valid = detections["valid"][0]
    want = inference_npz["img0_final_masks"]
    pasted = np.asarray(
        masks.paste_masks_in_image(
            jnp.asarray(detections["mask_probs"][0][valid]),
            jnp.asarray(detections["boxes"][0][valid]),
            tuple(int(v) for v in want.shape[1:]),
        )
    )
    inter = (pasted & want).sum(axis=(1, 2))
    union = (pasted | want).sum(axis=(1, 2))
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))  # both empty: equal
    assert iou.min() >= 0.99


# ---------------------------------------------------------------------------------------------
# Training: BATCH_SIZE_PER_IMAGE = 1e6 for the RPN and the ROI heads (nothing subsampled).


def _training_batch(npz, inference):
    coco = json.loads((DATA / "annotations.json").read_text())
    h, w = (int(v) for v in npz["img0_image_size"])
    full = np.stack([mask_util.decode(a["segmentation"]) for a in coco["annotations"]])
    num_gt = len(npz["img0_gt_classes"])
    return {
        "image": inference["input_bgr"][None],
        "image_size": npz["img0_image_size"][None].astype(np.int32),
        "gt_boxes": npz["img0_gt_boxes"][None],
        "gt_classes": npz["img0_gt_classes"][None],
        "gt_valid": np.ones((1, num_gt), bool),
        # Detectron2's bitmask path: RLE decoded, resized with PIL nearest (exact targets).
        "gt_masks": T.resize_masks(full, h, w)[None],
    }


@pytest.fixture(scope="module")
def train_setup(setup, training_npz, inference_npz):
    return sample_everything(setup, _training_batch(training_npz, inference_npz))


@pytest.fixture(scope="module")
def training(train_setup):
    config, model, variables, batch = train_setup
    fn = jax.jit(lambda v, b: rcnn.forward_train(model, v, b, jax.random.key(0), config=config))
    return jax.device_get(fn(variables, batch))


@pytest.mark.parametrize(
    "name", ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"]
)
def test_losses(training, training_npz, name):
    assert float(training[0][name]) == pytest.approx(float(training_npz[name]), rel=1e-4)


def test_rpn_labels_rois_and_mask_targets(training, training_npz):
    aux = training[1]
    np.testing.assert_array_equal(aux["rpn_labels"][0], training_npz["img0_rpn_gt_labels"])
    rois = aux["rois"]
    valid = rois.valid[0]
    fg = valid & (rois.gt_classes[0] < K)
    assert valid.sum() == training_npz["roi_num_sampled"]
    assert fg.sum() == training_npz["roi_num_fg"]
    assert fg[: fg.sum()].all()  # foreground first: the mask branch reads rows [:F]
    # The same fg ROI set (Detectron2 orders it differently), and their 14x14 targets.
    theirs = training_npz["img0_roi_boxes"][training_npz["img0_roi_fg_idx"]]
    ours = rois.proposal_boxes[0][: fg.sum()]
    dist = np.abs(theirs[:, None] - ours[None]).max(axis=-1)
    match = dist.argmin(axis=1)
    assert (dist.min(axis=1) < 1e-3).mean() >= 0.99
    tgt = aux["mask_targets"][0][match]
    assert tgt.shape[1:] == (14, 14)
    assert (tgt != training_npz["img0_mask_targets"]).sum() <= 5  # float ties at 0.5


# Relative L2 error `|ours - ref| / |ref|` allowed per gradient (default 1e-3). The exception is
# float32 noise, not semantics: our own float64 gradient of res3.0.conv1 differs from our
# float32 one by 9.1e-3 (and from Detectron2's float32 capture by 9.2e-3; ours in float32:
# 3.2e-3), so the float32 value of that tensor is only determined to ~1e-2. Measured for the
# others: heads and RPN <= 1.2e-5, res5 <= 7.1e-4, res4.5.conv3 8.5e-4 (float64: 8.5e-4,
# float32 vs float64: 7.5e-4, i.e. float32 noise of the same size).
GRAD_RTOL = {"grad/backbone.res3.0.conv1.weight": 5e-3}


@pytest.mark.slow
def test_gradients(train_setup, training_npz):
    errors = gradient_errors(rcnn.forward_train, train_setup, training_npz)
    assert len(errors) == 15
    bad = {k: v for k, v in errors.items() if v > GRAD_RTOL.get(k, 1e-3)}
    assert not bad, bad
