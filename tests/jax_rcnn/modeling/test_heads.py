"""RPN / box / mask heads: output layouts (worked examples) and config variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import mask_rcnn_R_50_FPN_1x
from jax_rcnn import modeling
from jax_rcnn.modeling import heads


def _random_variables(module, *args, seed=0):
    abstract = jax.eval_shape(module.init, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), abstract)


def test_rpn_flatten_order_is_y_x_anchor():
    head = heads.StandardRPNHead(num_anchors=3)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype(np.float32)
    v = _random_variables(head, [x])
    (logits,), (deltas,) = jax.jit(head.apply)(v, [x])
    assert logits.shape == (2, 3 * 5 * 3) and deltas.shape == (2, 3 * 5 * 3, 4)
    # Recompute the 1x1 convs by hand at position (y, x) = (2, 4), anchor a = 1.
    p = v["params"]
    t = (
        jax.lax.conv_general_dilated(
            x,
            p["conv"]["kernel"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + p["conv"]["bias"]
    )
    t = np.maximum(np.asarray(t), 0)[:, 2, 4]
    obj = t @ p["objectness_logits"]["kernel"][0, 0] + p["objectness_logits"]["bias"]
    dl = t @ p["anchor_deltas"]["kernel"][0, 0] + p["anchor_deltas"]["bias"]
    idx = (2 * 5 + 4) * 3 + 1
    np.testing.assert_allclose(logits[:, idx], obj[:, 1], rtol=1e-4, atol=1e-4)
    # Channel a * 4 + k of anchor_deltas is delta k of anchor a.
    np.testing.assert_allclose(deltas[:, idx], dl[:, 4:8], rtol=1e-4, atol=1e-4)


def test_rpn_several_convs_are_named_like_a_sequential():
    head = heads.StandardRPNHead(num_anchors=3, conv_dims=(-1, 8))
    x = jax.ShapeDtypeStruct((1, 4, 4, 6), jnp.float32)
    v = jax.eval_shape(head.init, jax.random.key(0), [x])
    params = traverse_util.flatten_dict(v["params"])
    assert params[("conv", "conv0", "kernel")].shape == (3, 3, 6, 6)
    assert params[("conv", "conv1", "kernel")].shape == (3, 3, 6, 8)
    assert params[("objectness_logits", "kernel")].shape == (1, 1, 8, 3)


def test_box_head_flattens_nhwc_and_accepts_leading_dims():
    head = heads.FastRCNNConvFCHead(num_fc=1, fc_dim=5)
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 7, 4)).astype(np.float32)
    v = _random_variables(head, x)
    y = jax.jit(head.apply)(v, x)
    assert y.shape == (2, 3, 5)
    fc1 = v["params"]["fc1"]
    expected = np.maximum(x.reshape(6, -1) @ fc1["kernel"] + fc1["bias"], 0).reshape(2, 3, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_box_head_with_convs_and_gn():
    head = heads.FastRCNNConvFCHead(num_conv=2, conv_dim=32, num_fc=1, fc_dim=16, norm="GN")
    v = jax.eval_shape(
        head.init, jax.random.key(0), jax.ShapeDtypeStruct((3, 7, 7, 8), jnp.float32)
    )
    params = traverse_util.flatten_dict(v["params"])
    assert ("conv1", "bias") not in params  # bias = not norm
    assert params[("conv2", "norm", "scale")].shape == (32,)
    assert params[("fc1", "kernel")].shape == (7 * 7 * 32, 16)


@pytest.mark.parametrize("agnostic,num_deltas", [(False, 12), (True, 4)])
def test_box_predictor_shapes(agnostic, num_deltas):
    pred = heads.FastRCNNOutputLayers(num_classes=3, cls_agnostic_bbox_reg=agnostic)
    x = jax.ShapeDtypeStruct((5, 16), jnp.float32)
    v = jax.eval_shape(pred.init, jax.random.key(0), x)
    cls, deltas = jax.eval_shape(pred.apply, v, x)
    assert cls.shape == (5, 4) and deltas.shape == (5, num_deltas)


def test_mask_head_shapes_and_names():
    head = heads.MaskRCNNConvUpsampleHead(num_classes=3, num_conv=2, conv_dim=8)
    x = jax.ShapeDtypeStruct((2, 4, 14, 14, 16), jnp.float32)
    v = jax.eval_shape(head.init, jax.random.key(0), x)
    assert jax.eval_shape(head.apply, v, x).shape == (2, 4, 28, 28, 3)
    assert set(v["params"]) == {"mask_fcn1", "mask_fcn2", "deconv", "predictor"}
    assert v["params"]["deconv"]["kernel"].shape == (2, 2, 8, 8)


def test_container_methods():
    config = mask_rcnn_R_50_FPN_1x.get_config("smoke")
    model = modeling.build_model(config)
    abstract = modeling.abstract_variables(config)
    assert set(abstract) == {"params", modeling.FROZEN}
    assert set(abstract["params"]) == {"backbone", "proposal_generator", "roi_heads"}
    c = config.model.fpn.out_channels
    pooled = jax.ShapeDtypeStruct((2, 10, 7, 7, c), jnp.float32)
    cls, deltas = jax.eval_shape(
        lambda v, x: model.apply(v, x, method=modeling.GeneralizedRCNN.box_head), abstract, pooled
    )
    k = config.model.roi_heads.num_classes
    assert cls.shape == (2, 10, k + 1) and deltas.shape == (2, 10, 4 * k)
    masks = jax.eval_shape(
        lambda v, x: model.apply(v, x, method=modeling.GeneralizedRCNN.mask_head),
        abstract,
        jax.ShapeDtypeStruct((3, 14, 14, c), jnp.float32),
    )
    assert masks.shape == (3, 28, 28, k)
    images = jax.ShapeDtypeStruct((1, 128, 160, 3), jnp.float32)
    feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, method=modeling.GeneralizedRCNN.features), abstract, images
    )
    logits, deltas = jax.eval_shape(
        lambda v, f: model.apply(v, f, method=modeling.GeneralizedRCNN.rpn_head), abstract, feats
    )
    assert [x.shape for x in logits] == [
        (1, 32 * 40 * 3),
        (1, 16 * 20 * 3),
        (1, 8 * 10 * 3),
        (1, 4 * 5 * 3),
        (1, 2 * 3 * 3),
    ]
    assert deltas[0].shape == (1, 32 * 40 * 3, 4)


def test_faster_rcnn_has_no_mask_head():
    config = mask_rcnn_R_50_FPN_1x.get_config("smoke")
    config.model.mask_on = False
    abstract = modeling.abstract_variables(config)
    assert "mask_head" not in abstract["params"]["roi_heads"]


def test_head_initialisation_matches_detectron2():
    pred = heads.FastRCNNOutputLayers(num_classes=80)
    v = jax.jit(pred.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 1024)))["params"]
    np.testing.assert_allclose(np.std(v["cls_score"]["kernel"]), 0.01, rtol=0.02)
    np.testing.assert_allclose(np.std(v["bbox_pred"]["kernel"]), 0.001, rtol=0.02)
    assert not np.any(v["cls_score"]["bias"]) and not np.any(v["bbox_pred"]["bias"])
    rpn = heads.StandardRPNHead(num_anchors=3)
    v = jax.jit(rpn.init)(jax.random.key(1, impl="rbg"), [jnp.zeros((1, 4, 4, 64))])["params"]
    np.testing.assert_allclose(np.std(v["conv"]["kernel"]), 0.01, rtol=0.03)
