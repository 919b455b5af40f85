"""The research API: the swap points of the detectors, their signatures and built-in choices.

A stage (`jax_rcnn.meta_arch`) calls six kinds of pure function. Each is selected by a config
key that lives next to the settings of the stage that calls it, and names either a built-in
(the plain mappings below) or user code as `module:function`: an importable module
(`my_pkg.samplers:sample`) or a Python file, relative to the working directory
(`my_sampler.py:sample`). No registry: the mappings are ordinary dicts, and the function is
called directly. `check_config` resolves every key and checks its signature when the config is
validated (`jax_rcnn.config.validate`), before anything compiles.

* `Assigner` (`ASSIGNERS`: "iou" = Detectron2's `Matcher`, "atss"): `model.rpn.matcher`,
  `model.roi_heads.matcher`, `model.retinanet.matcher`;
* `Sampler` (`SAMPLERS`: "random" = Detectron2's, "ohem", "iou_balanced"): `model.rpn.sampler`,
  `model.roi_heads.sampler`;
* `BoxRegLoss` (`BOX_REG_LOSSES`: "smooth_l1", "giou", "diou", "ciou"):
  `model.rpn.bbox_reg_loss_type`, `model.roi_box_head.bbox_reg_loss_type`,
  `model.retinanet.bbox_reg_loss_type` (Detectron2's `BBOX_REG_LOSS_TYPE` keys);
* `ClsLoss` (`CLS_LOSSES`: "softmax_ce"): `model.roi_box_head.cls_loss`;
* `BoxCoder` factory (`BOX_CODERS`: "delta_xywh" = Detectron2's `Box2BoxTransform`):
  `model.rpn.box_coder`, `model.roi_box_head.box_coder`, `model.retinanet.box_coder`;
* `TestNMS` (`TEST_NMS`: "nms", "soft_nms_linear", "soft_nms_gaussian"):
  `model.roi_heads.test_nms`, `model.retinanet.test_nms`.

The defaults are Detectron2's behaviour; `docs/research.md` shows how to write a new piece.
Conventions every piece follows: arrays have static shapes, variable-length sets are padded and
come with a `*_valid` mask (padded entries hold finite canonical values and must not change
the result), keyword arguments are static Python values, and the function is traceable by
`jax.jit` and `jax.vmap` (no data-dependent shapes, no host callbacks, no Python `if` on array
values).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax

from jax_rcnn import boxes as box_ops
from jax_rcnn import losses, matching, sampling, soft_nms


class Assigner(Protocol):
    """Matches boxes (anchors or proposals) of one image to its gt.

    `(boxes f32[P, 4] xyxy, gt_boxes f32[G, 4] xyxy, gt_valid bool[G], *, thresholds:
    tuple[float, ...], labels: tuple[int, ...], allow_low_quality_matches: bool,
    num_per_level: tuple[int, ...]) -> (matched_idxs i32[P] in [0, G), match_labels i32[P]
    in {-1 ignore, 0 negative, 1 positive})`. Padded gt rows are `[0, 0, 0, 0]` and must never
    match. `num_per_level` gives the boxes per pyramid level (one entry for proposals).
    """

    def __call__(
        self,
        boxes: jax.Array,
        gt_boxes: jax.Array,
        gt_valid: jax.Array,
        *,
        thresholds: Sequence[float],
        labels: Sequence[int],
        allow_low_quality_matches: bool,
        num_per_level: Sequence[int],
    ) -> tuple[jax.Array, jax.Array]: ...


class Sampler(Protocol):
    """Chooses the training examples of one image among its labelled candidates.

    `(key, labels i32[N] (-1 ignore, bg_label negative, other positive), quality f32[N] (best
    IoU with a gt), hardness f32[N] (detached per-candidate loss; zeros unless the function
    has the attribute `uses_loss = True`), *, num_samples: int, positive_fraction: float,
    bg_label: int) -> (pos_mask bool[N], neg_mask bool[N])`, disjoint, never choosing an
    ignored candidate, at most `num_samples` in all and at most `int(num_samples *
    positive_fraction)` positives. `uses_loss` samplers are supported in the ROI heads of
    `StandardROIHeads` (the stage runs the box head once more on all candidates).
    """

    def __call__(
        self,
        key: jax.Array,
        labels: jax.Array,
        quality: jax.Array,
        hardness: jax.Array,
        *,
        num_samples: int,
        positive_fraction: float,
        bg_label: int,
    ) -> tuple[jax.Array, jax.Array]: ...


class BoxRegLoss(Protocol):
    """Per-box regression loss.

    `(pred_deltas f32[..., 4], target_deltas f32[..., 4], pred_boxes f32[..., 4] xyxy (the
    deltas decoded on the anchors / proposals), target_boxes f32[..., 4] xyxy, *, beta: float
    (the stage's smooth-L1 beta)) -> f32[...]`. The stage sums it over the foreground and
    divides by its normaliser; background rows hold the unit box `[0, 0, 1, 1]` and zero
    deltas, so the loss must be finite there (its value is masked out).
    """

    def __call__(
        self,
        pred_deltas: jax.Array,
        target_deltas: jax.Array,
        pred_boxes: jax.Array,
        target_boxes: jax.Array,
        *,
        beta: float,
    ) -> jax.Array: ...


class ClsLoss(Protocol):
    """Per-ROI classification loss of the box head.

    `(logits f32[..., K+1] (background last), labels i32[..., ] in [0, K]) -> f32[...]`; the
    stage averages it over the sampled ROIs.
    """

    def __call__(self, logits: jax.Array, labels: jax.Array) -> jax.Array: ...


class BoxCoder(Protocol):
    """A box coding; built by a factory `(weights: tuple[float, float, float, float]) ->
    BoxCoder` and hashable (it may be a static argument).

    `get_deltas(src f32[..., 4], target f32[..., 4]) -> f32[..., 4]` (finite, zero for
    degenerate rows); `apply_deltas(deltas f32[..., 4k], boxes f32[..., 4]) -> f32[..., 4k]`.
    """

    def get_deltas(self, src_boxes: jax.Array, target_boxes: jax.Array) -> jax.Array: ...

    def apply_deltas(self, deltas: jax.Array, boxes: jax.Array) -> jax.Array: ...


class TestNMS(Protocol):
    """Test-time NMS over independent groups (one per image and class).

    `(boxes f32[G, N, 4] xyxy, scores f32[G, N], valid bool[G, N], *, iou_threshold: float,
    max_output: int, backend: str) -> (keep i32[G, K] indices into N, keep_scores f32[G, K]
    (the score each kept box reports, e.g. decayed by Soft-NMS), keep_valid bool[G, K])`,
    K = `max_output`, kept boxes in descending reported score, invalid slots last.
    """

    def __call__(
        self,
        boxes: jax.Array,
        scores: jax.Array,
        valid: jax.Array,
        *,
        iou_threshold: float,
        max_output: int,
        backend: str,
    ) -> tuple[jax.Array, jax.Array, jax.Array]: ...


def softmax_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """ClsLoss "softmax_ce": Detectron2's softmax cross-entropy, `f32[...]` per ROI."""
    return losses.softmax_cross_entropy(logits, labels)


