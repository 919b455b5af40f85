"""Detectron2 YAML config -> jax_rcnn config: `from_detectron2` and its key tables.

`from_detectron2("mask_rcnn_R_50_FPN_3x.yaml")` reads a Detectron2 YAML config (its `_BASE_`
chain included, or a full `cfg.dump()`) and returns the jax_rcnn config with the values
Detectron2 would use (`jax_rcnn.config.from_detectron2` is the same function).
`detectron2_config(path)` is the flat config Detectron2 itself builds from the file. Not to be
confused with `configs/detectron2_yaml.py`, the config file that lets `train.py --config` take a
YAML path (it calls `from_detectron2`).

How `from_detectron2` treats a Detectron2 key. It first builds the config Detectron2 itself
would build (its defaults, `detectron2/config/defaults.py`, merged with the YAML chain under
yacs' rules), then looks every key up in exactly one of these tables:

* `_MAPPED`: the key has a jax_rcnn counterpart (`MODEL.RPN.NMS_THRESH` ->
  `model.rpn.nms_thresh`); the value is converted (lists -> tuples, ...) and assigned.
* `_NO_EFFECT`: the key does not change what is computed (device, output dir, logging,
  cudnn benchmark, ...); any value is accepted and dropped. `DATASETS.TRAIN` / `TEST` name
  entries of Detectron2's dataset registry, which jax_rcnn does not have: they are recorded
  as `config.data.name` (see `_dataset_name`) and `config.data.train.name` / `test.name`;
  Detectron2's builtin COCO names resolve to files under `$DETECTRON2_DATASETS`
  (`jax_rcnn.data.builtin`), other names need `config.data.<split>.json/.images`.
* `_RESTRICTED`: the key selects a feature; only the values jax_rcnn implements are accepted
  (`MODEL.META_ARCHITECTURE` must be "GeneralizedRCNN", `MODEL.KEYPOINT_ON` false, ...);
  anything else is a `ValueError` naming the key and the value. A mapped key may be
  restricted too (`MODEL.RESNETS.NORM` must be one of `NORMS`).
* `_INERT`: the key (or a whole group, e.g. `MODEL.RETINANET.`) only matters for a feature
  that `_RESTRICTED` keeps off, so any value is accepted.

A key Detectron2 does not have is a `ValueError` naming it, as in Detectron2.

Decisions:

* `SOLVER.AMP.ENABLED: true` (fp16 autocast with a loss scaler) becomes
  `config.train.compute_dtype = "bfloat16"`, jax_rcnn's mixed-precision train step (bfloat16
  needs no loss scaling). Like Detectron2's AMP it does not change inference.
* `SEED < 0` (Detectron2: a fresh random seed every run) becomes seed 0; jax_rcnn runs are
  always seeded.
* `SOLVER.WEIGHT_DECAY_BIAS` is accepted when null or equal to `SOLVER.WEIGHT_DECAY` (the
  only behaviour jax_rcnn implements).
* `INPUT.MIN_SIZE_TRAIN` may be an int (as `ResizeShortestEdge` accepts): `n` is `(n,)` for
  "choice" sampling and `(n, n)` for "range".
* jax_rcnn-only keys get Detectron2's behaviour where it serves the user:
  `input.pad_mode = "size_divisibility"` (Detectron2's exact padding, for evaluation and
  inference) and `input.size_divisibility` = the stride of the last FPN input (32 for
  res2-res5; 0 for a plain ResNet, C4 and DC5, which Detectron2 does not pad to a multiple).
  Training uses `input.auto_buckets` (at most `input.max_buckets` padded shapes chosen for the
  data, `jax_rcnn.data.buckets`) instead of one compile per batch shape.
* `MODEL.BACKBONE.NAME` / `MODEL.ROI_HEADS.NAME` choose the layout of
  `configs.common.base_config` (FPN; C4 = `build_resnet_backbone` + `Res5ROIHeads`; DC5 =
  `build_resnet_backbone` + `StandardROIHeads`; a plain-ResNet `ProposalNetwork` is C4, or DC5
  with `RES5_DILATION` 2); the keys a layout does not read (C4: `MODEL.FPN.*`, the box-head
  layers, the mask pooler) are dropped, as Detectron2 ignores them.
* `MODEL.ROI_HEADS.NAME: CascadeROIHeads` adds `model.roi_box_cascade_head`
  (`configs.common.cascade`) and maps `MODEL.ROI_BOX_CASCADE_HEAD.IOUS` / `BBOX_REG_WEIGHTS` onto
  it (one entry per stage; `validate` checks the two lengths agree); under another ROI head
  those keys are ignored, as in Detectron2.
* `DATASETS.TRAIN` / `TEST` become `config.data.train.name` / `test.name`: a Detectron2 builtin
  name resolves to its files under `$DETECTRON2_DATASETS` (`jax_rcnn.data.builtin`) unless
  `config.data.<split>.json/.images` are set.
"""

from __future__ import annotations

import ast
import copy
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import ml_collections
import yaml

from jax_rcnn.config import (
    BACKBONE_NAMES,
    BBOX_REG_LOSS_TYPES,
    FPN_LEVELS,
    META_ARCHITECTURES,
    NORMS,
    PLAIN_BACKBONE,
    RCNN_META_ARCHITECTURES,
    ROI_HEADS_NAMES,
    _common,
    _flatten,
    validate,
)

