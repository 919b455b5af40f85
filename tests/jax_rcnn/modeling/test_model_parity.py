"""Parity of the whole network with Detectron2 on the `tiny_maskrcnn` fixture (float32, CPU).

The fixture model is Detectron2's mask_rcnn_R_50_FPN_1x with narrow widths (see
tests/data/tiny_maskrcnn/README.md). Its checkpoint is converted with
`jax_rcnn.checkpoint.detectron2`, the photo is normalised, zero-padded bottom/right to the
fixture's padded size, and every stage is compared. Tolerance: 1e-4 of the largest magnitude of
the reference (float32 sums in a different order differ by ~1e-6 here).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import modeling
from jax_rcnn.checkpoint import detectron2 as d2
from tests.jax_rcnn.conftest import TINY_MASKRCNN, tiny_maskrcnn_config

LEVELS = ("p2", "p3", "p4", "p5", "p6")
RTOL = 1e-4


def assert_close(actual, expected):
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def fixture():
    return np.load(TINY_MASKRCNN / "inference.npz")


@pytest.fixture(scope="module")
def model_and_variables():
    config = tiny_maskrcnn_config()
    variables = d2.convert_detectron2_to_flax(
        d2.load_detectron2_pkl(TINY_MASKRCNN / "model_final.pkl"), config
    )
    return config, modeling.build_model(config), jax.device_put(variables)


@pytest.fixture(scope="module")
def outputs(fixture, model_and_variables):
    config, model, variables = model_and_variables
    h, w = (int(v) for v in fixture["padded_size"])
    bgr = fixture["input_bgr"].astype(np.float32)
    mean = np.asarray(config.model.pixel_mean, np.float32)
    std = np.asarray(config.model.pixel_std, np.float32)
    images = np.zeros((1, h, w, 3), np.float32)  # padding after normalisation, with 0
    images[0, : bgr.shape[0], : bgr.shape[1]] = (bgr - mean) / std

    @jax.jit
    def run(variables, images):
        feats = model.apply(variables, images, method=modeling.GeneralizedRCNN.features)
        logits, deltas = model.apply(variables, feats, method=modeling.GeneralizedRCNN.rpn_head)
        return feats, logits, deltas

    return jax.device_get(run(variables, jnp.asarray(images)))


@pytest.mark.parametrize("level", ("p5", "p6"))
def test_whole_fpn_maps(outputs, fixture, level):
    feats = outputs[0]
    assert_close(feats[level].transpose(0, 3, 1, 2), fixture[level])


@pytest.mark.parametrize("level", ("p2", "p3", "p4"))
def test_fpn_crops_and_channel_moments(outputs, fixture, level):
    p = outputs[0][level].transpose(0, 3, 1, 2)
    assert p.shape == tuple(fixture[f"{level}_shape"])
    r, c = (int(v) for v in fixture[f"{level}_crop_br_origin"])
    assert_close(p[:, :, :32, :32], fixture[f"{level}_crop_tl"])
    assert_close(p[:, :, r:, c:], fixture[f"{level}_crop_br"])
    p64 = p.astype(np.float64)
    assert_close(p64.mean((2, 3)), fixture[f"{level}_channel_mean"])
    assert_close((p64**2).mean((2, 3)), fixture[f"{level}_channel_sqmean"])


@pytest.mark.parametrize("i,level", list(enumerate(LEVELS)))
def test_rpn_outputs(outputs, fixture, i, level):
    _, logits, deltas = outputs
    assert_close(logits[i], fixture[f"rpn_objectness_logits_{level}"])
    idx = fixture[f"rpn_topk_idx_{level}"]
    assert_close(
        np.take_along_axis(deltas[i], idx[..., None], axis=1),
        fixture[f"rpn_topk_anchor_deltas_{level}"],
    )
    if f"rpn_anchor_deltas_{level}" in fixture.files:
        assert_close(deltas[i], fixture[f"rpn_anchor_deltas_{level}"])


def test_box_head(fixture, model_and_variables):
    _, model, variables = model_and_variables
    pooled = fixture["img0_box_pooled_first8"].transpose(0, 2, 3, 1)  # NCHW -> NHWC

    @jax.jit
    def run(variables, pooled):
        fc2 = model.apply(variables, pooled, method=lambda m, x: m.roi_heads.box_head(x))
        return fc2, model.apply(variables, pooled, method=modeling.GeneralizedRCNN.box_head)

    fc2, (cls_logits, box_deltas) = run(variables, pooled)
    n = pooled.shape[0]
    assert_close(fc2, fixture["img0_box_head_fc2"][:n])
    assert_close(cls_logits, fixture["img0_box_cls_logits"][:n])
    assert_close(box_deltas, fixture["img0_box_deltas"][:n])


def test_mask_head(fixture, model_and_variables):
    _, model, variables = model_and_variables
    pooled = fixture["img0_mask_pooled_first2"].transpose(0, 2, 3, 1)
    logits = jax.jit(lambda v, x: model.apply(v, x, method=modeling.GeneralizedRCNN.mask_head))(
        variables, pooled
    )
    n = pooled.shape[0]
    assert_close(
        np.asarray(logits).transpose(0, 3, 1, 2), fixture["img0_mask_logits_all_first4"][:n]
    )
