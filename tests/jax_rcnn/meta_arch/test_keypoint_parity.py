"""Keypoint R-CNN R50-FPN (`KRCNNConvDeconvUpsampleHead`) against Detectron2 on
`tiny_keypoint_rcnn`.

The fixture is Detectron2's keypoint_rcnn_R_50_FPN_1x with narrow widths (FPN 32, FC 64, keypoint
convs 8 x 32), 1 class (person), 17 keypoints, input 600x800, trained on one photo with
synthetic keypoints (tests/data/tiny_keypoint_rcnn/README.md). The config comes from the
fixture's `cfg.dump()` through `from_detectron2`, the weights from its model-zoo pickle.
Tolerances (issue 18): heatmap logits within 1e-4 of the reference's largest magnitude;
keypoints within 0.05 px for every detection, keypoint scores within 1e-4 relative when decoded
from Detectron2's logits and within 5e-4 end to end (float32 noise, see SCORE_RTOL); the
keypoint loss within 1e-4 relative with the same targets; gradients within 1e-3 relative L2
error per tensor.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import keypoints as kp_ops
from jax_rcnn import modeling
from jax_rcnn.checkpoint import detectron2 as d2
from jax_rcnn.evaluation import COCOEvaluator
from jax_rcnn.meta_arch import common, keypoint_head, rcnn
from tests.jax_rcnn.fixture_parity import (
    DETECTION_CASES,
    assert_close,
    assert_detections,
    gradient_errors,
    padded_input,
    parity_fixtures,
    sample_everything,
)

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "tiny_keypoint_rcnn"


inference_npz, training_npz, setup = parity_fixtures(DATA)


def test_config_from_the_fixture_yaml(setup):
    config = setup[0]
    m = config.model
    assert m.keypoint_on and not m.mask_on
    kh = m.roi_keypoint_head
    assert kh.conv_dims == (32,) * 8 and kh.num_keypoints == 17 and kh.pooler_resolution == 14
    assert kh.normalize_loss_by_visible_keypoints and kh.loss_weight == 1.0
    assert m.roi_heads.num_classes == 1 and m.roi_box_head.smooth_l1_beta == 0.5
    assert config.test.keypoint_oks_sigmas == ()


def test_checkpoint_round_trip_is_exact(setup):
    config, _, variables = setup
    state = d2.load_detectron2_pkl(DATA / "model_final.pkl")
    back = d2.convert_flax_to_detectron2(jax.device_get(variables), config)
    for name in (
        "roi_heads.keypoint_head.score_lowres.weight",
        "roi_heads.keypoint_head.conv_fcn1.weight",
        "roi_heads.keypoint_head.conv_fcn8.bias",
    ):
        np.testing.assert_array_equal(back[name], state[name])
    assert back["roi_heads.keypoint_head.score_lowres.weight"].shape == (32, 17, 4, 4)
    assert set(back) == {k for k in state if not d2._IGNORED.search(k)}


@pytest.fixture(scope="module")
def detections(setup, inference_npz):
    config, model, variables = setup
    images, sizes = padded_input(inference_npz)
    originals = jnp.asarray(inference_npz["original_sizes"])
    run = jax.jit(lambda v, x, s, o: rcnn.inference(model, v, x, s, o, config=config))
    return jax.device_get(run(variables, images, sizes, originals))


@pytest.mark.parametrize(**DETECTION_CASES)
def test_detections(detections, inference_npz, ours, theirs):
    assert_detections(detections, inference_npz, ours, theirs)


def test_heatmap_logits(detections, inference_npz):
    """The head's 56x56 logits on our final detections (first 8 stored)."""
    want = inference_npz["img0_kp_heatmap_logits_first8"]
    assert_close(detections["keypoint_heatmaps"][0][: len(want)], want)


# End-to-end keypoint scores: 5e-4 relative, not the 1e-4. The score is
# 1 / sum exp(logit - M), so its relative error is the absolute error of the logits, and these
# logits reach |179|: float32 decides them only to ~2e-3 absolute. Measured: ours vs Detectron2
# 2.3e-4 (max over the 153 keypoints); our float64 run vs our float32 run 1.8e-4; our float64
# run vs Detectron2 3.0e-4. Decoding alone is exact (`test_decoding_from_the_reference_heatmaps`:
# 3.8e-5 on Detectron2's own logits).
SCORE_RTOL = 5e-4


def test_keypoints_before_postprocess(detections, inference_npz):
    """x, y within 0.05 px, the upsampled logit within 1e-4, the score within SCORE_RTOL."""
    valid = detections["det_valid"][0]
    ours = detections["det_keypoints"][0][valid]
    want = inference_npz["img0_kp_xy_logit_score"]
    np.testing.assert_allclose(ours[..., :2], want[..., :2], atol=0.05)
    np.testing.assert_allclose(ours[..., 2], want[..., 2], rtol=1e-4)
    np.testing.assert_allclose(ours[..., 3], want[..., 3], rtol=SCORE_RTOL)


