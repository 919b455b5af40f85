"""Loading, translating and checking jax_rcnn configs.

Three entry points:

* `load_config("configs/x.py:smoke")` loads an ml_collections config file (`get_config(arg)`),
  the way `train.py --config configs/x.py:smoke` does.
* `from_detectron2("mask_rcnn_R_50_FPN_3x.yaml")` reads a Detectron2 YAML config (its `_BASE_`
  chain included, or a full `cfg.dump()`) and returns the jax_rcnn config with the values
  Detectron2 would use.
* `validate(config)` checks the start-up invariants and names the offending key.

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
import importlib
import importlib.util
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import ml_collections
import yaml

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Supported values (validate() and from_detectron2 use the same sets).
# ---------------------------------------------------------------------------------------------
RESNET_DEPTHS = (18, 34, 50, 101, 152)
NORMS = ("FrozenBN", "BN", "SyncBN", "GN", "")  # "" = no normalisation
KERNELS = ("auto", "pallas", "reference")  # == jax_rcnn.kernels.BACKENDS
PAD_MODES = ("buckets", "size_divisibility")
COMPUTE_DTYPES = ("float32", "bfloat16")
INPUT_FORMATS = ("BGR", "RGB")
MASK_FORMATS = ("bitmask", "polygon")
FLIP_MODES = ("horizontal", "none")  # Detectron2 also has "vertical"; data/ does not
SAMPLING_STYLES = ("choice", "range")
FUSE_TYPES = ("sum", "avg")
POOLER_TYPES = ("ROIAlignV2", "ROIAlign", "ROIPool")  # == jax_rcnn.poolers.POOLER_TYPES
# Detectron2's `BBOX_REG_LOSS_TYPE` values (== jax_rcnn.losses.BOX_REG_LOSSES); a jax_rcnn
# config may also name "module:function" (`jax_rcnn.research`).
BBOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")
# == jax_rcnn.meta_arch.META_ARCHITECTURES
META_ARCHITECTURES = (
    "GeneralizedRCNN",
    "RetinaNet",
    "ProposalNetwork",
    "PanopticFPN",
    "SemanticSegmentor",
)
# Meta-architectures built on GeneralizedRCNN's RPN and ROI heads.
RCNN_META_ARCHITECTURES = ("GeneralizedRCNN", "PanopticFPN")
# MODEL.BACKBONE.NAME -> the FPN's top block (== jax_rcnn.modeling.fpn.BACKBONES).
BACKBONE_TOP_BLOCKS = {
    "build_resnet_fpn_backbone": "LastLevelMaxPool",
    "build_retinanet_resnet_fpn_backbone": "LastLevelP6P7",
}
# MODEL.BACKBONE.NAME of a plain ResNet (C4, DC5): its `RESNETS.OUT_FEATURES` are the features.
PLAIN_BACKBONE = "build_resnet_backbone"
BACKBONE_NAMES = (*BACKBONE_TOP_BLOCKS, PLAIN_BACKBONE)
ROI_HEADS_NAMES = ("StandardROIHeads", "Res5ROIHeads", "CascadeROIHeads")
LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR")
WARMUP_METHODS = ("linear", "constant")
CLIP_TYPES = ("value", "norm")
DATA_SOURCES = ("coco", "shapes", "tfds", "people")
DATA_FORMATS = ("auto", "coco", "lvis")
TRAIN_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")  # == data.samplers.SAMPLERS
FPN_LEVELS = ("res2", "res3", "res4", "res5")

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
# load_config
# ---------------------------------------------------------------------------------------------
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _import_path(path: Path) -> ModuleType:
    """Imports a Python file as a fresh module, with its `configs` package importable."""
    # "configs/x.py" does `from configs import common`: put the directory holding `configs/`
    # (the file's grandparent) on the path.
    root = str(path.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    name = f"_jax_rcnn_config_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads an ml_collections config file, `path` or `path:arg`.

    `get_config(arg)` of the file is called (`get_config()` without `:arg`), as ml_collections'
    `config_flags` does. A relative path is looked up from the working directory, then from the
    repository root, so `load_config("configs/mask_rcnn_R_50_FPN_3x.py:smoke")` works anywhere.

    Args:
      spec: "configs/x.py" or "configs/x.py:arg".

    Returns:
      The locked config.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file has no `get_config`, or it returned something else than a
        `ConfigDict`.
    """
    path_str, sep, arg = spec.partition(":")
    path = Path(path_str).expanduser()
    if not path.is_file() and not path.is_absolute() and (_REPO_ROOT / path).is_file():
        path = _REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"config file {path_str!r} not found (from spec {spec!r})")
    module = _import_path(path.resolve())
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"config file {path} has no get_config() function")
    config = get_config(arg) if sep and arg else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"{path}: get_config() returned {type(config).__name__}, expected a ConfigDict"
        )
    config.lock()
    return config


def _common() -> ModuleType:
    """`configs.common`, imported from the repository when `configs` is not on the path."""
    try:
        return importlib.import_module("configs.common")
    except ModuleNotFoundError:
        if not (_REPO_ROOT / "configs" / "common.py").is_file():
            raise
        sys.path.insert(0, str(_REPO_ROOT))
        return importlib.import_module("configs.common")


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


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    raise AssertionError(f"jax_rcnn.config has no rule for Detectron2 key {key}")


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


