"""Detectron2 checkpoints <-> jax_rcnn variables.

* `load_detectron2_pkl(path)`: a model-zoo `model_final_*.pkl` (`{"model": {...}, "__author__":
  ...}`), a bare `{name: array}` pickle, or an MSRA/Caffe2 ImageNet pickle (`{"blobs": ...}`).
* `convert_detectron2_to_flax(state_dict, config)` / `convert_flax_to_detectron2(variables,
  config)`: the full model, bit-exact in both directions; any missing, unexpected or mis-shaped
  name is a `ValueError` that lists the names and the architecture the config expects.
* `convert_msra_backbone_to_flax(c2_weights, config, variables)`: ImageNet initialisation of
  the ResNet (`R-50.pkl`: `conv1_w`, `res_conv1_bn_s`, `res2_0_branch2a_w`, ...); every other
  variable keeps its value.

**The name table** (`name_table(config)`) is derived from the Flax variable tree of the config
(`jax_rcnn.modeling.abstract_variables`), so it covers every variable by construction. A Flax
path becomes a Detectron2 name by three rules:

| Flax | Detectron2 |
|---|---|
| path separator `/` | `.` |
| block `res{s}_{i}` | `res{s}.{i}` |
| cascade stage `box_head_{k}`, `box_predictor_{k}` | `box_head.{k}`, `box_predictor.{k}` |
| semantic tower layer `sem_seg_head/p{l}_{i}` | `sem_seg_head.p{l}.{i}` |
| `params` `kernel` / `bias` / BN-GN `scale` | `weight` / `bias` / `weight` |
| `batch_stats` `mean` / `var` | `running_mean` / `running_var` |
| `frozen` `weight`, `bias`, `running_mean`, `running_var` | same names |

and each array gets one layout change:

| layout | Flax | Detectron2 |
|---|---|---|
| conv | HWIO `[kh, kw, in, out]` | OIHW |
| deconv | `[kh, kw, in, out]` (PyTorch orientation, no flip) | IOHW (`ConvTranspose2d`) |
| linear | `(in, out)` | `(out, in)` |
| linear_chw | `(S*S*C, out)`, rows in NHWC order (y, x, c) | `(out, C*S*S)`, NCHW (c, y, x) |
| vector | `[C]` | `[C]` |

`deconv` is the mask head's `deconv` and the keypoint head's `score_lowres`. `linear_chw` is
the first fully connected layer after the box pooler (`box_head.fc1`; the box
predictor when `num_fc == 0`). Ignored on import: `*.num_batches_tracked`, `pixel_mean`,
`pixel_std` (config values), `*anchor_generator*` buffers.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any

import numpy as np
from flax import traverse_util

from jax_rcnn import modeling
from jax_rcnn.config import layout as cfg_layout

_LEAF_TO_D2 = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    (modeling.FROZEN, "weight"): "weight",
    (modeling.FROZEN, "bias"): "bias",
    (modeling.FROZEN, "running_mean"): "running_mean",
    (modeling.FROZEN, "running_var"): "running_var",
}
_BLOCK = re.compile(r"^(res\d|box_head|box_predictor|p\d)_(\d+)$")
_IGNORED = re.compile(r"(^|\.)(num_batches_tracked|pixel_mean|pixel_std)$|anchor_generator\.")
# ConvTranspose2d modules (weight (in, out, kh, kw)): the mask head's and the keypoint head's.
_DECONVS = ("deconv", "score_lowres")
_MSRA_CLASSIFIER = re.compile(r"^(fc1000|pred)_[wb]$")
FROZEN_BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the name table.

    Attributes:
      d2_name: Detectron2 state-dict name.
      collection: Flax variable collection ("params", "frozen", "batch_stats").
      path: Flax path inside the collection.
      layout: "conv", "deconv", "linear", "linear_chw" or "vector" (module docstring).
      flax_shape: shape in the Flax tree.
      d2_shape: shape in the Detectron2 state dict.
      chw: (C, S, S) of the flattened input of a "linear_chw" layer.
    """

    d2_name: str
    collection: str
    path: tuple[str, ...]
    layout: str
    flax_shape: tuple[int, ...]
    d2_shape: tuple[int, ...]
    chw: tuple[int, int, int] | None = None


