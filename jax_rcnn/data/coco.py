"""COCO-format instance annotations -> Detectron2-style dataset records (host-side).

Parity: `detectron2/data/datasets/coco.py:load_coco_json` -- images sorted by id; category ids
sorted and mapped to contiguous 0..K-1 (`thing_dataset_id_to_contiguous_id`), class names in id
order (`thing_classes`); polygons with fewer than 3 points (odd length or < 6 coordinates)
removed and an instance left without a valid polygon dropped (counted, warned); crowd
annotations kept. `filter_for_training` is `data/build.py:filter_images_with_only_crowd_
annotations` plus the mapper's crowd removal (`dataset_mapper.py`): crowd instances and images
without a non-crowd instance are removed for training.

Deviations (all counted and logged, never silent): the JSON is validated with errors that name
the file and the offending entry (Detectron2 asserts or raises a KeyError); boxes are converted
to XYXY and clipped to the image at load time (Detectron2 clips after the transforms, which for
resize + flip gives the same box up to float rounding) and boxes empty after clipping are
dropped here (Detectron2 drops them in the mapper). An RLE whose `size` is not the image's
(height, width) is an error.

Keypoints (`person_keypoints_*.json`): an annotation's `keypoints` (K triples x, y, v of integer
pixel indices) gets +0.5 on x and y, as Detectron2's loader (pixel i covers [i, i + 1)); its
length must be 3 K (K = the category's `keypoints` names) and v in {0, 1, 2}, else a ValueError
names the file and the annotation id. Metadata: `keypoint_names` (the category's `keypoints`),
`keypoint_flip_map` (the category's `keypoint_flip_map` pairs when given -- a jax_rcnn
extension --, COCO's `COCO_PERSON_KEYPOINT_FLIP_MAP` for COCO's names, else every
`left_*` / `right_*` pair), `keypoint_skeleton` (the category's 1-based `skeleton` pairs;
COCO's for COCO's names when absent or empty) and `keypoint_hflip_indices` (from
`keypoint_hflip_indices`); each record of a keypoint dataset carries the flip indices too, so
the training mapper can flip without the metadata.

Record layout (one dict per image)::

    {"file_name": str (image_root joined), "height": int, "width": int, "image_id": int,
     "annotations": [{"bbox": f32[4] xyxy abs px, "bbox_mode": BOX_MODE_XYXY_ABS,
                      "category_id": int in [0, K), "iscrowd": 0 | 1,
                      "segmentation": list of flat polygons | RLE dict (optional),
                      "keypoints": f32[K, 3] (x + 0.5, y + 0.5, v) (optional)}, ...]
     "keypoint_hflip_indices": tuple of K ints (keypoint datasets only)}
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Detectron2's `BoxMode` IntEnum values (records store them as plain ints).
BOX_MODE_XYXY_ABS = 0
BOX_MODE_XYWH_ABS = 1

_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_ANNOTATION_FIELDS = ("image_id", "bbox", "category_id")
_CATEGORY_FIELDS = ("id", "name")

# Detectron2's `builtin_meta.py`: COCO person keypoints, their left/right pairs and skeleton.
COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_PERSON_KEYPOINT_FLIP_MAP = tuple(
    (f"left_{part}", f"right_{part}")
    for part in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
)
# `person_keypoints_*.json`'s `skeleton` (1-based keypoint indices).
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip


def keypoint_hflip_indices(
    names: Sequence[str], flip_map: Sequence[Sequence[str]], source: str = "keypoint metadata"
) -> tuple[int, ...]:
    """Detectron2's `create_keypoint_hflip_indices`: index of each keypoint's mirror image.

    Args:
        names: the K keypoint names.
        flip_map: (left, right) name pairs; unpaired names map to themselves.
        source: named in errors (the annotation file).

    Returns:
        K ints, a permutation of range(K) that is its own inverse.

    Raises:
        ValueError: a pair names an unknown keypoint, or a name is in two pairs (the flip is
            not a permutation).
    """
    names = list(names)
    mapping: dict[str, str] = {}
    for pair in flip_map:
        if len(pair) != 2:
            raise ValueError(
                f"{source}: keypoint flip map entry {pair!r} is not a (left, right) pair"
            )
        a, b = pair
        for n in (a, b):
            if n not in names:
                raise ValueError(
                    f"{source}: keypoint flip map names {n!r}, not a keypoint of {names}"
                )
            if n in mapping:
                raise ValueError(
                    f"{source}: keypoint flip map is not a permutation: {n!r} is in two pairs"
                )
        mapping[a], mapping[b] = b, a
    return tuple(names.index(mapping.get(n, n)) for n in names)


def _default_flip_map(names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    if tuple(names) == COCO_PERSON_KEYPOINT_NAMES:
        return COCO_PERSON_KEYPOINT_FLIP_MAP
    return tuple(
        (n, "right_" + n[len("left_") :])
        for n in names
        if n.startswith("left_") and "right_" + n[len("left_") :] in names
    )


def _keypoint_meta(cats: list[dict], json_file: str) -> dict:
    """Keypoint metadata of the categories that define `keypoints` (one set per dataset)."""
    with_kps = [c for c in cats if c.get("keypoints")]
    if not with_kps:
        return {}
    names = tuple(str(n) for n in with_kps[0]["keypoints"])
    for c in with_kps[1:]:
        if tuple(c["keypoints"]) != names:
            raise ValueError(
                f"{json_file}: categories {with_kps[0]['id']} and {c['id']} define different "
                "keypoints (one keypoint set per dataset)"
            )
    given = with_kps[0].get("keypoint_flip_map")
    flip_map = tuple(tuple(p) for p in given) if given is not None else _default_flip_map(names)
    skeleton = tuple(tuple(int(i) for i in p) for p in with_kps[0].get("skeleton") or ())
    if not skeleton and names == COCO_PERSON_KEYPOINT_NAMES:
        skeleton = COCO_PERSON_SKELETON
    return {
        "keypoint_names": names,
        "keypoint_flip_map": flip_map,
        "keypoint_skeleton": skeleton,
        "keypoint_hflip_indices": keypoint_hflip_indices(names, flip_map, json_file),
    }


def _keypoints(kps, num_keypoints: int | None, where: str, json_file: str) -> np.ndarray:
    """An annotation's flat `keypoints` as f32[K, 3] with +0.5 on x and y (validated)."""
    if not isinstance(kps, list | tuple) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in kps
    ):
        raise ValueError(f"{json_file}: {where} field 'keypoints' must be a list of numbers")
    if len(kps) % 3 or (num_keypoints is not None and len(kps) != 3 * num_keypoints):
        want = "3 x the category's keypoints" if num_keypoints is None else 3 * num_keypoints
        raise ValueError(
            f"{json_file}: {where} has {len(kps)} keypoint values, expected {want} "
            "(x, y, v per keypoint)"
        )
    out = np.asarray(kps, np.float64).reshape(-1, 3)
    bad = ~np.isin(out[:, 2], (0, 1, 2))
    if bad.any():
        raise ValueError(
            f"{json_file}: {where} keypoint {int(np.flatnonzero(bad)[0])} has visibility "
            f"{out[bad, 2][0]:g}, not one of 0, 1, 2"
        )
    out[:, :2] += 0.5
    return out.astype(np.float32)


