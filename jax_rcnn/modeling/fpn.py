"""Feature Pyramid Network on a ResNet (Detectron2's `modeling/backbone/fpn.py`), NHWC.

**Parity:** per input level a lateral 1x1 conv and an output 3x3 conv (pad 1), both with bias
when `norm == ""` (`bias = norm == ""` in Detectron2) and `c2_xavier_fill` init; top-down path
= nearest x2 upsampling of the previous merged map, summed with the lateral ("avg" halves the
sum); `p6 = max_pool2d(p5, kernel=1, stride=2)` (`LastLevelMaxPool`), i.e. `p5[:, ::2, ::2]`.
Names: `fpn_lateral{stage}` / `fpn_output{stage}` next to the `bottom_up` ResNet, as in
Detectron2 (`backbone.fpn_lateral2.weight` <-> `backbone/fpn_lateral2/kernel`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_rcnn.modeling.layers import Conv2d, c2_xavier_fill
from jax_rcnn.modeling.resnet import ResNet, build_resnet


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
    """`F.interpolate(x, scale_factor=2, mode="nearest")`. x f32[B, H, W, C] -> [B, 2H, 2W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


TOP_BLOCKS = ("LastLevelMaxPool", "LastLevelP6P7")


class LastLevelP6P7(nn.Module):
    """RetinaNet's extra levels: p6 from C5 (or P5), p7 from ReLU(p6).

    Attributes:
      out_channels: channels of p6 and p7 (`MODEL.FPN.OUT_CHANNELS`).
      dtype: computation dtype.
    """

    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x f32[B, H, W, Cin] -> (p6 f32[B, ceil(H/2), ceil(W/2), C], p7 [B, ceil(H/4), ...])."""
        kw = dict(strides=2, padding=1, kernel_init=c2_xavier_fill, dtype=self.dtype)
        p6 = Conv2d(self.out_channels, 3, name="p6", **kw)(x)
        p7 = Conv2d(self.out_channels, 3, name="p7", **kw)(nn.relu(p6))
        return p6, p7


class FPN(nn.Module):
    """ResNet + FPN with a top block: outputs p2..p6 (`LastLevelMaxPool`) or p3..p7 (RetinaNet).

    Attributes:
      bottom_up: the ResNet (its variables live under `bottom_up`).
      in_features: ResNet stages used, high to low resolution (`MODEL.FPN.IN_FEATURES`).
      out_channels: `MODEL.FPN.OUT_CHANNELS`.
      norm: `MODEL.FPN.NORM` (see `layers.get_norm`).
      fuse_type: "sum" or "avg".
      top_block: one of `TOP_BLOCKS`.
      top_block_in_feature: input of `LastLevelP6P7`: a ResNet stage ("res5", every model-zoo
        RetinaNet) or an FPN output ("p5").
      train: BN mode.
      dtype: computation dtype.
    """

    bottom_up: ResNet
    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    out_channels: int = 256
    norm: str = ""
    fuse_type: str = "sum"
    top_block: str = "LastLevelMaxPool"
    top_block_in_feature: str = "res5"
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Computes the pyramid.

        Args:
          x: f32[B, H, W, 3] normalised BGR image (zero-padded after normalisation), H and W
            multiples of 32.

        Returns:
          {"p2": f32[B, H/4, W/4, C], "p3": [B, H/8, W/8, C], ..., "p6": [B, H/64, W/64, C]}
          (one key per input level plus the top block's levels), C = `out_channels`.
        """
        if self.fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {self.fuse_type!r}")
        if self.top_block not in TOP_BLOCKS:
            raise ValueError(f"top_block must be one of {TOP_BLOCKS}, got {self.top_block!r}")
        bottom_up = self.bottom_up(x)
        stages = [int(f[len("res") :]) for f in self.in_features]
        kw = dict(
            use_bias=self.norm == "",
            norm=self.norm,
            kernel_init=c2_xavier_fill,
            train=self.train,
            dtype=self.dtype,
        )
        results = {}
        prev = None
        for feature, stage in zip(self.in_features[::-1], stages[::-1], strict=True):
            lateral = Conv2d(self.out_channels, 1, name=f"fpn_lateral{stage}", **kw)(
                bottom_up[feature]
            )
            if prev is None:
                prev = lateral
            else:
                prev = lateral + upsample_nearest_2x(prev)
                if self.fuse_type == "avg":
                    prev = prev / 2
            results[f"p{stage}"] = Conv2d(
                self.out_channels, 3, padding=1, name=f"fpn_output{stage}", **kw
            )(prev)
        last = stages[-1]
        if self.top_block == "LastLevelMaxPool":
            results[f"p{last + 1}"] = results[f"p{last}"][:, ::2, ::2, :]
            extra = (last + 1,)
        else:
            src = self.top_block_in_feature
            x = bottom_up[src] if src in bottom_up else results[src]
            p6, p7 = LastLevelP6P7(self.out_channels, self.dtype, name="top_block")(x)
            results[f"p{last + 1}"], results[f"p{last + 2}"] = p6, p7
            extra = (last + 1, last + 2)
        return {f"p{s}": results[f"p{s}"] for s in (*stages, *extra)}


BACKBONES = {
    "build_resnet_fpn_backbone": "LastLevelMaxPool",
    "build_retinanet_resnet_fpn_backbone": "LastLevelP6P7",
}


def build_resnet_fpn_backbone(config, *, train: bool = False, dtype: Any = jnp.float32) -> FPN:
    """`MODEL.BACKBONE.NAME` (`config.model.backbone.name`): ResNet + FPN + its top block.

    `build_resnet_fpn_backbone` adds p6 by max-pooling p5; `build_retinanet_resnet_fpn_backbone`
    adds p6 and p7 from C5 (`LastLevelP6P7`).
    """
    f = config.model.fpn
    return FPN(
        bottom_up=build_resnet(config, train=train, dtype=dtype),
        in_features=tuple(f.in_features),
        out_channels=f.out_channels,
        norm=f.norm,
        fuse_type=f.fuse_type,
        top_block=BACKBONES[config.model.backbone.name],
        train=train,
        dtype=dtype,
    )