# ---------------------------------------------------------------------------------------------
# Detectron2's defaults (`detectron2/config/defaults.py`, v0.6 + main): every key it has.
# ---------------------------------------------------------------------------------------------
_D2_DEFAULTS: dict[str, Any] = {
    "VERSION": 2,
    "MODEL": {
        "LOAD_PROPOSALS": False,
        "MASK_ON": False,
        "KEYPOINT_ON": False,
        "DEVICE": "cuda",
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": "",
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
        "PROPOSAL_GENERATOR": {"NAME": "RPN", "MIN_SIZE": 0},
        "ANCHOR_GENERATOR": {
            "NAME": "DefaultAnchorGenerator",
            "SIZES": [[32, 64, 128, 256, 512]],
            "ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
            "ANGLES": [[-90, 0, 90]],
            "OFFSET": 0.0,
        },
        "RPN": {
            "HEAD_NAME": "StandardRPNHead",
            "IN_FEATURES": ["res4"],
            "BOUNDARY_THRESH": -1,
            "IOU_THRESHOLDS": [0.3, 0.7],
            "IOU_LABELS": [0, -1, 1],
            "BATCH_SIZE_PER_IMAGE": 256,
            "POSITIVE_FRACTION": 0.5,
            "BBOX_REG_LOSS_TYPE": "smooth_l1",
            "BBOX_REG_LOSS_WEIGHT": 1.0,
            "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
            "SMOOTH_L1_BETA": 0.0,
            "LOSS_WEIGHT": 1.0,
            "PRE_NMS_TOPK_TRAIN": 12000,
            "PRE_NMS_TOPK_TEST": 6000,
            "POST_NMS_TOPK_TRAIN": 2000,
            "POST_NMS_TOPK_TEST": 1000,
            "NMS_THRESH": 0.7,
            "CONV_DIMS": [-1],
        },
        "ROI_HEADS": {
            "NAME": "Res5ROIHeads",
            "NUM_CLASSES": 80,
            "IN_FEATURES": ["res4"],
            "IOU_THRESHOLDS": [0.5],
            "IOU_LABELS": [0, 1],
            "BATCH_SIZE_PER_IMAGE": 512,
            "POSITIVE_FRACTION": 0.25,
            "SCORE_THRESH_TEST": 0.05,
            "NMS_THRESH_TEST": 0.5,
            "PROPOSAL_APPEND_GT": True,
        },
        "ROI_BOX_HEAD": {
            "NAME": "",
            "BBOX_REG_LOSS_TYPE": "smooth_l1",
            "BBOX_REG_LOSS_WEIGHT": 1.0,
            "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
            "SMOOTH_L1_BETA": 0.0,
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "POOLER_TYPE": "ROIAlignV2",
            "NUM_FC": 0,
            "FC_DIM": 1024,
            "NUM_CONV": 0,
            "CONV_DIM": 256,
            "NORM": "",
            "CLS_AGNOSTIC_BBOX_REG": False,
            "TRAIN_ON_PRED_BOXES": False,
            "USE_FED_LOSS": False,
            "USE_SIGMOID_CE": False,
            "FED_LOSS_FREQ_WEIGHT_POWER": 0.5,
            "FED_LOSS_NUM_CLASSES": 50,
        },
        "ROI_BOX_CASCADE_HEAD": {
            "BBOX_REG_WEIGHTS": (
                (10.0, 10.0, 5.0, 5.0),
                (20.0, 20.0, 10.0, 10.0),
                (30.0, 30.0, 15.0, 15.0),
            ),
            "IOUS": (0.5, 0.6, 0.7),
        },
        "ROI_MASK_HEAD": {
            "NAME": "MaskRCNNConvUpsampleHead",
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "NUM_CONV": 0,
            "CONV_DIM": 256,
            "NORM": "",
            "CLS_AGNOSTIC_MASK": False,
            "POOLER_TYPE": "ROIAlignV2",
        },
        "ROI_KEYPOINT_HEAD": {
            "NAME": "KRCNNConvDeconvUpsampleHead",
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "CONV_DIMS": (512,) * 8,
            "NUM_KEYPOINTS": 17,
            "MIN_KEYPOINTS_PER_IMAGE": 1,
            "NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS": True,
            "LOSS_WEIGHT": 1.0,
            "POOLER_TYPE": "ROIAlignV2",
        },
        "SEM_SEG_HEAD": {
            "NAME": "SemSegFPNHead",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 54,
            "CONVS_DIM": 128,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "LOSS_WEIGHT": 1.0,
        },
        "PANOPTIC_FPN": {
            "INSTANCE_LOSS_WEIGHT": 1.0,
            "COMBINE": {
                "ENABLED": True,
                "OVERLAP_THRESH": 0.5,
                "STUFF_AREA_LIMIT": 4096,
                "INSTANCES_CONFIDENCE_THRESH": 0.5,
            },
        },
        "RETINANET": {
            "NUM_CLASSES": 80,
            "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
            "NUM_CONVS": 4,
            "IOU_THRESHOLDS": [0.4, 0.5],
            "IOU_LABELS": [0, -1, 1],
            "PRIOR_PROB": 0.01,
            "SCORE_THRESH_TEST": 0.05,
            "TOPK_CANDIDATES_TEST": 1000,
            "NMS_THRESH_TEST": 0.5,
            "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
            "FOCAL_LOSS_GAMMA": 2.0,
            "FOCAL_LOSS_ALPHA": 0.25,
            "SMOOTH_L1_LOSS_BETA": 0.1,
            "BBOX_REG_LOSS_TYPE": "smooth_l1",
            "NORM": "",
        },
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
            "DEFORM_MODULATED": False,
            "DEFORM_NUM_GROUPS": 1,
        },
    },
    "INPUT": {
        "MIN_SIZE_TRAIN": (800,),
        "MIN_SIZE_TRAIN_SAMPLING": "choice",
        "MAX_SIZE_TRAIN": 1333,
        "MIN_SIZE_TEST": 800,
        "MAX_SIZE_TEST": 1333,
        "RANDOM_FLIP": "horizontal",
        "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9]},
        "FORMAT": "BGR",
        "MASK_FORMAT": "polygon",
    },
    "DATASETS": {
        "TRAIN": (),
        "PROPOSAL_FILES_TRAIN": (),
        "PRECOMPUTED_PROPOSAL_TOPK_TRAIN": 2000,
        "TEST": (),
        "PROPOSAL_FILES_TEST": (),
        "PRECOMPUTED_PROPOSAL_TOPK_TEST": 1000,
    },
    "DATALOADER": {
        "NUM_WORKERS": 4,
        "ASPECT_RATIO_GROUPING": True,
        "SAMPLER_TRAIN": "TrainingSampler",
        "REPEAT_THRESHOLD": 0.0,
        "REPEAT_SQRT": True,
        "FILTER_EMPTY_ANNOTATIONS": True,
    },
    "SOLVER": {
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR",
        "MAX_ITER": 40000,
        "BASE_LR": 0.001,
        "BASE_LR_END": 0.0,
        "MOMENTUM": 0.9,
        "NESTEROV": False,
        "WEIGHT_DECAY": 0.0001,
        "WEIGHT_DECAY_NORM": 0.0,
        "GAMMA": 0.1,
        "STEPS": (30000,),
        "NUM_DECAYS": 3,
        "WARMUP_FACTOR": 1.0 / 1000,
        "WARMUP_ITERS": 1000,
        "WARMUP_METHOD": "linear",
        "RESCALE_INTERVAL": False,
        "CHECKPOINT_PERIOD": 5000,
        "IMS_PER_BATCH": 16,
        "REFERENCE_WORLD_SIZE": 0,
        "BIAS_LR_FACTOR": 1.0,
        "WEIGHT_DECAY_BIAS": None,
        "CLIP_GRADIENTS": {
            "ENABLED": False,
            "CLIP_TYPE": "value",
            "CLIP_VALUE": 1.0,
            "NORM_TYPE": 2.0,
        },
        "AMP": {"ENABLED": False},
    },
    "TEST": {
        "EXPECTED_RESULTS": [],
        "EVAL_PERIOD": 0,
        "KEYPOINT_OKS_SIGMAS": [],
        "DETECTIONS_PER_IMAGE": 100,
        "AUG": {
            "ENABLED": False,
            "MIN_SIZES": (400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
            "MAX_SIZE": 4000,
            "FLIP": True,
        },
        "PRECISE_BN": {"ENABLED": False, "NUM_ITER": 200},
    },
    "OUTPUT_DIR": "./output",
    "SEED": -1,
    "CUDNN_BENCHMARK": False,
    "VIS_PERIOD": 0,
    "FLOAT32_PRECISION": "",
    "GLOBAL": {"HACK": 1.0},
}


