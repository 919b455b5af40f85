"""RetinaNet's head (Detectron2's `RetinaNetHead`, `modeling/meta_arch/retinanet.py`), NHWC.

**Parity:** two towers shared over the pyramid levels, `cls_subnet` and `bbox_subnet`, each
`NUM_CONVS` x (conv 3x3 with bias [+ norm] + ReLU); `cls_score` is a 3x3 conv to A*K channels
and `bbox_pred` a 3x3 conv to A*4. Every conv is N(0, 0.01) with bias 0, except
`cls_score.bias = -log((1 - prior_prob) / prior_prob)` (-4.595 for 0.01). Detectron2 keeps the
towers as `nn.Sequential`: without a norm the convs are `cls_subnet.{0,2,4,6}` (ReLUs at the
odd indices), with `MODEL.RETINANET.NORM = "GN"` the convs are `{0,3,6,9}` and the GroupNorms
(32 groups, shared by all levels) `{1,4,7,10}` (`head/cls_subnet/0/kernel`,
`head/cls_subnet/1/scale` here). Detectron2's per-level BN (`CycleBatchNormList`) is not
implemented. Outputs are flattened like
`permute_to_N_HWA_K`: channel `a * K + k` of pixel (y, x) is row `(y * W + x) * A + a`, column k.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_rcnn.modeling.layers import Conv2d, get_norm, normal_init, output_dtype

HEAD_NORMS = ("", "GN")


class _Tower(nn.Module):
    """`num_convs` x (conv 3x3 [+ norm] + ReLU), named by their `nn.Sequential` indices."""

    num_convs: int
    norm: str = ""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        stride = 3 if self.norm else 2  # conv, [norm,] ReLU per layer
        for i in range(self.num_convs):
            x = Conv2d(
                x.shape[-1],
                3,
                padding=1,
                kernel_init=normal_init(0.01),
                dtype=self.dtype,
                name=str(stride * i),
            )(x)
            if self.norm:
                x = get_norm(self.norm, dtype=self.dtype, name=str(stride * i + 1))(x)
            x = nn.relu(x)
        return x


class RetinaNetHead(nn.Module):
    """Class and box predictions of every anchor of every level.

    Attributes:
      num_classes: K (`MODEL.RETINANET.NUM_CLASSES`).
      num_anchors: A, cell anchors per position (9 by default).
      num_convs: `MODEL.RETINANET.NUM_CONVS`.
      prior_prob: `MODEL.RETINANET.PRIOR_PROB`.
      norm: `MODEL.RETINANET.NORM`, "" or "GN" (`HEAD_NORMS`).
      box_dim: 4.
      dtype: computation dtype (outputs are f32).
    """

    num_classes: int
    num_anchors: int = 9
    num_convs: int = 4
    prior_prob: float = 0.01
    norm: str = ""
    box_dim: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, features: list[jax.Array] | tuple[jax.Array, ...]
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """Runs the head on every level.

        Args:
          features: L maps `f32[B, H_l, W_l, C]` (p3..p7), same C on every level.

        Returns:
          `(cls_logits, box_deltas)`: lists of L arrays, `f32[B, H_l*W_l*A, K]` and
          `f32[B, H_l*W_l*A, 4]` (dx, dy, dw, dh), row `(y * W_l + x) * A + a`.
        """
        if self.norm not in HEAD_NORMS:
            raise ValueError(f"RetinaNetHead norm must be one of {HEAD_NORMS}, got {self.norm!r}")
        a, k = self.num_anchors, self.num_classes
        cls_subnet = _Tower(self.num_convs, self.norm, self.dtype, name="cls_subnet")
        bbox_subnet = _Tower(self.num_convs, self.norm, self.dtype, name="bbox_subnet")
        kw = dict(padding=1, kernel_init=normal_init(0.01), dtype=self.dtype)
        bias = -math.log((1 - self.prior_prob) / self.prior_prob)
        cls_score = Conv2d(
            a * k, 3, bias_init=nn.initializers.constant(bias), name="cls_score", **kw
        )
        bbox_pred = Conv2d(a * self.box_dim, 3, name="bbox_pred", **kw)
        logits, deltas = [], []
        for x in features:
            b, h, w, _ = x.shape
            logits.append(output_dtype(cls_score(cls_subnet(x))).reshape(b, h * w * a, k))
            d = output_dtype(bbox_pred(bbox_subnet(x)))
            deltas.append(d.reshape(b, h * w * a, self.box_dim))
        return logits, deltas
