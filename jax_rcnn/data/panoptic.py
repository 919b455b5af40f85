"""Panoptic and semantic ground truth: COCO panoptic files, Detectron2's `panoptic_separated`
layout, and the semantic targets of a training example (host side, NumPy + Pillow).

**Parity:**
* `load_coco_panoptic_json` is `detectron2/data/datasets/coco_panoptic.py:load_coco_panoptic_json`
  (records with `pan_seg_file_name` and `segments_info`, category ids mapped to contiguous thing
  / stuff ids, `isthing` from the categories).
* `attach_sem_seg` + `panoptic_to_semantic` are the `coco_2017_*_panoptic_separated` layout
  (`register_coco_panoptic_separated`: instance records from the instances JSON, plus
  `sem_seg_file_name` = the semantic PNG named like the image) and
  `datasets/prepare_panoptic_fpn.py:_process_panoptic_to_semantic`: every thing segment
  (crowd included) -> 0, stuff -> 1..S in category-id order, unlabelled -> 255.
* `semantic_target` is the `DatasetMapper`'s semantic path: the PNG read as "L", resized with
  PIL NEAREST, flipped with the image; `pad_semantic` pads it with 255 (`ImageList.from_tensors(
  ..., pad_value=IGNORE_VALUE)`).
Bad input is an error naming the file: a PNG segment id that its JSON does not list, a category
marked both thing and stuff, a semantic PNG whose size is not the image's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

IGNORE_VALUE = 255


def rgb2id(color: np.ndarray) -> np.ndarray:
    """panopticapi's `rgb2id`: `u8[H, W, 3]` -> `i64[H, W]` id = R + 256 G + 256^2 B."""
    color = np.asarray(color).astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """panopticapi's `id2rgb`: `int[H, W]` -> `u8[H, W, 3]`."""
    ids = np.asarray(ids).astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


def panoptic_meta(categories: Sequence[Mapping], json_file: str) -> dict:
    """Contiguous ids of a panoptic JSON's categories (Detectron2's COCO panoptic metadata).

    Returns:
      `{"thing_classes", "stuff_classes", "thing_dataset_id_to_contiguous_id",
      "stuff_dataset_id_to_contiguous_id"}`: things 0..T-1 and stuff 1..S (0 = "things", the
      `panoptic_separated` semantic labels), each in category-id order.

    Raises:
      ValueError: a category marked both thing and stuff (listed twice with different
        `isthing`), or without `isthing`, naming the file.
    """
    kinds: dict[int, int] = {}
    names: dict[int, str] = {}
    for i, c in enumerate(categories):
        if "id" not in c or "isthing" not in c:
            raise ValueError(f"{json_file}: categories[{i}] needs 'id' and 'isthing'")
        cid, isthing = int(c["id"]), int(c["isthing"])
        if cid in kinds and kinds[cid] != isthing:
            raise ValueError(
                f"{json_file}: category {cid} ({c.get('name', '?')}) is marked both thing and stuff"
            )
        kinds[cid], names[cid] = isthing, str(c.get("name", cid))
    things = sorted(c for c, k in kinds.items() if k == 1)
    stuff = sorted(c for c, k in kinds.items() if k == 0)
    return {
        "thing_classes": [names[c] for c in things],
        "stuff_classes": ["things"] + [names[c] for c in stuff],
        "thing_dataset_id_to_contiguous_id": {c: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {c: i + 1 for i, c in enumerate(stuff)},
    }


def load_coco_panoptic_json(
    json_file: str | os.PathLike, image_root: str | os.PathLike, png_root: str | os.PathLike
) -> tuple[list[dict], dict]:
    """Loads a COCO panoptic JSON as Detectron2-style records.

    Returns:
      `(records, meta)`: records sorted by image id, each `{"file_name", "image_id", "height",
      "width", "pan_seg_file_name", "segments_info": [{"id", "category_id" (contiguous within
      things or stuff), "isthing", "iscrowd", "area", "bbox"}]}`; `meta` from `panoptic_meta`.

    Raises:
      FileNotFoundError: the JSON does not exist.
      ValueError: a missing field, an annotation of an unknown image or category, or a category
        marked both thing and stuff; the message names the file.
    """
    json_file = os.fspath(json_file)
    if not os.path.exists(json_file):
        raise FileNotFoundError(f"COCO panoptic annotation file not found: {json_file}")
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_file}: missing list field '{key}'")
    meta = panoptic_meta(data["categories"], json_file)
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    images = {int(im["id"]): im for im in data["images"]}
    records = []
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise ValueError(f"{json_file}: annotation {ann['file_name']} of unknown image id")
        im = images[image_id]
        segments = []
        for s in ann["segments_info"]:
            cid = int(s["category_id"])
            if cid not in things and cid not in stuff:
                raise ValueError(
                    f"{json_file}: segment {s['id']} of {ann['file_name']} has unknown "
                    f"category_id {cid}"
                )
            isthing = cid in things
            segments.append(
                {
                    "id": int(s["id"]),
                    "category_id": things[cid] if isthing else stuff[cid],
                    "isthing": isthing,
                    "iscrowd": int(s.get("iscrowd", 0)),
                    "area": int(s.get("area", 0)),
                    "bbox": s.get("bbox"),
                }
            )
        records.append(
            {
                "file_name": os.path.join(os.fspath(image_root), im["file_name"]),
                "image_id": image_id,
                "height": int(im["height"]),
                "width": int(im["width"]),
                "pan_seg_file_name": os.path.join(os.fspath(png_root), ann["file_name"]),
                "segments_info": segments,
            }
        )
    records.sort(key=lambda r: r["image_id"])
    return records, meta


