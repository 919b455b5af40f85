"""Loading and checking jax_rcnn configs.

Entry points:

* `load_config("configs/x.py:smoke")` loads an ml_collections config file (`get_config(arg)`),
  the way `train.py --config configs/x.py:smoke` does.
* `validate(config)` checks the start-up invariants and names the offending key.
* `from_detectron2("mask_rcnn_R_50_FPN_3x.yaml")` reads a Detectron2 YAML config (its `_BASE_`
  chain included, or a full `cfg.dump()`) and returns the jax_rcnn config with the values
  Detectron2 would use. It lives in `jax_rcnn.config_from_detectron2` (which imports this
  module) and is re-exported here on first access, as are `detectron2_config` and
  `D2_TO_JAX_RCNN`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

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


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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


# The Detectron2 YAML import lives in `config_from_detectron2`, which imports this module; its
# public names stay reachable as `jax_rcnn.config.<name>`, imported on first access so that
# neither module needs the other at import time.
_FROM_DETECTRON2 = ("from_detectron2", "detectron2_config", "D2_TO_JAX_RCNN")


def __getattr__(name: str) -> Any:
    """`from_detectron2`, `detectron2_config`, `D2_TO_JAX_RCNN` of `config_from_detectron2`."""
    if name in _FROM_DETECTRON2:
        from jax_rcnn import config_from_detectron2

        return getattr(config_from_detectron2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
