"""ResNet bottom-up backbone (Detectron2's `modeling/backbone/resnet.py`), NHWC.

**Parity:** `BasicStem` = conv 7x7 s2 p3 (no bias) + norm + ReLU + max-pool 3x3 s2 p1;
`BottleneckBlock` = 1x1, 3x3 (groups, dilation), 1x1 with the stride in the first 1x1 when
`stride_in_1x1` (MSRA weights) and a projection shortcut when the channel count changes;
`BasicBlock` (R18/R34) = two 3x3 convs; ReLU after the residual add. Stage widths follow
`build_resnet_backbone`: bottleneck = num_groups * width_per_group, doubled per stage together
with the output width; res5 with `res5_dilation=2` keeps stride 1 and dilates its 3x3 convs.

**Freezing** (`MODEL.BACKBONE.FREEZE_AT`): Detectron2's `ResNet.freeze(freeze_at)` sets
`requires_grad=False` on the stem (freeze_at >= 1) and on res2..res{freeze_at}, and converts
their BN/SyncBN layers to FrozenBN. Here the conversion is structural (those stages are built
with FrozenBN, so their statistics live in the `frozen` collection), and the training code
excludes the frozen stages' `params` from the optimiser with `frozen_param_mask`.

Parameter paths mirror Detectron2 names: `res2.0.conv1.weight` <-> `res2_0/conv1/kernel`,
`stem.conv1.norm.running_var` <-> `frozen: stem/conv1/norm/running_var`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jax_rcnn.modeling.layers import Conv2d, max_pool

# Detectron2's depth -> blocks per stage res2..res5.
BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def frozen_norm(norm: str, frozen: bool) -> str:
    """The norm a (possibly frozen) layer really uses: frozen BN/SyncBN become FrozenBN."""
    return "FrozenBN" if frozen and norm in ("BN", "SyncBN") else norm


class BasicStem(nn.Module):
    """conv1 7x7/2 (no bias) + norm + ReLU + max-pool 3x3/2 pad 1; total stride 4.

    Attributes:
      out_channels: `MODEL.RESNETS.STEM_OUT_CHANNELS`.
      norm: see `layers.get_norm`.
      train: BN mode.
      dtype: computation dtype.
    """

    out_channels: int = 64
    norm: str = "FrozenBN"
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x f32[B, H, W, 3]. Returns f32[B, H/4, W/4, out_channels]."""
        x = Conv2d(
            self.out_channels,
            kernel_size=7,
            strides=2,
            padding=3,
            use_bias=False,
            norm=self.norm,
            relu=True,
            train=self.train,
            dtype=self.dtype,
            name="conv1",
        )(x)
        return max_pool(x, 3, 2, 1)


def _block_conv(
    block: nn.Module, features: int, kernel_size: int, strides: int = 1, **kw
) -> Conv2d:
    """A conv of a residual block: no bias, then the block's norm (`norm`, `train`, `dtype`)."""
    return Conv2d(
        features,
        kernel_size,
        strides,
        use_bias=False,
        norm=block.norm,
        train=block.train,
        dtype=block.dtype,
        **kw,
    )


