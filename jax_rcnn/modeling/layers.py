"""Building blocks shared by the backbone and the heads: Detectron2's `layers/` in Flax.

**Parity:** `Conv2d` reproduces `detectron2.layers.wrappers.Conv2d` (conv -> optional norm ->
optional ReLU, symmetric integer padding like PyTorch, never 'SAME'); `get_norm` reproduces
`detectron2.layers.get_norm` for "FrozenBN", "BN", "SyncBN", "GN" (32 groups) and "" (none);
`FrozenBatchNorm2d` reproduces `layers/batch_norm.py:FrozenBatchNorm2d` (eps 1e-5,
`scale = weight * rsqrt(running_var + eps)`, `shift = bias - running_mean * scale`, running_var
initialised to `1 - eps` as Detectron2 does); `ConvTranspose2d` reproduces
`torch.nn.ConvTranspose2d` with its kernel stored in PyTorch's orientation (not flipped).
Deliberate deviation: "BN" running variance is updated with the biased batch variance (Flax),
PyTorch uses the unbiased one; it only matters for training BN from scratch.

Variable collections (see also `jax_rcnn/modeling/__init__.py`):
  * `params`: conv/linear `kernel` and `bias`; BN/GN affine `scale` and `bias` (trainable).
  * `frozen` (`FROZEN`): FrozenBN `weight`, `bias`, `running_mean`, `running_var`. These are
    buffers in Detectron2: never trained and never updated, so they live outside `params` and
    the optimiser never sees them. `apply` reads them; nothing mutates them.
  * `batch_stats`: BN/SyncBN running `mean` and `var` (mutable in training).

All tensors are NHWC; kernels are HWIO (`[kh, kw, in / groups, out]`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

FROZEN = "frozen"
"""Name of the variable collection holding FrozenBN buffers."""

NORMS = ("FrozenBN", "BN", "SyncBN", "GN", "")
FROZEN_BN_EPS = 1e-5

Initializer = Callable[..., jax.Array]

# Detectron2 / fvcore initialisers, expressed for HWIO conv kernels and (in, out) dense kernels.
# `c2_msra_fill`: kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e. an *untruncated*
# normal with std sqrt(2 / fan_out), fan_out = out_channels * kh * kw.
c2_msra_fill: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# `c2_xavier_fill`: kaiming_uniform_(a=1) -> uniform(+-sqrt(3 / fan_in)), fan_in = in * kh * kw.
c2_xavier_fill: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
# PyTorch's ConvTranspose2d weight is (in, out, kh, kw) and its "fan_out" is in * kh * kw; our
# HWIO kernel holds the same numbers as [kh, kw, in, out], so fan_out is counted over axis -2.
c2_msra_fill_deconv: Initializer = nn.initializers.variance_scaling(
    2.0, "fan_out", "normal", in_axis=-1, out_axis=-2
)


def normal_init(std: float) -> Initializer:
    """`nn.init.normal_(w, std=std)`: untruncated N(0, std^2)."""
    return nn.initializers.normal(stddev=std)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (Detectron2's `FrozenBatchNorm2d`).

    Its four arrays are Detectron2 buffers and live in the `frozen` collection under their
    Detectron2 names, so checkpoint conversion copies them verbatim.

    Attributes:
      eps: added to `running_var` (Detectron2: 1e-5).
    """

    eps: float = FROZEN_BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies `x * scale + shift`.

        Args:
          x: f32[..., C] (any float dtype; the affine is folded in f32, then cast).

        Returns:
          Same shape and dtype as `x`.
        """
        c = x.shape[-1]
        weight = self.variable(FROZEN, "weight", jnp.ones, (c,), jnp.float32).value
        bias = self.variable(FROZEN, "bias", jnp.zeros, (c,), jnp.float32).value
        mean = self.variable(FROZEN, "running_mean", jnp.zeros, (c,), jnp.float32).value
        var = self.variable(
            FROZEN, "running_var", lambda s, d: jnp.ones(s, d) - self.eps, (c,), jnp.float32
        ).value
        scale = weight * lax.rsqrt(var + self.eps)
        shift = bias - mean * scale
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def output_dtype(x: jax.Array) -> jax.Array:
    """A head's output in float32, or wider: bf16 compute gives f32 outputs (losses and
    postprocessing in f32), a float64 model (x64 parity tests) keeps f64."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def get_norm(
    norm: str,
    *,
    train: bool = False,
    axis_name: str | None = None,
    dtype: Any = jnp.float32,
    name: str = "norm",
) -> nn.Module | None:
    """Detectron2's `get_norm`: the normalisation module for a conv, named `name` ("norm").

    Must be called inside a compact method of the parent (the module is bound there).

    Args:
      norm: "FrozenBN", "BN", "SyncBN", "GN" (32 groups) or "" (none).
      train: BN/SyncBN normalise with batch statistics and update `batch_stats` when True,
        use the running statistics when False. Ignored by the others.
      axis_name: SyncBN only: the mapped axis (`shard_map` / `pmap`) over which batch
        statistics are averaged. Under plain `jit` with a sharded batch, "BN" already uses
        global-batch statistics.
      dtype: computation dtype.
      name: the module's name (its variables' path), "norm" inside a `Conv2d`.

    Returns:
      The module, or None for "".
    """
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(name=name)
    if norm in ("BN", "SyncBN"):
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,  # PyTorch momentum 0.1
            epsilon=1e-5,
            axis_name=axis_name if norm == "SyncBN" else None,
            dtype=dtype,
            name=name,
        )
    if norm == "GN":
        return nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=dtype, name=name)
    if norm == "":
        return None
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_canonical_grads(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """`lax.conv_general_dilated` (NHWC, HWIO, no dilation or groups) whose kernel gradient is
    written as a plain NHWC/HWIO convolution of explicitly transposed operands.

    JAX's own kernel gradient is a convolution with batch and feature dimensions swapped. Outside
    a conditional XLA:CPU canonicalises it to Eigen's convolution; inside a `lax.switch` branch
    (the mask head in training, `meta_arch.roi_heads.mask_losses`) it lowers it to a naive loop
    (a 3x3 64->64 kernel gradient on [512, 14, 14, 64] did not finish in 300 s). Here the
    kernel gradient is the valid convolution of `pad(x)` as `[C_in, H+2p, W+2p, N]` (N as the
    channels) with `dy` as an `[H', W', N, C_out]` kernel (dilated by the stride), which Eigen runs
    anywhere at the speed of XLA's own gradient outside a switch (`benchmarks/RESULTS.md`). The
    input gradient is the plain convolution of the stride-dilated `dy` with the flipped kernel
    (JAX's own form of it also runs ~5x slower inside a switch). Same sums.

    Args:
      x: f32[B, H, W, C_in].
      kernel: f32[k, k, C_in, C_out].
      stride, padding: as `Conv2d`.

    Returns:
      f32[B, H', W', C_out].
    """
    return _plain_conv(x, kernel, stride, padding)


def _plain_conv(x, kernel, stride, padding):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _canonical_fwd(x, kernel, stride, padding):
    return _plain_conv(x, kernel, stride, padding), (x, kernel)


def _canonical_bwd(stride, padding, res, dy):
    x, kernel = res
    k = kernel.shape[0]
    # dx: the stride-dilated dy convolved with the flipped, in/out-swapped kernel, written as a
    # plain NHWC/HWIO convolution. JAX's own transpose rule gives the same sums, but inside a
    # `lax.switch` branch XLA:CPU runs it (and the kernel gradient after it) ~5x slower: 4 x
    # 3x3 32->32 convs on [128, 14, 14, 32], fwd + bwd: 0.44 s in a switch, 0.09 s here.
    extra = [(n + 2 * padding - k) % stride for n in x.shape[1:3]]
    dx = lax.conv_general_dilated(
        dy,
        jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2).astype(dy.dtype),
        window_strides=(1, 1),
        padding=[(k - 1 - padding, k - 1 - padding + e) for e in extra],
        lhs_dilation=(stride, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ).astype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dw = lax.conv_general_dilated(
        xp.transpose(3, 1, 2, 0),  # [C_in, H+2p, W+2p, N]
        dy.transpose(1, 2, 0, 3),  # [H', W', N, C_out]
        window_strides=(1, 1),
        padding="VALID",
        rhs_dilation=(stride, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # [C_in, >= k, >= k, C_out]: rows past k only exist when the stride skips x's last rows
    return dx, dw[:, :k, :k].transpose(1, 2, 0, 3).astype(kernel.dtype)


conv2d_canonical_grads.defvjp(_canonical_fwd, _canonical_bwd)


_ELEMENTWISE_MAX_K = 4


@jax.custom_vjp
def pixel_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 1x1 convolution as a matmul over pixels: `y[..., o] = sum_i x[..., i] kernel[i, o]`.

    Its weight gradient is one `dot_general` contracting the pixel rows of both `x` and `dy`
    (`[P, C_in] x [P, C_out] -> [C_in, C_out]`), which XLA:CPU's matmul takes as is. JAX's own
    transpose rule computes `[C_out, C_in]` and transposes it, and XLA:CPU then writes `dy`
    transposed to `[C_out, P]` first (fused with the backward of the norm and ReLU that produce
    it): ~1.7 s of a full-size R50-FPN train step (`benchmarks/RESULTS.md`). Same sums.

    Args:
      x: f32[..., C_in] (any float dtype).
      kernel: f32[C_in, C_out], same dtype as `x`.

    Returns:
      f32[..., C_out].
    """
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _pixel_matmul_fwd(x, kernel):
    return pixel_matmul(x, kernel), (x, kernel)


def _pixel_matmul_bwd(res, dy):
    x, kernel = res
    if kernel.shape[1] <= _ELEMENTWISE_MAX_K:
        # A matmul with K <= 4 (the RPN objectness logits: K = 3) is memory-bound; XLA:CPU's
        # matmul runs it at ~0.5 GB/s (0.29 s at P2 of a full-size step), a fused
        # multiply-add loop at memory speed.
        dx = sum(dy[..., k : k + 1] * kernel[:, k] for k in range(kernel.shape[1]))
    else:
        dx = lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
    dk = lax.dot_general(
        x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]), (((0,), (0,)), ((), ()))
    )
    return dx, dk.astype(kernel.dtype)


pixel_matmul.defvjp(_pixel_matmul_fwd, _pixel_matmul_bwd)


class Conv2d(nn.Module):
    """Detectron2's `wrappers.Conv2d`: conv -> optional norm -> optional ReLU.

    Attributes:
      features: output channels.
      kernel_size: square kernel side.
      strides: stride.
      padding: symmetric zero padding in pixels on every side (PyTorch `padding=`).
      dilation: kernel dilation.
      groups: feature groups (ResNeXt).
      use_bias: adds `bias` (Detectron2 uses `bias=not norm`, except where stated).
      norm: see `get_norm`.
      relu: apply ReLU after the norm.
      kernel_init: initialiser of the HWIO kernel.
      bias_init: initialiser of the bias (zeros; RetinaNet's `cls_score` uses its prior).
      canonical_grads: compute the kernel gradient as a plain convolution of transposed
        operands (`conv2d_canonical_grads`); for convs that run inside a `lax.switch` branch
        (the mask head). Ignored for 1x1 convs, groups or dilation.
      train: see `get_norm`.
      axis_name: see `get_norm`.
      dtype: computation dtype (params stay f32).
    """

    features: int
    kernel_size: int = 1
    strides: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    use_bias: bool = True
    norm: str = ""
    relu: bool = False
    kernel_init: Initializer = c2_msra_fill
    bias_init: Initializer = nn.initializers.zeros
    canonical_grads: bool = False
    train: bool = False
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x f32[B, H, W, Cin]. Returns f32[B, H', W', features] (PyTorch output size)."""
        cin = x.shape[-1]
        if cin % self.groups:
            raise ValueError(f"{cin} input channels are not divisible by {self.groups} groups")
        k = self.kernel_size
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, cin // self.groups, self.features), jnp.float32
        )
        if k == 1 and self.padding == 0 and self.groups == 1:
            # A 1x1 conv is a matmul over the (strided) pixels. Written as one, its weight
            # gradient is a plain [C_in, N*H*W] x [N*H*W, C_out] dot; XLA:CPU would otherwise
            # transpose x to batch-innermost for a window-sized convolution (~6 s per full-size
            # R50-FPN step, see `jax_rcnn/compile.py`). Same sums, any backend.
            s = self.strides
            y = pixel_matmul(x[:, ::s, ::s].astype(self.dtype), kernel[0, 0].astype(self.dtype))
        elif self.canonical_grads and self.groups == 1 and self.dilation == 1:
            y = conv2d_canonical_grads(
                x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding
            )
        else:
            y = lax.conv_general_dilated(
                x.astype(self.dtype),
                kernel.astype(self.dtype),
                window_strides=_pair(self.strides),
                padding=(_pair(self.padding),) * 2,
                rhs_dilation=_pair(self.dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        norm = get_norm(self.norm, train=self.train, axis_name=self.axis_name, dtype=self.dtype)
        if norm is not None:
            y = norm(y)
        if self.relu:
            y = nn.relu(y)
        return y


class ConvTranspose2d(nn.Module):
    """`torch.nn.ConvTranspose2d` (the mask head's 2x2 stride-2 upsampling, the keypoint head's
    4x4 stride-2 `score_lowres`).

    The kernel is stored as `[kh, kw, in, out]` holding exactly PyTorch's `(in, out, kh, kw)`
    weight transposed (no spatial flip), so that

        y[b, i*s - p + di, j*s - p + dj, o] += x[b, i, j, c] * kernel[di, dj, c, o]

    which is PyTorch's definition. Output side `(H - 1) * s - 2p + k`.

    Attributes:
      features: output channels.
      kernel_size: square kernel side.
      strides: stride.
      padding: PyTorch `padding=` (cropped from both sides of the full output).
      use_bias: adds `bias`.
      kernel_init: initialiser of the kernel.
      dtype: computation dtype.
    """

    features: int
    kernel_size: int = 2
    strides: int = 2
    padding: int = 0
    use_bias: bool = True
    kernel_init: Initializer = c2_msra_fill_deconv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x f32[B, H, W, Cin]. Returns f32[B, (H-1)s-2p+k, (W-1)s-2p+k, features]."""
        k, s, p = self.kernel_size, self.strides, self.padding
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32
        )
        if s == k and p == 0:
            # Non-overlapping taps: each output pixel takes exactly one tap, so the op is one
            # matmul and a pixel shuffle. Same sums as the dilated conv below, whose gradient
            # XLA:CPU runs as a naive 14x14-window convolution (~0.5 s per quickstart step).
            b, h, w, _ = x.shape
            y = jnp.einsum("bhwc,ijco->bhiwjo", x.astype(self.dtype), kernel.astype(self.dtype))
            y = y.reshape(b, h * k, w * k, self.features)
        else:
            y = self._dilated_conv(x, kernel)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y

    def _dilated_conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.strides, self.padding
        # PyTorch's definition tap by tap: tap (di, dj) of input pixel (i, j) lands on output
        # (i*s - p + di, ...), i.e. on phase a = (di - p) mod s of the output grid at phase-grid
        # row m = i + q with q = (di - p - a) / s. So every phase is a small stride-1 conv of
        # the input (taps at input rows m - q), and all s*s phases are ONE conv with s*s*O
        # output channels over the window q in [q_min, q_max], followed by a pixel shuffle.
        # Same sums as a conv over the stride-dilated input with the flipped kernel (whose
        # kernel gradient XLA:CPU runs as a naive loop inside a `lax.switch` branch) and as the
        # per-tap matmul + shifted adds (whose backward XLA:CPU runs at ~1 s for the keypoint
        # head's score_lowres on 128 ROIs; this conv: ~0.05 s, `benchmarks/RESULTS.md`).
        b, h, w, c = x.shape
        o = kernel.shape[-1]
        ho, wo = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
        hp, wp = -(-ho // s), -(-wo // s)  # phase grids; the interleaved grid is cropped
        taps = [((d - p) % s, (d - p - (d - p) % s) // s) for d in range(k)]  # (phase, q)
        q_min, q_max = min(q for _, q in taps), max(q for _, q in taps)
        span = q_max - q_min + 1
        # window row t reads input row m - q_max + t, i.e. t = q_max - q.
        w3 = jnp.zeros((span, span, c, s, s, o), kernel.dtype)
        for di, (a, qi) in enumerate(taps):
            for dj, (cc, qj) in enumerate(taps):
                w3 = w3.at[q_max - qi, q_max - qj, :, a, cc, :].add(kernel[di, dj])
        w3 = w3.reshape(span, span, c, s * s * o).astype(self.dtype)
        # Output row m reads padded rows m .. m + span - 1 = input rows m - q_max .. m - q_min.
        xp = _pad_or_crop(x.astype(self.dtype), q_max, hp - h - q_min, q_max, wp - w - q_min)
        y = conv2d_canonical_grads(xp, w3, 1, 0)  # [B, hp, wp, s*s*O]
        y = y.reshape(b, hp, wp, s, s, o).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(b, hp * s, wp * s, o)[:, :ho, :wo]


def _pad_or_crop(x: jax.Array, top: int, bottom: int, left: int, right: int) -> jax.Array:
    """`x f32[B, H, W, C]` zero-padded (positive) or cropped (negative) on each side."""
    x = jnp.pad(x, ((0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0)))
    h, w = x.shape[1:3]
    return x[:, max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0)]


def max_pool(x: jax.Array, kernel_size: int, stride: int, padding: int = 0) -> jax.Array:
    """`F.max_pool2d` (padding with -inf, floor output size). x f32[B, H, W, C]."""
    return nn.max_pool(
        x,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
    )