# ---------------------------------------------------------------------------------------------
# Converters: Detectron2 value -> jax_rcnn value (raise ValueError/TypeError when impossible).
# ---------------------------------------------------------------------------------------------
def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise TypeError(f"expected an integer, got {v!r}")
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    return float(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true/false, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _seq(v: Any) -> Sequence[Any]:
    if not isinstance(v, list | tuple):
        raise TypeError(f"expected a list, got {v!r}")
    return v


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(_int(x) for x in _seq(v))


def _floats(v: Any) -> tuple[float, ...]:
    return tuple(_float(x) for x in _seq(v))


def _strs(v: Any) -> tuple[str, ...]:
    return tuple(_str(x) for x in _seq(v))


def _per_level(conv: Callable[[Any], Any]) -> Callable[[Any], tuple[tuple[Any, ...], ...]]:
    """`list[list[x]]` per feature level; a flat `list[x]` is one entry for every level.

    This is `anchor_generator.py:_broadcast_params`: `SIZES: [32, 64]` means sizes 32 and 64
    on every level, i.e. `((32, 64),)`.
    """

    def convert(v: Any) -> tuple[tuple[Any, ...], ...]:
        v = _seq(v)
        if v and not isinstance(v[0], list | tuple):
            v = [v]
        return tuple(tuple(conv(x) for x in _seq(level)) for level in v)

    return convert


def _number(v: Any) -> int | float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    return v


def _min_size_train(v: Any) -> tuple[int, ...]:
    return (_int(v),) if isinstance(v, int | float) and not isinstance(v, bool) else _ints(v)


def _seed(v: Any) -> int:
    return max(_int(v), 0)


def _amp_dtype(v: Any) -> str:
    return "bfloat16" if _bool(v) else "float32"


# ---------------------------------------------------------------------------------------------
# The tables. Every key of `_D2_DEFAULTS` has exactly one rule (tests check this): mapped,
# no effect, inert, or restricted (only restricted may overlap with mapped).
# ---------------------------------------------------------------------------------------------
_MAPPED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "SEED": ("seed", _seed),
    "MODEL.META_ARCHITECTURE": ("model.meta_architecture", _str),
    "MODEL.BACKBONE.NAME": ("model.backbone.name", _str),
    "MODEL.MASK_ON": ("model.mask_on", _bool),
    "MODEL.WEIGHTS": ("model.weights", _str),
    "MODEL.PIXEL_MEAN": ("model.pixel_mean", _floats),
    "MODEL.PIXEL_STD": ("model.pixel_std", _floats),
    "MODEL.BACKBONE.FREEZE_AT": ("model.backbone.freeze_at", _int),
    "MODEL.RESNETS.DEPTH": ("model.resnets.depth", _int),
    "MODEL.RESNETS.NORM": ("model.resnets.norm", _str),
    "MODEL.RESNETS.NUM_GROUPS": ("model.resnets.num_groups", _int),
    "MODEL.RESNETS.WIDTH_PER_GROUP": ("model.resnets.width_per_group", _int),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": ("model.resnets.stem_out_channels", _int),
    "MODEL.RESNETS.RES2_OUT_CHANNELS": ("model.resnets.res2_out_channels", _int),
    "MODEL.RESNETS.STRIDE_IN_1X1": ("model.resnets.stride_in_1x1", _bool),
    "MODEL.RESNETS.RES5_DILATION": ("model.resnets.res5_dilation", _int),
    "MODEL.RESNETS.OUT_FEATURES": ("model.resnets.out_features", _strs),
    "MODEL.FPN.IN_FEATURES": ("model.fpn.in_features", _strs),
    "MODEL.FPN.OUT_CHANNELS": ("model.fpn.out_channels", _int),
    "MODEL.FPN.NORM": ("model.fpn.norm", _str),
    "MODEL.FPN.FUSE_TYPE": ("model.fpn.fuse_type", _str),
    "MODEL.ANCHOR_GENERATOR.SIZES": ("model.anchor_generator.sizes", _per_level(_number)),
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": (
        "model.anchor_generator.aspect_ratios",
        _per_level(_float),
    ),
    "MODEL.ANCHOR_GENERATOR.OFFSET": ("model.anchor_generator.offset", _float),
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": ("model.rpn.min_size", _float),
    "MODEL.RPN.IN_FEATURES": ("model.rpn.in_features", _strs),
    "MODEL.RPN.CONV_DIMS": ("model.rpn.conv_dims", _ints),
    "MODEL.RPN.BOUNDARY_THRESH": ("model.rpn.boundary_thresh", _int),
    "MODEL.RPN.IOU_THRESHOLDS": ("model.rpn.iou_thresholds", _floats),
    "MODEL.RPN.IOU_LABELS": ("model.rpn.iou_labels", _ints),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": ("model.rpn.batch_size_per_image", _int),
    "MODEL.RPN.POSITIVE_FRACTION": ("model.rpn.positive_fraction", _float),
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": ("model.rpn.bbox_reg_loss_type", _str),
    "MODEL.RPN.BBOX_REG_LOSS_WEIGHT": ("model.rpn.bbox_reg_loss_weight", _float),
    "MODEL.RPN.BBOX_REG_WEIGHTS": ("model.rpn.bbox_reg_weights", _floats),
    "MODEL.RPN.SMOOTH_L1_BETA": ("model.rpn.smooth_l1_beta", _float),
    "MODEL.RPN.LOSS_WEIGHT": ("model.rpn.loss_weight", _float),
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": ("model.rpn.pre_nms_topk_train", _int),
    "MODEL.RPN.PRE_NMS_TOPK_TEST": ("model.rpn.pre_nms_topk_test", _int),
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": ("model.rpn.post_nms_topk_train", _int),
    "MODEL.RPN.POST_NMS_TOPK_TEST": ("model.rpn.post_nms_topk_test", _int),
    "MODEL.RPN.NMS_THRESH": ("model.rpn.nms_thresh", _float),
    "MODEL.ROI_HEADS.NAME": ("model.roi_heads.name", _str),
    "MODEL.ROI_HEADS.NUM_CLASSES": ("model.roi_heads.num_classes", _int),
    "MODEL.ROI_HEADS.IN_FEATURES": ("model.roi_heads.in_features", _strs),
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": ("model.roi_heads.iou_thresholds", _floats),
    "MODEL.ROI_HEADS.IOU_LABELS": ("model.roi_heads.iou_labels", _ints),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": ("model.roi_heads.batch_size_per_image", _int),
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": ("model.roi_heads.positive_fraction", _float),
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": ("model.roi_heads.score_thresh_test", _float),
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": ("model.roi_heads.nms_thresh_test", _float),
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": ("model.roi_heads.proposal_append_gt", _bool),
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS": ("model.roi_box_cascade_head.ious", _floats),
    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS": (
        "model.roi_box_cascade_head.bbox_reg_weights",
        _per_level(_float),
    ),
    "MODEL.ROI_BOX_HEAD.NUM_CONV": ("model.roi_box_head.num_conv", _int),
    "MODEL.ROI_BOX_HEAD.CONV_DIM": ("model.roi_box_head.conv_dim", _int),
    "MODEL.ROI_BOX_HEAD.NUM_FC": ("model.roi_box_head.num_fc", _int),
    "MODEL.ROI_BOX_HEAD.FC_DIM": ("model.roi_box_head.fc_dim", _int),
    "MODEL.ROI_BOX_HEAD.NORM": ("model.roi_box_head.norm", _str),
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": ("model.roi_box_head.pooler_resolution", _int),
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": ("model.roi_box_head.pooler_sampling_ratio", _int),
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": ("model.roi_box_head.pooler_type", _str),
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": ("model.roi_box_head.bbox_reg_weights", _floats),
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": ("model.roi_box_head.bbox_reg_loss_type", _str),
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT": ("model.roi_box_head.bbox_reg_loss_weight", _float),
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": ("model.roi_box_head.smooth_l1_beta", _float),
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": ("model.roi_box_head.cls_agnostic_bbox_reg", _bool),
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": ("model.roi_box_head.use_sigmoid_ce", _bool),
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": ("model.roi_box_head.use_fed_loss", _bool),
    "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES": ("model.roi_box_head.fed_loss_num_classes", _int),
    "MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER": (
        "model.roi_box_head.fed_loss_freq_weight_power",
        _float,
    ),
    "MODEL.ROI_MASK_HEAD.NUM_CONV": ("model.roi_mask_head.num_conv", _int),
    "MODEL.ROI_MASK_HEAD.CONV_DIM": ("model.roi_mask_head.conv_dim", _int),
    "MODEL.ROI_MASK_HEAD.NORM": ("model.roi_mask_head.norm", _str),
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": ("model.roi_mask_head.pooler_resolution", _int),
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": (
        "model.roi_mask_head.pooler_sampling_ratio",
        _int,
    ),
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": ("model.roi_mask_head.pooler_type", _str),
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": ("model.roi_mask_head.cls_agnostic_mask", _bool),
    "MODEL.SEM_SEG_HEAD.NAME": ("model.sem_seg_head.name", _str),
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ("model.sem_seg_head.in_features", _strs),
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": ("model.sem_seg_head.ignore_value", _int),
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": ("model.sem_seg_head.num_classes", _int),
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": ("model.sem_seg_head.convs_dim", _int),
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": ("model.sem_seg_head.common_stride", _int),
    "MODEL.SEM_SEG_HEAD.NORM": ("model.sem_seg_head.norm", _str),
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": ("model.sem_seg_head.loss_weight", _float),
    "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT": (
        "model.panoptic_fpn.instance_loss_weight",
        _float,
    ),
    "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH": (
        "model.panoptic_fpn.combine.overlap_thresh",
        _float,
    ),
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT": (
        "model.panoptic_fpn.combine.stuff_area_limit",
        _int,
    ),
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH": (
        "model.panoptic_fpn.combine.instances_confidence_thresh",
        _float,
    ),
    "MODEL.KEYPOINT_ON": ("model.keypoint_on", _bool),
    "MODEL.ROI_KEYPOINT_HEAD.NAME": ("model.roi_keypoint_head.name", _str),
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION": (
        "model.roi_keypoint_head.pooler_resolution",
        _int,
    ),
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO": (
        "model.roi_keypoint_head.pooler_sampling_ratio",
        _int,
    ),
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE": ("model.roi_keypoint_head.pooler_type", _str),
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS": ("model.roi_keypoint_head.conv_dims", _ints),
    "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": ("model.roi_keypoint_head.num_keypoints", _int),
    "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE": (
        "model.roi_keypoint_head.min_keypoints_per_image",
        _int,
    ),
    "MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS": (
        "model.roi_keypoint_head.normalize_loss_by_visible_keypoints",
        _bool,
    ),
    "MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT": ("model.roi_keypoint_head.loss_weight", _float),
    "TEST.KEYPOINT_OKS_SIGMAS": ("test.keypoint_oks_sigmas", _floats),
    "MODEL.RETINANET.NUM_CLASSES": ("model.retinanet.num_classes", _int),
    "MODEL.RETINANET.IN_FEATURES": ("model.retinanet.in_features", _strs),
    "MODEL.RETINANET.NUM_CONVS": ("model.retinanet.num_convs", _int),
    "MODEL.RETINANET.NORM": ("model.retinanet.norm", _str),
    "MODEL.RETINANET.PRIOR_PROB": ("model.retinanet.prior_prob", _float),
    "MODEL.RETINANET.IOU_THRESHOLDS": ("model.retinanet.iou_thresholds", _floats),
    "MODEL.RETINANET.IOU_LABELS": ("model.retinanet.iou_labels", _ints),
    "MODEL.RETINANET.BBOX_REG_WEIGHTS": ("model.retinanet.bbox_reg_weights", _floats),
    "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": ("model.retinanet.bbox_reg_loss_type", _str),
    "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA": ("model.retinanet.smooth_l1_loss_beta", _float),
    "MODEL.RETINANET.FOCAL_LOSS_ALPHA": ("model.retinanet.focal_loss_alpha", _float),
    "MODEL.RETINANET.FOCAL_LOSS_GAMMA": ("model.retinanet.focal_loss_gamma", _float),
    "MODEL.RETINANET.SCORE_THRESH_TEST": ("model.retinanet.score_thresh_test", _float),
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST": ("model.retinanet.topk_candidates_test", _int),
    "MODEL.RETINANET.NMS_THRESH_TEST": ("model.retinanet.nms_thresh_test", _float),
    "INPUT.FORMAT": ("input.format", _str),
    "INPUT.MIN_SIZE_TRAIN": ("input.min_size_train", _min_size_train),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("input.min_size_train_sampling", _str),
    "INPUT.MAX_SIZE_TRAIN": ("input.max_size_train", _int),
    "INPUT.MIN_SIZE_TEST": ("input.min_size_test", _int),
    "INPUT.MAX_SIZE_TEST": ("input.max_size_test", _int),
    "INPUT.RANDOM_FLIP": ("input.random_flip", _str),
    "INPUT.MASK_FORMAT": ("input.mask_format", _str),
    "DATALOADER.NUM_WORKERS": ("dataloader.num_workers", _int),
    "DATALOADER.ASPECT_RATIO_GROUPING": ("dataloader.aspect_ratio_grouping", _bool),
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": ("dataloader.filter_empty_annotations", _bool),
    "DATALOADER.SAMPLER_TRAIN": ("dataloader.sampler_train", _str),
    "DATALOADER.REPEAT_THRESHOLD": ("dataloader.repeat_threshold", _float),
    "DATALOADER.REPEAT_SQRT": ("dataloader.repeat_sqrt", _bool),
    "SOLVER.IMS_PER_BATCH": ("solver.ims_per_batch", _int),
    "SOLVER.BASE_LR": ("solver.base_lr", _float),
    "SOLVER.MOMENTUM": ("solver.momentum", _float),
    "SOLVER.NESTEROV": ("solver.nesterov", _bool),
    "SOLVER.WEIGHT_DECAY": ("solver.weight_decay", _float),
    "SOLVER.WEIGHT_DECAY_NORM": ("solver.weight_decay_norm", _float),
    "SOLVER.WEIGHT_DECAY_BIAS": (
        "solver.weight_decay_bias",
        lambda v: None if v is None else _float(v),
    ),
    "SOLVER.BIAS_LR_FACTOR": ("solver.bias_lr_factor", _float),
    "SOLVER.LR_SCHEDULER_NAME": ("solver.lr_scheduler_name", _str),
    "SOLVER.BASE_LR_END": ("solver.base_lr_end", _float),
    "SOLVER.STEPS": ("solver.steps", _ints),
    "SOLVER.MAX_ITER": ("solver.max_iter", _int),
    "SOLVER.GAMMA": ("solver.gamma", _float),
    "SOLVER.WARMUP_FACTOR": ("solver.warmup_factor", _float),
    "SOLVER.WARMUP_ITERS": ("solver.warmup_iters", _int),
    "SOLVER.WARMUP_METHOD": ("solver.warmup_method", _str),
    "SOLVER.CHECKPOINT_PERIOD": ("solver.checkpoint_period", _int),
    "SOLVER.CLIP_GRADIENTS.ENABLED": ("solver.clip_gradients.enabled", _bool),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("solver.clip_gradients.clip_type", _str),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": ("solver.clip_gradients.clip_value", _float),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": ("solver.clip_gradients.norm_type", _float),
    "SOLVER.AMP.ENABLED": ("train.compute_dtype", _amp_dtype),
    "TEST.EVAL_PERIOD": ("test.eval_period", _int),
    "TEST.DETECTIONS_PER_IMAGE": ("test.detections_per_image", _int),
}

