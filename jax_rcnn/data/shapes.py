"""`shapes`: a deterministic synthetic instance-segmentation dataset, small enough for a CPU.

Each image has a textured, noisy background and 0..`max_instances` shapes of 8 classes
(`CLASS_NAMES`). Every instance gets a random colour and a random shading, so the class is only
given away by its outline. Sizes are log-uniform from 8 px to half the short image side; shapes
overlap, later ones occluding earlier ones, and each annotation is the *visible* part of its shape
(COCO RLE); a shape left with less than `_MIN_VISIBLE_FRACTION` of its area (or fewer than
`_MIN_VISIBLE_PIXELS` pixels) is not drawn at all, so nothing visible is unannotated. About 6 %
of the images are empty. Train and val come from different seeds.

The dataset is written on first use as COCO JSON + PNG files under
`cache_dir/shapes_v{version}_{hash of the parameters}/` (`cache.generate_once`: written to a
temporary directory and renamed, so an interrupted run leaves nothing half-made); a changed
generator version or parameter set lands in a new directory. Files are identical for identical
parameters.

`long_tail=True` makes the long-tailed variant (LVIS json; training classes each a third as
frequent as the one before; see `ensure_shapes_dataset`).

Usage::

    paths = ensure_shapes_dataset(cache_dir)
    records, meta = load_coco_json(paths["train_json"], paths["train_images"])
"""

from __future__ import annotations

import json
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from jax_rcnn.data.cache import default_cache_dir as default_cache_dir  # re-exported
from jax_rcnn.data.cache import generate_once

CLASS_NAMES = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon")
# The panoptic variant's stuff classes (semantic labels 1..S; 0 = "things"), each a texture.
STUFF_NAMES = ("sky", "grass", "water", "wall")
GENERATOR_VERSION = 1

_EMPTY_IMAGE_PROB = 0.06
_MIN_SIZE = 8.0
_MIN_VISIBLE_FRACTION = 0.3
_MIN_VISIBLE_PIXELS = 12


def _polygon_vertices(cls: str, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    """f64[V, 2] outline (x, y) of a polygonal class inscribed in a circle of radius r."""
    if cls == "square":
        ang = theta + np.pi / 4 + np.arange(4) * np.pi / 2
        rad = np.full(4, r)
    elif cls == "triangle":
        ang = theta + np.arange(3) * 2 * np.pi / 3
        rad = np.full(3, r)
    elif cls == "hexagon":
        ang = theta + np.arange(6) * np.pi / 3
        rad = np.full(6, r)
    elif cls == "star":
        ang = theta + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
    elif cls == "cross":
        a, t = r * 0.95, r * 0.32  # arm half-length, arm half-width
        pts = np.array(
            [[t, t], [a, t], [a, -t], [t, -t], [t, -a], [-t, -a]]
            + [[-t, -t], [-a, -t], [-a, t], [-t, t], [-t, a], [t, a]]
        )
        c, s = np.cos(theta), np.sin(theta)
        pts = pts @ np.array([[c, s], [-s, c]])
        return pts + np.array([cx, cy])
    else:
        raise ValueError(cls)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], -1)


def _shape_mask(cls: str, h: int, w: int, cx, cy, r, theta, rng) -> np.ndarray:
    """bool[h, w] full mask of one shape (pixel centres at i + 0.5)."""
    if cls in ("circle", "ring", "ellipse"):
        mask = np.zeros((h, w), bool)
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
        if y1 <= y0 or x1 <= x0:
            return mask
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
        dx, dy = xx - cx, yy - cy
        if cls == "ellipse":
            c, s = np.cos(theta), np.sin(theta)
            u, v = c * dx + s * dy, -s * dx + c * dy
            minor = r * rng.uniform(0.35, 0.6)
            inside = (u / r) ** 2 + (v / minor) ** 2 <= 1.0
        else:
            d2 = dx * dx + dy * dy
            inside = d2 <= r * r
            if cls == "ring":
                inside &= d2 >= (r * rng.uniform(0.45, 0.65)) ** 2
        mask[y0:y1, x0:x1] = inside
        return mask
    poly = _polygon_vertices(cls, cx, cy, r, theta).reshape(-1).tolist()
    rle = mask_util.frPyObjects([poly], h, w)
    return mask_util.decode(rle)[:, :, 0].astype(bool)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """f32[h, w, 3] smooth random colour field + optional stripes + pixel noise."""
    cells = int(rng.integers(2, 9))
    low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    mix = rng.uniform(0.3, 0.9)
    bg = mix * field + (1 - mix) * base
    if rng.random() < 0.3:
        period = rng.uniform(6, 24)
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        phase = (np.cos(ang) * xx + np.sin(ang) * yy) * 2 * np.pi / period
        bg += (rng.uniform(10, 40) * np.sin(phase))[..., None]
    bg += rng.normal(0, rng.uniform(2, 14), (h, w, 3))
    return bg