def _d2_name(collection: str, path: tuple[str, ...]) -> str:
    leaf = _LEAF_TO_D2[(collection, path[-1])]
    return ".".join([_BLOCK.sub(r"\1.\2", p) for p in path[:-1]] + [leaf])


def _flat_input_chw(config) -> tuple[tuple[tuple[str, ...], ...], tuple[int, int, int] | None]:
    """Module paths whose dense kernel reads the flattened pooled map, and that map's (C,S,S)."""
    m = config.model
    rcnn = m.meta_architecture in ("GeneralizedRCNN", "PanopticFPN")
    name = modeling.roi_heads_name(config) if rcnn else ""
    if name not in ("StandardROIHeads", "CascadeROIHeads"):
        return (), None  # no fully connected layer on pooled features (C4: a spatial mean)
    bh = m.roi_box_head
    c = bh.conv_dim if bh.num_conv else pooled_channels(config)
    s = bh.pooler_resolution
    stages = [""]
    if name == "CascadeROIHeads":
        stages = [f"_{k}" for k in range(len(m.roi_box_cascade_head.ious))]
    if bh.num_fc:
        modules = tuple(("roi_heads", f"box_head{k}", "fc1") for k in stages)
    else:
        modules = tuple(
            ("roi_heads", f"box_predictor{k}", layer)
            for k in stages
            for layer in ("cls_score", "bbox_pred")
        )
    return modules, (c, s, s)


def pooled_channels(config) -> int:
    """Channels of the feature the ROI heads pool: the FPN width, or the ResNet stage's
    (`res2_out_channels * 2 ** (stage - 2)`: 2048 for DC5's res5, 1024 for C4's res4)."""
    m = config.model
    if "fpn" in m:
        return m.fpn.out_channels
    stage = int(m.roi_heads.in_features[0][len("res") :])
    return m.resnets.res2_out_channels * 2 ** (stage - 2)


_TABLE_CACHE: dict[str, tuple[Entry, ...]] = {}


def name_table(config) -> tuple[Entry, ...]:
    """Every variable of the model built from `config`, with its Detectron2 name and layout.

    Cached per `config.model` (tracing the model's init costs about a second at full size).
    """
    key = config.model.to_json()
    if key not in _TABLE_CACHE:
        _TABLE_CACHE[key] = _build_name_table(config)
    return _TABLE_CACHE[key]


def _build_name_table(config) -> tuple[Entry, ...]:
    abstract = modeling.abstract_variables(config)
    chw_modules, chw = _flat_input_chw(config)
    table = []
    for collection in sorted(abstract):
        if collection not in {c for c, _ in _LEAF_TO_D2}:
            continue  # not a Detectron2 weight
        for path, leaf in traverse_util.flatten_dict(abstract[collection]).items():
            shape = tuple(leaf.shape)
            chw_i = None
            if collection == "params" and path[-1] == "kernel" and len(shape) == 4:
                layout = "deconv" if path[-2] in _DECONVS else "conv"
                d2_shape = (
                    (shape[2], shape[3], shape[0], shape[1])
                    if layout == "deconv"
                    else (shape[3], shape[2], shape[0], shape[1])
                )
            elif collection == "params" and path[-1] == "kernel" and len(shape) == 2:
                layout, d2_shape = "linear", (shape[1], shape[0])
                if path[:-1] in chw_modules:
                    layout, chw_i = "linear_chw", chw
                    assert int(np.prod(chw)) == shape[0], (path, shape, chw)
            else:
                layout, d2_shape = "vector", shape
            table.append(
                Entry(_d2_name(collection, path), collection, path, layout, shape, d2_shape, chw_i)
            )
    return tuple(table)