# Keys that do not change what is computed: accepted with any value, not stored.
_NO_EFFECT: dict[str, str] = {
    "VERSION": "config-format version (checked to be 2 when the YAML is read)",
    "MODEL.DEVICE": "device placement is JAX's",
    "OUTPUT_DIR": "train.py's --workdir",
    "CUDNN_BENCHMARK": "PyTorch/cuDNN autotuning",
    "FLOAT32_PRECISION": "PyTorch matmul precision; jax_rcnn uses train.compute_dtype",
    "VIS_PERIOD": "TensorBoard visualisation period",
    "GLOBAL.HACK": "Detectron2's scratch value, read by no model",
    "TEST.EXPECTED_RESULTS": "Detectron2's regression-test thresholds",
    "MODEL.PANOPTIC_FPN.COMBINE.ENABLED": "deprecated in Detectron2 and read by nothing there",
    "DATASETS.TRAIN": "registry name, recorded as config.data.name",
    "DATASETS.TEST": "registry name, recorded as config.data.name",
}


def _all_false(v: Any, _: Mapping[str, Any]) -> bool:
    return isinstance(v, list | tuple) and not any(v)


def _one_of(*allowed: Any) -> Callable[[Any, Mapping[str, Any]], bool]:
    return lambda v, _: any(v == a and type(v) is type(a) for a in allowed)