def layout(config: ml_collections.ConfigDict) -> str:
    """ "FPN", "C4" (plain ResNet + `Res5ROIHeads`) or "DC5" (plain ResNet + StandardROIHeads).

    A `ProposalNetwork` on a plain ResNet (no ROI heads) is "DC5" with a dilated res5, else
    "C4" (`rpn_R_50_C4_1x`: RPN on res4).
    """
    m = config.model
    if m.backbone.name != PLAIN_BACKBONE or m.meta_architecture == "RetinaNet":
        return "FPN"
    if "roi_heads" not in m:
        return "DC5" if m.resnets.res5_dilation == 2 else "C4"
    return "C4" if m.roi_heads.get("name") == "Res5ROIHeads" else "DC5"


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


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Checker:
    """Collects broken invariants as "config.<key> = <value>: <what is wrong>" lines."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        node = self.config
        for part in key.split("."):
            node = node[part]
        return node

    def require(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            self.problems.append(f"config.{key} = {self.get(key)!r}: {message}")

    def one_of(self, key: str, allowed: Sequence[Any]) -> None:
        value = self.get(key)
        self.require(isinstance(value, Hashable) and value in allowed, key, f"not in {allowed}")

    def int_at_least(self, key: str, low: int) -> None:
        value = self.get(key)
        self.require(_is_int(value) and value >= low, key, f"must be an int >= {low}")

    def number_in(self, key: str, low: float, high: float, *, open_low: bool = False) -> None:
        value = self.get(key)
        ok = _is_number(value) and (low < value if open_low else low <= value) and value <= high
        self.require(ok, key, f"must be in {'(' if open_low else '['}{low}, {high}]")

    def positive_ints(self, key: str) -> None:
        value = self.get(key)
        ok = isinstance(value, tuple | list) and len(value) > 0
        self.require(ok and all(_is_int(x) and x > 0 for x in value), key, "must be ints > 0")

    def matcher(self, prefix: str) -> None:
        """Detectron2's `Matcher` asserts: thresholds ascending in (0, 1], labels in {-1,0,1}."""
        t = tuple(self.get(f"{prefix}.iou_thresholds"))
        labels = tuple(self.get(f"{prefix}.iou_labels"))
        ok = len(t) > 0 and all(_is_number(x) and 0 < x <= 1 for x in t)
        self.require(ok, f"{prefix}.iou_thresholds", "must be non-empty, each in (0, 1]")
        ok = all(a <= b for a, b in zip(t, t[1:], strict=False))
        self.require(ok, f"{prefix}.iou_thresholds", "must be non-decreasing")
        self.require(
            len(labels) == len(t) + 1,
            f"{prefix}.iou_labels",
            f"needs len(iou_thresholds) + 1 = {len(t) + 1} entries",
        )
        ok = all(x in (-1, 0, 1) for x in labels)
        self.require(ok, f"{prefix}.iou_labels", "must hold only -1, 0, 1")

    def sampled_matcher(self, prefix: str) -> None:
        """`matcher` plus the sampler's batch size and positive fraction."""
        self.matcher(prefix)
        self.int_at_least(f"{prefix}.batch_size_per_image", 1)
        self.number_in(f"{prefix}.positive_fraction", 0, 1, open_low=True)

    def box_regression(self, prefix: str) -> None:
        weights = tuple(self.get(f"{prefix}.bbox_reg_weights"))
        ok = len(weights) == 4 and all(_is_number(w) and w > 0 for w in weights)
        self.require(ok, f"{prefix}.bbox_reg_weights", "needs 4 positive values (dx, dy, dw, dh)")
        # The loss type is a swap point, checked with the others (`_check_research`).

    def pooler(self, prefix: str) -> None:
        self.int_at_least(f"{prefix}.pooler_resolution", 1)
        self.int_at_least(f"{prefix}.pooler_sampling_ratio", 0)  # 0 = adaptive
        self.one_of(f"{prefix}.pooler_type", POOLER_TYPES)


def resized_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Detectron2's `ResizeShortestEdge.get_output_shape` (int rounding included)."""
    scale = short_edge / min(h, w)
    newh, neww = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def largest_resized_shapes(short_edge: int, max_size: int) -> tuple[tuple[int, int], ...]:
    """The (H, W) bounds of every image resized by `ResizeShortestEdge(short_edge, max_size)`.

    A landscape image ends with H <= min(short_edge, max_size) and W <= max_size, and both
    bounds are reached by some aspect ratio; a portrait image is the transpose.

    Returns:
      (landscape bound, portrait bound).
    """
    short_side = min(short_edge, max_size)
    return (short_side, max_size), (max_size, short_side)


