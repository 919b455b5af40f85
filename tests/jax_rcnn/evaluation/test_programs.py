"""Evaluation's compiled programs (`jax_rcnn.evaluation.programs`).

An R-CNN evaluation compiles the front (backbone, RPN, proposals) per padded shape and the ROI
heads once, on features edge-padded to the largest padded shape of the split: the detections
must be those of the one-program `inference` at the image's own padded shape. Checked on
Detectron2's trained fixtures (real detections, masks, keypoints), the image evaluated inside a
split whose largest shape is larger on both sides.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import masks as mask_ops
from jax_rcnn.evaluation import programs
from jax_rcnn.meta_arch import common, rcnn
from jax_rcnn.training import distributed
from tests.jax_rcnn.fixture_parity import load_fixture

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"


def _padded(npz):
    h, w = (int(v) for v in npz["padded_size"])
    bgr = np.zeros((1, h, w, 3), np.uint8)
    ih, iw = npz["input_bgr"].shape[:2]
    bgr[0, :ih, :iw] = npz["input_bgr"]
    return bgr, np.asarray(npz["image_sizes"], np.int32)


def _check_split_matches_inference(name):
    config, model, variables = load_fixture(DATA / name)
    npz = np.load(DATA / name / "inference.npz")
    image, sizes = _padded(npz)
    h, w = image.shape[1:3]
    mesh = distributed.make_mesh()
    variables = distributed.replicate(mesh, variables)
    # The image's own shape and a larger one: the heads run on a (h + 64, w + 96) canvas.
    infer, num_programs = programs.inference_programs(
        config, model, variables, [(h, w), (h + 64, w + 96)], 1, mesh
    )
    assert num_programs == 3
    split = jax.device_get(infer(variables, image, sizes, sizes))
    whole = jax.device_get(
        jax.jit(lambda v, x, s: rcnn.inference(model, v, x, s, s, config=config))(
            variables, jnp.asarray(image), jnp.asarray(sizes)
        )
    )
    assert "keypoint_heatmaps" not in split
    valid = whole["valid"]
    assert valid.sum() > 0
    np.testing.assert_array_equal(split["valid"], valid)
    np.testing.assert_array_equal(split["classes"][valid], whole["classes"][valid])
    np.testing.assert_allclose(split["boxes"][valid], whole["boxes"][valid], atol=1e-3)
    np.testing.assert_allclose(split["scores"][valid], whole["scores"][valid], atol=1e-5)
    if "mask_probs" in whole:
        np.testing.assert_allclose(
            split["mask_probs"][valid], whole["mask_probs"][valid], atol=1e-4
        )
    if "keypoints" in whole:
        # x, y within 0.01 px; the score (an upsampled heatmap logit, ~1-2) moves by float32
        # rounding through the 8-conv keypoint head (2.4e-4 relative here; the same size as the
        # float32 keypoint-score exception against Detectron2 in docs/parity.md).
        got, want = split["keypoints"][valid], whole["keypoints"][valid]
        np.testing.assert_allclose(got[..., :2], want[..., :2], atol=1e-2)
        np.testing.assert_allclose(got[..., 2], want[..., 2], rtol=1e-3)
    return whole


def test_split_programs_match_inference_mask_rcnn():
    whole = _check_split_matches_inference("tiny_maskrcnn")
    assert "mask_probs" in whole


def test_split_programs_match_inference_keypoint_rcnn():
    whole = _check_split_matches_inference("tiny_keypoint_rcnn")
    assert "keypoints" in whole


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_c4_maskrcnn", "tiny_cascade_maskrcnn"])
def test_split_programs_match_inference_c4_and_cascade(name):
    _check_split_matches_inference(name)


def test_edge_pad_features_repeats_the_last_row_and_column():
    f = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 2, 3, 4)
    out = common.edge_pad_features({"p2": f}, {"p2": (1, 4, 5, 4)})["p2"]
    assert out.shape == (1, 4, 5, 4)
    np.testing.assert_array_equal(out[:, :2, :3], f)
    np.testing.assert_array_equal(out[:, 3, 4], f[:, 1, 2])
    np.testing.assert_array_equal(out[:, 2:, 1], np.repeat(f[:, 1:2, 1], 2, axis=1))
    with pytest.raises(ValueError, match="'p2'.*does not fit"):
        common.edge_pad_features({"p2": f}, {"p2": (1, 1, 5, 4)})


def test_paste_runs_on_the_first_slots_holding_every_valid_detection():
    rng = np.random.default_rng(0)
    b, d, m = 2, 100, 28
    probs = rng.uniform(size=(b, d, m, m)).astype(np.float32)
    xy = rng.uniform(0, 40, (b, d, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 30, (b, d, 2))], -1).astype(np.float32)
    valid = np.zeros((b, d), bool)
    valid[0, :5] = True
    valid[1, :20] = True  # 20 slots: the first 32 are pasted
    mesh = distributed.make_mesh()
    paste = programs.paste_program(mesh)
    got = np.asarray(paste(jnp.asarray(probs), jnp.asarray(boxes), valid, (64, 80)))
    assert got.shape == (b, 32, 64, 80)
    got = programs.pad_slots(got, d)
    assert got.shape == (b, d, 64, 80)
    want = np.asarray(
        jax.vmap(lambda p, x: mask_ops.paste_masks_in_image(p, x, (64, 80)))(probs, boxes)
    )
    np.testing.assert_array_equal(got[:, :32], want[:, :32])
    assert not got[:, 32:].any()
    valid[1, 70] = True  # a valid slot past 64: every slot is pasted
    assert np.asarray(paste(jnp.asarray(probs), jnp.asarray(boxes), valid, (64, 80))).shape[1] == d
