"""Static-shape examples and batches: Detectron2's `DatasetMapper` + `ImageList` on the host.

Parity: `detectron2/data/dataset_mapper.py:DatasetMapper` (read image, `check_image_size`,
`ResizeShortestEdge` then `RandomFlip`, crowd instances removed, boxes clipped, empty boxes and
empty masks removed by `filter_empty_instances`) and `structures/image_list.py:ImageList`
(bottom/right padding, grouping by aspect ratio).

Padding (exact Detectron2 model input). Detectron2 normalises `(x - pixel_mean) / pixel_std`
and then pads with 0, so a padded pixel is 0 *after* normalisation. The raw uint8 image cannot
hold `pixel_mean` (103.53 is not an integer), so examples keep the raw u8 image padded with 0 and
its `image_size`; the model computes `where(inside image_size, (x - mean) / std, 0)` (NumPy
reference: `normalize_images`). Inside the image this is Detectron2's input bit for bit; the
padded region is exactly 0.

Padded shapes. `config.input.pad_mode == "buckets"`: the image is padded to the smallest-area
bucket of `config.input.buckets` that holds it (`bucket` = its index; one compile per bucket).
`"size_divisibility"`: padded to a multiple of `config.input.size_divisibility` and `collate`
pads to the batch maximum like `ImageList.from_tensors`; `bucket` = 0 if w > h else 1 (Detectron2's
aspect-ratio group). Batches are formed within one `bucket` (`group_by_bucket`).

Ground-truth masks (deviation). Detectron2 keeps full-image bitmasks and builds each ROI's
28x28 target with `BitMasks.crop_and_resize(proposal_box)`. A static-shape batch cannot hold
full-image masks cheaply, so each instance's mask is stored box-relative and soft:
`gt_masks[g] = round(255 * roi_align_mask(full_mask_g, gt_boxes[g], M))`, u8[M, M] with
`M = config.input.gt_mask_size`: cell (i, j) holds the fraction (x 255) of the gt box's cell
`[x1 + j * w / M, x1 + (j + 1) * w / M) x [y1 + i * h / M, ...)` covered by the mask (ROIAlign
aligned=True of the bitmask, as Detectron2 samples it). The target of a proposal P matched to gt g
is then `ROIAlign(gt_masks[g] / 255, P', 28, aligned=True, sampling_ratio=0) >= 0.5` with P mapped
into the M x M grid, `P'.x = (P.x - g.x1) * M / g.w` (same for y); NumPy reference:
`mask_target_reference`. It differs from Detectron2's target only through the resampling at M
(on the Detectron2 fixture, M = 112: 0.24 % of target pixels, all on mask boundaries; storing
the mask thresholded instead of soft would give 0.9 %) and through mask pixels outside the gt
box (none for COCO, whose boxes are the polygons' bounding boxes).

Keypoints (`config.model.keypoint_on`): each instance's `keypoints` go through
`transforms.transform_keypoints` (resize, flip with the record's `keypoint_hflip_indices`, points
outside the image invisible, v = 0 -> (0, 0, 0)) into `gt_keypoints f32[G, K, 3]`; every
non-crowd instance of a training image must have keypoints.

Instance cap. At most `config.input.max_gt` instances are kept; on overflow the `max_gt` with the
largest box area are kept (small instances are the least likely to be matched at all), in their
original order; every overflow is logged as a warning and counted in `gt_num_overflow`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pycocotools.mask as mask_util

from jax_rcnn.data import panoptic
from jax_rcnn.data import transforms as T
from jax_rcnn.data.coco import BOX_MODE_XYWH_ABS, BOX_MODE_XYXY_ABS

logger = logging.getLogger(__name__)

# Detectron2's `filter_empty_instances(box_threshold=1e-5)` used by the DatasetMapper.
_BOX_NONEMPTY_THRESHOLD = 1e-5


def pick_bucket(h: int, w: int, buckets: Sequence[Sequence[int]]) -> int:
    """Index of the smallest-area bucket (H, W) with H >= h and W >= w (first on ties).

    Raises:
        ValueError: no bucket holds an h x w image.
    """
    best, best_area = -1, None
    for i, (bh, bw) in enumerate(buckets):
        if bh >= h and bw >= w and (best_area is None or bh * bw < best_area):
            best, best_area = i, bh * bw
    if best < 0:
        raise ValueError(
            f"no padding bucket holds a {h}x{w} image; buckets (H, W) = {list(buckets)}. "
            "Add a bucket to config.input.buckets or use pad_mode='size_divisibility'."
        )
    return best


def pad_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Pads u8[h, w, C] with zeros at the bottom/right to u8[H, W, C] (see module docstring)."""
    h, w = image.shape[:2]
    ph, pw = int(shape[0]), int(shape[1])
    if h > ph or w > pw:
        raise ValueError(f"cannot pad a {h}x{w} image to {ph}x{pw}")
    out = np.zeros((ph, pw) + image.shape[2:], image.dtype)
    out[:h, :w] = image
    return out