def read_panoptic_png(path: str, segments_info: Sequence[Mapping]) -> np.ndarray:
    """The segment-id map `i64[H, W]` of a panoptic PNG, checked against its segments.

    Raises:
      ValueError: an id in the PNG (other than 0, void) that `segments_info` does not list,
        naming the file.
    """
    ids = rgb2id(np.asarray(Image.open(path).convert("RGB")))
    known = {int(s["id"]) for s in segments_info} | {0}
    unknown = sorted(set(np.unique(ids).tolist()) - known)
    if unknown:
        raise ValueError(
            f"{path}: segment ids {unknown[:10]} are in the PNG but not in its JSON segments_info"
        )
    return ids


def panoptic_to_semantic(ids: np.ndarray, segments_info: Sequence[Mapping]) -> np.ndarray:
    """`u8[H, W]` semantic map of the `panoptic_separated` layout: thing segments (crowd
    included) 0, stuff segments their contiguous stuff id (1..S), unlabelled 255.

    Args:
      ids: `int[H, W]` segment ids (`read_panoptic_png`).
      segments_info: records' segments (`isthing`, contiguous `category_id`).
    """
    out = np.full(ids.shape, IGNORE_VALUE, np.uint8)
    for s in segments_info:
        out[ids == s["id"]] = 0 if s["isthing"] else int(s["category_id"])
    return out


def attach_sem_seg(records: list[dict], sem_seg_root: str | os.PathLike) -> list[dict]:
    """The `panoptic_separated` join: each instance record gets `sem_seg_file_name`, the PNG in
    `sem_seg_root` named like its image (extension `.png`)."""
    out = []
    for r in records:
        stem = os.path.splitext(os.path.basename(r["file_name"]))[0]
        out.append({**r, "sem_seg_file_name": os.path.join(os.fspath(sem_seg_root), stem + ".png")})
    return out


def read_semantic(path: str, height: int, width: int) -> np.ndarray:
    """A semantic PNG as `u8[H, W]` (read as "L", like Detectron2's mapper).

    Raises:
      FileNotFoundError: no such file.
      ValueError: its size is not the image's (`height x width`), naming the file.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"semantic segmentation PNG not found: {path}")
    sem = np.asarray(Image.open(path).convert("L"))
    if sem.shape != (height, width):
        raise ValueError(
            f"{path}: semantic PNG is {sem.shape[0]}x{sem.shape[1]} (HxW) but its image is "
            f"{height}x{width}"
        )
    return sem


def semantic_target(sem: np.ndarray, newh: int, neww: int, flip: bool) -> np.ndarray:
    """The mapper's semantic target: PIL NEAREST resize to `newh x neww`, then the flip."""
    if sem.shape != (newh, neww):
        sem = np.asarray(Image.fromarray(sem).resize((neww, newh), Image.Resampling.NEAREST))
    return np.ascontiguousarray(sem[:, ::-1]) if flip else sem


def pad_semantic(sem: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Pads `u8[h, w]` with 255 (ignored) at the bottom/right to `u8[H, W]`."""
    h, w = sem.shape
    out = np.full((int(shape[0]), int(shape[1])), IGNORE_VALUE, np.uint8)
    out[:h, :w] = sem
    return out