def test_final_keypoints(detections, inference_npz):
    """After `detector_postprocess` (scaled to the original image, not clipped)."""
    valid = detections["valid"][0]
    ours = detections["keypoints"][0][valid]
    want = inference_npz["img0_final_keypoints"]
    np.testing.assert_allclose(ours[..., :2], want[..., :2], atol=0.05)
    np.testing.assert_allclose(ours[..., 2], want[..., 2], rtol=SCORE_RTOL)


def test_keypoint_and_box_ap_equal_those_of_detectron2_outputs(detections, inference_npz):
    """Our results JSON and one built from Detectron2's final instances give the same
    pycocotools keypoint and box AP on the fixture's annotations (within 1e-4). The fixture
    records no evaluator output, so Detectron2's outputs go through our writer; the writer's
    -0.5 is checked separately (tests/jax_rcnn/evaluation/test_keypoint_evaluation.py)."""
    gt = str(DATA / "annotations.json")
    tasks = ("bbox", "keypoints")

    def ap(boxes, scores, kps):
        evaluator = COCOEvaluator(gt, output_dir=None, tasks=tasks)
        valid = np.ones((1, len(scores)), bool)
        evaluator.process(
            np.array([1]), boxes[None], scores[None], np.zeros((1, len(scores)), np.int32),
            valid, keypoints=kps[None],
        )  # fmt: skip
        return evaluator.evaluate()

    valid = detections["valid"][0]
    ours = ap(detections["boxes"][0][valid], detections["scores"][0][valid],
              detections["keypoints"][0][valid])  # fmt: skip
    theirs = ap(inference_npz["img0_final_boxes"], inference_npz["img0_final_scores"],
                inference_npz["img0_final_keypoints"])  # fmt: skip
    print({t: (ours[t]["AP"], theirs[t]["AP"]) for t in tasks})
    for t in tasks:
        for name in ("AP", "AP50", "AP75"):
            assert ours[t][name] == pytest.approx(theirs[t][name], abs=1e-4)


def test_decoding_from_the_reference_heatmaps(inference_npz):
    """`heatmaps_to_keypoints` alone on Detectron2's logits and boxes (bucketed bicubic)."""
    maps = inference_npz["img0_kp_heatmap_logits_first8"]
    boxes = inference_npz["img0_det_boxes"][: len(maps)]
    ours = kp_ops.heatmaps_to_keypoints(
        jnp.asarray(maps), jnp.asarray(boxes), jnp.ones(len(maps), bool), 832
    )
    want = inference_npz["img0_kp_xy_logit_score"][: len(maps)]
    np.testing.assert_allclose(ours[..., :2], want[..., :2], atol=1e-3)
    np.testing.assert_allclose(ours[..., 2:], want[..., 2:], rtol=1e-4)  # measured 3.8e-5