def _check_buckets(c: _Checker) -> None:
    inp = c.config.input
    d = inp.size_divisibility
    buckets = tuple(tuple(b) for b in inp.buckets)
    ok = all(len(b) == 2 and all(_is_int(x) and x > 0 for x in b) for b in buckets)
    c.require(bool(buckets) and ok, "input.buckets", "must be a non-empty list of (H, W) ints")
    if not (buckets and ok and _is_int(d) and d >= 0):
        return
    d = max(d, 1)  # 0: no padding multiple (a plain ResNet)
    for b in buckets:
        ok = b[0] % d == 0 and b[1] % d == 0
        c.require(ok, "input.buckets", f"bucket {b} is not a multiple of size_divisibility={d}")
    cases = [("test", inp.min_size_test, inp.max_size_test)]
    train_fixed = not inp.auto_buckets  # auto: training buckets are chosen at start-up
    if train_fixed and inp.min_size_train and all(_is_int(x) for x in inp.min_size_train):
        cases.append(("train", max(inp.min_size_train), inp.max_size_train))
    for mode, short, longest in cases:
        if not (_is_int(short) and _is_int(longest) and short > 0 and longest > 0):
            continue
        for shape, orientation in zip(
            largest_resized_shapes(short, longest), ("landscape", "portrait"), strict=True
        ):
            c.require(
                any(shape[0] <= b[0] and shape[1] <= b[1] for b in buckets),
                "input.buckets",
                f"no bucket holds a {orientation} {mode} image of up to {shape} "
                f"(resized to short side {short}, long side <= {longest})",
            )


# (key, when it has no effect, what decides): a key set to a non-default value while the
# condition holds is an error naming both keys; checked by `_check_no_effect`.
_NO_EFFECT_UNLESS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    *(
        (f"data.{split}.{field}", lambda c: c.data.source != "coco", "data.source")
        for split in ("train", "test")
        for field in ("json", "images")
    ),
    *(
        (f"data.{key}", lambda c: c.data.source != "tfds", "data.source")
        for key in ("tfds_name", "tfds_train_split", "tfds_test_split")
    ),
    *(
        (f"data.shapes.{key}", lambda c: c.data.source != "shapes", "data.source")
        for key in (
            "num_train",
            "num_val",
            "image_size",
            "image_size_range",
            "num_classes",
            "num_stuff_classes",
            "seed",
            "long_tail",
        )
    ),
    ("data.cache_dir", lambda c: c.data.source == "coco", "data.source"),
    ("input.buckets", lambda c: c.input.pad_mode != "buckets", "input.pad_mode"),
    ("input.max_buckets", lambda c: not c.input.auto_buckets, "input.auto_buckets"),
    ("model.roi_mask_head.num_sampled_masks", lambda c: not c.model.mask_on, "model.mask_on"),
    (
        "solver.base_lr_end",
        lambda c: c.solver.lr_scheduler_name == "WarmupMultiStepLR",
        "solver.lr_scheduler_name",
    ),
)


def _as_tuples(v: Any) -> Any:
    return tuple(_as_tuples(x) for x in v) if isinstance(v, list | tuple) else v


