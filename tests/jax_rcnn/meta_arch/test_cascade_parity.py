"""Cascade Mask R-CNN R50-FPN (`CascadeROIHeads`) against Detectron2 on `tiny_cascade_maskrcnn`.

The fixture is Detectron2's cascade_mask_rcnn_R_50_FPN_1x with narrow widths (FPN 32, FC 64)
and 4 classes, input 600x800, trained on one photo (tests/data/tiny_cascade_maskrcnn/README.md).
The config comes from the fixture's `cfg.dump()` through `from_detectron2`, the weights from
its model-zoo pickle.
Tolerances: each stage's logits and deltas within 1e-4 of the reference's largest magnitude,
run from the stage's stored input boxes (so the stages are compared independently); refined
(decoded) boxes within 0.01 px; detections same count and classes, boxes within 0.05 px,
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

from jax_rcnn import masks
from jax_rcnn.checkpoint import detectron2 as d2
from jax_rcnn.data import transforms as T
from jax_rcnn.meta_arch import cascade_roi_heads, common, rcnn
from tests.jax_rcnn.fixture_parity import (
    DETECTION_CASES,
    assert_close,
    assert_detections,
    gradient_errors,
    padded_input,
    parity_fixtures,
    sample_everything,
)

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "tiny_cascade_maskrcnn"
ANNOTATIONS = DATA.parent / "tiny_maskrcnn" / "annotations.json"  # byte-identical copy
K = 4
STAGES = 3


inference_npz, training_npz, setup = parity_fixtures(DATA)


def test_config_from_the_fixture_yaml(setup):
    m = setup[0].model
    assert m.roi_heads.name == "CascadeROIHeads"
    assert m.roi_box_cascade_head.ious == (0.5, 0.6, 0.7)
    assert m.roi_box_cascade_head.bbox_reg_weights[2] == (30.0, 30.0, 15.0, 15.0)
    assert m.roi_box_head.cls_agnostic_bbox_reg
    assert m.rpn.post_nms_topk_train == 2000


def test_checkpoint_round_trip_is_exact(setup):
    config, _, variables = setup
    state = d2.load_detectron2_pkl(DATA / "model_final.pkl")
    back = d2.convert_flax_to_detectron2(jax.device_get(variables), config)
    for name in ("roi_heads.box_head.2.fc1.weight", "roi_heads.box_predictor.1.bbox_pred.weight"):
        np.testing.assert_array_equal(back[name], state[name])
    assert back["roi_heads.box_predictor.0.bbox_pred.weight"].shape == (4, 64)
    assert set(back) == {k for k in state if not d2._IGNORED.search(k)}


@pytest.fixture(scope="module")
def stages(setup, inference_npz):
    """Each stage run on Detectron2's stored input boxes of that stage."""
    config, model, variables = setup
    images, sizes = padded_input(inference_npz)
    inputs = jnp.stack(
        [jnp.asarray(inference_npz[f"img0_stage{k}_input_boxes"]) for k in range(STAGES)]
    )[:, None]

    @jax.jit
    def run(variables, images, sizes, inputs):
        nets = common.Networks(model, variables)
        feats = common.backbone_features(config, nets, images, sizes)
        outs = [
            cascade_roi_heads.run_stage(config, nets, feats, inputs[k], k, "reference", False)
            for k in range(STAGES)
        ]
        nxt = [cascade_roi_heads.next_boxes(o.decoded, sizes) for o in outs]
        return outs, nxt

    return jax.device_get(run(variables, images, sizes, inputs))


@pytest.mark.parametrize("stage", range(STAGES))
def test_stage_logits_deltas_and_refined_boxes(stages, inference_npz, stage):
    outs, nxt = stages
    out = outs[stage]
    assert_close(out.cls_logits[0], inference_npz[f"img0_stage{stage}_cls_logits"])
    assert_close(out.box_deltas[0], inference_npz[f"img0_stage{stage}_box_deltas"])
    np.testing.assert_allclose(
        out.decoded[0], inference_npz[f"img0_stage{stage}_decoded_boxes"], atol=0.01
    )
    if stage + 1 < STAGES:  # clipped, not filtered: the next stage's input
        np.testing.assert_allclose(
            nxt[stage][0], inference_npz[f"img0_stage{stage + 1}_input_boxes"], atol=0.01
        )


@pytest.fixture(scope="module")
def detections(setup, inference_npz):
    config, model, variables = setup
    images, sizes = padded_input(inference_npz)
    originals = jnp.asarray(inference_npz["original_sizes"])
    run = jax.jit(lambda v, x, s, o: rcnn.inference(model, v, x, s, o, config=config))
    return jax.device_get(run(variables, images, sizes, originals))