def test_cubic_weights_match_jax_cubic_pytorch():
    """Our per-ROI bicubic matrices equal `jax.image.resize(..., "cubic-pytorch")` (static)."""
    x = jax.random.normal(jax.random.key(0), (56, 56))
    for h, w in ((23, 91), (56, 56), (130, 7)):
        ours = kp_ops._cubic_weights(jnp.asarray(h), 256, 56)[:h] @ x
        ours = ours @ kp_ops._cubic_weights(jnp.asarray(w), 256, 56)[:w].T
        want = jax.image.resize(x, (h, w), "cubic-pytorch", antialias=False)
        np.testing.assert_allclose(ours, want, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# Training: BATCH_SIZE_PER_IMAGE = 1e6 for the RPN and the ROI heads (nothing subsampled).


def _training_batch(npz, inference):
    image, _ = padded_input(inference)
    num_gt = len(npz["img0_gt_classes"])
    return {
        "image": np.asarray(image),
        "image_size": npz["img0_image_size"][None].astype(np.int32),
        "gt_boxes": npz["img0_gt_boxes"][None],
        "gt_classes": npz["img0_gt_classes"][None],
        "gt_valid": np.ones((1, num_gt), bool),
        "gt_keypoints": npz["img0_gt_keypoints"][None],
    }


@pytest.fixture(scope="module")
def train_setup(setup, training_npz, inference_npz):
    return sample_everything(setup, _training_batch(training_npz, inference_npz))


@pytest.fixture(scope="module")
def training(train_setup):
    config, model, variables, batch = train_setup
    fn = jax.jit(lambda v, b: rcnn.forward_train(model, v, b, jax.random.key(0), config=config))
    return jax.device_get(fn(variables, batch))


LOSSES = ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_keypoint"]


def test_loss_names(training):
    assert sorted(training[0]) == sorted(LOSSES)


@pytest.mark.parametrize("name", LOSSES)
def test_losses(training, training_npz, name):
    assert float(training[0][name]) == pytest.approx(float(training_npz[name]), rel=1e-4)


def test_keypoint_rois_and_targets(training, training_npz):
    """The keypoint training ROIs (fg with a visible keypoint in the box), their targets."""
    aux = training[1]
    sel = aux["keypoint_roi_valid"][0]
    assert sel.sum() == int(training_npz["kp_num_rois"])
    assert aux["keypoint_target_valid"].sum() == int(training_npz["kp_num_valid"])
    boxes = aux["keypoint_rois"].proposal_boxes[0][sel]
    theirs = training_npz["img0_kp_roi_boxes"]
    dist = np.abs(theirs[:, None] - boxes[None]).max(axis=-1)
    match = dist.argmin(axis=1)
    assert dist.min(axis=1).max() < 0.01
    assert len(set(match.tolist())) == len(theirs)
    index = aux["keypoint_target_index"][0][sel][match]
    valid = aux["keypoint_target_valid"][0][sel][match]
    np.testing.assert_array_equal(valid, training_npz["img0_kp_target_valid"])
    np.testing.assert_array_equal(index[valid], training_npz["img0_kp_target_index"][valid])
    want = training_npz["img0_kp_heatmap_logits_first4"]
    logits = np.moveaxis(aux["keypoint_logits"][0][sel][match[: len(want)]], -1, -3)
    assert_close(logits, want)


def test_keypoint_loss_with_the_reference_targets(training_npz):
    """`keypoint_ce_sum` on Detectron2's logits and targets (first 4 ROIs)."""
    logits = training_npz["img0_kp_heatmap_logits_first4"]
    n = len(logits)
    index = training_npz["img0_kp_target_index"][:n]
    valid = training_npz["img0_kp_target_valid"][:n]
    flat = logits.reshape(n, 17, -1).astype(np.float64)
    top = flat.max(-1, keepdims=True)
    logz = np.log(np.exp(flat - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(flat, index[..., None], -1)[..., 0]
    want = np.where(valid, logz - picked, 0).sum()
    ours = kp_ops.keypoint_ce_sum(jnp.asarray(np.moveaxis(logits, 1, -1)), index, valid)
    assert float(ours) == pytest.approx(want, rel=1e-5)


def test_keypoint_stage_on_no_visible_keypoint(setup):
    """No visible keypoint anywhere: loss 0, finite (Detectron2's `0 * logits.sum()`)."""
    config, _, variables = setup
    model = modeling.build_model(config, train=True)
    feats = {f"p{k}": jnp.zeros((1, 64 // 2**k, 64 // 2**k, 32), jnp.float32) for k in range(2, 7)}
    rois = rcnn.roi_heads.targets.ROITargets(
        proposal_boxes=jnp.asarray([[[0.0, 0, 10, 10]] * 4]),
        gt_classes=jnp.zeros((1, 4), jnp.int32),
        gt_boxes=jnp.asarray([[[0.0, 0, 10, 10]] * 4]),
        gt_index=jnp.zeros((1, 4), jnp.int32),
        valid=jnp.ones((1, 4), bool),
        index=jnp.zeros((1, 4), jnp.int32),
    )
    gt = {"gt_keypoints": jnp.zeros((1, 1, 17, 3))}
    nets = common.Networks(model, variables)
    losses, aux = keypoint_head.keypoint_losses(config, nets, feats, rois, gt, "reference")
    assert float(losses["loss_keypoint"]) == 0.0
    assert not aux["keypoint_roi_valid"].any()


# Relative L2 error `|ours - ref| / |ref|` allowed per gradient (1e-3). Measured: <= 9.1e-5.
GRAD_RTOL = 1e-3
# Gradients that are exactly 0 in real arithmetic, compared by norm instead: the score_lowres
# bias adds a constant to every logit of a keypoint map (the bilinear x2 keeps constants), and
# a softmax cross-entropy does not change under a constant shift. Detectron2's value is
# float32 rounding (norm 2.3e-9 against 2.8 for the weight's gradient), as is ours.
ZERO_GRADS = {"grad/roi_heads.keypoint_head.score_lowres.bias": 1e-7}


@pytest.mark.slow
def test_gradients(train_setup, training_npz):
    errors = gradient_errors(rcnn.forward_train, train_setup, training_npz, ZERO_GRADS)
    assert len(errors) == 11
    bad = {k: v for k, v in errors.items() if v > ZERO_GRADS.get(k, GRAD_RTOL)}
    assert not bad, bad
