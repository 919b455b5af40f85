"""jax_rcnn.modeling: the Flax modules that own parameters, one container per meta-architecture.

A container (`GeneralizedRCNN`, `ProposalNetwork`, `RetinaNet`, `PanopticFPN`,
`SemanticSegmentor`) holds only the networks, in
Detectron2's module tree, so checkpoint names map one to one; the geometry between them
(anchors, proposals, ROIAlign, sampling, losses, postprocessing) lives in `jax_rcnn/*.py` and is
wired by `jax_rcnn.meta_arch`. `build_model(config)` builds the container that
`config.model.meta_architecture` names (`NETWORKS`, a plain dict). Every network is reached
through a method of the container:

    model = build_model(config)                        # train=False: BN uses running stats
    variables = init_variables(model, key)              # or convert a Detectron2 checkpoint
    feats = model.apply(variables, images, method=GeneralizedRCNN.features)
    logits, deltas = model.apply(variables, feats, method=GeneralizedRCNN.rpn_head)
    cls_logits, box_deltas = model.apply(variables, box_pooled, method=GeneralizedRCNN.box_head)
    mask_logits = model.apply(variables, mask_pooled, method=GeneralizedRCNN.mask_head)
    kp_logits = model.apply(variables, kp_pooled, method=GeneralizedRCNN.keypoint_head)

Shapes (NHWC, f32 outputs):
  * `features(images f32[B, H, W, 3])` -> {"p2": [B, H/4, W/4, C], ..., "p6": [B, H/64, W/64, C]};
    images are BGR, normalised `(x - pixel_mean) / pixel_std`, zero-padded bottom/right *after*
    normalisation, H and W multiples of 32.
  * `rpn_head(features dict)` -> (logits, deltas): lists over `config.model.rpn.in_features`
    of f32[B, Hi*Wi*A] and f32[B, Hi*Wi*A, 4], flat index (y * Wi + x) * A + a.
  * `box_head(pooled f32[..., S, S, C])` -> (cls_logits f32[..., K+1], box_deltas f32[..., 4K]).
  * `mask_head(pooled f32[..., S', S', C])` -> mask_logits f32[..., 2S', 2S', K].
  * `keypoint_head(pooled f32[..., 14, 14, C])` -> heatmap logits f32[..., 56, 56, K]
    (`StandardROIHeads` with `model.keypoint_on`).
  * ProposalNetwork: `features` and `rpn_head` as above (no ROI heads); on a plain ResNet
    (`rpn_R_50_C4_1x`) `features` is {"res4": f32[B, ceil(H/16), ceil(W/16), C4]}.
  * Cascade (`CascadeROIHeads`): `box_head(pooled, stage)`, `stage` a Python int ->
    (cls_logits f32[..., K+1], box_deltas f32[..., 4]) of that stage's head and predictor.
  * C4 (`Res5ROIHeads`): `res5_head(pooled f32[..., 14, 14, C4])` -> f32[..., 7, 7, C5];
    `box_head` and `mask_head` then take that res5 output (spatial mean -> predictor; deconv
    -> 14x14 logits).
  * PanopticFPN (GeneralizedRCNN's methods) and SemanticSegmentor (`features` only):
    `sem_seg(features dict)` -> semantic logits f32[B, H/4, W/4, K] (`SemSegFPNHead`,
    parameters under `sem_seg_head/p{l}_{i}` and `sem_seg_head/predictor`).
  * RetinaNet: `features(images)` -> {"p3", ..., "p7"}; `head(features dict)` ->
    (cls_logits per level f32[B, Hi*Wi*A, K], box_deltas per level f32[B, Hi*Wi*A, 4]).

Variable collections:
  * `params`: everything trainable. Paths mirror Detectron2 names, e.g.
    `backbone/bottom_up/res2_0/conv1/kernel` <-> `backbone.bottom_up.res2.0.conv1.weight`,
    `proposal_generator/rpn_head/conv/kernel`, `roi_heads/box_predictor/cls_score/kernel`.
  * `frozen`: FrozenBN buffers (`.../norm/{weight,bias,running_mean,running_var}`); pass them
    to `apply`, never differentiate or update them.
  * `batch_stats`: only with BN/SyncBN norms; `mutable=["batch_stats"]` when `train=True`.
  `frozen_param_mask(params, config)` marks the `params` leaves frozen by `FREEZE_AT`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_rcnn.modeling.fpn import FPN, build_resnet_fpn_backbone
from jax_rcnn.modeling.heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    KRCNNConvDeconvUpsampleHead,
    MaskRCNNConvUpsampleHead,
    StandardRPNHead,
)
from jax_rcnn.modeling.layers import FROZEN
from jax_rcnn.modeling.resnet import (
    BottleneckBlock,
    build_resnet,
    frozen_module_prefixes,
    frozen_param_mask,
)
from jax_rcnn.modeling.retinanet_head import RetinaNetHead
from jax_rcnn.modeling.sem_seg_head import SemSegFPNHead

__all__ = [
    "FROZEN",
    "GeneralizedRCNN",
    "NETWORKS",
    "PanopticFPN",
    "ProposalNetwork",
    "RPN",
    "CascadeROIHeads",
    "Res5ROIHeads",
    "RetinaNet",
    "SemSegFPNHead",
    "SemanticSegmentor",
    "StandardROIHeads",
    "abstract_variables",
    "build_backbone",
    "build_model",
    "frozen_module_prefixes",
    "frozen_param_mask",
    "init_variables",
    "keypoint_on",
    "roi_heads_name",
]


class RPN(nn.Module):
    """Parameter holder of Detectron2's `proposal_generator` (only `rpn_head` has weights).

    Attributes:
      rpn_head: the shared head.
      in_features: FPN levels fed to the head, in order (`MODEL.RPN.IN_FEATURES`).
    """

    rpn_head: StandardRPNHead
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")

    def __call__(self, features: dict[str, jax.Array]):
        """See `StandardRPNHead.__call__`; `features` is the FPN dict."""
        return self.rpn_head([features[f] for f in self.in_features])


class StandardROIHeads(nn.Module):
    """Parameter holder of Detectron2's `roi_heads` (box head, box predictor, mask head,
    keypoint head).

    Attributes:
      box_head: `FastRCNNConvFCHead`.
      box_predictor: `FastRCNNOutputLayers`.
      mask_head: `MaskRCNNConvUpsampleHead`, or None without masks.
      keypoint_head: `KRCNNConvDeconvUpsampleHead`, or None without keypoints.
      box_pooler_resolution: S of the box pooler (used by `initialize`).
      mask_pooler_resolution: S of the mask pooler.
      keypoint_pooler_resolution: S of the keypoint pooler.
    """

    box_head: FastRCNNConvFCHead
    box_predictor: FastRCNNOutputLayers
    mask_head: MaskRCNNConvUpsampleHead | None = None
    keypoint_head: KRCNNConvDeconvUpsampleHead | None = None
    box_pooler_resolution: int = 7
    mask_pooler_resolution: int = 14
    keypoint_pooler_resolution: int = 14

    def box(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pooled f32[..., S, S, C] -> (cls_logits f32[..., K+1], box_deltas f32[..., 4K])."""
        return self.box_predictor(self.box_head(pooled))

    def mask(self, pooled: jax.Array) -> jax.Array:
        """pooled f32[..., S, S, C] -> mask logits f32[..., 2S, 2S, K]."""
        if self.mask_head is None:
            raise ValueError("this model has no mask head (config.model.mask_on=False)")
        return self.mask_head(pooled)

    def keypoint(self, pooled: jax.Array) -> jax.Array:
        """pooled f32[..., S, S, C] -> heatmap logits f32[..., 4S, 4S, K]."""
        if self.keypoint_head is None:
            raise ValueError("this model has no keypoint head (config.model.keypoint_on=False)")
        return self.keypoint_head(pooled)

    def initialize(self, channels: int, dtype: Any) -> dict[str, jax.Array]:
        """Runs every head once on zeros of `channels` pooled channels; used by `init`."""
        s, m = self.box_pooler_resolution, self.mask_pooler_resolution
        cls_logits, box_deltas = self.box(jnp.zeros((1, s, s, channels), dtype))
        out = dict(cls_logits=cls_logits, box_deltas=box_deltas)
        if self.mask_head is not None:
            out["mask_logits"] = self.mask(jnp.zeros((1, m, m, channels), dtype))
        if self.keypoint_head is not None:
            k = self.keypoint_pooler_resolution
            out["keypoint_logits"] = self.keypoint(jnp.zeros((1, k, k, channels), dtype))
        return out