def _padded_shape(h: int, w: int, config) -> tuple[int, tuple[int, int]]:
    """(bucket index, padded (H, W)) for a resized h x w image under `config.input`."""
    cfg = config.input
    if cfg.pad_mode == "buckets":
        b = pick_bucket(h, w, cfg.buckets)
        return b, (int(cfg.buckets[b][0]), int(cfg.buckets[b][1]))
    if cfg.pad_mode == "size_divisibility":
        d = int(cfg.size_divisibility)
        if d > 1:
            return (0 if w > h else 1), (-(-h // d) * d, -(-w // d) * d)
        return (0 if w > h else 1), (h, w)
    raise ValueError(
        f"config.input.pad_mode must be 'buckets' or 'size_divisibility', got {cfg.pad_mode!r}"
    )


def _read_checked(record: dict, fmt: str) -> np.ndarray:
    """The record's image: an in-memory `image` (u8[H, W, 3] in `fmt` order) or its file."""
    if "image" in record:
        image = np.asarray(record["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"record {record.get('image_id')}: 'image' must be u8[H, W, 3], "
                f"got {image.dtype}{list(image.shape)}"
            )
        name = f"record {record.get('image_id')} (in-memory image)"
    else:
        image = T.read_image(record["file_name"], fmt)
        name = f"image {record['file_name']}"
    if image.shape[:2] != (record["height"], record["width"]):
        raise ValueError(
            f"{name} is {image.shape[0]}x{image.shape[1]} (HxW) but its "
            f"annotation says {record['height']}x{record['width']}"
        )
    return image


def _xyxy(ann: dict) -> np.ndarray:
    box = np.asarray(ann["bbox"], np.float64)
    mode = ann.get("bbox_mode", BOX_MODE_XYXY_ABS)
    if mode == BOX_MODE_XYWH_ABS:
        return np.concatenate([box[:2], box[:2] + box[2:]])
    if mode != BOX_MODE_XYXY_ABS:
        raise ValueError(f"unsupported bbox_mode {mode} (expected XYXY_ABS or XYWH_ABS)")
    return box


def _instance_mask(
    segm, orig_hw: tuple[int, int], new_hw: tuple[int, int], flip: bool
) -> np.ndarray:
    """Full-image bool[newh, neww] mask of one instance after resize (+ flip).

    Polygons are transformed as coordinates and rasterised at the new size (Detectron2's
    `transform_instance_annotations` + `polygons_to_bitmask`); RLEs are decoded at the original
    size and resized with PIL nearest (`ResizeTransform.apply_segmentation`).
    """
    (h, w), (nh, nw) = orig_hw, new_hw
    if isinstance(segm, dict):
        rle = mask_util.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
        mask = mask_util.decode(rle).astype(bool)
        if (nh, nw) != (h, w):
            mask = T.resize_masks(mask[None], nh, nw)[0]
        return mask[:, ::-1] if flip else mask
    polys = T.scale_polygons(segm, nw / w, nh / h)
    if flip:
        polys = T.hflip_polygons(polys, nw)
    rles = mask_util.frPyObjects([p.tolist() for p in polys], nh, nw)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def train_resized_size(
    height: int, width: int, config, rng: np.random.Generator
) -> tuple[int, int]:
    """(h, w) of a `height x width` training image after its random short-edge resize.

    The first draw of `make_train_example` from `rng` (`config.input.min_size_train*`); the
    training loader calls it alone to plan batch shapes without reading the image.
    """
    cfg = config.input
    short = T.sample_short_edge(rng, cfg.min_size_train, cfg.min_size_train_sampling)
    if not short:
        return int(height), int(width)
    return T.resize_shortest_edge_shape(int(height), int(width), short, cfg.max_size_train)


def make_train_example(record: dict, config, rng: np.random.Generator) -> dict:
    """Reads, augments and pads one training image with its ground truth (static shapes).

    Usable as a grain `random_map`: `ds.random_map(lambda r, rng: make_train_example(r, c, rng))`.

    Args:
        record: a `load_coco_json` record (crowd instances are ignored).
        config: the full config (reads `config.input.*` and `config.model.mask_on`).
        rng: the example's generator (short-edge choice, then flip).

    Returns:
        dict with
          image: u8[H, W, 3] resized, maybe flipped, zero-padded (`config.input.format` order);
          image_size: i32[2] (h, w) of the resized image inside the padding;
          original_size: i32[2] (height, width) of the file;
          image_id: i64 scalar; example_valid: bool scalar (True); bucket: i32 scalar;
          gt_boxes: f32[G, 4] xyxy abs px in the resized image (padding [0, 0, 0, 0]);
          gt_classes: i32[G] contiguous class (padding 0); gt_valid: bool[G];
          gt_masks: u8[G, M, M] soft box-relative masks, 255 = fully inside (only when
            `config.model.mask_on`; see the module docstring);
          gt_keypoints: f32[G, K, 3] (x, y, v) in the resized image (only when
            `config.model.keypoint_on`; K = `roi_keypoint_head.num_keypoints`);
          gt_num_dropped: i32 scalar, instances removed as empty after the transforms;
          gt_num_overflow: i32 scalar, instances beyond `max_gt` that were discarded;
          sem_seg: u8[H, W] semantic targets (resized NEAREST, flipped, padded with 255), only
            for a record with `sem_seg_file_name` or `pan_seg_file_name` (`data/panoptic.py`).
        G = config.input.max_gt, M = config.input.gt_mask_size.
    """
    cfg = config.input
    mask_on = bool(config.model.mask_on)
    image = _read_checked(record, cfg.format)
    h, w = image.shape[:2]

    nh, nw = train_resized_size(h, w, config, rng)
    if cfg.random_flip == "horizontal":
        flip = bool(rng.random() < 0.5)
    elif cfg.random_flip == "none":
        flip = False
    else:
        raise ValueError(f"config.input.random_flip={cfg.random_flip!r} is not supported")

    image = T.resize_image(image, nh, nw)
    if flip:
        image = T.hflip_image(image)

    anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    n = len(anns)
    boxes = np.stack([_xyxy(a) for a in anns]) if n else np.zeros((0, 4))
    boxes = T.scale_boxes(boxes, nw / w, nh / h)
    if flip:
        boxes = T.hflip_boxes(boxes, nw)
    boxes = np.clip(boxes, 0.0, [nw, nh, nw, nh]).astype(np.float32)
    classes = np.array([a["category_id"] for a in anns], np.int32)

    keep = (boxes[:, 2] - boxes[:, 0] > _BOX_NONEMPTY_THRESHOLD) & (
        boxes[:, 3] - boxes[:, 1] > _BOX_NONEMPTY_THRESHOLD
    )
    full_masks: list = [None] * n
    if mask_on:
        for i, a in enumerate(anns):
            if "segmentation" not in a:
                raise ValueError(
                    f"{record['file_name']}: an instance has no 'segmentation' but "
                    "config.model.mask_on is True"
                )
            if keep[i]:
                full_masks[i] = _instance_mask(a["segmentation"], (h, w), (nh, nw), flip)
                keep[i] = full_masks[i].any()
    idx = np.flatnonzero(keep)
    num_dropped = n - len(idx)

    max_gt = int(cfg.max_gt)
    num_overflow = max(len(idx) - max_gt, 0)
    if num_overflow:
        area = (boxes[idx, 2] - boxes[idx, 0]) * (boxes[idx, 3] - boxes[idx, 1])
        idx = np.sort(idx[np.argsort(-area, kind="stable")[:max_gt]])
        logger.warning(
            "image %s (id %s): %d instances > max_gt=%d; kept the %d largest, discarded %d",
            record["file_name"],
            record["image_id"],
            len(idx) + num_overflow,
            max_gt,
            max_gt,
            num_overflow,
        )

    bucket, padded = _padded_shape(nh, nw, config)
    k = len(idx)
    example = {
        "image": pad_image(image, padded),
        "image_size": np.array([nh, nw], np.int32),
        "original_size": np.array([h, w], np.int32),
        "image_id": np.int64(record["image_id"]),
        "example_valid": np.bool_(True),
        "bucket": np.int32(bucket),
        "gt_boxes": np.zeros((max_gt, 4), np.float32),
        "gt_classes": np.zeros((max_gt,), np.int32),
        "gt_valid": np.zeros((max_gt,), bool),
        "gt_num_dropped": np.int32(num_dropped),
        "gt_num_overflow": np.int32(num_overflow),
    }
    example["gt_boxes"][:k] = boxes[idx]
    example["gt_classes"][:k] = classes[idx]
    example["gt_valid"][:k] = True
    if mask_on:
        m = int(cfg.gt_mask_size)
        masks = np.zeros((max_gt, m, m), np.uint8)
        for j, i in enumerate(idx):
            masks[j] = np.rint(255.0 * T.roi_align_mask(full_masks[i], boxes[i], m))
        example["gt_masks"] = masks
    sem = _semantic_gt(record)
    if sem is not None:
        example["sem_seg"] = panoptic.pad_semantic(
            panoptic.semantic_target(sem, nh, nw, flip), padded
        )
    if config.model.get("keypoint_on", False):
        example["gt_keypoints"] = _gt_keypoints(record, anns, idx, (h, w), (nh, nw), flip, config)
    return example


def _semantic_gt(record: dict) -> np.ndarray | None:
    """The record's semantic map `u8[height, width]` (things 0, stuff 1.., void 255): its
    `sem_seg_file_name` PNG, or derived from its panoptic PNG; None without either."""
    h, w = record["height"], record["width"]
    if "sem_seg_file_name" in record:
        return panoptic.read_semantic(record["sem_seg_file_name"], h, w)
    if "pan_seg_file_name" in record:
        ids = panoptic.read_panoptic_png(record["pan_seg_file_name"], record["segments_info"])
        if ids.shape != (h, w):
            raise ValueError(
                f"{record['pan_seg_file_name']}: panoptic PNG is {ids.shape[0]}x{ids.shape[1]} "
                f"(HxW) but its image is {h}x{w}"
            )
        return panoptic.panoptic_to_semantic(ids, record["segments_info"])
    return None


def _gt_keypoints(record, anns, idx, size, new_size, flip, config) -> np.ndarray:
    """`f32[max_gt, K, 3]` keypoints of the kept instances `idx` (module docstring)."""
    num_k = int(config.model.roi_keypoint_head.num_keypoints)
    out = np.zeros((int(config.input.max_gt), num_k, 3), np.float32)
    if not len(idx):
        return out
    kps = []
    for i in idx:
        if "keypoints" not in anns[i]:
            raise ValueError(
                f"{record['file_name']} (image id {record['image_id']}): an instance has no "
                "'keypoints' but config.model.keypoint_on is True"
            )
        if anns[i]["keypoints"].shape != (num_k, 3):
            raise ValueError(
                f"{record['file_name']} (image id {record['image_id']}): an instance has "
                f"{anns[i]['keypoints'].shape[0]} keypoints, config.model.roi_keypoint_head."
                f"num_keypoints is {num_k}"
            )
        kps.append(anns[i]["keypoints"])
    (h, w), (nh, nw) = size, new_size
    out[: len(idx)] = T.transform_keypoints(
        np.stack(kps), nw / w, nh / h, (nh, nw), flip, record.get("keypoint_hflip_indices")
    )
    return out


def make_test_example(record_or_image: dict | np.ndarray, config) -> dict:
    """Test-time input: ResizeShortestEdge(min_size_test, max_size_test), padded, no gt.

    Args:
        record_or_image: a `load_coco_json` record (the file is read and its size checked) or
            an already decoded u8[h, w, 3] image in `config.input.format` order.
        config: the full config (reads `config.input.*`).

    Returns:
        dict with image u8[H, W, 3], image_size i32[2], original_size i32[2], image_id i64
        (-1 for a bare image), example_valid bool (True), bucket i32.
    """
    cfg = config.input
    if isinstance(record_or_image, dict):
        image = _read_checked(record_or_image, cfg.format)
        image_id = record_or_image["image_id"]
    else:
        image = np.asarray(record_or_image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a u8[h, w, 3] image, got {image.dtype}{list(image.shape)}")
        image_id = -1
    h, w = image.shape[:2]
    if cfg.min_size_test:
        nh, nw = T.resize_shortest_edge_shape(h, w, cfg.min_size_test, cfg.max_size_test)
        image = T.resize_image(image, nh, nw)
    else:
        nh, nw = h, w
    bucket, padded = _padded_shape(nh, nw, config)
    return {
        "image": pad_image(image, padded),
        "image_size": np.array([nh, nw], np.int32),
        "original_size": np.array([h, w], np.int32),
        "image_id": np.int64(image_id),
        "example_valid": np.bool_(True),
        "bucket": np.int32(bucket),
    }


def collate(examples: Sequence[dict], batch_size: int | None = None) -> dict:
    """Stacks examples into a batch, padding to a fixed batch size if asked.

    Images of different padded shapes (pad_mode "size_divisibility") are zero-padded to the
    largest (`ImageList.from_tensors`). With `batch_size`, missing examples are filled with
    zeros and `example_valid = False`, `image_id = -1` (exact padded evaluation).

    Args:
        examples: dicts from `make_train_example` / `make_test_example` with the same keys.
        batch_size: static batch size B (default: `len(examples)`).

    Returns:
        dict of stacked arrays with a leading B axis (e.g. image u8[B, H, W, 3],
        image_size i32[B, 2], original_size i32[B, 2], image_id i64[B], example_valid bool[B]).
    """
    if not examples:
        raise ValueError("collate: no examples")
    b = len(examples) if batch_size is None else int(batch_size)
    if len(examples) > b:
        raise ValueError(f"collate: {len(examples)} examples > batch_size {b}")
    keys = examples[0].keys()
    for e in examples:
        if e.keys() != keys:
            raise ValueError(
                f"collate: examples have different keys: {sorted(keys)} vs {sorted(e)}"
            )
    hmax = max(e["image"].shape[0] for e in examples)
    wmax = max(e["image"].shape[1] for e in examples)
    batch = {}
    for k in keys:
        if k == "image":
            vals = [pad_image(e[k], (hmax, wmax)) for e in examples]
        elif k == "sem_seg":  # ignored label in the padding, as the images' zero padding
            vals = [panoptic.pad_semantic(e[k], (hmax, wmax)) for e in examples]
        else:
            vals = [np.asarray(e[k]) for e in examples]
        fill = panoptic.IGNORE_VALUE if k == "sem_seg" else 0
        stacked = np.full((b,) + vals[0].shape, fill, vals[0].dtype)
        stacked[: len(vals)] = np.stack(vals)
        batch[k] = stacked
    if b > len(examples):
        batch["image_id"][len(examples) :] = -1
    return batch


def group_by_bucket(examples: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Collates a stream of examples into batches of one `bucket` each.

    Detectron2's `AspectRatioGroupedDataset`: an example waits in its bucket's queue until
    `batch_size` have arrived; incomplete queues at the end of the stream are dropped.
    """
    queues: dict[int, list[dict]] = {}
    for e in examples:
        q = queues.setdefault(int(e["bucket"]), [])
        q.append(e)
        if len(q) == batch_size:
            yield collate(q)
            q.clear()


def mask_target_reference(gt_mask: np.ndarray, gt_box: np.ndarray, roi: np.ndarray, size: int):
    """NumPy reference of the Mask R-CNN target built from a box-relative `gt_masks` entry.

    Args:
        gt_mask: u8[M, M] soft mask of one gt instance (`make_train_example`'s `gt_masks[g]`).
        gt_box: f[4] xyxy of that instance (`gt_boxes[g]`).
        roi: f[4] xyxy proposal matched to it, same frame.
        size: target side (Detectron2: 28, the mask head's output).

    Returns:
        bool[size, size], which approximates Detectron2's
        `BitMasks.crop_and_resize(roi, size)` of the full-image mask.
    """
    m = gt_mask.shape[0]
    x1, y1, x2, y2 = (float(v) for v in gt_box)
    scale = np.array([m / (x2 - x1), m / (y2 - y1)] * 2)
    roi_in_grid = (np.asarray(roi, np.float64) - np.array([x1, y1, x1, y1])) * scale
    return T.roi_align_mask(gt_mask / 255.0, roi_in_grid, size) >= 0.5


def normalize_images(batch: dict, pixel_mean, pixel_std) -> np.ndarray:
    """NumPy reference of the model input: Detectron2's normalise-then-pad-with-0.

    Args:
        batch: dict with image u8[B, H, W, 3] and image_size i32[B, 2].
        pixel_mean: 3 floats in the image's channel order.
        pixel_std: 3 floats.

    Returns:
        f32[B, H, W, 3]: `(x - mean) / std` inside each image, 0 in the padding.
    """
    images = np.asarray(batch["image"], np.float32)
    mean = np.asarray(pixel_mean, np.float32)
    std = np.asarray(pixel_std, np.float32)
    _, hh, ww, _ = images.shape
    sizes = np.asarray(batch["image_size"])
    inside = (np.arange(hh)[None, :, None] < sizes[:, 0, None, None]) & (
        np.arange(ww)[None, None, :] < sizes[:, 1, None, None]
    )
    return np.where(inside[..., None], (images - mean) / std, np.float32(0))
