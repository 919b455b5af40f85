"""Cascade R-CNN beyond the fixture: the gradient scale, relabelling by hand, 2 and 4 stages on
the smoke config, and the Predictor / export / train.py paths on the cascade fixture."""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import export, modeling, targets
from jax_rcnn.config import from_detectron2, load_config, validate
from jax_rcnn.data.transforms import read_image
from jax_rcnn.meta_arch import cascade_roi_heads, rcnn
from jax_rcnn.predictor import Predictor

ROOT = pathlib.Path(__file__).resolve().parents[3]
CASCADE = ROOT / "tests" / "data" / "tiny_cascade_maskrcnn"
PHOTO = ROOT / "tests" / "data" / "tiny_maskrcnn" / "image.jpg"  # byte-identical to the fixture's


def test_scale_gradient_is_identity_forward_and_scales_backward():
    x = jnp.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(cascade_roi_heads.scale_gradient(x, 1 / 3), x)
    g = jax.grad(lambda x: jnp.sum(cascade_roi_heads.scale_gradient(x, 1 / 3) * x))(x)
    # d/dx [s(x) * x] = x (through s, scaled by 1/3) + s(x) (the plain factor)
    np.testing.assert_allclose(g, x / 3 + x, rtol=1e-6)


def test_label_boxes_worked_example():
    """gt [0,0,10,10] class 2; boxes with IoU 1, 0.6, 0.5 at threshold 0.6 -> 2, 2, K; an
    invalid box is background whatever its IoU; no gt -> every box background, gt box 0."""
    boxes = jnp.array([[0, 0, 10, 10], [0, 0, 10, 16.66], [0, 0, 10, 20], [0, 0, 10, 10.0]])
    valid = jnp.array([True, True, True, False])
    gt = jnp.array([[0, 0, 10, 10.0], [50, 50, 60, 60]])
    out = cascade_roi_heads.label_boxes(
        boxes, valid, gt, jnp.array([2, 1]), jnp.array([True, False]),
        iou_threshold=0.6, num_classes=4,
    )  # fmt: skip
    np.testing.assert_array_equal(out.gt_classes, [2, 2, 4, 4])
    np.testing.assert_array_equal(out.valid, valid)
    np.testing.assert_array_equal(out.gt_boxes[:3], np.tile([0, 0, 10, 10.0], (3, 1)))
    none = cascade_roi_heads.label_boxes(
        boxes, valid, gt, jnp.array([2, 1]), jnp.array([False, False]),
        iou_threshold=0.6, num_classes=4,
    )  # fmt: skip
    np.testing.assert_array_equal(none.gt_classes, [4, 4, 4, 4])
    np.testing.assert_array_equal(none.gt_boxes, 0.0)


def test_next_boxes_are_clipped_and_detached():
    decoded = jnp.array([[[-5.0, 3, 900, 700], [10, 10, 20, 20]]])
    sizes = jnp.array([[600, 800]])
    out = cascade_roi_heads.next_boxes(decoded, sizes)
    np.testing.assert_array_equal(out[0, 0], [0, 3, 800, 600])
    g = jax.grad(lambda d: jnp.sum(cascade_roi_heads.next_boxes(d, sizes)))(decoded)
    np.testing.assert_array_equal(g, 0.0)


def _cascade_smoke(num_stages):
    config = load_config("configs/cascade_mask_rcnn_R_50_FPN_1x.py:smoke")
    with config.unlocked():
        ious = (0.5, 0.6, 0.7, 0.75)[:num_stages]
        config.model.roi_box_cascade_head.ious = ious
        config.model.roi_box_cascade_head.bbox_reg_weights = tuple(
            (10.0 * (k + 1), 10.0 * (k + 1), 5.0 * (k + 1), 5.0 * (k + 1)) for k in range(len(ious))
        )
    validate(config)
    return config


@pytest.mark.parametrize("num_stages", [2, 4])
def test_parameter_names_follow_the_stage_count(num_stages):
    config = _cascade_smoke(num_stages)
    params = modeling.abstract_variables(config)["params"]["roi_heads"]
    assert sorted(params) == sorted(
        [f"box_head_{k}" for k in range(num_stages)]
        + [f"box_predictor_{k}" for k in range(num_stages)]
        + ["mask_head"]
    )
    assert params[f"box_predictor_{num_stages - 1}"]["bbox_pred"]["kernel"].shape == (32, 4)