def test_proposals(detections, inference_npz):
    valid = detections["proposal_valid"][0]
    want = inference_npz["img0_proposal_boxes"]
    assert valid.sum() == len(want)
    close = np.all(np.abs(detections["proposal_boxes"][0][valid] - want) <= 0.01, axis=1)
    assert close.mean() >= 0.99


@pytest.mark.parametrize(**DETECTION_CASES)
def test_detections(detections, inference_npz, ours, theirs):
    """End to end from the image: our proposals, three stages, mean scores, last boxes."""
    assert_detections(detections, inference_npz, ours, theirs)


def test_mask_logits_on_final_detections(detections, inference_npz):
    valid = detections["det_valid"][0]
    want = 1 / (1 + np.exp(-inference_npz["img0_mask_logits"][:, 0].astype(np.float64)))
    np.testing.assert_allclose(detections["mask_probs"][0][valid], want, atol=1e-4)


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
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    assert iou.min() >= 0.99


# ---------------------------------------------------------------------------------------------
# Training: BATCH_SIZE_PER_IMAGE = 1e6 for the RPN and the ROI heads (nothing subsampled).


def _training_batch(npz, inference):
    coco = json.loads(ANNOTATIONS.read_text())
    h, w = (int(v) for v in npz["img0_image_size"])
    full = np.stack([mask_util.decode(a["segmentation"]) for a in coco["annotations"]])
    num_gt = len(npz["img0_gt_classes"])
    image, _ = padded_input(inference)
    return {
        "image": np.asarray(image),
        "image_size": npz["img0_image_size"][None].astype(np.int32),
        "gt_boxes": npz["img0_gt_boxes"][None],
        "gt_classes": npz["img0_gt_classes"][None],
        "gt_valid": np.ones((1, num_gt), bool),
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


LOSSES = ["loss_rpn_cls", "loss_rpn_loc", "loss_mask"] + [
    f"loss_{n}_stage{k}" for k in range(STAGES) for n in ("cls", "box_reg")
]


def test_loss_names(training):
    assert sorted(training[0]) == sorted(LOSSES)


@pytest.mark.parametrize("name", LOSSES)
def test_losses(training, training_npz, name):
    assert float(training[0][name]) == pytest.approx(float(training_npz[name]), rel=1e-4)


def _same_rows(ours, theirs, atol):
    """Row i of `theirs` matched to its nearest row of `ours` (order differs)."""
    dist = np.abs(theirs[:, None] - ours[None]).max(axis=-1)
    return dist.argmin(axis=1), dist.min(axis=1) < atol


@pytest.mark.parametrize("stage", range(STAGES))
def test_stage_rois_labels_and_counts(training, training_npz, stage):
    """Every stage's ROI set (stage 0: proposals + gt; later: refined, empty ones dropped),
    its labels (IoU 0.5 / 0.6 / 0.7, no sampling) and its predictions."""
    rois = training[1]["stage_rois"][stage]
    out = training[1]["stage_outputs"][stage]
    valid = rois.valid[0]
    assert valid.sum() == training_npz[f"stage{stage}_num_rois"]
    fg = valid & (rois.gt_classes[0] < K)
    assert fg.sum() == training_npz[f"stage{stage}_num_fg"]
    theirs = training_npz[f"img0_stage{stage}_roi_boxes"]
    match, ok = _same_rows(rois.proposal_boxes[0][valid], theirs, 0.01)
    assert ok.mean() >= 0.99
    np.testing.assert_array_equal(
        rois.gt_classes[0][valid][match][ok], training_npz[f"img0_stage{stage}_roi_gt_classes"][ok]
    )
    assert_close(
        out.cls_logits[0][valid][match][ok], training_npz[f"img0_stage{stage}_cls_logits"][ok]
    )
    assert_close(
        out.box_deltas[0][valid][match][ok], training_npz[f"img0_stage{stage}_box_deltas"][ok]
    )


# Relative L2 error `|ours - ref| / |ref|` allowed per gradient (default 1e-3). Measured: heads,
# RPN, FPN and res5 <= 2.4e-4 (mask deconv; the rest <= 5.2e-5); res3.0.conv1 3.1e-3, the
# float32 noise seen on that tensor in every family (C4: our float64 gradient differs from our
# float32 one by 9.1e-3 there, test_c4_parity.py), so its float32 value is only determined to
# ~1e-2.
GRAD_RTOL = {"grad/backbone.bottom_up.res3.0.conv1.weight": 5e-3}


@pytest.mark.slow
def test_gradients(train_setup, training_npz):
    errors = gradient_errors(rcnn.forward_train, train_setup, training_npz)
    assert len(errors) == 17
    bad = {k: v for k, v in errors.items() if v > GRAD_RTOL.get(k, 1e-3)}
    assert not bad, bad