def delta_xywh(weights: Sequence[float]) -> box_ops.Box2BoxTransform:
    """BoxCoder "delta_xywh": Detectron2's `Box2BoxTransform(weights)`."""
    return box_ops.Box2BoxTransform(tuple(float(w) for w in weights))


# The built-in choices of each point: plain mappings, name -> function.
ASSIGNERS: Mapping[str, Callable] = {
    "iou": matching.iou_assigner,
    "atss": matching.atss_assigner,
}
SAMPLERS: Mapping[str, Callable] = {
    "random": sampling.random_sampler,
    "ohem": sampling.ohem_sampler,
    "iou_balanced": sampling.iou_balanced_sampler,
}
BOX_REG_LOSSES: Mapping[str, Callable] = losses.BOX_REG_LOSSES
CLS_LOSSES: Mapping[str, Callable] = {"softmax_ce": softmax_ce}
BOX_CODERS: Mapping[str, Callable] = {"delta_xywh": delta_xywh}
TEST_NMS: Mapping[str, Callable] = {
    "nms": soft_nms.greedy_nms,
    "soft_nms_linear": soft_nms.soft_nms_linear,
    "soft_nms_gaussian": soft_nms.soft_nms_gaussian,
}

# point -> (built-ins, positional arguments, keyword arguments) the stage calls it with.
POINTS: dict[str, tuple[Mapping[str, Callable], int, tuple[str, ...]]] = {
    "assigner": (
        ASSIGNERS,
        3,
        ("thresholds", "labels", "allow_low_quality_matches", "num_per_level"),
    ),
    "sampler": (SAMPLERS, 4, ("num_samples", "positive_fraction", "bg_label")),
    "box_reg_loss": (BOX_REG_LOSSES, 4, ("beta",)),
    "cls_loss": (CLS_LOSSES, 2, ()),
    "box_coder": (BOX_CODERS, 1, ()),
    "test_nms": (TEST_NMS, 3, ("iou_threshold", "max_output", "backend")),
}

# Every config key that selects a piece -> its point.
CONFIG_KEYS: dict[str, str] = {
    "model.rpn.matcher": "assigner",
    "model.rpn.sampler": "sampler",
    "model.rpn.bbox_reg_loss_type": "box_reg_loss",
    "model.rpn.box_coder": "box_coder",
    "model.roi_heads.matcher": "assigner",
    "model.roi_heads.sampler": "sampler",
    "model.roi_heads.test_nms": "test_nms",
    "model.roi_box_head.bbox_reg_loss_type": "box_reg_loss",
    "model.roi_box_head.cls_loss": "cls_loss",
    "model.roi_box_head.box_coder": "box_coder",
    "model.retinanet.matcher": "assigner",
    "model.retinanet.bbox_reg_loss_type": "box_reg_loss",
    "model.retinanet.box_coder": "box_coder",
    "model.retinanet.test_nms": "test_nms",
}