def _precise_bn(v: Any, cfg: Mapping[str, Any]) -> bool:
    # Detectron2's PreciseBN hook only runs when the model has trainable BatchNorm layers.
    norms = {cfg[k] for k in cfg if k.endswith(".NORM") and k in _MAPPED}
    return v is False or not norms & {"BN", "SyncBN"}


def _mask_on(v: Any, cfg: Mapping[str, Any]) -> bool:
    meta = cfg["MODEL.META_ARCHITECTURE"]
    if meta == "PanopticFPN":  # the combine step needs the instance masks
        return v is True
    return v is False or meta not in ("RetinaNet", "ProposalNetwork", "SemanticSegmentor")


def _mask_head_name(v: Any, cfg: Mapping[str, Any]) -> bool:
    return not cfg["MODEL.MASK_ON"] or v == "MaskRCNNConvUpsampleHead"


def _keypoint_on(v: Any, cfg: Mapping[str, Any]) -> bool:
    return v is False or (
        cfg["MODEL.META_ARCHITECTURE"] == "GeneralizedRCNN"
        and cfg["MODEL.ROI_HEADS.NAME"] == "StandardROIHeads"
    )


def _keypoint_head_name(v: Any, cfg: Mapping[str, Any]) -> bool:
    return not cfg["MODEL.KEYPOINT_ON"] or v == "KRCNNConvDeconvUpsampleHead"