class CascadeROIHeads(nn.Module):
    """Parameter holder of Detectron2's `CascadeROIHeads`: one box head and one class-agnostic
    predictor per stage (`roi_heads.box_head.{k}`, `roi_heads.box_predictor.{k}`), one mask
    head. The box pooler is shared (no parameters).

    Attributes:
      box_head: one `FastRCNNConvFCHead` per stage (Flax names `box_head_{k}`).
      box_predictor: one `FastRCNNOutputLayers` per stage, 4 deltas each (`box_predictor_{k}`).
      mask_head: `MaskRCNNConvUpsampleHead`, or None without masks.
      box_pooler_resolution: S of the box pooler (used by `initialize`).
      mask_pooler_resolution: S of the mask pooler.
    """

    box_head: tuple[FastRCNNConvFCHead, ...]
    box_predictor: tuple[FastRCNNOutputLayers, ...]
    mask_head: MaskRCNNConvUpsampleHead | None = None
    box_pooler_resolution: int = 7
    mask_pooler_resolution: int = 14

    def box(self, pooled: jax.Array, stage: int = 0) -> tuple[jax.Array, jax.Array]:
        """pooled f32[..., S, S, C] -> stage `stage`'s (cls_logits f32[..., K+1], box_deltas
        f32[..., 4]); `stage` is a Python int."""
        return self.box_predictor[stage](self.box_head[stage](pooled))

    def mask(self, pooled: jax.Array) -> jax.Array:
        """pooled f32[..., S, S, C] -> mask logits f32[..., 2S, 2S, K]."""
        if self.mask_head is None:
            raise ValueError("this model has no mask head (config.model.mask_on=False)")
        return self.mask_head(pooled)

    def initialize(self, channels: int, dtype: Any) -> dict[str, jax.Array]:
        """Runs every stage's heads and the mask head once on zeros; used by `init`."""
        s, m = self.box_pooler_resolution, self.mask_pooler_resolution
        outs = [
            self.box(jnp.zeros((1, s, s, channels), dtype), k) for k in range(len(self.box_head))
        ]
        out = dict(cls_logits=outs[-1][0], box_deltas=outs[-1][1])
        if self.mask_head is not None:
            out["mask_logits"] = self.mask(jnp.zeros((1, m, m, channels), dtype))
        return out


