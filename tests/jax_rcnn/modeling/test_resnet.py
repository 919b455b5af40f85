"""ResNet structure (shapes via `jax.eval_shape`, no compilation) and freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import mask_rcnn_R_50_FPN_1x
from jax_rcnn.modeling import layers, resnet


def _shapes(module, x_shape=(1, 64, 64, 3)):
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    out = jax.eval_shape(module.apply, variables, x)
    return variables, {k: v.shape for k, v in out.items()}


def test_r50_widths_strides_and_names():
    variables, out = _shapes(
        resnet.ResNet(depth=50, stem_out_channels=16, res2_out_channels=64, width_per_group=16)
    )
    assert out == {
        "res2": (1, 16, 16, 64),
        "res3": (1, 8, 8, 128),
        "res4": (1, 4, 4, 256),
        "res5": (1, 2, 2, 512),
    }
    params = traverse_util.flatten_dict(variables["params"])
    assert params[("stem", "conv1", "kernel")].shape == (7, 7, 3, 16)
    assert params[("res2_0", "shortcut", "kernel")].shape == (1, 1, 16, 64)
    assert params[("res3_0", "conv2", "kernel")].shape == (3, 3, 32, 32)
    assert ("res2_1", "shortcut", "kernel") not in params  # identity shortcut
    assert max(int(k[0].split("_")[1]) for k in params if k[0].startswith("res4")) == 5
    assert all(k[-1] == "kernel" for k in params)  # convs have no bias with a norm
    assert ("stem", "conv1", "norm", "running_var") in traverse_util.flatten_dict(
        variables[layers.FROZEN]
    )


@pytest.mark.parametrize("depth,blocks", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))])
def test_basic_block_resnets(depth, blocks):
    variables, out = _shapes(resnet.ResNet(depth=depth, res2_out_channels=64))
    assert out["res5"] == (1, 2, 2, 512)
    params = traverse_util.flatten_dict(variables["params"])
    for s, n in zip((2, 3, 4, 5), blocks, strict=True):
        assert (f"res{s}_{n - 1}", "conv2", "kernel") in params
    assert ("res2_0", "conv3", "kernel") not in params
    assert ("res2_0", "shortcut", "kernel") not in params  # 64 -> 64
    assert params[("res3_0", "shortcut", "kernel")].shape == (1, 1, 64, 128)


def test_r18_rejects_bottleneck_options():
    with pytest.raises(ValueError, match="R18/R34"):
        resnet.ResNet(depth=18, res2_out_channels=256)


def test_res5_dilation_keeps_stride_16():
    variables, out = _shapes(
        resnet.ResNet(stem_out_channels=8, res2_out_channels=32, width_per_group=8, res5_dilation=2)
    )
    assert out["res5"] == (1, 4, 4, 256)


def test_resnext_groups():
    variables, _ = _shapes(
        resnet.ResNet(stem_out_channels=8, res2_out_channels=64, width_per_group=4, num_groups=4)
    )
    params = traverse_util.flatten_dict(variables["params"])
    assert params[("res2_0", "conv2", "kernel")].shape == (3, 3, 4, 16)


def test_stride_in_1x1_placement():
    # Same weights, different placement of the stride: same shapes, different outputs.
    m1 = resnet.BottleneckBlock(8, 2, stride=2, stride_in_1x1=True, norm="")
    m3 = resnet.BottleneckBlock(8, 2, stride=2, stride_in_1x1=False, norm="")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    abstract = jax.eval_shape(m1.init, jax.random.key(1), x)
    v = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), abstract)
    y1, y3 = jax.jit(m1.apply)(v, x), jax.jit(m3.apply)(v, x)
    assert y1.shape == y3.shape == (1, 3, 3, 8)
    assert not np.allclose(y1, y3)


def test_out_features_limit_depth():
    _, out = _shapes(
        resnet.ResNet(
            stem_out_channels=8,
            res2_out_channels=32,
            width_per_group=8,
            out_features=("res2", "res3"),
        )
    )
    assert set(out) == {"res2", "res3"}


def test_frozen_param_mask_and_bn_conversion():
    config = mask_rcnn_R_50_FPN_1x.get_config()
    config.model.resnets.norm = "BN"
    config.model.backbone.freeze_at = 2
    prefixes = resnet.frozen_module_prefixes(config)
    assert prefixes[0] == ("backbone", "bottom_up", "stem")
    assert prefixes[-1] == ("backbone", "bottom_up", "res2_2") and len(prefixes) == 4
    module = resnet.build_resnet(config)
    variables, _ = _shapes(module)
    # Detectron2's freeze() turns BN of frozen stages into FrozenBN.
    frozen = traverse_util.flatten_dict(variables[layers.FROZEN])
    assert {k[0] for k in frozen} == {"stem", "res2_0", "res2_1", "res2_2"}
    stats = traverse_util.flatten_dict(variables["batch_stats"])
    assert ("res3_0", "conv1", "norm", "mean") in stats
    params = {"backbone": {"bottom_up": variables["params"]}}
    mask = traverse_util.flatten_dict(resnet.frozen_param_mask(params, config))
    assert mask[("backbone", "bottom_up", "stem", "conv1", "kernel")]
    assert mask[("backbone", "bottom_up", "res2_2", "conv3", "kernel")]
    assert not mask[("backbone", "bottom_up", "res3_0", "conv1", "kernel")]
    assert not mask[("backbone", "bottom_up", "res3_0", "conv1", "norm", "scale")]
    config.model.backbone.freeze_at = 0
    assert resnet.frozen_module_prefixes(config) == ()