def _to_d2(entry: Entry, x: np.ndarray) -> np.ndarray:
    if entry.layout == "conv":
        x = x.transpose(3, 2, 0, 1)
    elif entry.layout == "deconv":
        x = x.transpose(2, 3, 0, 1)
    elif entry.layout == "linear":
        x = x.T
    elif entry.layout == "linear_chw":
        c, s, _ = entry.chw
        x = x.reshape(s, s, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * s * s)
    return np.ascontiguousarray(x)


def _to_flax(entry: Entry, x: np.ndarray) -> np.ndarray:
    if entry.layout == "conv":
        x = x.transpose(2, 3, 1, 0)
    elif entry.layout == "deconv":
        x = x.transpose(2, 3, 0, 1)
    elif entry.layout == "linear":
        x = x.T
    elif entry.layout == "linear_chw":
        c, s, _ = entry.chw
        x = x.reshape(-1, c, s, s).transpose(2, 3, 1, 0).reshape(s * s * c, -1)
    return np.ascontiguousarray(x)


# ---------------------------------------------------------------------------------------------
# Loading and error reporting


def load_detectron2_pkl(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a Detectron2 / Caffe2 pickle into `{name: ndarray}`.

    Accepts `{"model": {...}, "__author__": ..., ...}` (model zoo), `{"blobs": {...}}` (MSRA
    ImageNet backbones; `*_momentum` entries dropped) or a bare `{name: array}` dict (non-array
    entries such as `"__author__"` are skipped).

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: not a pickle of that form (e.g. a PyTorch `.pth` zip archive).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Detectron2 checkpoint not found: {path!r}")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "wrong format"
        raise ValueError(
            f"{path!r} is not a Detectron2 .pkl checkpoint ({type(e).__name__}: {e}); "
            "PyTorch .pth files must first be converted (e.g. torch.load -> numpy -> pickle)"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{path!r}: expected a pickled dict, got {type(data).__name__}")
    if isinstance(data.get("model"), dict):
        data = data["model"]
    elif isinstance(data.get("blobs"), dict):
        data = data["blobs"]
    out = {}
    for k, v in data.items():
        if not isinstance(k, str) or isinstance(v, str | bytes | bool | type(None) | dict):
            continue
        if k.endswith("_momentum"):
            continue
        arr = np.asarray(v)
        if arr.dtype == object:
            raise ValueError(f"{path!r}: entry {k!r} is not numeric ({type(v).__name__})")
        out[k] = arr
    if not out:
        raise ValueError(f"{path!r}: no arrays found (keys: {sorted(map(str, data))[:10]})")
    return out


def describe_config(config) -> str:
    """One line naming what a config builds (for error messages)."""
    m = config.model
    r = m.resnets
    if m.meta_architecture == "RetinaNet":
        return (
            f"RetinaNet R{r.depth}-FPN (norm={r.norm!r}, stem={r.stem_out_channels}, "
            f"res2_out={r.res2_out_channels}, width_per_group={r.width_per_group}), "
            f"fpn.out_channels={m.fpn.out_channels}, num_classes={m.retinanet.num_classes}, "
            f"num_convs={m.retinanet.num_convs}"
        )
    if m.meta_architecture == "SemanticSegmentor":
        return (
            f"SemanticSegmentor R{r.depth}-FPN (norm={r.norm!r}, stem={r.stem_out_channels}, "
            f"res2_out={r.res2_out_channels}, width_per_group={r.width_per_group}), "
            f"fpn.out_channels={m.fpn.out_channels}, {_describe_sem_seg_head(m)}"
        )
    kind = {"FPN": "FPN", "C4": "C4 (Res5ROIHeads)", "DC5": "DC5"}[cfg_layout(config)]
    if m.meta_architecture == "ProposalNetwork":
        kind = kind.split(" ")[0]  # no ROI heads
    elif modeling.roi_heads_name(config) == "CascadeROIHeads":
        kind += f" CascadeROIHeads ({len(m.roi_box_cascade_head.ious)} stages)"
    neck = f"fpn.out_channels={m.fpn.out_channels}, " if "fpn" in m else ""
    backbone = (
        f"R{r.depth}-{kind} (norm={r.norm!r}, stem={r.stem_out_channels}, "
        f"res2_out={r.res2_out_channels}, width_per_group={r.width_per_group}, "
        f"num_groups={r.num_groups}), {neck}"
    )
    if m.meta_architecture == "ProposalNetwork":
        return f"ProposalNetwork (RPN only, no roi_heads.*) {backbone.rstrip(', ')}"
    box = f", box fc_dim={m.roi_box_head.fc_dim}" if "fc_dim" in m.roi_box_head else ""
    text = (
        f"{backbone}num_classes={m.roi_heads.num_classes}{box}, mask_on={m.mask_on}"
        + (f" (mask conv_dim={m.roi_mask_head.conv_dim})" if m.mask_on else "")
        + (
            f", keypoint_on=True (conv_dims={tuple(m.roi_keypoint_head.conv_dims)}, "
            f"num_keypoints={m.roi_keypoint_head.num_keypoints})"
            if modeling.keypoint_on(config)
            else ""
        )
    )
    if m.meta_architecture == "PanopticFPN":
        text = f"PanopticFPN {text}, {_describe_sem_seg_head(m)}"
    return text


def _describe_sem_seg_head(m) -> str:
    h = m.sem_seg_head
    return f"sem_seg_head num_classes={h.num_classes}, convs_dim={h.convs_dim}, norm={h.norm!r}"


def _describe_checkpoint(names: set[str], shapes: dict[str, tuple]) -> str:
    """Best-effort architecture of a state dict (depth, classes, mask head)."""
    blocks = {}
    for n in names:
        mt = re.match(r"(?:backbone\.bottom_up|backbone|roi_heads)\.res(\d)\.(\d+)\.", n)
        if mt:
            s = int(mt.group(1))
            blocks[s] = max(blocks.get(s, 0), int(mt.group(2)) + 1)
    parts = []
    if any(n.startswith("head.cls_subnet.") for n in names):
        parts.append("RetinaNet (head.*)")
    elif any(n.startswith("roi_heads.") for n in names):
        parts.append("GeneralizedRCNN (proposal_generator.*, roi_heads.*)")
    elif any(n.startswith("proposal_generator.") for n in names):
        parts.append("ProposalNetwork (proposal_generator.*, no roi_heads.*)")
    if any(n.startswith("backbone.bottom_up.") for n in names):
        parts.append("FPN backbone (backbone.bottom_up.*, backbone.fpn_*)")
    elif any(n.startswith("backbone.res") for n in names):
        parts.append("plain ResNet backbone (backbone.res*, no FPN: C4 or DC5)")
    if any(n.startswith("roi_heads.res5.") for n in names):
        parts.append("Res5ROIHeads (roi_heads.res5.*: C4)")
    stages = {
        int(mt.group(1)) for n in names if (mt := re.match(r"roi_heads\.box_head\.(\d+)\.", n))
    }
    if stages:
        parts.append(f"CascadeROIHeads with {max(stages) + 1} stages (roi_heads.box_head.{{k}}.*)")
    counts = tuple(blocks.get(s, 0) for s in (2, 3, 4, 5))
    depth = {(3, 4, 6, 3): "R50 or R34", (3, 4, 23, 3): "R101", (3, 8, 36, 3): "R152"}.get(counts)
    parts.append(f"blocks per stage res2..res5 {counts}" + (f" ({depth})" if depth else ""))
    cls = shapes.get("roi_heads.box_predictor.cls_score.weight") or shapes.get(
        "roi_heads.box_predictor.0.cls_score.weight"
    )
    if cls:
        parts.append(f"num_classes={cls[0] - 1}")
    cls = shapes.get("head.cls_score.weight")
    if cls and shapes.get("head.bbox_pred.weight"):
        num_anchors = shapes["head.bbox_pred.weight"][0] // 4
        parts.append(f"num_classes={cls[0] // max(num_anchors, 1)}")
    lat = shapes.get("backbone.fpn_lateral2.weight") or shapes.get("backbone.fpn_lateral3.weight")
    if lat:
        parts.append(f"fpn.out_channels={lat[0]}")
    if any(n.startswith("roi_heads.") for n in names):
        has_mask = any("mask_head" in n for n in names)
        parts.append(f"mask head {'present' if has_mask else 'absent'}")
        has_keypoint = any("keypoint_head" in n for n in names)
        parts.append(f"keypoint head {'present' if has_keypoint else 'absent'}")
    return ", ".join(parts)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    items = sorted(items, key=_natural)
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more


def _mismatch_error(
    header: list[str],
    missing: list[str],
    unexpected: list[str],
    misshaped: list[str],
    titles: tuple[str, str, str] = (
        "missing from the checkpoint",
        "unexpected in the checkpoint",
        "wrong shape",
    ),
) -> ValueError:
    """The error of a conversion whose names do not match the config: `header`, then listings."""
    listings = zip(titles, (missing, unexpected, misshaped), strict=True)
    return ValueError("\n".join(header + [_listing(t, items) for t, items in listings if items]))


def _first_mismatch(given: list[str], expected: list[str], missing, unexpected, misshaped) -> str:
    """The first name, in checkpoint order (then the config's), that is unexpected, missing or
    mis-shaped; e.g. `backbone.res2.0.conv1.weight (unexpected)` for a C4 checkpoint loaded
    into an FPN config."""
    bad_shape = {m.split(":")[0]: m for m in misshaped}
    for n in given:
        if n in unexpected:
            return f"{n} (unexpected in the checkpoint)"
        if n in bad_shape:
            return f"{bad_shape[n]} (wrong shape)"
    return f"{next(n for n in expected if n in missing)} (missing from the checkpoint)"


def _flatten_variables(variables: dict[str, Any]) -> dict[tuple[str, ...], Any]:
    """`{collection: tree}` -> `{(collection, *path): leaf}`."""
    return {
        (c, *p): v
        for c, tree in variables.items()
        for p, v in traverse_util.flatten_dict(dict(tree)).items()
    }


def _unflatten_variables(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """Inverse of `_flatten_variables`."""
    out: dict[str, dict] = {}
    for (c, *p), v in flat.items():
        out.setdefault(c, {})[tuple(p)] = v
    return {c: traverse_util.unflatten_dict(f) for c, f in out.items()}


def _is_msra_c2(names) -> bool:
    return any(n == "conv1_w" or re.match(r"^res\d_\d+_branch", n) for n in names)


# ---------------------------------------------------------------------------------------------
# Full model


def convert_detectron2_to_flax(
    state_dict: dict[str, np.ndarray], config
) -> dict[str, dict[str, Any]]:
    """Detectron2 state dict -> jax_rcnn variables for `config`.

    Args:
      state_dict: `{name: ndarray}` as returned by `load_detectron2_pkl`.
      config: the config the variables are for (architecture must match exactly).

    Returns:
      `{"params": ..., "frozen": ...[, "batch_stats": ...]}` nested dicts of f32 numpy arrays.

    Raises:
      ValueError: missing, unexpected or mis-shaped names (all listed), or MSRA names.
    """
    if _is_msra_c2(state_dict):
        raise ValueError(
            "this is an MSRA/Caffe2 ImageNet backbone (names like 'res2_0_branch2a_w'); use "
            "convert_msra_backbone_to_flax(state_dict, config, variables) to initialise the "
            "backbone from it"
        )
    table = name_table(config)
    by_name = {e.d2_name: e for e in table}
    given = {k: v for k, v in state_dict.items() if not _IGNORED.search(k)}
    missing = [n for n in by_name if n not in given]
    unexpected = [n for n in given if n not in by_name]
    misshaped = [
        f"{n}: checkpoint {tuple(given[n].shape)}, expected {by_name[n].d2_shape}"
        for n in by_name
        if n in given and tuple(given[n].shape) != by_name[n].d2_shape
    ]
    if missing or unexpected or misshaped:
        looks_like = _describe_checkpoint(set(given), {k: tuple(v.shape) for k, v in given.items()})
        first = _first_mismatch(list(given), list(by_name), missing, unexpected, misshaped)
        raise _mismatch_error(
            [
                f"Detectron2 checkpoint does not match the config: {describe_config(config)}",
                f"  first mismatched key: {first}",
                f"  checkpoint looks like: {looks_like}",
            ],
            missing,
            unexpected,
            misshaped,
        )
    return _unflatten_variables(
        {
            (e.collection, *e.path): _to_flax(e, np.asarray(given[e.d2_name], np.float32))
            for e in table
        }
    )


def convert_flax_to_detectron2(variables: dict[str, Any], config) -> dict[str, np.ndarray]:
    """jax_rcnn variables -> Detectron2 state dict (inverse of `convert_detectron2_to_flax`).

    Args:
      variables: `{"params": ..., "frozen": ...}` for `config` (jax or numpy leaves).
      config: the model config.

    Returns:
      `{name: ndarray}` in Detectron2 layouts (OIHW convs, IOHW deconv, (out, in) linear).

    Raises:
      ValueError: variables missing, extra or mis-shaped for `config`.
    """
    table = name_table(config)
    flat = _flatten_variables(variables)
    expected = {(e.collection, *e.path): e for e in table}
    missing = ["/".join(k) for k in expected if k not in flat]
    extra = ["/".join(k) for k in flat if k not in expected]
    misshaped = [
        f"{'/'.join(k)}: {tuple(np.shape(flat[k]))}, expected {e.flax_shape}"
        for k, e in expected.items()
        if k in flat and tuple(np.shape(flat[k])) != e.flax_shape
    ]
    if missing or extra or misshaped:
        raise _mismatch_error(
            [f"variables do not match the config: {describe_config(config)}"],
            missing,
            extra,
            misshaped,
            titles=("missing", "unexpected", "wrong shape"),
        )
    return {e.d2_name: _to_d2(e, np.asarray(flat[(e.collection, *e.path)])) for e in table}


# ---------------------------------------------------------------------------------------------
# MSRA / Caffe2 ImageNet backbones

_MSRA_BRANCH = {
    "shortcut": "branch1",
    "conv1": "branch2a",
    "conv2": "branch2b",
    "conv3": "branch2c",
}
_MSRA_NORM_SUFFIX = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


_RESNET_PREFIXES = ("backbone.bottom_up.", "backbone.", "roi_heads.")
_RESNET_MODULE = re.compile(r"^(stem\.conv1|res\d\.\d+)\.")


def msra_name(d2_name: str, norm: str = "FrozenBN") -> str | None:
    """Caffe2 name of a ResNet Detectron2 name (None for other names).

    The inverse of Detectron2's `convert_basic_c2_names` on ResNet names, e.g.
    `backbone.bottom_up.stem.conv1.weight` -> `conv1_w`,
    `backbone.bottom_up.stem.conv1.norm.bias` -> `res_conv1_bn_b`,
    `backbone.bottom_up.res2.0.conv1.norm.weight` -> `res2_0_branch2a_bn_s`,
    `backbone.bottom_up.res3.0.shortcut.weight` -> `res3_0_branch1_w`. A plain ResNet
    backbone (C4, DC5) has no `bottom_up.` (`backbone.res2.0...`), and C4's ROI head is res5
    (`roi_heads.res5.0.conv1.weight` -> `res5_0_branch2a_w`, as Detectron2 matches it by
    suffix).

    Args:
      d2_name: Detectron2 name.
      norm: the layer's norm; "GN" uses Caffe2's `_gn_` names, the others `_bn_`.
    """
    prefix = next((p for p in _RESNET_PREFIXES if d2_name.startswith(p)), None)
    if prefix is None or not _RESNET_MODULE.match(d2_name[len(prefix) :]):
        return None
    if prefix == "roi_heads." and not d2_name.startswith("roi_heads.res5."):
        return None
    parts = d2_name[len(prefix) :].split(".")
    bn = "gn" if norm == "GN" else "bn"
    if parts[:2] == ["stem", "conv1"]:
        layer, rest = "conv1", parts[2:]
        norm_prefix = "res_conv1"
    else:
        stage, block, conv, *rest = parts
        layer = f"{stage}_{block}_{_MSRA_BRANCH[conv]}"
        norm_prefix = layer
    if rest == ["weight"]:
        return f"{layer}_w"
    if rest[0] == "norm":
        return f"{norm_prefix}_{bn}_{_MSRA_NORM_SUFFIX[rest[1]]}"
    raise ValueError(f"no Caffe2 name for {d2_name!r}")


def convert_msra_backbone_to_flax(
    c2_weights: dict[str, np.ndarray], config, variables: dict[str, Any]
) -> dict[str, Any]:
    """Initialises the ResNet of `variables` from an MSRA/Caffe2 ImageNet pickle (`R-50.pkl`).

    Norm statistics absent from the pickle (MSRA files carry only `_bn_s` / `_bn_b`, already
    folded) take Detectron2's defaults: running_mean 0 and running_var `1 - eps` for FrozenBN
    (so scale == weight), 0 and 1 for BN. The ImageNet classifier (`fc1000_*`, `pred_*`) is
    ignored; the FPN and heads keep their values from `variables`. C4's ROI head (res5) is
    initialised from the pickle's `res5_*` too, as Detectron2 does.

    Args:
      c2_weights: `{caffe2 name: ndarray}` from `load_detectron2_pkl`.
      config: model config (`config.model.resnets` must match the pickle).
      variables: initialised variables of the whole model (not modified).

    Returns:
      New variables, the ResNet (backbone, and C4's `roi_heads/res5_*`) replaced.

    Raises:
      ValueError: missing, unexpected or mis-shaped backbone names (all listed).
    """
    norm = config.model.resnets.norm
    entries = [e for e in name_table(config) if msra_name(e.d2_name, norm) is not None]
    optional = {"running_mean": 0.0, "running_var": None}
    used, missing, misshaped, values = set(), [], [], {}
    for e in entries:
        c2 = msra_name(e.d2_name, norm)
        leaf = e.d2_name.rsplit(".", 1)[-1]
        if c2 in c2_weights:
            used.add(c2)
            arr = np.asarray(c2_weights[c2], np.float32)
            if tuple(arr.shape) != e.d2_shape:
                misshaped.append(f"{c2}: checkpoint {tuple(arr.shape)}, expected {e.d2_shape}")
                continue
            values[(e.collection, *e.path)] = _to_flax(e, arr)
        elif leaf in optional and e.layout == "vector" and ".norm." in e.d2_name:
            eps = FROZEN_BN_EPS if e.collection == modeling.FROZEN else 0.0
            fill = 0.0 if leaf == "running_mean" else 1.0 - eps
            values[(e.collection, *e.path)] = np.full(e.flax_shape, fill, np.float32)
        else:
            missing.append(f"{c2} (-> {e.d2_name})")
    unexpected = [n for n in c2_weights if n not in used and not _MSRA_CLASSIFIER.match(n)]
    if missing or unexpected or misshaped:
        raise _mismatch_error(
            [f"MSRA backbone checkpoint does not match the config: {describe_config(config)}"],
            missing,
            unexpected,
            misshaped,
        )
    flat = {k: np.asarray(v) for k, v in _flatten_variables(variables).items()}
    flat.update(values)
    return _unflatten_variables(flat)


def load_weights(path: str | os.PathLike, config, variables: dict[str, Any]) -> dict[str, Any]:
    """`MODEL.WEIGHTS`: a model-zoo checkpoint (whole model) or an MSRA ImageNet backbone.

    Args:
      path: `.pkl` file.
      config: model config.
      variables: initialised variables (only used, and partly kept, for MSRA backbones).

    Returns:
      The variables to train or evaluate with.
    """
    weights = load_detectron2_pkl(path)
    if _is_msra_c2(weights):
        return convert_msra_backbone_to_flax(weights, config, variables)
    try:
        return convert_detectron2_to_flax(weights, config)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)!r}: {e}") from None