def _shortcut(block: nn.Module, x: jax.Array) -> jax.Array:
    """Identity, or a 1x1 projection with the block's stride where the channel count changes."""
    if x.shape[-1] == block.out_channels:
        return x
    return _block_conv(block, block.out_channels, 1, block.stride, name="shortcut")(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs + shortcut (R18/R34).

    Attributes:
      out_channels: block output channels.
      stride: stride of the first conv and of the shortcut.
      norm: see `layers.get_norm`.
      train: BN mode.
      dtype: computation dtype.
    """

    out_channels: int
    stride: int = 1
    norm: str = "FrozenBN"
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x f32[B, H, W, Cin]. Returns f32[B, H/stride, W/stride, out_channels]."""
        shortcut = _shortcut(self, x)
        y = _block_conv(
            self, self.out_channels, 3, self.stride, padding=1, relu=True, name="conv1"
        )(x)
        y = _block_conv(self, self.out_channels, 3, padding=1, name="conv2")(y)
        return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck + shortcut (R50/R101/R152, ResNeXt via `num_groups`).

    Attributes:
      out_channels: block output channels.
      bottleneck_channels: channels of the 3x3 conv.
      stride: block stride (in conv1 if `stride_in_1x1`, else in conv2).
      num_groups: groups of the 3x3 conv.
      stride_in_1x1: MSRA placement of the stride (Detectron2's default for MSRA weights).
      dilation: dilation (= padding) of the 3x3 conv.
      norm: see `layers.get_norm`.
      train: BN mode.
      dtype: computation dtype.
    """

    out_channels: int
    bottleneck_channels: int
    stride: int = 1
    num_groups: int = 1
    stride_in_1x1: bool = True
    dilation: int = 1
    norm: str = "FrozenBN"
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x f32[B, H, W, Cin]. Returns f32[B, H/stride, W/stride, out_channels]."""
        shortcut = _shortcut(self, x)
        s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        y = _block_conv(self, self.bottleneck_channels, 1, s1, relu=True, name="conv1")(x)
        y = _block_conv(
            self,
            self.bottleneck_channels,
            3,
            s3,
            padding=self.dilation,
            dilation=self.dilation,
            groups=self.num_groups,
            relu=True,
            name="conv2",
        )(y)
        y = _block_conv(self, self.out_channels, 1, name="conv3")(y)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """Stem + stages res2..res5 (only up to the deepest requested `out_features`).

    Attributes mirror `MODEL.RESNETS.*` and `MODEL.BACKBONE.FREEZE_AT`; `build_resnet(config)`
    fills them from a config.
    """

    depth: int = 50
    norm: str = "FrozenBN"
    num_groups: int = 1
    width_per_group: int = 64
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    stride_in_1x1: bool = True
    res5_dilation: int = 1
    freeze_at: int = 2
    out_features: tuple[str, ...] = STAGE_NAMES
    train: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth {self.depth} not in {sorted(BLOCKS_PER_STAGE)}")
        if self.res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 or 2, got {self.res5_dilation}")
        if self.depth in (18, 34) and (
            self.res2_out_channels != 64 or self.num_groups != 1 or self.res5_dilation != 1
        ):
            raise ValueError(
                "R18/R34 need res2_out_channels=64, num_groups=1, res5_dilation=1 "
                f"(got {self.res2_out_channels}, {self.num_groups}, {self.res5_dilation})"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Runs the bottom-up network.

        Args:
          x: f32[B, H, W, 3] normalised BGR image (any H, W: every stride-2 op gives ceil).

        Returns:
          {"res2": f32[B, H/4, W/4, C2], ..., "res5": f32[B, H/32, W/32, C5]} restricted to
          `out_features` (res5 is H/16 with `res5_dilation=2`; sizes round up).
        """
        kw = dict(train=self.train, dtype=self.dtype)
        x = BasicStem(
            self.stem_out_channels, frozen_norm(self.norm, self.freeze_at >= 1), name="stem", **kw
        )(x)
        outputs = {}
        out_channels = self.res2_out_channels
        bottleneck = self.num_groups * self.width_per_group
        max_stage = max(STAGE_NAMES.index(f) for f in self.out_features)
        for idx in range(max_stage + 1):
            stage = idx + 2
            dilation = self.res5_dilation if stage == 5 else 1
            first_stride = 1 if idx == 0 or dilation == 2 else 2
            norm = frozen_norm(self.norm, self.freeze_at >= stage)
            for b in range(BLOCKS_PER_STAGE[self.depth][idx]):
                stride = first_stride if b == 0 else 1
                name = f"res{stage}_{b}"
                if self.depth in (18, 34):
                    x = BasicBlock(out_channels, stride, norm, name=name, **kw)(x)
                else:
                    x = BottleneckBlock(
                        out_channels,
                        bottleneck,
                        stride=stride,
                        num_groups=self.num_groups,
                        stride_in_1x1=self.stride_in_1x1,
                        dilation=dilation,
                        norm=norm,
                        name=name,
                        **kw,
                    )(x)
            if STAGE_NAMES[idx] in self.out_features:
                outputs[STAGE_NAMES[idx]] = x
            out_channels *= 2
            bottleneck *= 2
        return outputs


def build_resnet(config, *, train: bool = False, dtype: Any = jnp.float32) -> ResNet:
    """`build_resnet_backbone`: a `ResNet` from `config.model.resnets` / `.backbone`."""
    r = config.model.resnets
    return ResNet(
        depth=r.depth,
        norm=r.norm,
        num_groups=r.num_groups,
        width_per_group=r.width_per_group,
        stem_out_channels=r.stem_out_channels,
        res2_out_channels=r.res2_out_channels,
        stride_in_1x1=r.stride_in_1x1,
        res5_dilation=r.res5_dilation,
        freeze_at=config.model.backbone.freeze_at,
        out_features=tuple(r.out_features),
        train=train,
        dtype=dtype,
    )


def frozen_module_prefixes(config) -> tuple[tuple[str, ...], ...]:
    """Module paths (under `params`) that `MODEL.BACKBONE.FREEZE_AT` freezes.

    Example: freeze_at=2 with R50-FPN gives
    `(("backbone", "bottom_up", "stem"), ("backbone", "bottom_up", "res2_0"), ... "res2_2")`;
    a plain ResNet backbone (C4, DC5) has no `bottom_up` level. The C4 ROI head's res5
    (`roi_heads/res5_*`) is never frozen, as in Detectron2.
    """
    freeze_at = config.model.backbone.freeze_at
    plain = config.model.backbone.name == "build_resnet_backbone"
    prefix = ("backbone",) if plain else ("backbone", "bottom_up")
    out = [(*prefix, "stem")] if freeze_at >= 1 else []
    for idx, n in enumerate(BLOCKS_PER_STAGE[config.model.resnets.depth]):
        if freeze_at >= idx + 2:
            out += [(*prefix, f"res{idx + 2}_{b}") for b in range(n)]
    return tuple(out)


def frozen_param_mask(params: Any, config) -> Any:
    """Pytree of bools shaped like `params`: True where a leaf is frozen by `freeze_at`.

    Use it to keep frozen leaves out of the optimiser, e.g.
    `optax.multi_transform({False: tx, True: optax.set_to_zero()}, frozen_param_mask(p, cfg))`,
    and to zero their gradients. FrozenBN buffers are not in `params` at all.

    Args:
      params: the `params` collection (arrays or `ShapeDtypeStruct`s).
      config: the model config.
    """
    prefixes = frozen_module_prefixes(config)
    flat = traverse_util.flatten_dict(params)
    mask = {k: any(k[: len(p)] == p for p in prefixes) for k in flat}
    return traverse_util.unflatten_dict(mask)