def _require(entry, fields: Sequence[str], where: str, json_file: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{json_file}: {where} must be an object, got {type(entry).__name__}")
    for f in fields:
        if f not in entry:
            raise ValueError(f"{json_file}: {where} is missing required field '{f}'")


def _read_json(json_file: str) -> dict:
    if not os.path.exists(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: invalid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: top level must be an object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: missing required field '{key}'")
        if not isinstance(data[key], list):
            raise ValueError(f"{json_file}: field '{key}' must be a list")
    if not isinstance(data.get("annotations", []), list):
        raise ValueError(f"{json_file}: field 'annotations' must be a list")
    return data


def load_coco_json(
    json_file: str | os.PathLike, image_root: str | os.PathLike, *, dataset_name: str | None = None
) -> tuple[list[dict], dict]:
    """Loads COCO instance annotations as Detectron2-style records.

    Images are not opened here; a missing image file is reported when it is read.

    Args:
        json_file: COCO instances JSON (`images`, `categories`, optional `annotations`).
        image_root: directory the images' `file_name`s are relative to.
        dataset_name: only used in log messages.

    Returns:
        `(records, meta)`: records sorted by image id (layout in the module docstring) and
        `meta = {"thing_classes": [name, ...] (contiguous-id order),
        "thing_dataset_id_to_contiguous_id": {json id: contiguous id}}` plus, for keypoint
        datasets, `keypoint_names`, `keypoint_flip_map`, `keypoint_skeleton`,
        `keypoint_hflip_indices` (module docstring).

    Raises:
        FileNotFoundError: `json_file` does not exist.
        ValueError: invalid JSON, a missing required field, a malformed bbox or RLE, an
            annotation whose image or category id is unknown, duplicate ids, no images, or
            bad keypoints (wrong length, visibility not in {0, 1, 2}, a keypoint flip map
            that is not a permutation).
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    return _load_dict(_read_json(json_file), json_file, image_root, dataset_name or json_file)


def _load_dict(data: dict, json_file: str, image_root: str, name: str) -> tuple[list[dict], dict]:
    for i, c in enumerate(data["categories"]):
        _require(c, _CATEGORY_FIELDS, f"categories[{i}]", json_file)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"{json_file}: duplicate category ids in 'categories'")
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    meta = {"thing_classes": [c["name"] for c in cats], "thing_dataset_id_to_contiguous_id": id_map}
    meta.update(_keypoint_meta(cats, json_file))
    num_kps_per_cat = {c["id"]: len(c["keypoints"]) for c in cats if c.get("keypoints")}
    if cat_ids and not (min(cat_ids) == 1 and max(cat_ids) == len(cat_ids)):
        logger.info(
            "%s: category ids are not 1..%d; mapped to 0..%d", name, len(cats), len(cats) - 1
        )

    images = {}
    for i, img in enumerate(data["images"]):
        if isinstance(img, dict) and "file_name" not in img and "coco_url" in img:
            raise ValueError(
                f"{json_file}: images[{i}] has 'coco_url' but no 'file_name': an LVIS json? "
                "Set config.data.format = 'lvis' (or use a Detectron2 lvis_* dataset name)"
            )
        _require(img, _IMAGE_FIELDS, f"images[{i}]", json_file)
        if img["id"] in images:
            raise ValueError(f"{json_file}: duplicate image id {img['id']} (images[{i}])")
        if not (int(img["height"]) > 0 and int(img["width"]) > 0):
            raise ValueError(f"{json_file}: images[{i}] (id {img['id']}) has a non-positive size")
        images[img["id"]] = img
    if not images:
        raise ValueError(f"{json_file}: no images (empty dataset)")

    anns_per_image: dict = {k: [] for k in images}
    ann_ids: set = set()
    num_clipped = num_empty_box = num_bad_segm = 0
    for i, ann in enumerate(data.get("annotations", [])):
        _require(ann, _ANNOTATION_FIELDS, f"annotations[{i}]", json_file)
        where = f"annotations[{i}] (id {ann.get('id', '?')})"
        if "id" in ann:
            if ann["id"] in ann_ids:
                raise ValueError(f"{json_file}: duplicate annotation id {ann['id']}")
            ann_ids.add(ann["id"])
        if ann["image_id"] not in images:
            raise ValueError(f"{json_file}: {where} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in id_map:
            raise ValueError(
                f"{json_file}: {where} has unknown category id {ann['category_id']} "
                f"(categories: {cat_ids})"
            )
        img = images[ann["image_id"]]
        h, w = int(img["height"]), int(img["width"])
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, list | tuple)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise ValueError(
                f"{json_file}: {where} field 'bbox' must be 4 finite numbers [x,y,w,h]"
            )
        x, y, bw, bh = (float(v) for v in bbox)
        xyxy = np.array([x, y, x + bw, y + bh], np.float64)
        clipped = np.clip(xyxy, 0.0, [w, h, w, h])
        if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
            num_empty_box += 1
            continue
        if not np.array_equal(clipped, xyxy):
            num_clipped += 1
        obj = {
            "bbox": clipped.astype(np.float32),
            "bbox_mode": BOX_MODE_XYXY_ABS,
            "category_id": id_map[ann["category_id"]],
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        segm = ann.get("segmentation")
        if segm:
            if isinstance(segm, dict):
                _require(segm, ("size", "counts"), f"{where} 'segmentation'", json_file)
                if list(segm["size"]) != [h, w]:
                    raise ValueError(
                        f"{json_file}: {where} RLE size {list(segm['size'])} != image size "
                        f"[{h}, {w}] of image id {img['id']}"
                    )
            elif isinstance(segm, list):
                segm = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
                if not segm:
                    num_bad_segm += 1
                    continue
            else:
                raise ValueError(f"{json_file}: {where} 'segmentation' must be polygons or RLE")
            obj["segmentation"] = segm
        kps = ann.get("keypoints")
        if kps:  # Detectron2: an empty list means no keypoints
            num = num_kps_per_cat.get(ann["category_id"])
            if num is None and "keypoint_names" in meta:
                num = len(meta["keypoint_names"])
            obj["keypoints"] = _keypoints(kps, num, where, json_file)
        anns_per_image[ann["image_id"]].append(obj)

    records = []
    for image_id in sorted(images):
        img = images[image_id]
        records.append(
            {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": int(img["height"]),
                "width": int(img["width"]),
                "image_id": image_id,
                "annotations": anns_per_image[image_id],
            }
        )
        if "keypoint_hflip_indices" in meta:
            records[-1]["keypoint_hflip_indices"] = meta["keypoint_hflip_indices"]
    num_anns = sum(len(r["annotations"]) for r in records)
    logger.info("%s: loaded %d images, %d instances", name, len(records), num_anns)
    if num_clipped:
        logger.warning("%s: clipped %d boxes extending outside their image", name, num_clipped)
    if num_empty_box:
        logger.warning(
            "%s: dropped %d instances whose box is empty (zero/negative size) after clipping",
            name,
            num_empty_box,
        )
    if num_bad_segm:
        logger.warning(
            "%s: dropped %d instances without a valid polygon (< 3 points)", name, num_bad_segm
        )
    return records, meta


def filter_images_with_few_keypoints(records: list[dict], min_keypoints: int) -> list[dict]:
    """Detectron2's `filter_images_with_few_keypoints` (`MIN_KEYPOINTS_PER_IMAGE`, applied when
    `KEYPOINT_ON`): keeps the images with at least `min_keypoints` keypoints with v > 0 summed
    over their annotations.

    Raises:
        ValueError: no image left.
    """

    def visible(r):
        return sum(
            int((a["keypoints"][:, 2] > 0).sum()) for a in r["annotations"] if "keypoints" in a
        )

    out = [r for r in records if visible(r) >= min_keypoints]
    logger.info(
        "Removed %d images with fewer than %d keypoints.", len(records) - len(out), min_keypoints
    )
    if not out:
        raise ValueError(f"no training image has >= {min_keypoints} visible keypoints")
    return out


def filter_for_training(records: list[dict], filter_empty: bool = True) -> list[dict]:
    """Removes crowd instances, and (if `filter_empty`) images left without instances.

    Detectron2 keeps crowd regions for evaluation only; training sees non-crowd instances
    (`DATALOADER.FILTER_EMPTY_ANNOTATIONS` drops images without any).

    Args:
        records: output of `load_coco_json` (not modified).
        filter_empty: drop images without a non-crowd instance.

    Returns:
        New records (shallow copies with filtered `annotations`).
    """
    out, num_crowd, num_empty = [], 0, 0
    for r in records:
        anns = [a for a in r["annotations"] if not a.get("iscrowd", 0)]
        num_crowd += len(r["annotations"]) - len(anns)
        if filter_empty and not anns:
            num_empty += 1
            continue
        out.append({**r, "annotations": anns})
    logger.info(
        "filter_for_training: removed %d crowd instances and %d images without instances; "
        "%d of %d images left",
        num_crowd,
        num_empty,
        len(out),
        len(records),
    )
    if not out:
        raise ValueError("filter_for_training: no training images left after filtering")
    return out


def load_lvis_json(
    json_file: str | os.PathLike, image_root: str | os.PathLike, *, dataset_name: str | None = None
) -> tuple[list[dict], dict]:
    """Loads LVIS (v0.5 / v1) instance annotations as Detectron2-style records.

    Parity: `detectron2/data/datasets/lvis.py:load_lvis_json`: an image's file is
    `<image_root>/<the last two parts of its coco_url>` (`train2017/000000391895.jpg`; LVIS v1
    images have no `file_name`); category ids become contiguous (LVIS ids are 1..K, so id - 1);
    each record carries the image's `not_exhaustive_category_ids` and `neg_category_ids`
    (LVIS category ids, as Detectron2 keeps them); class names are each category's first synonym.
    Everything else is `load_coco_json`'s (validation, polygon checks, box clipping).

    Deviation: Detectron2 joins `image_root + split folder` as strings (its builtin roots end
    with "/"); this joins paths, the same for such roots.

    Args:
        json_file: LVIS json (`images` with `coco_url` or `file_name`, `categories`,
            `annotations`).
        image_root: the COCO image root (holding `train2017/`, `val2017/`).
        dataset_name: only used in log messages.

    Returns:
        `(records, meta)` as `load_coco_json`, meta also with `"class_image_count"`: i64[K]
        images per category (`image_count`, the federated loss's frequency; 0 where absent)
        and `"frequency"`: the r/c/f label per class.

    Raises:
        FileNotFoundError / ValueError: as `load_coco_json`; also an image with neither
            `coco_url` nor `file_name`, or whose `neg_category_ids` /
            `not_exhaustive_category_ids` is not a list of known category ids.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    name = dataset_name or json_file
    data = _read_json(json_file)
    cat_ids = set()
    for i, c in enumerate(data["categories"]):
        _require(c, _CATEGORY_FIELDS, f"categories[{i}]", json_file)
        cat_ids.add(c["id"])
    images = []
    for i, img in enumerate(data["images"]):
        where = f"images[{i}] (id {img.get('id', '?') if isinstance(img, dict) else '?'})"
        if not isinstance(img, dict) or not ("coco_url" in img or "file_name" in img):
            raise ValueError(f"{json_file}: {where} needs 'coco_url' or 'file_name'")
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            ids = img.get(key, [])
            if not isinstance(ids, list) or not set(ids) <= cat_ids:
                raise ValueError(
                    f"{json_file}: {where} field '{key}' must be a list of category ids, "
                    f"got {ids!r}"
                )
        if "coco_url" in img:
            img = {**img, "file_name": "/".join(str(img["coco_url"]).split("/")[-2:])}
        images.append(img)
    categories = [{**c, "name": (c.get("synonyms") or [c["name"]])[0]} for c in data["categories"]]
    records, meta = _load_dict(
        {**data, "images": images, "categories": categories}, json_file, image_root, name
    )
    by_id = {img["id"]: img for img in images}
    for r in records:
        img = by_id[r["image_id"]]
        r["not_exhaustive_category_ids"] = list(img.get("not_exhaustive_category_ids", []))
        r["neg_category_ids"] = list(img.get("neg_category_ids", []))
    cats = sorted(categories, key=lambda c: c["id"])
    meta["class_image_count"] = np.array([int(c.get("image_count", 0)) for c in cats], np.int64)
    meta["frequency"] = [c.get("frequency", "") for c in cats]
    return records, meta