@pytest.mark.slow  # ~70 s each on the shared 2-core CPU: two compiles of a whole model
@pytest.mark.parametrize("num_stages", [2, 4])
def test_smoke_config_trains_and_infers(num_stages):
    config = _cascade_smoke(num_stages)
    model = modeling.build_model(config)
    variables = modeling.init_variables(model, jax.random.key(0))
    images = jax.random.randint(jax.random.key(1), (2, 128, 160, 3), 0, 255).astype(jnp.uint8)
    sizes = jnp.array([[128, 160], [100, 131]], jnp.int32)
    out = jax.jit(lambda v, x, s: rcnn.inference(model, v, x, s, s, config=config))(
        variables, images, sizes
    )
    d = config.test.detections_per_image
    assert out["boxes"].shape == (2, d, 4) and out["mask_probs"].shape == (2, d, 28, 28)
    g = 4
    batch = dict(
        image=images,
        image_size=sizes,
        gt_boxes=jnp.tile(jnp.array([[10.0, 12, 60, 70], [30, 20, 90, 95]]), (2, 2, 1)),
        gt_classes=jnp.zeros((2, g), jnp.int32),
        gt_valid=jnp.array([[True, True, False, False]] * 2),
        gt_masks=jnp.ones((2, g, 32, 32), jnp.uint8) * 255,
    )
    train_model = modeling.build_model(config, train=True)
    params = variables["params"]

    def total(p):
        losses, aux = rcnn.forward_train(
            train_model, {**variables, "params": p}, batch, jax.random.key(2), config=config
        )
        return sum(losses.values()), (losses, aux)

    grads, (losses, aux) = jax.jit(jax.grad(total, has_aux=True))(params)
    stage_keys = {f"loss_{n}_stage{k}" for k in range(num_stages) for n in ("cls", "box_reg")}
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_mask"} | stage_keys
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert len(aux["stage_rois"]) == num_stages
    # every stage's head is trained
    last = grads["roi_heads"][f"box_predictor_{num_stages - 1}"]["cls_score"]["kernel"]
    assert float(jnp.abs(last).sum()) > 0