def _box_head_name(v: Any, cfg: Mapping[str, Any]) -> bool:
    # Res5ROIHeads has no box head: res5 is the head (C4 configs leave the name "").
    return cfg["MODEL.ROI_HEADS.NAME"] == "Res5ROIHeads" or v == "FastRCNNConvFCHead"


# Keys that select a feature: (accepts(value, flat d2 config), what jax_rcnn supports).
_RESTRICTED: dict[str, tuple[Callable[[Any, Mapping[str, Any]], bool], str]] = {
    "MODEL.META_ARCHITECTURE": (_one_of(*META_ARCHITECTURES), f"one of {META_ARCHITECTURES}"),
    "MODEL.LOAD_PROPOSALS": (_one_of(False), "false (precomputed proposals are not supported)"),
    "MODEL.KEYPOINT_ON": (
        _keypoint_on,
        "false unless MODEL.META_ARCHITECTURE is 'GeneralizedRCNN' with StandardROIHeads",
    ),
    "MODEL.ROI_KEYPOINT_HEAD.NAME": (
        _keypoint_head_name,
        "'KRCNNConvDeconvUpsampleHead' (when MODEL.KEYPOINT_ON)",
    ),
    "MODEL.MASK_ON": (
        _mask_on,
        "false for RetinaNet, ProposalNetwork and SemanticSegmentor (no mask head), true for "
        "PanopticFPN",
    ),
    "MODEL.SEM_SEG_HEAD.NAME": (_one_of("SemSegFPNHead"), "'SemSegFPNHead'"),
    "MODEL.SEM_SEG_HEAD.NORM": (_one_of(*NORMS), f"one of {NORMS}"),
    "MODEL.BACKBONE.NAME": (_one_of(*BACKBONE_NAMES), f"one of {BACKBONE_NAMES}"),
    "MODEL.RETINANET.NORM": (_one_of("", "GN"), "'' or 'GN' (per-level BN is not implemented)"),
    "MODEL.RETINANET.BBOX_REG_LOSS_TYPE": (
        _one_of(*BBOX_REG_LOSS_TYPES),
        f"one of {BBOX_REG_LOSS_TYPES}",
    ),
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": (
        _one_of(*BBOX_REG_LOSS_TYPES),
        f"one of {BBOX_REG_LOSS_TYPES}",
    ),
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": (
        _one_of(*BBOX_REG_LOSS_TYPES),
        f"one of {BBOX_REG_LOSS_TYPES}",
    ),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": (_all_false, "all false (no deformable convolutions)"),
    "MODEL.RESNETS.NORM": (_one_of(*NORMS), f"one of {NORMS}"),
    "MODEL.FPN.NORM": (_one_of(*NORMS), f"one of {NORMS}"),
    "MODEL.ROI_BOX_HEAD.NORM": (_one_of(*NORMS), f"one of {NORMS}"),
    "MODEL.ROI_MASK_HEAD.NORM": (_one_of(*NORMS), f"one of {NORMS}"),
    "MODEL.PROPOSAL_GENERATOR.NAME": (_one_of("RPN"), "'RPN'"),
    "MODEL.ANCHOR_GENERATOR.NAME": (_one_of("DefaultAnchorGenerator"), "'DefaultAnchorGenerator'"),
    "MODEL.RPN.HEAD_NAME": (_one_of("StandardRPNHead"), "'StandardRPNHead'"),
    "MODEL.ROI_HEADS.NAME": (_one_of(*ROI_HEADS_NAMES), f"one of {ROI_HEADS_NAMES}"),
    "MODEL.ROI_BOX_HEAD.NAME": (
        _box_head_name,
        "'FastRCNNConvFCHead' (unless MODEL.ROI_HEADS.NAME is 'Res5ROIHeads')",
    ),
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": (_one_of(False), "false"),
    "MODEL.ROI_MASK_HEAD.NAME": (
        _mask_head_name,
        "'MaskRCNNConvUpsampleHead' (when MODEL.MASK_ON)",
    ),
    "INPUT.CROP.ENABLED": (_one_of(False), "false (no random crop)"),
    "SOLVER.REFERENCE_WORLD_SIZE": (_one_of(0), "0 (no automatic rescaling by GPU count)"),
    "TEST.AUG.ENABLED": (_one_of(False), "false (no test-time augmentation)"),
    "TEST.PRECISE_BN.ENABLED": (_precise_bn, "false, or no trainable BN/SyncBN in the model"),
}

# Keys (exact, or a group when ending in ".") used only by features `_RESTRICTED` keeps off.
_INERT: dict[str, str] = {
    "MODEL.ANCHOR_GENERATOR.ANGLES": "rotated anchors (MODEL.ANCHOR_GENERATOR.NAME)",
    "MODEL.RESNETS.DEFORM_MODULATED": "deformable convs (MODEL.RESNETS.DEFORM_ON_PER_STAGE)",
    "MODEL.RESNETS.DEFORM_NUM_GROUPS": "deformable convs (MODEL.RESNETS.DEFORM_ON_PER_STAGE)",
    "INPUT.CROP.TYPE": "INPUT.CROP.ENABLED",
    "INPUT.CROP.SIZE": "INPUT.CROP.ENABLED",
    "DATASETS.PROPOSAL_FILES_TRAIN": "MODEL.LOAD_PROPOSALS",
    "DATASETS.PROPOSAL_FILES_TEST": "MODEL.LOAD_PROPOSALS",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": "MODEL.LOAD_PROPOSALS",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": "MODEL.LOAD_PROPOSALS",
    "SOLVER.NUM_DECAYS": "WarmupStepWithFixedGammaLR (SOLVER.LR_SCHEDULER_NAME)",
    "SOLVER.RESCALE_INTERVAL": "WarmupStepWithFixedGammaLR (SOLVER.LR_SCHEDULER_NAME)",
    "TEST.AUG.MIN_SIZES": "TEST.AUG.ENABLED",
    "TEST.AUG.MAX_SIZE": "TEST.AUG.ENABLED",
    "TEST.AUG.FLIP": "TEST.AUG.ENABLED",
    "TEST.PRECISE_BN.NUM_ITER": "TEST.PRECISE_BN.ENABLED",
}