def _stuff_texture(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """f32[h, w, 3]: a stuff class's texture with a jittered colour."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter = rng.uniform(-25, 25, 3)
    if kind == "sky":  # smooth vertical gradient, little noise
        base = np.array([120, 170, 235]) + jitter
        tex = base + (yy / max(h, 1) * 40)[..., None] + rng.normal(0, 2, (h, w, 3))
    elif kind == "grass":  # green, strong vertical streak noise
        base = np.array([60, 150, 50]) + jitter
        streaks = np.repeat(rng.normal(0, 25, (1, w)), h, axis=0)
        tex = base + streaks[..., None] + rng.normal(0, 12, (h, w, 3))
    elif kind == "water":  # blue with horizontal waves
        base = np.array([30, 80, 160]) + jitter
        period = rng.uniform(5, 10)
        waves = 30 * np.sin(2 * np.pi * (yy + 3 * np.sin(xx / 7)) / period)
        tex = base + waves[..., None] + rng.normal(0, 5, (h, w, 3))
    else:  # wall: bricks, mortar lines every 8 rows / 16 columns (offset every other row)
        base = np.array([150, 80, 60]) + jitter
        row = (yy // 8).astype(int)
        mortar = (yy % 8 < 1) | ((xx + 8 * (row % 2)) % 16 < 1)
        tex = np.where(mortar[..., None], 210.0, base) + rng.normal(0, 6, (h, w, 3))
    return tex.astype(np.float32)


def stuff_background(
    rng: np.random.Generator, h: int, w: int, num_stuff: int
) -> tuple[np.ndarray, np.ndarray]:
    """A background of 2-3 stuff regions: a wavy horizontal boundary, sometimes a vertical one.

    Returns:
      `(f32[h, w, 3] image, u8[h, w] semantic labels 1..num_stuff)`.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    kinds = rng.permutation(num_stuff)[: min(3, num_stuff)] + 1
    cut = rng.uniform(0.25, 0.75) * h + rng.uniform(2, 8) * np.sin(xx / rng.uniform(8, 30))
    labels = np.where(yy < cut, kinds[0], kinds[min(1, len(kinds) - 1)]).astype(np.uint8)
    if len(kinds) > 2 and rng.random() < 0.5:
        labels[(xx > rng.uniform(0.3, 0.7) * w) & (yy >= cut)] = kinds[2]
    image = np.zeros((h, w, 3), np.float32)
    for k in np.unique(labels):
        m = labels == k
        image[m] = _stuff_texture(rng, STUFF_NAMES[int(k) - 1], h, w)[m]
    return image, labels


def render_image(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    max_instances: int,
    num_classes: int = len(CLASS_NAMES),
    class_weights: np.ndarray | None = None,
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draws one image.

    Args:
        rng: the image's own generator.
        image_size: (height, width).
        max_instances: most shapes placed before occlusion culling.
        num_classes: shapes are drawn from the first `num_classes` of `CLASS_NAMES`.
        class_weights: f64[num_classes] class probabilities (None: uniform).
        background: f32[h, w, 3] to draw on (the panoptic variant's stuff); default a random
            textured background.

    Returns:
        `(image u8[h, w, 3] RGB, [(class index, visible bool[h, w] mask), ...])` in drawing
        order (later instances on top).
    """
    h, w = image_size
    img = _background(rng, h, w) if background is None else background.copy()
    n = 0 if rng.random() < _EMPTY_IMAGE_PROB else int(rng.integers(1, max_instances + 1))
    max_r = min(h, w) / 4.0  # diameter up to half the short side
    shapes = []
    for _ in range(n):
        if class_weights is None:
            cls = int(rng.integers(num_classes))
        else:
            cls = int(rng.choice(num_classes, p=class_weights))
        r = float(np.exp(rng.uniform(np.log(_MIN_SIZE / 2), np.log(max_r))))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        mask = _shape_mask(CLASS_NAMES[cls], h, w, cx, cy, r, rng.uniform(0, 2 * np.pi), rng)
        colour = rng.uniform(0, 255, 3)
        grad = rng.normal(0, 1.2, 2) * rng.uniform(0, 60) / max(r, 1.0)
        shapes.append((cls, mask, colour, grad, (cx, cy), rng.uniform(0, 12)))
    # Occlusion: a shape's visible part is what no later (kept) shape covers.
    covered = np.zeros((h, w), bool)
    kept = []
    for cls, mask, colour, grad, centre, noise in reversed(shapes):
        area = mask.sum()
        visible = mask & ~covered
        nvis = visible.sum()
        if area == 0 or nvis < _MIN_VISIBLE_PIXELS or nvis < _MIN_VISIBLE_FRACTION * area:
            continue
        covered |= mask
        kept.append((cls, mask, visible, colour, grad, centre, noise))
    kept.reverse()
    for _, mask, _, colour, grad, (cx, cy), noise in kept:
        ys, xs = np.nonzero(mask)
        shade = (xs + 0.5 - cx) * grad[0] + (ys + 0.5 - cy) * grad[1]
        img[ys, xs] = colour + shade[:, None] + rng.normal(0, noise, (len(ys), 3))
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, [(cls, visible) for cls, _, visible, *_ in kept]


def long_tail_weights(num_classes: int) -> np.ndarray:
    """f64[num_classes] class probabilities of the long-tailed training split: each class a
    third as frequent as the one before (1, 1/3, 1/9, ..., normalised)."""
    w = (1.0 / 3.0) ** np.arange(num_classes)
    return w / w.sum()


def _frequency(image_count: int, num_images: int) -> str:
    """LVIS's frequency group, on this dataset's scale: "r" in < 2 % of the training images,
    "c" in < 10 %, else "f" (LVIS: 1-10, 11-100, > 100 of ~100k images)."""
    share = image_count / max(num_images, 1)
    return "r" if share < 0.02 else "c" if share < 0.10 else "f"


def _write_split(out_dir: str, split: str, split_id: int, num: int, params: dict) -> dict:
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir)
    images, annotations = [], []
    size_range = params.get("image_size_range")
    num_classes = params.get("num_classes", len(CLASS_NAMES))
    long_tail = bool(params.get("long_tail"))
    weights = long_tail_weights(num_classes) if long_tail and split == "train" else None
    num_stuff = params.get("num_stuff_classes", 0)
    panoptic_annotations = []
    if num_stuff:
        os.makedirs(os.path.join(out_dir, f"{split}_sem"))
        os.makedirs(os.path.join(out_dir, f"{split}_panoptic"))
    for i in range(num):
        rng = np.random.default_rng([params["seed"], split_id, i])
        if size_range:
            # A separate stream, so the image's own draws do not depend on its size draw.
            size_rng = np.random.default_rng([params["seed"], split_id, i, 1])
            h, w = (int(x) for x in size_rng.integers(size_range[0], size_range[1] + 1, 2))
        else:
            h, w = params["image_size"]
        background = stuff = None
        if num_stuff:
            background, stuff = stuff_background(rng, h, w, num_stuff)
        image, instances = render_image(
            rng,
            (h, w),
            params["max_instances"],
            num_classes,
            class_weights=weights,
            background=background,
        )
        file_name = f"{i:06d}.png"
        Image.fromarray(image).save(os.path.join(img_dir, file_name), compress_level=1)
        if num_stuff:
            panoptic_annotations.append(
                _write_panoptic(out_dir, split, i + 1, file_name, stuff, instances, num_classes)
            )
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        if long_tail:  # LVIS fields: half the absent classes verified absent, all exhaustive
            present = {cls + 1 for cls, _ in instances}
            absent = [k for k in range(1, num_classes + 1) if k not in present]
            neg_rng = np.random.default_rng([params["seed"], split_id, i, 2])
            images[-1]["neg_category_ids"] = [k for k in absent if neg_rng.random() < 0.5]
            images[-1]["not_exhaustive_category_ids"] = []
        for cls, visible in instances:
            rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
            ys, xs = np.nonzero(visible)
            x0, y0 = int(xs.min()), int(ys.min())
            bbox = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": bbox,
                    "area": float(visible.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                }
            )
    coco = {
        "info": {"description": f"jax_rcnn synthetic shapes ({split})", **params},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": n, "supercategory": "shape"}
            for k, n in enumerate(CLASS_NAMES[:num_classes])
        ],
    }
    if num_stuff:
        stuff_cats = [
            {"id": num_classes + k + 1, "name": n, "isthing": 0, "supercategory": "stuff"}
            for k, n in enumerate(STUFF_NAMES[:num_stuff])
        ]
        panoptic = {
            "info": coco["info"],
            "images": images,
            "annotations": panoptic_annotations,
            "categories": [{**c, "isthing": 1} for c in coco["categories"]] + stuff_cats,
        }
        with open(os.path.join(out_dir, f"{split}_panoptic.json"), "w") as f:
            json.dump(panoptic, f)
    return coco


def _lvis_categories(train: dict, num_classes: int) -> list[dict]:
    """LVIS category entries (synonyms, frequency, image / instance counts) from the train split."""
    images_of = {k + 1: set() for k in range(num_classes)}
    instances = dict.fromkeys(images_of, 0)
    for a in train["annotations"]:
        images_of[a["category_id"]].add(a["image_id"])
        instances[a["category_id"]] += 1
    n = len(train["images"])
    return [
        {
            "id": k + 1,
            "name": CLASS_NAMES[k],
            "synonyms": [CLASS_NAMES[k]],
            "supercategory": "shape",
            "image_count": len(images_of[k + 1]),
            "instance_count": instances[k + 1],
            "frequency": _frequency(len(images_of[k + 1]), n),
        }
        for k in range(num_classes)
    ]


def _write_panoptic(out_dir, split, image_id, file_name, stuff, instances, num_classes) -> dict:
    """Writes one image's semantic PNG (things 0, stuff 1..S; Detectron2's
    `panoptic_separated`) and panoptic PNG (segment ids, panopticapi's RGB encoding); returns
    its panoptic annotation (stuff category id = `num_classes` + label)."""
    semantic = stuff.copy()
    ids = np.zeros(stuff.shape, np.int64)
    segments = []
    for k, (cls, visible) in enumerate(instances):
        semantic[visible] = 0
        ids[visible] = k + 1
        segments.append({"id": k + 1, "category_id": cls + 1, "iscrowd": 0, "mask": visible})
    for label in np.unique(stuff):
        m = (stuff == label) & (semantic != 0)
        if m.any():
            seg_id = len(segments) + 1
            ids[m] = seg_id
            segments.append(
                {"id": seg_id, "category_id": num_classes + int(label), "iscrowd": 0, "mask": m}
            )
    Image.fromarray(semantic).save(os.path.join(out_dir, f"{split}_sem", file_name))
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(out_dir, f"{split}_panoptic", file_name))
    info = []
    for s in segments:
        ys, xs = np.nonzero(s.pop("mask"))
        x0, y0 = int(xs.min()), int(ys.min())
        box = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
        info.append({**s, "area": len(ys), "bbox": box})
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}


def _paths(root: str, panoptic: bool = False) -> dict:
    paths = {
        "train_json": os.path.join(root, "train.json"),
        "train_images": os.path.join(root, "train"),
        "val_json": os.path.join(root, "val.json"),
        "val_images": os.path.join(root, "val"),
    }
    if panoptic:
        for split in ("train", "val"):
            paths[f"{split}_sem_seg"] = os.path.join(root, f"{split}_sem")
            paths[f"{split}_panoptic_json"] = os.path.join(root, f"{split}_panoptic.json")
            paths[f"{split}_panoptic_png"] = os.path.join(root, f"{split}_panoptic")
    return paths


def ensure_shapes_dataset(
    cache_dir: str | os.PathLike | None = None,
    *,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] = (128, 160),
    seed: int = 0,
    max_instances: int = 12,
    image_size_range: tuple[int, int] | tuple[()] = (),
    num_classes: int = len(CLASS_NAMES),
    long_tail: bool = False,
    num_stuff_classes: int = 0,
) -> dict:
    """Returns the paths of the shapes dataset, generating it on first use.

    Args:
        cache_dir: parent directory (None or "": `default_cache_dir()`).
        num_train: training images.
        num_val: validation images.
        image_size: (height, width) of every image (when `image_size_range` is empty).
        seed: base seed; train uses (seed, 0, i), val (seed, 1, i) for image i.
        max_instances: most shapes per image (before occlusion culling).
        image_size_range: (lo, hi): each image's height and width are drawn independently
            from [lo, hi] (variable sizes and aspect ratios); () = every image `image_size`.
        num_classes: instances are of the first `num_classes` of `CLASS_NAMES` (1..8).
        long_tail: the long-tailed variant, written as LVIS json: training classes drawn with
            `long_tail_weights` (each class a third as frequent as the one before), validation
            classes uniform (so the rare classes' AP is measurable); categories carry LVIS's
            `frequency` (r / c / f from training image counts, `_frequency`), `image_count`,
            `synonyms`; images carry `neg_category_ids` (half the absent classes) and an empty
            `not_exhaustive_category_ids` (the synthetic annotations are exhaustive).
        num_stuff_classes: 0, or the panoptic variant (1..4): backgrounds made of regions of the
            first `num_stuff_classes` of `STUFF_NAMES`, each with its texture, plus semantic
            PNGs (things 0, stuff 1..S) and COCO panoptic JSON + PNGs for each split.

    Raises:
        ValueError: `image_size_range` is not (lo, hi) with 1 <= lo <= hi, or `num_classes`
            is not in 1..8.

    Returns:
        dict with `train_json`, `train_images`, `val_json`, `val_images` (absolute paths);
        the panoptic variant adds `{split}_sem_seg`, `{split}_panoptic_json`,
        `{split}_panoptic_png` for split in train, val.
    """
    params = {
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": int(seed),
        "max_instances": int(max_instances),
    }
    # Non-default options only, so the default dataset keeps its directory (and files).
    if image_size_range:
        lo, hi = (int(x) for x in image_size_range)
        if not 1 <= lo <= hi or len(image_size_range) != 2:
            raise ValueError(
                f"shapes image_size_range must be (lo, hi) with 1 <= lo <= hi, got "
                f"{tuple(image_size_range)}"
            )
        params["image_size_range"] = [lo, hi]
    if not 1 <= int(num_classes) <= len(CLASS_NAMES):
        raise ValueError(f"shapes num_classes must be in 1..{len(CLASS_NAMES)}, got {num_classes}")
    if int(num_classes) != len(CLASS_NAMES):
        params["num_classes"] = int(num_classes)
    if long_tail:
        params["long_tail"] = True
    if not 0 <= int(num_stuff_classes) <= len(STUFF_NAMES):
        raise ValueError(
            f"shapes num_stuff_classes must be in 0..{len(STUFF_NAMES)}, got {num_stuff_classes}"
        )
    if int(num_stuff_classes):
        params["num_stuff_classes"] = int(num_stuff_classes)
    if long_tail and int(num_stuff_classes):
        raise ValueError("the shapes long_tail and num_stuff_classes variants do not combine")
    panoptic = bool(params.get("num_stuff_classes"))

    def write(out_dir: str) -> None:
        splits = {
            "train": _write_split(out_dir, "train", 0, params["num_train"], params),
            "val": _write_split(out_dir, "val", 1, params["num_val"], params),
        }
        if params.get("long_tail"):
            categories = _lvis_categories(splits["train"], params.get("num_classes", 8))
            for coco in splits.values():
                coco["categories"] = categories
        for split, coco in splits.items():
            with open(os.path.join(out_dir, f"{split}.json"), "w") as f:
                json.dump(coco, f)

    return generate_once(
        cache_dir,
        "shapes",
        params,
        layout=lambda root: _paths(root, panoptic),
        file_counts={"train_images": params["num_train"], "val_images": params["num_val"]},
        write=write,
    )


def config_paths(config) -> dict:
    """`ensure_shapes_dataset` for a jax_rcnn config (`config.data.shapes`, `.cache_dir`)."""
    d = config.data
    s = d.shapes
    return ensure_shapes_dataset(
        d.cache_dir or None,
        num_train=s.num_train,
        num_val=s.num_val,
        image_size=tuple(s.image_size),
        seed=s.seed,
        image_size_range=tuple(s.image_size_range),
        num_classes=s.num_classes,
        long_tail=bool(s.get("long_tail", False)),
        num_stuff_classes=s.get("num_stuff_classes", 0),
    )