def _load_file(path: pathlib.Path):
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"jax_rcnn_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@functools.cache
def _import(spec: str, cwd: str) -> Callable:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError("expected 'module:function' or 'file.py:function'")
    if module_name.endswith(".py"):
        path = pathlib.Path(module_name)
        path = (pathlib.Path(cwd) / path).resolve() if not path.is_absolute() else path
        if not path.is_file():
            raise ValueError(f"file {str(path)!r} does not exist")
        module = _load_file(path)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"cannot import module {module_name!r}: {e}") from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"{module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn


def resolve(point: str, spec: Any) -> Callable:
    """The function `spec` names for the swap point `point`.

    Args:
      point: a `POINTS` key ("assigner", "sampler", "box_reg_loss", "cls_loss", "box_coder",
        "test_nms").
      spec: a built-in name of that point, or `"module:function"` / `"file.py:function"`
        (a relative file path is read from the working directory).

    Returns:
      The function (built-ins are the mapping's values; imports are cached).

    Raises:
      ValueError: unknown name, unresolvable import, or a signature that cannot take the
        stage's arguments (`check_signature`).
    """
    builtins, _, _ = POINTS[point]
    if not isinstance(spec, str):
        raise ValueError(f"must be a string naming a {point}, got {type(spec).__name__}")
    if spec in builtins:
        return builtins[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown {point} {spec!r}: not one of {tuple(builtins)} and not 'module:function'"
        )
    fn = _import(spec, str(pathlib.Path.cwd()))
    check_signature(point, fn)
    return fn


def check_signature(point: str, fn: Callable) -> None:
    """Raises ValueError unless `fn` accepts the arguments the stages pass for `point`."""
    _, num_positional, keywords = POINTS[point]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to check
    try:
        sig.bind(*([None] * num_positional), **{k: None for k in keywords})
    except TypeError as e:
        want = ", ".join(["arg"] * num_positional + ["*"] + [f"{k}" for k in keywords])
        raise ValueError(
            f"{getattr(fn, '__name__', fn)!r} has the signature {sig}, but a {point} is called "
            f"as f({want}) ({e}); see jax_rcnn.research.{_PROTOCOLS[point]}"
        ) from None


_PROTOCOLS = {
    "assigner": "Assigner",
    "sampler": "Sampler",
    "box_reg_loss": "BoxRegLoss",
    "cls_loss": "ClsLoss",
    "box_coder": "BoxCoder",
    "test_nms": "TestNMS",
}


def uses_loss(sampler: Callable) -> bool:
    """Whether a sampler wants the detached per-candidate loss as `hardness`."""
    return bool(getattr(sampler, "uses_loss", False))


def get(section, key: str, default: str) -> Callable:
    """The function the config section's `key` names (`default` when the key is absent).

    Args:
      section: a config node, e.g. `config.model.roi_heads`.
      key: its key, e.g. "sampler"; the point is `CONFIG_KEYS`' entry for it.
      default: the built-in used when the section lacks the key (older configs).
    """
    point = next(p for k, p in CONFIG_KEYS.items() if k.endswith("." + key))
    return resolve(point, section.get(key, default))


def box_reg_loss(section):
    """A stage's `bbox_reg_loss_type`: a built-in name as is (`jax_rcnn.losses` keeps
    Detectron2's exact smooth-L1 arithmetic for "smooth_l1"), else the resolved function."""
    name = section.get("bbox_reg_loss_type", "smooth_l1")
    return name if name in BOX_REG_LOSSES else resolve("box_reg_loss", name)


def box_coder(section, weights: Sequence[float] | None = None):
    """The `BoxCoder` of a stage: `section.box_coder` built with `weights` (default
    `section.bbox_reg_weights`)."""
    factory = resolve("box_coder", section.get("box_coder", "delta_xywh"))
    return factory(tuple(section.bbox_reg_weights if weights is None else weights))


def check_config(config) -> list[tuple[str, str]]:
    """Resolves every swap-point key of `config` and checks its signature.

    Returns:
      `(key, problem)` pairs, empty when every piece resolves; keys the config family does not
      have are skipped. Also reports a loss-ranked sampler outside `StandardROIHeads`.
    """
    problems = []
    for key, point in CONFIG_KEYS.items():
        node = config
        try:
            for part in key.split("."):
                node = node[part]
        except (KeyError, AttributeError):
            continue
        try:
            fn = resolve(point, node)
            if point == "box_coder":
                coder = fn((1.0, 1.0, 1.0, 1.0))
                if not (hasattr(coder, "get_deltas") and hasattr(coder, "apply_deltas")):
                    raise ValueError(
                        "the factory must return an object with get_deltas and apply_deltas"
                    )
            if point == "sampler" and uses_loss(fn) and key != "model.roi_heads.sampler":
                raise ValueError("a loss-ranked sampler (uses_loss) works only in the ROI heads")
            if key == "model.roi_heads.sampler" and uses_loss(fn):
                name = config.model.roi_heads.get("name", "StandardROIHeads")
                if name != "StandardROIHeads":
                    raise ValueError(f"a loss-ranked sampler needs StandardROIHeads, not {name}")
        except Exception as e:  # noqa: BLE001 - user code may raise anything on import
            problems.append(
                (key, f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))
            )
    return problems