# Key groups that only some meta-architectures read: under another one Detectron2 ignores
# them, and so does `from_detectron2` (neither mapped nor checked; the jax_rcnn config of that
# meta-architecture has no such keys).
_RPN_GROUPS = ("MODEL.RPN.", "MODEL.PROPOSAL_GENERATOR.")
_ROI_GROUPS = (
    "MODEL.ROI_HEADS.",
    "MODEL.ROI_BOX_HEAD.",
    "MODEL.ROI_BOX_CASCADE_HEAD.",
    "MODEL.ROI_MASK_HEAD.",
    "MODEL.ROI_KEYPOINT_HEAD.",
)
_META_ARCH_GROUPS: dict[str, tuple[str, ...]] = {
    "GeneralizedRCNN": _RPN_GROUPS + _ROI_GROUPS,
    "RetinaNet": ("MODEL.RETINANET.",),
    "ProposalNetwork": _RPN_GROUPS,
    "PanopticFPN": _RPN_GROUPS + _ROI_GROUPS + ("MODEL.SEM_SEG_HEAD.", "MODEL.PANOPTIC_FPN."),
    "SemanticSegmentor": ("MODEL.SEM_SEG_HEAD.",),
}


def _other_meta_arch_key(key: str, meta_architecture: str) -> bool:
    """True for a key of a group that `meta_architecture` does not read."""
    groups = {p for prefixes in _META_ARCH_GROUPS.values() for p in prefixes}
    own = _META_ARCH_GROUPS.get(meta_architecture, ())
    return any(key.startswith(p) for p in groups) and not any(key.startswith(p) for p in own)


#: Detectron2 key -> jax_rcnn key (`MODEL.RPN.NMS_THRESH` -> `model.rpn.nms_thresh`).
D2_TO_JAX_RCNN: Mapping[str, str] = MappingProxyType({k: v[0] for k, v in _MAPPED.items()})


# ---------------------------------------------------------------------------------------------
# from_detectron2
# ---------------------------------------------------------------------------------------------
_EVAL_NODES = (
    ast.Expression, ast.List, ast.Tuple, ast.ListComp, ast.comprehension, ast.BinOp,
    ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Store, ast.Add, ast.Sub, ast.Mult,
    ast.Div, ast.Pow, ast.USub, ast.UAdd,
)  # fmt: skip


def _eval_arithmetic(expr: str) -> Any:
    """Evaluates the `!!python/object/apply:eval` expressions of Detectron2's YAMLs.

    `Base-RetinaNet.yaml` writes its anchor sizes as
    `!!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, ...]]"]`,
    which Detectron2 evaluates with Python's `eval`. Only arithmetic on numbers, lists and list
    comprehensions is accepted here (no calls, attributes or builtins).
    """
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _EVAL_NODES):
            raise ValueError(
                f"!!python/object/apply:eval {expr!r}: only arithmetic, lists and list "
                f"comprehensions are supported, found {type(node).__name__}"
            )
    return eval(compile(tree, "<yaml eval>", "eval"), {"__builtins__": {}}, {})  # noqa: S307


