"""RPN, box and mask heads (Detectron2's `StandardRPNHead`, `FastRCNNConvFCHead`,
`FastRCNNOutputLayers`, `MaskRCNNConvUpsampleHead`, `KRCNNConvDeconvUpsampleHead`), NHWC.

**Parity:**
  * `StandardRPNHead`: shared over levels; conv 3x3 (pad 1, bias) + ReLU (one per entry of
    `MODEL.RPN.CONV_DIMS`, -1 = input channels; named `conv` for one entry, `conv/conv{k}` for
    several), objectness 1x1 -> A and anchor_deltas 1x1 -> 4A; all N(0, 0.01), bias 0. Outputs
    flattened like `RPN.forward`: logits (B, H, W, A) -> [B, H*W*A], deltas
    (B, H, W, A, 4) -> [B, H*W*A, 4], flat index `(y * W + x) * A + a`.
  * `FastRCNNConvFCHead`: `num_conv` x (conv 3x3 + norm + ReLU, `c2_msra_fill`), flatten,
    `num_fc` x (fc + ReLU, `c2_xavier_fill`). Deliberate layout difference: we flatten the
    NHWC map in (S, S, C) order while Detectron2 flattens NCHW in (C, S, S) order; the checkpoint
    converter permutes the first fc weight's input axis, so outputs are identical.
  * `FastRCNNOutputLayers`: `cls_score` -> K + 1 (background last), N(0, 0.01);
    `bbox_pred` -> 4K (or 4 if class-agnostic), N(0, 0.001); biases 0.
  * `MaskRCNNConvUpsampleHead`: `num_conv` x `mask_fcn{k}` (conv 3x3 + norm + ReLU,
    `c2_msra_fill`), `deconv` ConvTranspose 2x2 s2 + ReLU (`c2_msra_fill`), `predictor` 1x1 -> K
    (1 if class-agnostic), N(0, 0.001).
  * `KRCNNConvDeconvUpsampleHead`: `conv_fcn{k}` (conv 3x3 pad 1 + bias + ReLU, no norm, one
    per `CONV_DIMS` entry), `score_lowres` ConvTranspose 4x4 s2 p1 -> K keypoints (no ReLU),
    then bilinear x2 (`align_corners=False`): 14 -> 28 -> 56. Every weight
    `kaiming_normal_(fan_out, relu)`, biases 0.

The ROI heads accept any number of leading batch dimensions (`[..., S, S, C]`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_rcnn.modeling.layers import (
    Conv2d,
    ConvTranspose2d,
    c2_msra_fill,
    c2_msra_fill_deconv,
    c2_xavier_fill,
    normal_init,
    output_dtype,
)


class _RPNConvStack(nn.Module):
    """Detectron2's `nn.Sequential` of RPN convs (`conv.conv0`, `conv.conv1`, ...)."""

    conv_dims: tuple[int, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for k, d in enumerate(self.conv_dims):
            x = _rpn_conv(x.shape[-1], d, f"conv{k}", self.dtype)(x)
        return x


def _rpn_conv(in_channels: int, conv_dim: int, name: str, dtype: Any) -> Conv2d:
    out = in_channels if conv_dim == -1 else conv_dim
    if out <= 0:
        raise ValueError(f"RPN conv output channels must be > 0, got {out}")
    return Conv2d(
        out, 3, padding=1, relu=True, kernel_init=normal_init(0.01), dtype=dtype, name=name
    )


class StandardRPNHead(nn.Module):
    """RPN head shared across FPN levels.

    Attributes:
      num_anchors: A, cell anchors per position (sizes x aspect ratios of one level).
      conv_dims: `MODEL.RPN.CONV_DIMS`; -1 keeps the input channel count.
      box_dim: 4.
      dtype: computation dtype (outputs are f32).
    """

    num_anchors: int = 3
    conv_dims: tuple[int, ...] = (-1,)
    box_dim: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, features: list[jax.Array] | tuple[jax.Array, ...]
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """Predicts objectness logits and anchor deltas for every level.

        Args:
          features: L maps f32[B, Hi, Wi, C] (p2..p6), same C on every level.

        Returns:
          (objectness_logits, anchor_deltas): lists of L arrays, f32[B, Hi*Wi*A] and
          f32[B, Hi*Wi*A, 4] (dx, dy, dw, dh), flat index (y * Wi + x) * A + a.
        """
        if len(self.conv_dims) == 1:
            conv = _rpn_conv(features[0].shape[-1], self.conv_dims[0], "conv", self.dtype)
        else:
            conv = _RPNConvStack(tuple(self.conv_dims), self.dtype, name="conv")
        kw = dict(kernel_init=normal_init(0.01), dtype=self.dtype)
        a = self.num_anchors
        objectness = Conv2d(a, 1, name="objectness_logits", **kw)
        deltas = Conv2d(a * self.box_dim, 1, name="anchor_deltas", **kw)
        all_logits, all_deltas = [], []
        for x in features:
            t = conv(x)
            b, h, w, _ = t.shape
            all_logits.append(output_dtype(objectness(t)).reshape(b, h * w * a))
            # Channel a * 4 + k of the 1x1 conv is delta k of anchor a (Detectron2's view).
            all_deltas.append(output_dtype(deltas(t)).reshape(b, h * w * a, self.box_dim))
        return all_logits, all_deltas


def _flatten_leading(x: jax.Array, trailing: int) -> tuple[jax.Array, tuple[int, ...]]:
    lead = x.shape[: x.ndim - trailing]
    return x.reshape((-1, *x.shape[x.ndim - trailing :])), lead


def _roi_conv_stack(
    x: jax.Array, head: nn.Module, prefix: str, *, canonical_grads: bool
) -> jax.Array:
    """`head.num_conv` x (conv 3x3 + norm + ReLU, `c2_msra_fill`) named `{prefix}1`, ...

    The conv part of the box and mask heads; `head` supplies `num_conv`, `conv_dim`, `norm`,
    `train` and `dtype`, and owns the convs (call from its compact `__call__`).
    `canonical_grads`: kernel gradients as plain convolutions of transposed operands
    (`conv2d_canonical_grads`). The mask head needs them: it runs inside a `lax.switch` branch
    in training, where XLA:CPU lowers JAX's own conv kernel gradient to naive loops (a 64-channel
    3x3 conv gradient did not finish in 300 s). The box head runs outside any switch and uses
    XLA's own gradient.
    """
    for k in range(head.num_conv):
        x = Conv2d(
            head.conv_dim,
            3,
            padding=1,
            use_bias=not head.norm,
            norm=head.norm,
            relu=True,
            kernel_init=c2_msra_fill,
            canonical_grads=canonical_grads,
            train=head.train,
            dtype=head.dtype,
            name=f"{prefix}{k + 1}",
        )(x)
    return x


class FastRCNNConvFCHead(nn.Module):
    """Box head: optional 3x3 convs, then fully connected layers.

    Attributes:
      num_conv: `MODEL.ROI_BOX_HEAD.NUM_CONV`.
      conv_dim: `MODEL.ROI_BOX_HEAD.CONV_DIM`.
      num_fc: `MODEL.ROI_BOX_HEAD.NUM_FC`.
      fc_dim: `MODEL.ROI_BOX_HEAD.FC_DIM`.
      norm: `MODEL.ROI_BOX_HEAD.NORM` for the convs.
      train: BN mode.
      dtype: computation dtype.
    """

    num_conv: int = 0
    conv_dim: int = 256
    num_fc: int = 2
    fc_dim: int = 1024
    norm: str = ""
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args:
          x: f32[..., S, S, C] pooled ROI features (ROIAlign output, NHWC).

        Returns:
          f32[..., fc_dim] (f32[..., S*S*conv_dim] flattened (y, x, c) when num_fc == 0).
        """
        if self.num_conv + self.num_fc == 0:
            raise ValueError("the box head needs at least one conv or fc layer")
        x, lead = _flatten_leading(x, 3)
        x = _roi_conv_stack(x, self, "conv", canonical_grads=False)
        x = x.reshape(x.shape[0], -1)
        for k in range(self.num_fc):
            x = nn.Dense(
                self.fc_dim,
                kernel_init=c2_xavier_fill,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=f"fc{k + 1}",
            )(x)
            x = nn.relu(x)
        return x.reshape(*lead, x.shape[-1])


class FastRCNNOutputLayers(nn.Module):
    """Box predictor: class logits (K + 1, background last) and box deltas.

    Attributes:
      num_classes: K.
      cls_agnostic_bbox_reg: one box for all classes instead of one per class.
      box_dim: 4.
      dtype: computation dtype (outputs are f32).
    """

    num_classes: int
    cls_agnostic_bbox_reg: bool = False
    box_dim: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Args:
          x: f32[..., D] box-head features.

        Returns:
          (cls_logits f32[..., K + 1], box_deltas f32[..., 4K] or f32[..., 4] if class
          agnostic), deltas (dx, dy, dw, dh) per class, still scaled by the (10, 10, 5, 5)
          box-regression weights.
        """
        num_reg = 1 if self.cls_agnostic_bbox_reg else self.num_classes
        kw = dict(dtype=self.dtype, param_dtype=jnp.float32)
        scores = nn.Dense(
            self.num_classes + 1, kernel_init=normal_init(0.01), name="cls_score", **kw
        )(x)
        deltas = nn.Dense(
            num_reg * self.box_dim, kernel_init=normal_init(0.001), name="bbox_pred", **kw
        )(x)
        return output_dtype(scores), output_dtype(deltas)


class MaskRCNNConvUpsampleHead(nn.Module):
    """Mask head: convs, 2x deconv upsampling, 1x1 per-class predictor.

    Attributes:
      num_classes: K (use 1 for `MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK`).
      num_conv: `MODEL.ROI_MASK_HEAD.NUM_CONV`.
      conv_dim: `MODEL.ROI_MASK_HEAD.CONV_DIM` (also the deconv's output channels).
      norm: `MODEL.ROI_MASK_HEAD.NORM` for the convs.
      train: BN mode.
      dtype: computation dtype (outputs are f32).
    """

    num_classes: int
    num_conv: int = 4
    conv_dim: int = 256
    norm: str = ""
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args:
          x: f32[..., S, S, C] pooled ROI features (S = 14 by default).

        Returns:
          f32[..., 2S, 2S, num_classes] mask logits (NHWC: one channel per class).
        """
        x, lead = _flatten_leading(x, 3)
        x = _roi_conv_stack(x, self, "mask_fcn", canonical_grads=True)
        x = nn.relu(ConvTranspose2d(self.conv_dim, 2, 2, 0, dtype=self.dtype, name="deconv")(x))
        x = Conv2d(
            self.num_classes, 1, kernel_init=normal_init(0.001), dtype=self.dtype, name="predictor"
        )(x)
        return output_dtype(x).reshape(*lead, *x.shape[1:])


def bilinear_upsample_matrix(size: int, factor: int = 2) -> np.ndarray:
    """`f32[size * factor, size]`: PyTorch's `interpolate(scale_factor=factor, mode="bilinear",
    align_corners=False)` along one axis as a matrix (source `(i + 0.5) / factor - 0.5`,
    clamped at 0; the right neighbour clamped at `size - 1`)."""
    out = np.zeros((size * factor, size), np.float64)
    for i in range(size * factor):
        src = max((i + 0.5) / factor - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, size - 1)
        t = src - i0
        out[i, i0] += 1 - t
        out[i, i1] += t
    return out.astype(np.float32)


class KRCNNConvDeconvUpsampleHead(nn.Module):
    """Keypoint head: 3x3 convs, a 4x4 stride-2 transposed conv to K heatmaps, bilinear x2.

    Attributes:
      num_keypoints: K (`MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS`).
      conv_dims: `MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS`, one 3x3 conv (`conv_fcn{k}`) each.
      up_scale: the final bilinear upsampling factor (2).
      dtype: computation dtype (outputs are f32).
    """

    num_keypoints: int = 17
    conv_dims: tuple[int, ...] = (512,) * 8
    up_scale: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args:
          x: f32[..., S, S, C] pooled ROI features (S = 14 by default).

        Returns:
          f32[..., 4S, 4S, K] heatmap logits (NHWC: one channel per keypoint; 56x56 for S=14).
        """
        x, lead = _flatten_leading(x, 3)
        for k, dim in enumerate(self.conv_dims):
            # Runs inside a `lax.switch` branch in training: see `_roi_conv_stack`.
            x = Conv2d(
                dim,
                3,
                padding=1,
                relu=True,
                kernel_init=c2_msra_fill,
                canonical_grads=True,
                dtype=self.dtype,
                name=f"conv_fcn{k + 1}",
            )(x)
        x = ConvTranspose2d(
            self.num_keypoints,
            4,
            2,
            1,
            kernel_init=c2_msra_fill_deconv,
            dtype=self.dtype,
            name="score_lowres",
        )(x)
        x = output_dtype(x)
        up = jnp.asarray(bilinear_upsample_matrix(x.shape[1], self.up_scale))
        hp = jax.lax.Precision.HIGHEST
        x = jnp.einsum("yh,bhwk->bywk", up, x, precision=hp)
        x = jnp.einsum("xw,bywk->byxk", up, x, precision=hp)
        return x.reshape(*lead, *x.shape[1:])