class Res5ROIHeads(nn.Module):
    """Parameter holder of Detectron2's C4 `Res5ROIHeads`: res5 as the head, box predictor on
    its spatial mean, mask head (deconv, no convs) on its output.

    Attributes:
      res5: the three `BottleneckBlock`s of res5 (`roi_heads.res5.{0,1,2}`; the first strided),
        with `MODEL.RESNETS.NORM` and never frozen by `FREEZE_AT`.
      box_predictor: `FastRCNNOutputLayers` on the res5 output averaged over H and W.
      mask_head: `MaskRCNNConvUpsampleHead` on the res5 output, or None without masks.
      pooler_resolution: S of the box pooler (14; used by `initialize`).
    """

    res5: tuple[BottleneckBlock, ...]
    box_predictor: FastRCNNOutputLayers
    mask_head: MaskRCNNConvUpsampleHead | None = None
    pooler_resolution: int = 14

    def res5_head(self, pooled: jax.Array) -> jax.Array:
        """pooled f32[..., S, S, C4] -> res5 output f32[..., S/2, S/2, C5]."""
        x = pooled.reshape((-1, *pooled.shape[-3:]))
        for block in self.res5:
            x = block(x)
        return x.reshape((*pooled.shape[:-3], *x.shape[-3:]))

    def box(self, res5_out: jax.Array) -> tuple[jax.Array, jax.Array]:
        """res5 output f32[..., S', S', C5] -> (cls_logits f32[..., K+1], box_deltas f32[..., 4K]).

        Detectron2 averages the res5 output over H and W (`mean(dim=[2, 3])`) first.
        """
        mean = jnp.mean(res5_out.astype(jnp.float32), axis=(-3, -2)).astype(res5_out.dtype)
        return self.box_predictor(mean)

    def mask(self, res5_out: jax.Array) -> jax.Array:
        """res5 output f32[..., S', S', C5] -> mask logits f32[..., 2S', 2S', K]."""
        if self.mask_head is None:
            raise ValueError("this model has no mask head (config.model.mask_on=False)")
        return self.mask_head(res5_out)

    def initialize(self, channels: int, dtype: Any) -> dict[str, jax.Array]:
        """Runs res5 and every head once on zeros of `channels` (res4) channels; for `init`."""
        s = self.pooler_resolution
        x = self.res5_head(jnp.zeros((1, s, s, channels), dtype))
        cls_logits, box_deltas = self.box(x)
        out = dict(cls_logits=cls_logits, box_deltas=box_deltas)
        if self.mask_head is not None:
            out["mask_logits"] = self.mask(x)
        return out