class _YAMLLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` plus Detectron2's `!!python/object/apply:eval` (see `_eval_arithmetic`)."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else None
    if not args or len(args) != 1 or not isinstance(args[0], str):
        raise ValueError(f"!!python/object/apply:eval needs one string argument, got {args!r}")
    return _eval_arithmetic(args[0])


_YAMLLoader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _construct_eval)


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """[(file, dict)] from the root `_BASE_` to `path` (Detectron2's `load_yaml_with_base`)."""
    path = path.expanduser().resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ValueError(f"_BASE_ cycle: {chain}")
    if not path.is_file():
        where = f" (the _BASE_ of {seen[-1]})" if seen else ""
        raise FileNotFoundError(f"Detectron2 config {path}{where} not found")
    with open(path) as f:
        data = yaml.load(f, Loader=_YAMLLoader) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a Detectron2 config must be a YAML mapping")
    base = data.pop("_BASE_", None)
    if base is None:
        return [(path, data)]
    if not isinstance(base, str):
        raise ValueError(f"{path}: _BASE_ must be one file name, got {base!r}")
    if base.startswith(("http://", "https://", "detectron2://")):
        raise ValueError(f"{path}: _BASE_ {base!r} is a URL; download it and use a local path")
    base_path = Path(os.path.expanduser(base))
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    return [*_load_yaml_chain(base_path, (*seen, path)), (path, data)]


def _decode(value: Any) -> Any:
    """yacs' `_decode_cfg_value`: a string holding a Python literal becomes that literal."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _coerce(value: Any, default: Any, key: str, source: Path) -> Any:
    """yacs' type check of an override against Detectron2's default (slightly more lenient)."""
    if value is None or default is None or type(value) is type(default):
        return value
    if isinstance(value, list | tuple) and isinstance(default, list | tuple):
        return value
    numbers = (int, float)
    if (
        isinstance(value, numbers)
        and isinstance(default, numbers)
        and not isinstance(value, bool)
        and not isinstance(default, bool)
    ):
        return value
    if key == "INPUT.MIN_SIZE_TRAIN" and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(
        f"{source}: {key} = {value!r} has type {type(value).__name__}; Detectron2 expects "
        f"{type(default).__name__} (default {default!r})"
    )


def _merge(dst: dict, src: dict, prefix: str, source: Path) -> None:
    for key, value in src.items():
        full = f"{prefix}{key}"
        if key not in dst:
            raise ValueError(f"{source}: {full} is not a Detectron2 config key")
        if isinstance(dst[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {full} is a group of keys, got {value!r}")
            _merge(dst[key], value, f"{full}.", source)
        elif isinstance(value, dict):
            raise ValueError(f"{source}: {full} is a value, got a group of keys {value!r}")
        else:
            dst[key] = _coerce(_decode(value), dst[key], full, source)


def detectron2_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The config Detectron2 builds from a YAML file: defaults + `_BASE_` chain, flattened.

    Args:
      path: a Detectron2 YAML config (`_BASE_` paths are relative to the file).

    Returns:
      {"MODEL.RPN.NMS_THRESH": 0.7, ...}: every Detectron2 key with its value.

    Raises:
      FileNotFoundError: the file or one of its bases does not exist.
      ValueError: a key Detectron2 does not have, a value of the wrong type, a `_BASE_` URL or
        cycle, or `VERSION` other than 2.
    """
    merged = copy.deepcopy(_D2_DEFAULTS)
    for source, data in _load_yaml_chain(Path(path)):
        _merge(merged, data, "", source)
    if merged["VERSION"] != 2:
        raise ValueError(
            f"{path}: VERSION {merged['VERSION']!r} configs are not supported (only 2); "
            "upgrade it with Detectron2's config.compat"
        )
    return _flatten(merged)


def _rule(key: str) -> str:
    """Which table handles a Detectron2 key: "mapped", "no_effect", "restricted" or "inert".

    A mapped key may also have a `_RESTRICTED` entry (`MODEL.RESNETS.NORM`); it is "mapped".
    """
    if key in _MAPPED:
        return "mapped"
    if key in _NO_EFFECT:
        return "no_effect"
    if key in _RESTRICTED:
        return "restricted"
    if key in _INERT or any(p.endswith(".") and key.startswith(p) for p in _INERT):
        return "inert"
    raise AssertionError(f"jax_rcnn.config_from_detectron2 has no rule for Detectron2 key {key}")


def _dataset_name(train: Sequence[str], test: Sequence[str]) -> str:
    """`config.data.name` from `DATASETS.TRAIN` / `TEST`: their common stem.

    ("coco_2017_train",), ("coco_2017_val",) -> "coco_2017"; equal names -> that name;
    nothing in common -> the names joined by "+".
    """
    names = [str(n) for n in (*train, *test)]
    if not names:
        return ""
    stem = os.path.commonprefix(names).rstrip("_-.")
    return stem or "+".join(dict.fromkeys(names))


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def _d2_layout(d2: Mapping[str, Any]) -> str:
    """`configs.common.base_config`'s layout of a Detectron2 config: "FPN", "C4" (plain ResNet
    + Res5ROIHeads) or "DC5" (plain ResNet + StandardROIHeads)."""
    meta = d2["MODEL.META_ARCHITECTURE"]
    if d2["MODEL.BACKBONE.NAME"] != PLAIN_BACKBONE or meta == "RetinaNet":
        return "FPN"
    if meta == "ProposalNetwork":  # no ROI heads: the dilation tells the two plain layouts
        return "DC5" if d2["MODEL.RESNETS.RES5_DILATION"] == 2 else "C4"
    return "C4" if d2["MODEL.ROI_HEADS.NAME"] == "Res5ROIHeads" else "DC5"


def _has_key(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def from_detectron2(path: str | os.PathLike[str]) -> ml_collections.ConfigDict:
    """Translates a Detectron2 YAML config into a jax_rcnn config with the same values.

    Reads the file with its `_BASE_` chain (or a full `cfg.dump()`), exactly as Detectron2
    merges it onto its defaults, then maps each key through the module's tables (see the module
    docstring) onto `configs.common.base_config`, and validates the result.

    Args:
      path: a Detectron2 YAML file, e.g. a model-zoo `mask_rcnn_R_50_FPN_3x.yaml`.

    Returns:
      The locked config; `input.pad_mode` is "size_divisibility" (Detectron2's padding, for
      evaluation and inference), `input.auto_buckets` is on (training), and
      `data.train.name` / `data.test.name` hold `DATASETS.TRAIN` / `TEST`.

    Raises:
      FileNotFoundError: the file or a `_BASE_` does not exist.
      ValueError: a key Detectron2 does not have, a value jax_rcnn does not implement (the
        message names the Detectron2 key and value), or an invalid resulting config.
    """
    d2 = detectron2_config(path)
    meta = d2["MODEL.META_ARCHITECTURE"]
    problems = []
    for key, value in d2.items():
        _rule(key)  # every key has a rule (an internal error otherwise)
        if _other_meta_arch_key(key, meta):
            continue
        if key in _RESTRICTED:
            accepts, supported = _RESTRICTED[key]
            if not accepts(value, d2):
                problems.append(f"{key} = {value!r} is not supported; jax_rcnn needs {supported}")
    if problems:
        raise ValueError(f"Detectron2 config {path}:\n  " + "\n  ".join(problems))

    config = _common().base_config(
        mask_on=bool(d2["MODEL.MASK_ON"]), meta_architecture=meta, layout=_d2_layout(d2)
    )
    if meta in RCNN_META_ARCHITECTURES and d2["MODEL.ROI_HEADS.NAME"] == "CascadeROIHeads":
        _common().cascade(config.model)  # adds model.roi_box_cascade_head
    if meta == "GeneralizedRCNN" and d2["MODEL.KEYPOINT_ON"]:
        _common().keypoint(config)  # adds model.roi_keypoint_head, test.keypoint_oks_sigmas
    for key, (ours, convert) in _MAPPED.items():
        if _other_meta_arch_key(key, meta) or not _has_key(config, ours):
            continue  # a key this layout does not read (C4: FPN, box-head layers, ...)
        try:
            _set(config, ours, convert(d2[key]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"Detectron2 config {path}: {key} = {d2[key]!r}: {e}") from None
    if isinstance(d2["INPUT.MIN_SIZE_TRAIN"], int) and d2["INPUT.MIN_SIZE_TRAIN_SAMPLING"] == (
        "range"
    ):
        config.input.min_size_train = (d2["INPUT.MIN_SIZE_TRAIN"],) * 2
    config.data.name = _dataset_name(d2["DATASETS.TRAIN"], d2["DATASETS.TEST"])
    config.data.train.name = "+".join(str(n) for n in d2["DATASETS.TRAIN"])
    config.data.test.name = "+".join(str(n) for n in d2["DATASETS.TEST"])
    config.input.pad_mode = "size_divisibility"
    config.input.auto_buckets = True
    fpn_in = config.model.fpn.in_features if "fpn" in config.model else ()
    last = fpn_in[-1] if fpn_in else None
    if last in FPN_LEVELS:
        config.input.size_divisibility = 2 ** int(last[3:])
    config.lock()
    try:
        validate(config)
    except ValueError as e:
        reverse = {v: k for k, v in D2_TO_JAX_RCNN.items()}
        message = re.sub(
            r"config\.([a-z0-9_.]+)",
            lambda m: m.group(0) + (f" [{reverse[m.group(1)]}]" if m.group(1) in reverse else ""),
            str(e),
        )
        raise ValueError(f"Detectron2 config {path}: {message}") from None
    return config
