"""Worked examples for `jax_rcnn.modeling.layers` (norms, convs, deconv, initialisers)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn.modeling import layers


def _torch_conv_transpose(x, w, stride, padding):
    """PyTorch's ConvTranspose2d by definition (scatter form). x [H, W, I], w (I, O, k, k)."""
    h, wd, _ = x.shape
    _, o, k, _ = w.shape
    full = np.zeros(((h - 1) * stride + k, (wd - 1) * stride + k, o), np.float64)
    for i in range(h):
        for j in range(wd):
            full[i * stride : i * stride + k, j * stride : j * stride + k] += np.einsum(
                "c,cokl->klo", x[i, j], w
            )
    return full[padding : full.shape[0] - padding, padding : full.shape[1] - padding]


@pytest.mark.parametrize(
    "k,s,p",
    [(2, 2, 0), (3, 2, 1), (4, 2, 1), (4, 2, 0), (4, 2, 2), (3, 1, 1), (5, 3, 2), (2, 3, 0)],
)
def test_conv_transpose_matches_pytorch_definition(k, s, p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    w_torch = rng.standard_normal((3, 6, k, k)).astype(np.float32)  # (in, out, kh, kw)
    mod = layers.ConvTranspose2d(6, k, s, p, use_bias=False)
    # The checkpoint converter's deconv layout: IOHW -> [kh, kw, in, out], no flip.
    params = {"params": {"kernel": w_torch.transpose(2, 3, 0, 1)}}
    y = np.asarray(mod.apply(params, x[None]))[0]
    np.testing.assert_allclose(y, _torch_conv_transpose(x, w_torch, s, p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,s,p", [(4, 2, 1), (3, 2, 1), (5, 3, 2)])
def test_conv_transpose_gradients_match_dilated_conv(k, s, p):
    """The phase-conv formulation has the gradients of the textbook form: a conv over the
    stride-dilated input with the spatially flipped kernel (`lax.conv_general_dilated`)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 4, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 3, 6)), jnp.float32)
    mod = layers.ConvTranspose2d(6, k, s, p, use_bias=False)

    def ours(x, kernel):
        return mod.apply({"params": {"kernel": kernel}}, x)

    def textbook(x, kernel):
        return jax.lax.conv_general_dilated(
            x,
            kernel[::-1, ::-1],
            window_strides=(1, 1),
            padding=((k - 1 - p, k - 1 - p),) * 2,
            lhs_dilation=(s, s),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    y = ours(x, kernel)
    np.testing.assert_allclose(y, textbook(x, kernel), rtol=1e-5, atol=1e-5)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    got = jax.vjp(ours, x, kernel)[1](dy)
    want = jax.vjp(textbook, x, kernel)[1](dy)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_frozen_bn_folds_statistics():
    mod = layers.FrozenBatchNorm2d()
    x = jnp.arange(6.0).reshape(1, 1, 3, 2)
    frozen = {
        "weight": jnp.array([2.0, 0.5]),
        "bias": jnp.array([1.0, -1.0]),
        "running_mean": jnp.array([1.0, 2.0]),
        "running_var": jnp.array([4.0 - 1e-5, 1.0 - 1e-5]),
    }
    y = mod.apply({layers.FROZEN: frozen}, x)
    # scale = weight / sqrt(var + eps) = (1, 0.5); shift = bias - mean * scale = (0, -2).
    expected = np.arange(6.0).reshape(1, 1, 3, 2) * [1.0, 0.5] + [0.0, -2.0]
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_frozen_bn_defaults_are_identity_like_detectron2():
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 3)).astype(np.float32)
    v = jax.jit(layers.FrozenBatchNorm2d().init)(jax.random.key(0), x)
    assert set(v) == {layers.FROZEN}
    np.testing.assert_allclose(v[layers.FROZEN]["running_var"], 1 - 1e-5)
    np.testing.assert_allclose(jax.jit(layers.FrozenBatchNorm2d().apply)(v, x), x, rtol=1e-6)


@pytest.mark.parametrize(
    "norm,collections",
    [
        ("FrozenBN", {"params": {"kernel"}, "frozen": {"norm"}}),
        ("BN", {"params": {"kernel", "norm"}, "batch_stats": {"norm"}}),
        ("SyncBN", {"params": {"kernel", "norm"}, "batch_stats": {"norm"}}),
        ("GN", {"params": {"kernel", "norm"}}),
        ("", {"params": {"kernel"}}),
    ],
)
def test_conv_norm_variable_layout(norm, collections):
    conv = layers.Conv2d(32, 3, padding=1, use_bias=False, norm=norm)
    v = jax.eval_shape(conv.init, jax.random.key(0), jnp.ones((2, 8, 8, 4)))
    assert {c: set(t) for c, t in v.items()} == collections


def test_bn_train_updates_batch_stats():
    conv = layers.Conv2d(4, 1, norm="BN", train=True)
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    v = jax.jit(conv.init)(jax.random.key(1, impl="rbg"), x)
    y, updates = jax.jit(lambda v, x: conv.apply(v, x, mutable=["batch_stats"]))(v, x)
    np.testing.assert_allclose(np.asarray(y).mean((0, 1, 2)), 0.0, atol=1e-5)
    assert not np.allclose(updates["batch_stats"]["norm"]["mean"], 0.0)


def test_conv_padding_is_symmetric_like_pytorch():
    # 3x3 stride-2 conv on an 8-wide input: PyTorch pads 1 on both sides (output 4), and the
    # first output sees columns -1..1, unlike 'SAME' which pads only on the right here.
    x = jnp.arange(8.0).reshape(1, 1, 8, 1) * jnp.ones((1, 3, 1, 1))
    conv = layers.Conv2d(1, 3, strides=2, padding=1, use_bias=False)
    kernel = jnp.zeros((3, 3, 1, 1)).at[1, 0, 0, 0].set(1.0)  # picks column x - 1
    y = conv.apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_array_equal(np.asarray(y)[0, 1, :, 0], [0.0, 1.0, 3.0, 5.0])


def test_max_pool_pads_with_minus_infinity():
    x = -jnp.ones((1, 4, 4, 1))
    y = layers.max_pool(x, 3, 2, 1)
    assert y.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(y, -1.0)


def test_initialisers_match_detectron2_statistics():
    key = jax.random.key(0, impl="rbg")  # rbg: compiles much faster than threefry on CPU
    msra = layers.c2_msra_fill(key, (3, 3, 64, 128))  # fan_out = 128 * 9
    np.testing.assert_allclose(np.std(msra), np.sqrt(2 / (128 * 9)), rtol=0.02)
    xavier = layers.c2_xavier_fill(key, (256, 100))  # fan_in = 256, uniform(+-sqrt(3/256))
    assert np.abs(xavier).max() <= np.sqrt(3 / 256)
    np.testing.assert_allclose(np.std(xavier), np.sqrt(1 / 256), rtol=0.03)
    deconv = layers.c2_msra_fill_deconv(key, (2, 2, 64, 16))  # PyTorch fan_out = in * 4
    np.testing.assert_allclose(np.std(deconv), np.sqrt(2 / (64 * 4)), rtol=0.05)
    assert float(np.abs(msra).max()) > 2.5 * np.sqrt(2 / (128 * 9))  # not truncated


def test_unknown_norm_raises():
    with pytest.raises(ValueError, match="unknown norm"):
        jax.eval_shape(layers.Conv2d(4, norm="LN").init, jax.random.key(0), jnp.ones((1, 2, 2, 4)))


def test_compute_dtype_bf16_keeps_f32_params():
    conv = layers.Conv2d(8, 3, padding=1, norm="FrozenBN", relu=True, dtype=jnp.bfloat16)
    x = jnp.ones((1, 4, 4, 3))
    v = jax.jit(conv.init)(jax.random.key(0, impl="rbg"), x)
    assert v["params"]["kernel"].dtype == jnp.float32
    assert jax.jit(conv.apply)(v, x).dtype == jnp.bfloat16
    assert isinstance(layers.get_norm(""), type(None))
    assert isinstance(layers.get_norm("GN"), nn.GroupNorm)


def _reference_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((padding, padding),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


@pytest.mark.parametrize(
    "k,s,p", [(3, 1, 1), (3, 2, 1), (7, 2, 3), (3, 1, 0), (2, 2, 0), (4, 3, 1)]
)
def test_canonical_grads_conv_matches_lax_conv_and_its_gradients(k, s, p):
    x = jax.random.normal(jax.random.key(0), (2, 15, 13, 5))
    w = jax.random.normal(jax.random.key(1), (k, k, 5, 6))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, s, p)))

    np.testing.assert_allclose(
        layers.conv2d_canonical_grads(x, w, s, p), _reference_conv(x, w, s, p), rtol=1e-5, atol=1e-5
    )
    got = jax.jit(jax.grad(loss(layers.conv2d_canonical_grads), (0, 1)))(x, w)
    want = jax.grad(loss(_reference_conv), (0, 1))(x, w)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_1x1_dot_path_matches_lax_conv(stride):
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, 8))
    conv = layers.Conv2d(4, 1, strides=stride, use_bias=True)
    v = conv.init(jax.random.key(1), x)
    v = jax.tree.map(lambda a: a + 0.1, v)
    want = _reference_conv(x, v["params"]["kernel"], stride, 0) + v["params"]["bias"]
    got = conv.apply(v, x)
    assert got.shape == (2, -(-9 // stride), -(-7 // stride), 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("cout", [3, 6])  # 3: input gradient as a multiply-add loop
def test_pixel_matmul_gradients_match_plain_dot(dtype, cout):
    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8)).astype(dtype)
    w = jax.random.normal(jax.random.key(1), (8, cout)).astype(dtype)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w).astype(jnp.float32)))

    got = jax.jit(jax.grad(loss(layers.pixel_matmul), (0, 1)))(x, w)
    want = jax.grad(loss(lambda x, w: jnp.einsum("nhwc,cd->nhwd", x, w)), (0, 1))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for g, r in zip(got, want, strict=True):
        assert g.dtype == r.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol * 4
        )