class GeneralizedRCNN(nn.Module):
    """The parameterised networks of Faster / Mask R-CNN (see the module docstring).

    Attributes:
      backbone: ResNet-FPN, or a plain `ResNet` (C4: res4 only; DC5: res5 only).
      proposal_generator: RPN head holder.
      roi_heads: `StandardROIHeads`, `Res5ROIHeads` or `CascadeROIHeads`.
      roi_in_feature: the first feature the ROI heads pool from (sets the pooled channels
        used by `__call__` to initialise).
    """

    backbone: nn.Module
    proposal_generator: RPN
    roi_heads: StandardROIHeads | Res5ROIHeads | CascadeROIHeads
    roi_in_feature: str = "p2"

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """images f32[B, H, W, 3] -> {"p2": f32[B, H/4, W/4, C], ..., "p6": ...} (FPN), or
        {"res4": f32[B, ceil(H/16), ceil(W/16), C4]} (C4) / {"res5": ...} (DC5)."""
        return self.backbone(images)

    def rpn_head(self, features: dict[str, jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """FPN dict -> (objectness logits [B, HiWiA] per level, anchor deltas [B, HiWiA, 4])."""
        return self.proposal_generator(features)

    def box_head(self, pooled: jax.Array, stage: int | None = None) -> tuple[jax.Array, jax.Array]:
        """pooled f32[..., S, S, C] -> (cls_logits f32[..., K+1], box_deltas f32[..., 4K]).

        With `Res5ROIHeads` the input is the res5 output (`res5_head`), not the pool. With
        `CascadeROIHeads`, `stage` (a Python int) picks the stage's head; deltas are `[..., 4]`.
        """
        if stage is None:
            return self.roi_heads.box(pooled)
        return self.roi_heads.box(pooled, stage)

    def mask_head(self, pooled: jax.Array) -> jax.Array:
        """pooled f32[..., S, S, C] -> mask logits f32[..., 2S, 2S, K] (`Res5ROIHeads`: the
        res5 output f32[..., 7, 7, C5] -> f32[..., 14, 14, K])."""
        return self.roi_heads.mask(pooled)

    def keypoint_head(self, pooled: jax.Array) -> jax.Array:
        """`StandardROIHeads` with keypoints: pooled f32[..., 14, 14, C] -> heatmap logits
        f32[..., 56, 56, K]."""
        return self.roi_heads.keypoint(pooled)

    def res5_head(self, pooled: jax.Array) -> jax.Array:
        """`Res5ROIHeads` only: pooled f32[..., 14, 14, C4] -> f32[..., 7, 7, C5]."""
        return self.roi_heads.res5_head(pooled)

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        """Runs every network once (on dummy ROI features); used by `init`.

        Args:
          images: f32[B, H, W, 3], H and W multiples of 64 so that p6 is not empty.

        Returns:
          {"features", "rpn_logits", "rpn_deltas", "cls_logits", "box_deltas"[, "mask_logits"]}.
        """
        feats = self.features(images)
        logits, deltas = self.rpn_head(feats)
        c = feats[self.roi_in_feature].shape[-1]
        out = dict(features=feats, rpn_logits=logits, rpn_deltas=deltas)
        out.update(self.roi_heads.initialize(c, images.dtype))
        return out


class PanopticFPN(GeneralizedRCNN):
    """The parameterised networks of Detectron2's `PanopticFPN`: Mask R-CNN (`GeneralizedRCNN`)
    plus `sem_seg_head` (`SemSegFPNHead`) on the same FPN levels.

    Attributes:
      sem_seg_head: the semantic head.
    """

    sem_seg_head: SemSegFPNHead | None = None

    def sem_seg(self, features: dict[str, jax.Array]) -> jax.Array:
        """FPN dict -> semantic logits f32[B, H/s, W/s, K] at the common stride s."""
        return self.sem_seg_head(features)

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        """Runs every network once; used by `init` (see `GeneralizedRCNN.__call__`)."""
        out = super().__call__(images)
        out["sem_seg_logits"] = self.sem_seg(out["features"])
        return out


class SemanticSegmentor(nn.Module):
    """The parameterised networks of Detectron2's `SemanticSegmentor` (backbone + sem head).

    Attributes:
      backbone: ResNet-FPN.
      sem_seg_head: `SemSegFPNHead`.
    """

    backbone: nn.Module
    sem_seg_head: SemSegFPNHead

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """images f32[B, H, W, 3] -> {"p2": f32[B, H/4, W/4, C], ..., "p6": ...}."""
        return self.backbone(images)

    def sem_seg(self, features: dict[str, jax.Array]) -> jax.Array:
        """FPN dict -> semantic logits f32[B, H/s, W/s, K] at the common stride s."""
        return self.sem_seg_head(features)

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        """Runs every network once; used by `init`."""
        feats = self.features(images)
        return dict(features=feats, sem_seg_logits=self.sem_seg(feats))


def num_cell_anchors(config) -> int:
    """A: anchors per position, identical on every level (Detectron2 asserts the same)."""
    ag = config.model.anchor_generator
    sizes, ratios = list(ag.sizes), list(ag.aspect_ratios)
    levels = max(len(sizes), len(ratios))
    sizes = sizes * levels if len(sizes) == 1 else sizes
    ratios = ratios * levels if len(ratios) == 1 else ratios
    counts = {len(s) * len(r) for s, r in zip(sizes, ratios, strict=True)}
    if len(counts) != 1:
        raise ValueError(f"every level must have the same number of anchors, got {counts}")
    return counts.pop()


def build_backbone(config, *, train: bool = False, dtype: Any = jnp.float32) -> nn.Module:
    """`MODEL.BACKBONE.NAME`: ResNet-FPN (variables under `bottom_up` and `fpn_*`), or the plain
    ResNet of `build_resnet_backbone` (C4 / DC5: `backbone/stem`, `backbone/res2_0`, ...)."""
    if config.model.backbone.name == "build_resnet_backbone":
        return build_resnet(config, train=train, dtype=dtype)
    return build_resnet_fpn_backbone(config, train=train, dtype=dtype)


class RetinaNet(nn.Module):
    """The parameterised networks of RetinaNet (Detectron2's `RetinaNet`: backbone + head).

    Attributes:
      backbone: ResNet-FPN with the `LastLevelP6P7` top block.
      head: `RetinaNetHead`.
      in_features: pyramid levels fed to the head (`MODEL.RETINANET.IN_FEATURES`).
    """

    backbone: FPN
    head: RetinaNetHead
    in_features: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7")

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """images f32[B, H, W, 3] -> {"p3": f32[B, H/8, W/8, C], ..., "p7": ...}."""
        return self.backbone(images)

    def dense_head(self, features: dict[str, jax.Array]):
        """Pyramid dict -> (cls_logits [B, HiWiA, K] per level, box_deltas [B, HiWiA, 4])."""
        return self.head([features[f] for f in self.in_features])

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        """Runs every network once; used by `init`. images f32[B, H, W, 3], H, W multiples of 32."""
        feats = self.features(images)
        logits, deltas = self.dense_head(feats)
        return dict(features=feats, cls_logits=logits, box_deltas=deltas)


class ProposalNetwork(nn.Module):
    """The parameterised networks of Detectron2's `ProposalNetwork` (backbone + RPN head).

    Attributes:
      backbone: ResNet-FPN (`rpn_R_50_FPN_1x`), or a plain `ResNet` (`rpn_R_50_C4_1x`: res4).
      proposal_generator: RPN head holder.
    """

    backbone: nn.Module
    proposal_generator: RPN

    def features(self, images: jax.Array) -> dict[str, jax.Array]:
        """images f32[B, H, W, 3] -> {"p2": f32[B, H/4, W/4, C], ..., "p6": ...} (FPN), or
        {"res4": f32[B, ceil(H/16), ceil(W/16), C4]} (C4)."""
        return self.backbone(images)

    def rpn_head(self, features: dict[str, jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """Feature dict -> (objectness logits [B, HiWiA] per level, anchor deltas [B, HiWiA, 4])
        over `rpn.in_features` (one level for C4)."""
        return self.proposal_generator(features)

    def __call__(self, images: jax.Array) -> dict[str, Any]:
        """Runs every network once; used by `init`. images f32[B, H, W, 3] (FPN: H, W multiples
        of 64 so that p6 is not empty)."""
        feats = self.features(images)
        logits, deltas = self.rpn_head(feats)
        return dict(features=feats, rpn_logits=logits, rpn_deltas=deltas)


def build_model(config, *, train: bool = False, dtype: Any = None) -> nn.Module:
    """The networks of `config.model.meta_architecture` (`GeneralizedRCNN`, `ProposalNetwork`,
    `RetinaNet`).

    Args:
      config: a jax_rcnn config (`configs/*.py`).
      train: BN/SyncBN layers use batch statistics (and update `batch_stats`). FrozenBN and
        everything else behave identically in both modes.
      dtype: computation dtype; default `config.train.compute_dtype` ("float32" when absent).
        Parameters are always f32; head outputs are f32.

    Raises:
      ValueError: an unknown meta-architecture.
    """
    if dtype is None:
        dtype = jnp.dtype(config.get("train", {}).get("compute_dtype", "float32"))
    name = config.model.meta_architecture
    if name not in NETWORKS:
        raise ValueError(
            f"config.model.meta_architecture = {name!r}: not one of {sorted(NETWORKS)}"
        )
    return NETWORKS[name](config, train=train, dtype=dtype)


def build_retinanet(config, *, train: bool, dtype: Any) -> RetinaNet:
    """`RetinaNet` networks for `config.model` (`model.retinanet`, the backbone keys)."""
    r = config.model.retinanet
    return RetinaNet(
        backbone=build_backbone(config, train=train, dtype=dtype),
        head=RetinaNetHead(
            num_classes=r.num_classes,
            num_anchors=num_cell_anchors(config),
            num_convs=r.num_convs,
            prior_prob=r.prior_prob,
            norm=r.norm,
            dtype=dtype,
        ),
        in_features=tuple(r.in_features),
    )


def build_rpn(config, *, dtype: Any) -> RPN:
    """Detectron2's `proposal_generator` holder for `config.model.rpn`."""
    m = config.model
    return RPN(
        StandardRPNHead(
            num_anchors=num_cell_anchors(config),
            conv_dims=tuple(m.rpn.conv_dims),
            dtype=dtype,
        ),
        in_features=tuple(m.rpn.in_features),
    )


def build_proposal_network(config, *, train: bool, dtype: Any) -> ProposalNetwork:
    """`ProposalNetwork` networks for `config.model` (backbone and RPN head)."""
    return ProposalNetwork(
        backbone=build_backbone(config, train=train, dtype=dtype),
        proposal_generator=build_rpn(config, dtype=dtype),
    )


def build_res5_head(config, *, train: bool, dtype: Any) -> tuple[BottleneckBlock, ...]:
    """Detectron2's `Res5ROIHeads._build_res5_block`: 3 bottleneck blocks, the first with
    stride 2, in res4 width -> bottleneck x8 -> out `res2_out_channels` x8, `RESNETS.NORM`
    (not frozen: `FREEZE_AT` only reaches the backbone), no dilation."""
    r = config.model.resnets
    return tuple(
        BottleneckBlock(
            r.res2_out_channels * 8,
            r.num_groups * r.width_per_group * 8,
            stride=2 if b == 0 else 1,
            num_groups=r.num_groups,
            stride_in_1x1=r.stride_in_1x1,
            norm=r.norm,
            train=train,
            dtype=dtype,
        )
        for b in range(3)
    )


def build_box_head(config, *, train: bool, dtype: Any) -> FastRCNNConvFCHead:
    """Detectron2's `FastRCNNConvFCHead` for `config.model.roi_box_head`."""
    bh = config.model.roi_box_head
    return FastRCNNConvFCHead(
        num_conv=bh.num_conv,
        conv_dim=bh.conv_dim,
        num_fc=bh.num_fc,
        fc_dim=bh.fc_dim,
        norm=bh.norm,
        train=train,
        dtype=dtype,
    )


def build_generalized_rcnn(config, *, train: bool, dtype: Any) -> GeneralizedRCNN:
    """`GeneralizedRCNN` networks for `config.model` (RPN, ROI heads of
    `roi_heads.name`: `StandardROIHeads`, `Res5ROIHeads` or `CascadeROIHeads`, mask head
    when on)."""
    m = config.model
    bh, mh = m.roi_box_head, m.roi_mask_head
    mask_head = None
    if m.mask_on:
        mask_head = MaskRCNNConvUpsampleHead(
            num_classes=1 if mh.cls_agnostic_mask else m.roi_heads.num_classes,
            num_conv=mh.num_conv,
            conv_dim=mh.conv_dim,
            norm=mh.norm,
            train=train,
            dtype=dtype,
        )
    box_predictor = FastRCNNOutputLayers(
        num_classes=m.roi_heads.num_classes,
        cls_agnostic_bbox_reg=bh.cls_agnostic_bbox_reg,
        dtype=dtype,
    )
    if roi_heads_name(config) == "Res5ROIHeads":
        roi_heads = Res5ROIHeads(
            res5=build_res5_head(config, train=train, dtype=dtype),
            box_predictor=box_predictor,
            mask_head=mask_head,
            pooler_resolution=bh.pooler_resolution,
        )
    elif roi_heads_name(config) == "CascadeROIHeads":
        num_stages = len(m.roi_box_cascade_head.ious)
        roi_heads = CascadeROIHeads(
            box_head=tuple(
                build_box_head(config, train=train, dtype=dtype) for _ in range(num_stages)
            ),
            box_predictor=tuple(box_predictor.clone() for _ in range(num_stages)),
            mask_head=mask_head,
            box_pooler_resolution=bh.pooler_resolution,
            mask_pooler_resolution=mh.pooler_resolution,
        )
    else:
        keypoint_head, kp_resolution = None, 14
        if keypoint_on(config):
            kh = m.roi_keypoint_head
            kp_resolution = kh.pooler_resolution
            keypoint_head = KRCNNConvDeconvUpsampleHead(
                num_keypoints=kh.num_keypoints, conv_dims=tuple(kh.conv_dims), dtype=dtype
            )
        roi_heads = StandardROIHeads(
            box_head=build_box_head(config, train=train, dtype=dtype),
            box_predictor=box_predictor,
            mask_head=mask_head,
            keypoint_head=keypoint_head,
            box_pooler_resolution=bh.pooler_resolution,
            mask_pooler_resolution=mh.pooler_resolution,
            keypoint_pooler_resolution=kp_resolution,
        )
    return GeneralizedRCNN(
        backbone=build_backbone(config, train=train, dtype=dtype),
        proposal_generator=build_rpn(config, dtype=dtype),
        roi_heads=roi_heads,
        roi_in_feature=m.roi_heads.in_features[0],
    )


def build_sem_seg_head(config, *, train: bool, dtype: Any) -> SemSegFPNHead:
    """Detectron2's `SemSegFPNHead` for `config.model.sem_seg_head`."""
    h = config.model.sem_seg_head
    return SemSegFPNHead(
        num_classes=h.num_classes,
        conv_dims=h.convs_dim,
        common_stride=h.common_stride,
        norm=h.norm,
        in_features=tuple(h.in_features),
        train=train,
        dtype=dtype,
    )


def build_panoptic_fpn(config, *, train: bool, dtype: Any) -> PanopticFPN:
    """`PanopticFPN` networks: `build_generalized_rcnn`'s plus the semantic head."""
    rcnn = build_generalized_rcnn(config, train=train, dtype=dtype)
    return PanopticFPN(
        backbone=rcnn.backbone,
        proposal_generator=rcnn.proposal_generator,
        roi_heads=rcnn.roi_heads,
        roi_in_feature=rcnn.roi_in_feature,
        sem_seg_head=build_sem_seg_head(config, train=train, dtype=dtype),
    )


def build_semantic_segmentor(config, *, train: bool, dtype: Any) -> SemanticSegmentor:
    """`SemanticSegmentor` networks: ResNet-FPN and the semantic head."""
    return SemanticSegmentor(
        backbone=build_backbone(config, train=train, dtype=dtype),
        sem_seg_head=build_sem_seg_head(config, train=train, dtype=dtype),
    )


def keypoint_on(config) -> bool:
    """`MODEL.KEYPOINT_ON` (`configs.common.keypoint` adds the key; absent means False)."""
    return bool(config.model.get("keypoint_on", False))


def roi_heads_name(config) -> str:
    """`MODEL.ROI_HEADS.NAME`: "StandardROIHeads" (default), "Res5ROIHeads" (C4) or
    "CascadeROIHeads"."""
    return config.model.roi_heads.get("name", "StandardROIHeads")


# `MODEL.META_ARCHITECTURE` -> builder of its networks (`jax_rcnn.meta_arch` wires them).
NETWORKS = {
    "GeneralizedRCNN": build_generalized_rcnn,
    "RetinaNet": build_retinanet,
    "ProposalNetwork": build_proposal_network,
    "PanopticFPN": build_panoptic_fpn,
    "SemanticSegmentor": build_semantic_segmentor,
}


def init_variables(
    model: nn.Module, key: jax.Array, image_size: tuple[int, int] = (64, 64)
) -> dict[str, Any]:
    """Detectron2's initialisation of every variable (`params`, `frozen`, ...)."""
    return model.init(key, jnp.zeros((1, *image_size, 3), jnp.float32))


def abstract_variables(config) -> dict[str, Any]:
    """Shapes and dtypes of every variable (`jax.ShapeDtypeStruct` leaves), no allocation."""
    model = build_model(config)
    return jax.eval_shape(lambda k: init_variables(model, k), jax.random.key(0))