def _check_no_effect(c: _Checker) -> None:
    """A key changed from its default where another key's setting makes it unused is an error
    (e.g. `data.train.json` with `data.source = "shapes"`): the user meant something else."""
    m = c.config.model
    # A mask_on other families reject is reported by their own check, naming the key.
    mask_on = bool(m.mask_on) and m.meta_architecture in RCNN_META_ARCHITECTURES
    defaults = _Checker(
        _common().base_config(
            mask_on=mask_on, meta_architecture=m.meta_architecture, layout=layout(c.config)
        )
    )
    for key, unused, decider in _NO_EFFECT_UNLESS:
        try:  # a key this config family does not have is not checked
            value, default = c.get(key), defaults.get(key)
        except (KeyError, AttributeError):
            continue
        if _as_tuples(value) != _as_tuples(default) and unused(c.config):
            c.require(
                False,
                key,
                f"has no effect with config.{decider} = {c.get(decider)!r}; remove it or change "
                f"config.{decider}",
            )


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the start-up invariants of a jax_rcnn config.

    Args:
      config: a config built on `configs.common.base_config`.

    Raises:
      ValueError: one line per broken invariant, each naming its key (`config.model....`)
        and value.
    """
    c = _Checker(config)
    m = config.model
    c.one_of("model.meta_architecture", META_ARCHITECTURES)
    c.one_of("model.backbone.name", BACKBONE_NAMES)

    # Backbone: the asserts of Detectron2's `build_resnet_backbone` and FPN.
    r = m.resnets
    c.one_of("model.resnets.depth", RESNET_DEPTHS)
    if r.depth in (18, 34):
        rule = f"must be {{}} for depth {r.depth} (Detectron2's R18/R34 rule)"
        c.require(r.res2_out_channels == 64, "model.resnets.res2_out_channels", rule.format(64))
        c.require(r.res5_dilation == 1, "model.resnets.res5_dilation", rule.format(1))
        c.require(r.num_groups == 1, "model.resnets.num_groups", rule.format(1))
    c.one_of("model.resnets.res5_dilation", (1, 2))
    for key in ("num_groups", "width_per_group", "stem_out_channels", "res2_out_channels"):
        c.int_at_least(f"model.resnets.{key}", 1)
    c.one_of("model.resnets.norm", NORMS)
    c.one_of("model.backbone.freeze_at", range(6))
    out_features = tuple(r.out_features)
    c.require(
        len(out_features) > 0 and set(out_features) <= set(FPN_LEVELS),
        "model.resnets.out_features",
        f"must be a non-empty subset of {FPN_LEVELS}",
    )
    plain = m.backbone.name == PLAIN_BACKBONE
    if plain:
        c.require("fpn" not in m, "model.backbone.name", "a plain ResNet has no model.fpn keys")
        c.require(
            m.meta_architecture != "RetinaNet",
            "model.backbone.name",
            f"RetinaNet needs an FPN backbone {tuple(BACKBONE_TOP_BLOCKS)}",
        )
        # The features are the ResNet stages themselves; no padding multiple is needed.
        fpn_out, stride = out_features, None
    else:
        c.require("fpn" in m, "model.backbone.name", "an FPN backbone needs the model.fpn keys")
        fpn_out, stride = _check_fpn(c, out_features) if "fpn" in m else ((), 32)
    c.one_of("model.kernels", KERNELS)
    c.require(len(m.pixel_mean) == 3, "model.pixel_mean", "needs 3 values (one per channel)")
    ok = len(m.pixel_std) == 3 and all(s > 0 for s in m.pixel_std)
    c.require(ok, "model.pixel_std", "needs 3 positive values")

    if m.meta_architecture == "RetinaNet":
        head_in = tuple(m.retinanet.in_features)
        _check_retinanet(c, fpn_out)
    elif m.meta_architecture == "ProposalNetwork":
        head_in = tuple(m.rpn.in_features)
        c.require(not m.mask_on, "model.mask_on", "ProposalNetwork has no mask head")
        _check_rpn(c, fpn_out)
    elif m.meta_architecture == "SemanticSegmentor":
        head_in = ()
        c.require(not m.mask_on, "model.mask_on", "SemanticSegmentor has no mask head")
        c.require(not plain, "model.backbone.name", "SemanticSegmentor needs an FPN backbone")
    else:
        head_in = tuple(m.rpn.in_features)
        _check_rpn(c, fpn_out)
        _check_roi_heads(c, fpn_out)
        if m.meta_architecture == "PanopticFPN":
            c.require(bool(m.mask_on), "model.mask_on", "PanopticFPN needs the mask head")
            c.require(not plain, "model.backbone.name", "PanopticFPN needs an FPN backbone")
            _check_panoptic(c)
    if "sem_seg_head" in m:
        _check_sem_seg_head(c, fpn_out)
    if head_in:
        _check_anchors(c, head_in)
    _check_research(c)
    _check_rest(c, stride=stride)


def _check_sem_seg_head(c: _Checker, fpn_out: tuple[str, ...]) -> None:
    """`MODEL.SEM_SEG_HEAD.*`: levels the FPN gives, at strides >= the common stride."""
    h = c.config.model.sem_seg_head
    c.one_of("model.sem_seg_head.name", ("SemSegFPNHead",))
    feats = tuple(h.in_features)
    ok = len(feats) > 0 and set(feats) <= set(fpn_out) and all(f.startswith("p") for f in feats)
    c.require(ok, "model.sem_seg_head.in_features", f"must be a subset of FPN outputs {fpn_out}")
    c.one_of("model.sem_seg_head.common_stride", (4, 8, 16, 32))
    if ok and _is_int(h.common_stride):
        c.require(
            all(2 ** int(f[1:]) >= h.common_stride for f in feats),
            "model.sem_seg_head.in_features",
            f"every level's stride must be >= common_stride {h.common_stride}",
        )
    c.int_at_least("model.sem_seg_head.num_classes", 1)
    c.int_at_least("model.sem_seg_head.convs_dim", 1)
    c.one_of("model.sem_seg_head.norm", NORMS)
    if h.norm == "GN" and _is_int(h.convs_dim):
        c.require(
            h.convs_dim % 32 == 0, "model.sem_seg_head.convs_dim", "GN needs a multiple of 32"
        )
    c.int_at_least("model.sem_seg_head.ignore_value", 0)
    c.number_in("model.sem_seg_head.loss_weight", 0, math.inf)


def _check_panoptic(c: _Checker) -> None:
    """`MODEL.PANOPTIC_FPN.*`: loss weight and combine thresholds."""
    c.number_in("model.panoptic_fpn.instance_loss_weight", 0, math.inf)
    c.number_in("model.panoptic_fpn.combine.overlap_thresh", 0, 1)
    c.int_at_least("model.panoptic_fpn.combine.stuff_area_limit", 0)
    c.number_in("model.panoptic_fpn.combine.instances_confidence_thresh", 0, 1)


def _check_long_tail(c: _Checker) -> None:
    """`use_sigmoid_ce` / `use_fed_loss` and their settings (Detectron2's asserts, as errors)."""
    m = c.config.model
    bh = m.roi_box_head
    sigmoid, fed = bh.get("use_sigmoid_ce", False), bh.get("use_fed_loss", False)
    c.require(isinstance(sigmoid, bool), "model.roi_box_head.use_sigmoid_ce", "must be a bool")
    c.require(isinstance(fed, bool), "model.roi_box_head.use_fed_loss", "must be a bool")
    if "use_fed_loss" not in bh:
        return
    c.require(
        not fed or sigmoid,
        "model.roi_box_head.use_fed_loss",
        "needs use_sigmoid_ce = True (Detectron2: 'Please use sigmoid cross entropy loss with "
        "federated loss')",
    )
    c.require(
        not sigmoid or bh.get("cls_loss", "softmax_ce") == "softmax_ce",
        "model.roi_box_head.cls_loss",
        "use_sigmoid_ce replaces the classification loss; leave cls_loss 'softmax_ce'",
    )
    c.int_at_least("model.roi_box_head.fed_loss_num_classes", 1)
    c.number_in("model.roi_box_head.fed_loss_freq_weight_power", 0, math.inf)
    counts = tuple(bh.fed_loss_image_counts)
    k = m.roi_heads.num_classes
    ok = not counts or (len(counts) == k and all(_is_int(x) and x >= 0 for x in counts))
    c.require(
        ok,
        "model.roi_box_head.fed_loss_image_counts",
        f"must be () or {k} ints >= 0 (one per class)",
    )


def _check_research(c: _Checker) -> None:
    """Every swap-point key (`jax_rcnn.research.CONFIG_KEYS`) resolves to a function with the
    signature its stage calls: an unknown name, an import that fails or a wrong signature is
    reported here, naming the key, before anything compiles."""
    from jax_rcnn import research  # jax-heavy; imported only when validating

    for key, problem in research.check_config(c.config):
        c.require(False, key, problem)


def _check_fpn(c: _Checker, out_features: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """The FPN keys; returns (FPN outputs, largest input stride)."""
    m = c.config.model
    r = m.resnets
    c.one_of("model.fpn.norm", NORMS)
    fpn_in = tuple(m.fpn.in_features)
    consecutive = any(fpn_in == FPN_LEVELS[i : i + len(fpn_in)] for i in range(len(FPN_LEVELS)))
    c.require(
        len(fpn_in) > 0 and consecutive,
        "model.fpn.in_features",
        f"must be consecutive stages of {FPN_LEVELS}",
    )
    c.require(
        set(fpn_in) <= set(out_features),
        "model.fpn.in_features",
        f"must be among model.resnets.out_features {out_features}",
    )
    if "res5" in fpn_in:
        c.require(
            r.res5_dilation == 1,
            "model.resnets.res5_dilation",
            "must be 1 when the FPN reads res5 (its strides must double level to level)",
        )
    c.int_at_least("model.fpn.out_channels", 1)
    c.one_of("model.fpn.fuse_type", FUSE_TYPES)
    # FPN outputs: p<k> for each input res<k>, plus the top block's (p6 max-pooled, or p6, p7).
    levels = [int(f[3:]) for f in fpn_in if f in FPN_LEVELS]
    num_extra = 2 if BACKBONE_TOP_BLOCKS.get(m.backbone.name) == "LastLevelP6P7" else 1
    extra = tuple(f"p{levels[-1] + i}" for i in range(1, num_extra + 1)) if levels else ()
    if num_extra == 2:
        c.require(
            "res5" in out_features,
            "model.resnets.out_features",
            "must include res5: LastLevelP6P7 builds p6 from C5",
        )
    return tuple(f"p{k}" for k in levels) + extra, 2 ** levels[-1] if levels else 32


def _check_anchors(c: _Checker, head_in: tuple[str, ...]) -> None:
    """Anchor sizes and ratios: one entry, or one per level the anchor head reads."""
    ag = c.config.model.anchor_generator
    per_level = {
        "sizes": tuple(map(tuple, ag.sizes)),
        "ratios": tuple(map(tuple, ag.aspect_ratios)),
    }
    for name, key in (("sizes", "sizes"), ("ratios", "aspect_ratios")):
        value = per_level[name]
        c.require(
            len(value) in (1, len(head_in)),
            f"model.anchor_generator.{key}",
            f"needs 1 entry or one per level the head reads ({len(head_in)})",
        )
        ok = all(len(v) > 0 and all(_is_number(x) and x > 0 for x in v) for v in value)
        c.require(ok, f"model.anchor_generator.{key}", "needs positive values on every level")
    sizes, ratios = per_level["sizes"], per_level["ratios"]
    if sizes and ratios:
        counts = {len(sizes[i % len(sizes)]) * len(ratios[i % len(ratios)]) for i in range(6)}
        c.require(
            len(counts) == 1,
            "model.anchor_generator.sizes",
            "every level needs the same number of anchors (sizes x aspect_ratios): "
            "the head is shared by all levels",
        )
    c.require(0.0 <= ag.offset < 1.0, "model.anchor_generator.offset", "must be in [0, 1)")


def _check_retinanet(c: _Checker, fpn_out: tuple[str, ...]) -> None:
    """`RetinaNet`'s keys (Detectron2's asserts, and what jax_rcnn implements)."""
    r = c.config.model.retinanet
    c.require(not c.config.model.mask_on, "model.mask_on", "RetinaNet has no mask head")
    c.int_at_least("model.retinanet.num_classes", 1)
    ok = len(r.in_features) > 0 and set(r.in_features) <= set(fpn_out)
    c.require(ok, "model.retinanet.in_features", f"must be a subset of FPN outputs {fpn_out}")
    c.int_at_least("model.retinanet.num_convs", 0)
    c.one_of("model.retinanet.norm", ("", "GN"))
    c.number_in("model.retinanet.prior_prob", 0, 1, open_low=True)
    c.require(r.prior_prob < 1, "model.retinanet.prior_prob", "must be < 1")
    c.matcher("model.retinanet")
    c.box_regression("model.retinanet")
    c.number_in("model.retinanet.smooth_l1_loss_beta", 0, math.inf)
    c.number_in("model.retinanet.focal_loss_alpha", -math.inf, 1)
    c.number_in("model.retinanet.focal_loss_gamma", 0, math.inf)
    c.number_in("model.retinanet.score_thresh_test", 0, 1)
    c.int_at_least("model.retinanet.topk_candidates_test", 1)
    c.number_in("model.retinanet.nms_thresh_test", 0, 1)


def _check_rpn(c: _Checker, fpn_out: tuple[str, ...]) -> None:
    """The RPN keys (`GeneralizedRCNN`, `ProposalNetwork`)."""
    m = c.config.model
    rpn_in = tuple(m.rpn.in_features)
    ok = len(rpn_in) > 0 and set(rpn_in) <= set(fpn_out)
    c.require(ok, "model.rpn.in_features", f"must be a non-empty subset of the features {fpn_out}")
    rpn = m.rpn
    c.sampled_matcher("model.rpn")
    c.box_regression("model.rpn")
    c.number_in("model.rpn.smooth_l1_beta", 0, math.inf)
    c.number_in("model.rpn.bbox_reg_loss_weight", 0, math.inf)
    c.number_in("model.rpn.nms_thresh", 0, 1)
    c.number_in("model.rpn.min_size", 0, math.inf)
    c.number_in("model.rpn.loss_weight", 0, math.inf)
    for mode in ("train", "test"):
        c.int_at_least(f"model.rpn.pre_nms_topk_{mode}", 1)
        c.int_at_least(f"model.rpn.post_nms_topk_{mode}", 1)
        pre, post = rpn[f"pre_nms_topk_{mode}"], rpn[f"post_nms_topk_{mode}"]
        c.require(
            post <= pre * max(len(rpn_in), 1),
            f"model.rpn.post_nms_topk_{mode}",
            f"must be <= pre_nms_topk_{mode} x levels = {pre} x {len(rpn_in)}",
        )
    ok = len(rpn.conv_dims) >= 1 and all(_is_int(d) and (d == -1 or d >= 1) for d in rpn.conv_dims)
    c.require(ok, "model.rpn.conv_dims", "must be ints, each -1 (= input channels) or >= 1")


def _check_roi_heads(c: _Checker, fpn_out: tuple[str, ...]) -> None:
    """`GeneralizedRCNN`'s ROI-head keys."""
    m = c.config.model
    c.int_at_least("model.roi_heads.num_classes", 1)
    c.one_of("model.roi_heads.name", ROI_HEADS_NAMES)
    res5_heads = m.roi_heads.get("name") == "Res5ROIHeads"
    roi_in = tuple(m.roi_heads.in_features)
    ok = len(roi_in) > 0 and set(roi_in) <= set(fpn_out)
    c.require(ok, "model.roi_heads.in_features", f"must be a subset of the features {fpn_out}")
    c.one_of("model.roi_mask_head.norm", NORMS)
    if res5_heads:  # Detectron2's Res5ROIHeads asserts one input feature; res5 reads res4
        plain = m.backbone.name == PLAIN_BACKBONE
        c.require(plain, "model.backbone.name", f"Res5ROIHeads needs {PLAIN_BACKBONE!r}")
        ok = roi_in == ("res4",)
        c.require(ok, "model.roi_heads.in_features", "Res5ROIHeads needs ('res4',)")
        c.require(
            m.resnets.depth not in (18, 34),
            "model.resnets.depth",
            "Res5ROIHeads builds bottleneck blocks (R50 or deeper)",
        )
    c.sampled_matcher("model.roi_heads")
    c.number_in("model.roi_heads.score_thresh_test", 0, 1)
    c.number_in("model.roi_heads.nms_thresh_test", 0, 1)
    bh = m.roi_box_head
    c.box_regression("model.roi_box_head")
    c.number_in("model.roi_box_head.smooth_l1_beta", 0, math.inf)
    c.number_in("model.roi_box_head.bbox_reg_loss_weight", 0, math.inf)
    c.pooler("model.roi_box_head")
    _check_long_tail(c)
    c.int_at_least("model.roi_mask_head.num_conv", 0)
    c.int_at_least("model.roi_mask_head.conv_dim", 1)
    c.int_at_least("model.roi_mask_head.num_sampled_masks", 0)
    if res5_heads:
        return  # no box-head layers, and the mask head reads the res5 output (no pooler)
    if "num_fc" not in bh or "pooler_type" not in m.roi_mask_head:
        c.require(
            False,
            "model.roi_heads.name",
            "StandardROIHeads needs the box-head layer and mask-pooler keys, which a C4 config "
            "does not have (build it with configs.common.base_config(layout='DC5' or 'FPN'))",
        )
        return
    c.one_of("model.roi_box_head.norm", NORMS)
    c.int_at_least("model.roi_box_head.num_conv", 0)
    c.int_at_least("model.roi_box_head.num_fc", 0)
    c.require(
        _is_int(bh.num_conv) and _is_int(bh.num_fc) and bh.num_conv + bh.num_fc >= 1,
        "model.roi_box_head.num_fc",
        "the box head needs a layer (num_conv + num_fc >= 1)",
    )
    c.int_at_least("model.roi_box_head.conv_dim", 1)
    c.int_at_least("model.roi_box_head.fc_dim", 1)
    c.pooler("model.roi_mask_head")
    if m.roi_heads.get("name") == "CascadeROIHeads":
        _check_cascade(c)
    if m.get("keypoint_on", False):
        _check_keypoint(c)


def _check_keypoint(c: _Checker) -> None:
    """`MODEL.ROI_KEYPOINT_HEAD.*` and `TEST.KEYPOINT_OKS_SIGMAS` of a keypoint model."""
    m = c.config.model
    c.require(
        m.roi_heads.get("name", "StandardROIHeads") == "StandardROIHeads",
        "model.keypoint_on",
        "the keypoint head is implemented for StandardROIHeads only",
    )
    kh = m.roi_keypoint_head
    c.one_of("model.roi_keypoint_head.name", ("KRCNNConvDeconvUpsampleHead",))
    c.pooler("model.roi_keypoint_head")
    c.positive_ints("model.roi_keypoint_head.conv_dims")
    c.int_at_least("model.roi_keypoint_head.num_keypoints", 1)
    c.int_at_least("model.roi_keypoint_head.min_keypoints_per_image", 0)
    c.number_in("model.roi_keypoint_head.loss_weight", 0, math.inf)
    sigmas = tuple(c.config.test.get("keypoint_oks_sigmas", ()))
    c.require(
        not sigmas or (len(sigmas) == kh.num_keypoints and all(s > 0 for s in sigmas)),
        "test.keypoint_oks_sigmas",
        f"must be empty (COCO's) or {kh.num_keypoints} positive values, got {sigmas}",
    )


def _check_cascade(c: _Checker) -> None:
    """`CascadeROIHeads._init_box_head`'s asserts: one IoU and one weight 4-tuple per stage,
    class-agnostic boxes, and stage 1's IoU equal to the ROI-head matcher's."""
    m = c.config.model
    if "roi_box_cascade_head" not in m:
        c.require(
            False,
            "model.roi_heads.name",
            "CascadeROIHeads needs model.roi_box_cascade_head (ious, bbox_reg_weights); "
            "build it with configs.common.cascade(config.model)",
        )
        return
    ious = tuple(m.roi_box_cascade_head.ious)
    weights = tuple(m.roi_box_cascade_head.bbox_reg_weights)
    ok = len(ious) >= 1 and all(_is_number(t) and 0 < t <= 1 for t in ious)
    c.require(ok, "model.roi_box_cascade_head.ious", "needs one IoU in (0, 1] per stage")
    c.require(
        len(weights) == len(ious),
        "model.roi_box_cascade_head.bbox_reg_weights",
        f"needs one (dx, dy, dw, dh) weight tuple per stage: {len(ious)} stages "
        f"(len(model.roi_box_cascade_head.ious)), got {len(weights)}",
    )
    ok = all(
        isinstance(w, Sequence) and len(w) == 4 and all(_is_number(x) and x > 0 for x in w)
        for w in weights
    )
    c.require(
        ok, "model.roi_box_cascade_head.bbox_reg_weights", "each stage needs 4 positive values"
    )
    c.require(
        bool(m.roi_box_head.cls_agnostic_bbox_reg),
        "model.roi_box_head.cls_agnostic_bbox_reg",
        "must be True for CascadeROIHeads (Detectron2 asserts it)",
    )
    first = tuple(m.roi_heads.iou_thresholds)[:1]
    c.require(
        bool(ious) and first == ious[:1],
        "model.roi_box_cascade_head.ious",
        f"the first stage's IoU must equal model.roi_heads.iou_thresholds[0] {first}",
    )


def _check_rest(c: _Checker, stride: int | None) -> None:
    """Input, data, solver and test keys (every meta-architecture); `stride`: the FPN's largest
    input stride, None for a plain ResNet (any `size_divisibility` >= 0)."""
    config = c.config
    inp = config.input
    c.one_of("input.format", INPUT_FORMATS)
    c.one_of("input.mask_format", MASK_FORMATS)
    c.one_of("input.random_flip", FLIP_MODES)
    c.positive_ints("input.min_size_train")
    c.one_of("input.min_size_train_sampling", SAMPLING_STYLES)
    if inp.min_size_train_sampling == "range":
        ok = len(inp.min_size_train) == 2 and inp.min_size_train[0] <= inp.min_size_train[1]
        c.require(ok, "input.min_size_train", "'range' sampling needs (low, high)")
    for key in ("max_size_train", "min_size_test", "max_size_test", "max_gt", "gt_mask_size"):
        c.int_at_least(f"input.{key}", 1)
    c.one_of("input.pad_mode", PAD_MODES)
    if stride is None:
        c.int_at_least("input.size_divisibility", 0)
    else:
        c.require(
            _is_int(inp.size_divisibility) and inp.size_divisibility % stride == 0,
            "input.size_divisibility",
            f"must be a multiple of the FPN's largest input stride {stride}",
        )
    if inp.pad_mode == "buckets":
        _check_buckets(c)
    c.require(isinstance(inp.auto_buckets, bool), "input.auto_buckets", "must be a bool")
    c.int_at_least("input.max_buckets", 1)

    # Data.
    c.one_of("data.source", DATA_SOURCES)
    c.one_of("data.format", DATA_FORMATS)
    names = tuple(config.data.class_names)
    k = num_classes(config)
    c.require(
        not names or len(names) == k or config.model.meta_architecture == "ProposalNetwork",
        "data.class_names",
        f"has {len(names)} names, the model has {k} classes",
    )
    c.int_at_least("dataloader.num_workers", 0)
    c.one_of("dataloader.sampler_train", TRAIN_SAMPLERS)
    c.require(
        isinstance(config.dataloader.repeat_sqrt, bool), "dataloader.repeat_sqrt", "must be a bool"
    )
    if config.dataloader.sampler_train == "RepeatFactorTrainingSampler":
        c.number_in("dataloader.repeat_threshold", 0.0, float("inf"), open_low=True)
    sh = config.data.shapes
    c.one_of("data.shapes.num_classes", range(1, 9))
    c.one_of("data.shapes.num_stuff_classes", range(0, 5))
    if "sem_seg_head" in config.model and config.data.source == "shapes":
        c.require(
            sh.num_stuff_classes > 0,
            "data.shapes.num_stuff_classes",
            "must be > 0 for a model with a semantic head (the panoptic shapes variant)",
        )
        c.require(
            config.model.sem_seg_head.num_classes == sh.num_stuff_classes + 1,
            "model.sem_seg_head.num_classes",
            "must be data.shapes.num_stuff_classes + 1 (0 = things)",
        )
    rng = tuple(sh.image_size_range)
    ok = not rng or (len(rng) == 2 and all(_is_int(x) for x in rng) and 1 <= rng[0] <= rng[1])
    c.require(ok, "data.shapes.image_size_range", "must be () or (lo, hi) ints, 1 <= lo <= hi")
    c.require(isinstance(sh.long_tail, bool), "data.shapes.long_tail", "must be a bool")
    if config.data.source == "people":
        c.require(
            "people" in config.data,
            "data.source",
            "'people' needs the config.data.people keys (configs.common.people_data(config))",
        )
    _check_no_effect(c)

    # Solver.
    s = config.solver
    c.int_at_least("solver.ims_per_batch", 1)
    c.int_at_least("solver.max_iter", 1)
    steps = tuple(s.steps)
    ok = all(_is_int(x) and x > 0 for x in steps)
    ok = ok and all(a < b for a, b in zip(steps, steps[1:], strict=False))
    c.require(ok, "solver.steps", "must be positive ints, strictly increasing")
    late = [x for x in steps if _is_int(x) and _is_int(s.max_iter) and x >= s.max_iter]
    if late:  # Detectron2's build_lr_scheduler warns and drops them too
        logger.warning(
            "config.solver.steps %s >= config.solver.max_iter = %d have no effect: ignored",
            late,
            s.max_iter,
        )
    c.number_in("solver.base_lr", 0, math.inf)
    c.number_in("solver.momentum", 0, 1)
    c.require(s.momentum < 1, "solver.momentum", "must be < 1")
    for key in ("weight_decay", "weight_decay_norm", "warmup_factor"):
        c.number_in(f"solver.{key}", 0, math.inf)
    c.number_in("solver.gamma", 0, math.inf, open_low=True)
    c.number_in("solver.bias_lr_factor", 0, math.inf, open_low=True)
    c.int_at_least("solver.warmup_iters", 0)
    c.one_of("solver.warmup_method", WARMUP_METHODS)
    c.one_of("solver.lr_scheduler_name", LR_SCHEDULERS)
    c.number_in("solver.base_lr_end", 0, s.base_lr if _is_number(s.base_lr) else math.inf)
    c.int_at_least("solver.checkpoint_period", 1)
    c.int_at_least("solver.max_to_keep", 1)
    c.one_of("solver.clip_gradients.clip_type", CLIP_TYPES)
    c.number_in("solver.clip_gradients.clip_value", 0, math.inf, open_low=True)
    c.number_in("solver.clip_gradients.norm_type", 0, math.inf, open_low=True)

    # Test, train step, misc.
    c.int_at_least("test.detections_per_image", 1)
    c.int_at_least("test.eval_period", 0)
    c.int_at_least("test.ims_per_batch", 1)
    c.one_of("train.compute_dtype", COMPUTE_DTYPES)
    c.require(_is_int(config.seed), "seed", "must be an int")
    c.int_at_least("log_period", 1)
    if c.problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(c.problems))


def num_classes(config: ml_collections.ConfigDict) -> int:
    """K, the number of object classes of any meta-architecture's config."""
    m = config.model
    if m.meta_architecture == "RetinaNet":
        return int(m.retinanet.num_classes)
    if m.meta_architecture == "ProposalNetwork":
        return 1  # class-agnostic objectness
    if m.meta_architecture == "SemanticSegmentor":
        return int(m.sem_seg_head.num_classes)
    return int(m.roi_heads.num_classes)


def to_flat_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{"model.rpn.nms_thresh": 0.7, ...}: every leaf of a config, for logging and diffs."""
    return _flatten(config.to_dict())


def format_config(config: ml_collections.ConfigDict) -> str:
    """One `key: value` line per leaf, sorted; what train.py logs at start-up."""
    return "\n".join(f"{k}: {v!r}" for k, v in sorted(to_flat_dict(config).items()))