@pytest.mark.slow  # ~30 s; the stages are checked by test_cascade_parity
def test_predictor_on_the_cascade_fixture_matches_detectron2():
    predictor = Predictor(
        from_detectron2(CASCADE / "config.yaml"), weights=CASCADE / "model_final.pkl"
    )
    want = np.load(CASCADE / "inference.npz")
    out = predictor(read_image(PHOTO, "BGR"))
    assert len(out["scores"]) == len(want["img0_final_scores"])
    np.testing.assert_allclose(out["boxes"], want["img0_final_boxes"], atol=0.05)
    np.testing.assert_allclose(out["scores"], want["img0_final_scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out["classes"], want["img0_final_classes"])
    inter = (out["masks"] & want["img0_final_masks"]).sum((1, 2))
    union = (out["masks"] | want["img0_final_masks"]).sum((1, 2))
    assert np.where(union == 0, 1.0, inter / np.maximum(union, 1)).min() >= 0.99


@pytest.mark.slow
def test_cascade_export_artifact_and_detectron2_round_trip(tmp_path):
    """`jax_rcnn.export` on Cascade: the `.pkl` export is the fixture's checkpoint bit for bit,
    the `jax.export` artifact reproduces Detectron2's detections."""
    args = ["--config", str(CASCADE / "config.yaml"), "--weights", str(CASCADE / "model_final.pkl")]
    assert export.main([*args, "--out", str(tmp_path / "d2"), "--format", "detectron2"]) == 0
    with open(tmp_path / "d2" / export.D2_CHECKPOINT, "rb") as f:
        got = pickle.load(f)["model"]
    with open(CASCADE / "model_final.pkl", "rb") as f:
        ref = pickle.load(f)["model"]
    assert sorted(got) == sorted(ref)
    assert all(np.asarray(got[k]).tobytes() == np.asarray(v).tobytes() for k, v in ref.items())
    assert export.main([*args, "--out", str(tmp_path / "jax"), "--shapes", "608x800"]) == 0
    out = export.load(tmp_path / "jax")(read_image(PHOTO, "BGR"))
    want = np.load(CASCADE / "inference.npz")
    assert len(out["scores"]) == len(want["img0_final_scores"])
    np.testing.assert_allclose(out["boxes"], want["img0_final_boxes"], atol=0.05)
    np.testing.assert_array_equal(out["classes"], want["img0_final_classes"])


@pytest.mark.slow
def test_train_py_two_steps_on_cascade(tmp_path):
    """`train.py` on `configs/cascade_mask_rcnn_R_50_FPN_1x.py:smoke`: two steps in one padded
    bucket compile one train-step program (the stage loop is unrolled, static), evaluation."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config=configs/cascade_mask_rcnn_R_50_FPN_1x.py:smoke",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.shapes.num_train=8",
        "--config.data.shapes.num_val=4",
        "--config.solver.base_lr=0.0001",
        "--config.solver.max_iter=2",
        "--config.solver.steps=(1,)",
        "--config.test.eval_period=2",
        "--config.input.auto_buckets=True",
        "--config.input.max_buckets=1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(tmp_path / "w", "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert "loss_cls_stage2" in metrics[1] and "loss_mask" in metrics[1]
    assert metrics[1]["train_step_programs"] == 1
    assert {"bbox/AP", "segm/AP"} <= set(metrics[-1])


class _ShiftFirstRoi:
    """Stand-in for the bound networks: zero logits; deltas that move ROI 0 far to the right
    (dx = 1000 / weight 10 = 100 widths), so its refined box clips to zero width."""

    def __init__(self, num_classes):
        self.num_classes = num_classes

    def box_head(self, pooled, stage):
        b, r = pooled.shape[:2]
        deltas = jnp.zeros((b, r, 4)).at[:, 0, 0].set(1000.0)
        return jnp.zeros((b, r, self.num_classes + 1)), deltas


def test_empty_refined_boxes_are_invalid_in_later_stages_and_padding_stays_out():
    """Detectron2 drops empty boxes before the next stage (training only); here the slot stays
    with `valid` False, and the padded ROI slots never become valid."""
    config = load_config("configs/cascade_mask_rcnn_R_50_FPN_1x.py:smoke")
    with config.unlocked():
        config.model.mask_on = False
        config.model.kernels = "reference"
    k = config.model.roi_heads.num_classes
    feats = {f"p{i}": jnp.ones((1, 128 // 2**i, 160 // 2**i, 16)) for i in range(2, 6)}
    boxes = jnp.array([[[10.0, 10, 50, 50], [20, 20, 60, 70], [30, 30, 90, 90], [0, 0, 0, 0]]])
    rois = targets.ROITargets(
        proposal_boxes=boxes,
        gt_classes=jnp.array([[0, 1, k, k]]),
        gt_boxes=jnp.tile(jnp.array([10.0, 10, 50, 50]), (1, 4, 1)),
        gt_index=jnp.zeros((1, 4), jnp.int32),
        valid=jnp.array([[True, True, True, False]]),
        index=jnp.arange(4)[None],
    )
    gt = dict(
        image_size=jnp.array([[128, 160]]),
        gt_boxes=jnp.array([[[10.0, 10, 50, 50], [20, 20, 60, 70]]]),
        gt_classes=jnp.array([[0, 1]]),
        gt_valid=jnp.array([[True, True]]),
    )
    losses, aux = cascade_roi_heads.losses(
        config, _ShiftFirstRoi(k), feats, rois, gt, jax.random.key(0), "reference"
    )
    for stage in (1, 2):
        later = aux["stage_rois"][stage]
        np.testing.assert_array_equal(later.valid[0], [False, True, True, False])
        assert later.gt_classes[0, 0] == k  # never foreground
        np.testing.assert_array_equal(later.proposal_boxes[0, 0], 0.0)
    np.testing.assert_array_equal(aux["stage_rois"][1].gt_classes[0, 1:3], [1, k])
    for name, value in losses.items():
        assert np.isfinite(float(value)), name
    # zero logits: every valid ROI's CE is log(K + 1), the mean over the valid ones the same
    np.testing.assert_allclose(float(losses["loss_cls_stage1"]), np.log(k + 1), rtol=1e-6)


def test_quickstart_cascade_variant_changes_only_the_roi_heads():
    from jax_rcnn.config import to_flat_dict

    plain = to_flat_dict(load_config("configs/quickstart.py:smoke"))
    cascade = to_flat_dict(load_config("configs/quickstart.py:cascade_smoke"))
    diff = {k for k in plain.keys() | cascade.keys() if plain.get(k) != cascade.get(k)}
    assert diff == {
        "model.roi_heads.name",
        "model.roi_box_head.cls_agnostic_bbox_reg",
        "model.roi_box_cascade_head.ious",
        "model.roi_box_cascade_head.bbox_reg_weights",
    }
    assert to_flat_dict(load_config("configs/quickstart.py:cascade"))["solver.max_iter"] == 1800
