"""Detectron2's `SemSegFPNHead`: per-level towers summed at the common stride, 1x1 predictor.

**Parity:** `detectron2/modeling/meta_arch/semantic_seg.py:SemSegFPNHead`. For each input level
(stride s) a tower of `max(1, log2(s / common_stride))` blocks, each a 3x3 conv (no bias with a
norm) + norm (GN: 32 groups, eps 1e-5) + ReLU, followed, when s != common_stride, by a bilinear
x2 upsample (align_corners False): the upsamples are interleaved with the convs. The towers are
summed (no activation), then a 1x1 predictor with bias gives stride-`common_stride` logits.
Convs are `c2_msra_fill` initialised. Parameter names: `sem_seg_head/p2_0/{kernel, norm/scale,
norm/bias}` <-> `sem_seg_head.p2.0.{weight, norm.weight, norm.bias}` (the odd indices of
Detectron2's `nn.Sequential` are the parameter-free upsamples), `sem_seg_head/predictor`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_rcnn.modeling.layers import Conv2d, output_dtype
from jax_rcnn.semantic import upsample_bilinear


class SemSegFPNHead(nn.Module):
    """Semantic-segmentation head on FPN levels.

    Attributes:
      num_classes: K (`SEM_SEG_HEAD.NUM_CLASSES`; panoptic: 0 = "things", 1.. = stuff).
      conv_dims: tower width C (`SEM_SEG_HEAD.CONVS_DIM`).
      common_stride: stride of the summed towers and the logits (`COMMON_STRIDE`, 4).
      norm: `SEM_SEG_HEAD.NORM` ("GN" in the model zoo; see `layers.get_norm`).
      in_features: the levels, e.g. ("p2", "p3", "p4", "p5"); their stride is 2**level.
      train: BN/SyncBN mode (GN and FrozenBN ignore it).
      dtype: computation dtype.
    """

    num_classes: int
    conv_dims: int = 128
    common_stride: int = 4
    norm: str = "GN"
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5")
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
        """features {"p2": f32[B, H/4, W/4, C_in], ...} -> logits f32[B, H/s, W/s, K]."""
        total = None
        for name in self.in_features:
            stride = 2 ** int(name[1:])
            num_blocks = max(1, int(math.log2(stride) - math.log2(self.common_stride)))
            x = features[name]
            for k in range(num_blocks):
                x = Conv2d(
                    self.conv_dims,
                    3,
                    padding=1,
                    use_bias=not self.norm,
                    norm=self.norm,
                    relu=True,
                    train=self.train,
                    dtype=self.dtype,
                    name=f"{name}_{2 * k}",
                )(x)
                if stride != self.common_stride:
                    x = upsample_bilinear(x, 2)
            total = x if total is None else total + x
        logits = Conv2d(self.num_classes, 1, dtype=self.dtype, name="predictor")(total)
        return output_dtype(logits)
