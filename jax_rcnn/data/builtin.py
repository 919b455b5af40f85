"""Detectron2's builtin dataset names -> COCO-format paths under `$DETECTRON2_DATASETS`.

Parity: `detectron2/data/datasets/builtin.py` (`register_all_coco`): a name such as
`coco_2017_train` means `<root>/coco/annotations/instances_train2017.json` with images in
`<root>/coco/train2017`, where `<root>` is `$DETECTRON2_DATASETS` (default `./datasets`, relative
to the working directory), read when the dataset is loaded, as Detectron2 reads it when it
registers its datasets.

Only names of a task jax_rcnn trains and evaluates today resolve: COCO and LVIS instance
detection / segmentation (`lvis_*` names mean `<root>/lvis/*.json` with the COCO images under
`<root>/coco`, read as LVIS json and evaluated with LVIS AP), and Panoptic FPN's
`coco_2017_{train,val,val_100}_panoptic_separated` (Detectron2's
`register_coco_panoptic_separated`: the instances split, plus the semantic PNGs of
`datasets/prepare_panoptic_fpn.py` in `coco/panoptic_stuff_<split>` and, for PQ, the panoptic
JSON + PNGs). The other builtin names (keypoints, combined panoptic, stuff-only, the unannotated
test splits) are errors that say why; any other name (a user-registered dataset) needs the paths
in `config.data.<split>.json` / `.images`.
"""

from __future__ import annotations

import os

ENV = "DETECTRON2_DATASETS"

# name -> (image root, json file), relative to the root (Detectron2's `_PREDEFINED_SPLITS_COCO`).
COCO_INSTANCES: dict[str, tuple[str, str]] = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": (
        "coco/val2014",
        "coco/annotations/instances_valminusminival2014.json",
    ),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}

# name -> (image root, json file): Detectron2's `_PREDEFINED_SPLITS_LVIS` (read as LVIS json).
LVIS_INSTANCES: dict[str, tuple[str, str]] = {
    "lvis_v1_train": ("coco", "lvis/lvis_v1_train.json"),
    "lvis_v1_val": ("coco", "lvis/lvis_v1_val.json"),
    "lvis_v0.5_train": ("coco", "lvis/lvis_v0.5_train.json"),
    "lvis_v0.5_val": ("coco", "lvis/lvis_v0.5_val.json"),
    "lvis_v0.5_val_rand_100": ("coco", "lvis/lvis_v0.5_val_rand_100.json"),
    "lvis_v0.5_train_cocofied": ("coco", "lvis/lvis_v0.5_train_cocofied.json"),
    "lvis_v0.5_val_cocofied": ("coco", "lvis/lvis_v0.5_val_cocofied.json"),
}

# `<instances name>_panoptic_separated` -> (panoptic PNG dir, panoptic json, semantic PNG dir)
# (Detectron2's `_PREDEFINED_SPLITS_COCO_PANOPTIC`).
COCO_PANOPTIC: dict[str, tuple[str, str, str]] = {
    "coco_2017_train": (
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_stuff_train2017",
    ),
    "coco_2017_val": (
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_stuff_val2017",
    ),
    "coco_2017_val_100": (
        "coco/panoptic_val2017_100",
        "coco/annotations/panoptic_val2017_100.json",
        "coco/panoptic_stuff_val2017_100",
    ),
}
SEPARATED = "_panoptic_separated"

# Builtin names jax_rcnn recognises but cannot use: (prefix or exact name, why).
UNSUPPORTED: tuple[tuple[str, str], ...] = (
    ("coco_2017_test", "has no annotations (image info only): it cannot be trained or evaluated"),
    ("keypoints_coco_", "is a keypoint dataset; jax_rcnn has no keypoint head"),
    ("lvis_v1_test", "has no annotations (image info only): it cannot be trained or evaluated"),
    ("lvis_v0.5_test", "has no annotations (image info only): it cannot be trained or evaluated"),
    ("cityscapes_", "is a Cityscapes dataset; jax_rcnn reads COCO-format json only"),
    ("voc_", "is a Pascal VOC dataset; jax_rcnn reads COCO-format json only"),
    ("ade20k_", "is a semantic segmentation dataset; jax_rcnn has no semantic segmentation head"),
)
_PANOPTIC_WHY = (
    "is a combined panoptic / stuff-only dataset; Panoptic FPN trains on the "
    "'<split>_panoptic_separated' names (instances json + semantic PNGs)"
)


def datasets_root() -> str:
    """`$DETECTRON2_DATASETS`, or `datasets` (relative to the working directory), `~` expanded."""
    return os.path.expanduser(os.environ.get(ENV, "datasets"))


def resolve(name: str, key: str) -> dict[str, str]:
    """Paths of a Detectron2 builtin dataset name.

    Args:
      name: a `DATASETS.TRAIN` / `DATASETS.TEST` entry, e.g. "coco_2017_val".
      key: the config key the paths are for ("config.data.test"), named in errors.

    Returns:
      {"json": <root>/coco/annotations/...json, "images": <root>/coco/..., "format": "coco"}
      ("format": "lvis" for the LVIS names); a `*_panoptic_separated` name adds "sem_seg"
      (semantic PNG dir), "panoptic_json" and "panoptic_png".

    Raises:
      ValueError: `name` is a builtin name of an unsupported task, or not a builtin name (the
        message names `key.json` / `key.images`, which must then be set).
    """
    for table, fmt in ((COCO_INSTANCES, "coco"), (LVIS_INSTANCES, "lvis")):
        if name in table:
            images, json_file = table[name]
            root = datasets_root()
            return {
                "json": os.path.join(root, json_file),
                "images": os.path.join(root, images),
                "format": fmt,
            }
    base = name[: -len(SEPARATED)] if name.endswith(SEPARATED) else None
    if base in COCO_PANOPTIC:
        paths = resolve(base, key)
        root = datasets_root()
        png, pan_json, sem = (os.path.join(root, p) for p in COCO_PANOPTIC[base])
        return {**paths, "sem_seg": sem, "panoptic_json": pan_json, "panoptic_png": png}
    why = _PANOPTIC_WHY if "_panoptic" in name else None
    for prefix, reason in UNSUPPORTED:
        if why is None and name.startswith(prefix):
            why = reason
    if why is not None:
        raise ValueError(
            f"Detectron2 dataset {name!r} (for {key}) {why}; set {key}.json and {key}.images to "
            "a COCO-format instances split instead"
        )
    raise ValueError(
        f"{name!r} (for {key}) is not one of Detectron2's builtin COCO / LVIS datasets "
        f"({', '.join(sorted({**COCO_INSTANCES, **LVIS_INSTANCES}))}); for your own dataset "
        f"set {key}.json and "
        f"{key}.images (e.g. --{key}.json=path/to/{name}.json --{key}.images=path/to/images)"
    )
