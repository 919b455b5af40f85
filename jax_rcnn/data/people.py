"""`people`: a deterministic synthetic person-keypoint dataset (stick figures), small enough for a
CPU, in COCO person-keypoint format (`person_keypoints_*.json` layout).

Each image has a textured, noisy background (`shapes._background`) and 1..`max_people` stick
figures facing the camera, so COCO's 17 keypoints, flip map and skeleton apply unchanged (the
figure's `left_*` keypoints are on the image's right). A figure has a filled head with two eyes,
a torso, and arms and legs of two segments each; its height is log-uniform in
[`_MIN_HEIGHT`, 0.95 x image height], its width, lean and every limb angle are random (arms
anywhere from down to raised, legs apart or crossed, knees and elbows bent), and each figure
has its own colour. Figures overlap, later ones occluding earlier ones; the annotation is the
*visible* part (COCO RLE and its box), and a figure left with less than
`_MIN_VISIBLE_FRACTION` of its pixels is not drawn. Keypoint visibility is COCO's: 2 where the
keypoint's pixel shows the figure, 1 where another figure hides it (labelled, not visible), 0
(written as 0, 0, 0) outside the image. Keypoints are the integer pixel that holds the joint
(COCO's convention; the loader adds 0.5).

Written on first use as COCO JSON + PNG files under
`cache_dir/people_v{version}_{hash of the parameters}/` (`cache.generate_once`, like `shapes`);
identical parameters give identical files.

Usage::

    paths = ensure_people_dataset(cache_dir)
    records, meta = load_coco_json(paths["train_json"], paths["train_images"])
"""

from __future__ import annotations

import json
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

from jax_rcnn.data.cache import generate_once
from jax_rcnn.data.coco import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON
from jax_rcnn.data.shapes import _background

GENERATOR_VERSION = 1
_MIN_HEIGHT = 40.0
_MIN_VISIBLE_FRACTION = 0.35
_K = {n: i for i, n in enumerate(COCO_PERSON_KEYPOINT_NAMES)}


def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def figure_keypoints(rng: np.random.Generator, height: float) -> np.ndarray:
    """`f64[17, 2]` joint positions (x, y) of one figure, origin at its hip centre, y down,
    in COCO's keypoint order; `left_*` at +x (the figure faces the camera)."""
    h = height
    width = rng.uniform(0.8, 1.25)
    p = np.zeros((17, 2))
    neck = np.array([0.0, -0.34 * h])
    head = neck + np.array([0.0, -0.11 * h])
    p[_K["nose"]] = head + np.array([0.0, 0.012 * h])
    for side, sign in (("left", 1.0), ("right", -1.0)):
        p[_K[f"{side}_eye"]] = head + np.array([sign * 0.028 * h, -0.014 * h])
        p[_K[f"{side}_ear"]] = head + np.array([sign * 0.06 * h, -0.004 * h])
        shoulder = neck + np.array([sign * 0.12 * h * width, 0.02 * h])
        hip = np.array([sign * 0.075 * h * width, 0.0])
        # Arm: angle from straight down, outward positive; the forearm bends further.
        upper = rng.uniform(-0.3, 2.6)
        fore = upper + rng.uniform(-0.4, 1.6)
        elbow = shoulder + _rot(np.array([0.0, 0.17 * h]), -sign * upper)
        wrist = elbow + _rot(np.array([0.0, 0.15 * h]), -sign * fore)
        # Leg: thigh angle outward (negative: crossed), the shin bends back towards the middle.
        thigh = rng.uniform(-0.15, 0.55)
        shin = thigh - rng.uniform(-0.1, 0.6)
        knee = hip + _rot(np.array([0.0, 0.26 * h]), -sign * thigh)
        ankle = knee + _rot(np.array([0.0, 0.25 * h]), -sign * shin)
        for name, pt in (
            ("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist), ("hip", hip),
            ("knee", knee), ("ankle", ankle),
        ):  # fmt: skip
            p[_K[f"{side}_{name}"]] = pt
    lean = rng.normal(0.0, 0.12)
    return np.stack([_rot(q, lean) for q in p])


def _draw_figure(draw: ImageDraw.ImageDraw, kps: np.ndarray, height: float, fill) -> None:
    """Head, torso and limbs of one figure (`kps` in image coordinates) with colour `fill`."""
    lw = max(2, int(round(0.055 * height)))

    def pt(name):
        return tuple(kps[_K[name]].tolist())

    torso = [pt("left_shoulder"), pt("right_shoulder"), pt("right_hip"), pt("left_hip")]
    draw.polygon(torso, fill=fill)
    for side in ("left", "right"):
        for a, b in (("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle")):
            draw.line([pt(f"{side}_{a}"), pt(f"{side}_{b}")], fill=fill, width=lw)
        for joint in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
            x, y = pt(f"{side}_{joint}")
            r = lw / 2 + 0.5
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    neck = (kps[_K["left_shoulder"]] + kps[_K["right_shoulder"]]) / 2
    head = (kps[_K["left_ear"]] + kps[_K["right_ear"]]) / 2
    draw.line([tuple(neck.tolist()), tuple(head.tolist())], fill=fill, width=lw)
    r = 0.075 * height
    draw.ellipse([head[0] - r, head[1] - r, head[0] + r, head[1] + r], fill=fill)


def render_image(
    rng: np.random.Generator, image_size: tuple[int, int], max_people: int
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Draws one image.

    Args:
        rng: the image's own generator.
        image_size: (height, width).
        max_people: most figures placed before occlusion culling.

    Returns:
        `(image u8[h, w, 3] RGB, [(visible bool[h, w], keypoints i64[17, 3] (x, y, v)), ...])`
        in drawing order (later figures on top).
    """
    h, w = image_size
    img = _background(rng, h, w)
    n = int(rng.integers(1, max_people + 1))
    figures = []
    for _ in range(n):
        height = float(np.exp(rng.uniform(np.log(_MIN_HEIGHT), np.log(0.95 * h))))
        centre = np.array([rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.35 * h, 0.75 * h)])
        kps = figure_keypoints(rng, height) + centre
        colour = rng.uniform(0, 255, 3)
        figures.append((height, kps, colour))
    # Occlusion as in `shapes`: a figure's visible part is what no later kept figure covers.
    masks = []
    for height, kps, _ in figures:
        canvas = Image.new("L", (w, h), 0)
        _draw_figure(ImageDraw.Draw(canvas), kps, height, 255)
        masks.append(np.asarray(canvas) > 0)
    label = np.full((h, w), -1, np.int32)
    covered = np.zeros((h, w), bool)
    kept = []
    for k in reversed(range(n)):
        visible = masks[k] & ~covered
        area = masks[k].sum()
        if area == 0 or visible.sum() < _MIN_VISIBLE_FRACTION * area:
            continue
        covered |= masks[k]
        label[visible] = k
        kept.append(k)
    kept.reverse()
    out = img.copy()
    for k in kept:
        height, kps, colour = figures[k]
        visible = label == k
        shade = rng.normal(0, rng.uniform(2, 10), (int(visible.sum()), 3))
        out[visible] = colour + shade
        # Eyes: dark dots, so the face shows which way is up.
        for eye in ("left_eye", "right_eye"):
            x, y = kps[_K[eye]]
            r = max(0.6, 0.012 * height)
            yy, xx = np.mgrid[0:h, 0:w]
            dot = ((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= r * r) & visible
            out[dot] = colour * 0.2
    image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    instances = []
    for k in kept:
        kps = figures[k][1]
        ints = np.floor(kps).astype(np.int64)
        inside = (ints[:, 0] >= 0) & (ints[:, 0] < w) & (ints[:, 1] >= 0) & (ints[:, 1] < h)
        vis = np.zeros(17, np.int64)
        xs, ys = np.clip(ints[:, 0], 0, w - 1), np.clip(ints[:, 1], 0, h - 1)
        vis[inside] = np.where(label[ys[inside], xs[inside]] == k, 2, 1)
        triples = np.concatenate([ints, vis[:, None]], axis=1)
        triples[vis == 0] = 0
        instances.append((label == k, triples))
    return image, instances


def _write_split(out_dir: str, split: str, split_id: int, num: int, params: dict) -> None:
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir)
    images, annotations = [], []
    h, w = params["image_size"]
    for i in range(num):
        rng = np.random.default_rng([params["seed"], split_id, i])
        image, instances = render_image(rng, (h, w), params["max_people"])
        file_name = f"{i:06d}.png"
        Image.fromarray(image).save(os.path.join(img_dir, file_name), compress_level=1)
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        for visible, kps in instances:
            rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
            ys, xs = np.nonzero(visible)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [
                        float(x0),
                        float(y0),
                        float(xs.max() + 1 - x0),
                        float(ys.max() + 1 - y0),
                    ],
                    "area": float(visible.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "keypoints": [int(v) for v in kps.reshape(-1)],
                    "num_keypoints": int((kps[:, 2] > 0).sum()),
                }
            )
    coco = {
        "info": {"description": f"jax_rcnn synthetic people ({split})", **params},
        "images": images,
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
                "skeleton": [list(p) for p in COCO_PERSON_SKELETON],
            }
        ],
    }
    with open(os.path.join(out_dir, f"{split}.json"), "w") as f:
        json.dump(coco, f)


def _paths(root: str) -> dict:
    return {
        "train_json": os.path.join(root, "train.json"),
        "train_images": os.path.join(root, "train"),
        "val_json": os.path.join(root, "val.json"),
        "val_images": os.path.join(root, "val"),
    }


def ensure_people_dataset(
    cache_dir: str | os.PathLike | None = None,
    *,
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] = (128, 160),
    seed: int = 0,
    max_people: int = 4,
) -> dict:
    """Returns the paths of the people dataset, generating it on first use.

    Args:
        cache_dir: parent directory (None or "": `cache.default_cache_dir()`).
        num_train: training images.
        num_val: validation images.
        image_size: (height, width) of every image.
        seed: base seed; train uses (seed, 0, i), val (seed, 1, i) for image i.
        max_people: most figures per image (before occlusion culling).

    Returns:
        dict with `train_json`, `train_images`, `val_json`, `val_images` (absolute paths).
    """
    params = {
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": int(seed),
        "max_people": int(max_people),
    }
    if params["image_size"][0] < 2 * _MIN_HEIGHT or params["max_people"] < 1:
        raise ValueError(
            f"people: image height must be >= {2 * _MIN_HEIGHT:g} and max_people >= 1, got "
            f"{params['image_size']}, {params['max_people']}"
        )

    def write(out_dir: str) -> None:
        _write_split(out_dir, "train", 0, params["num_train"], params)
        _write_split(out_dir, "val", 1, params["num_val"], params)

    return generate_once(
        cache_dir,
        "people",
        params,
        layout=_paths,
        file_counts={"train_images": params["num_train"], "val_images": params["num_val"]},
        write=write,
    )


def config_paths(config) -> dict:
    """`ensure_people_dataset` for a jax_rcnn config (`config.data.people`, `.cache_dir`)."""
    d = config.data
    p = d.people
    return ensure_people_dataset(
        d.cache_dir or None,
        num_train=p.num_train,
        num_val=p.num_val,
        image_size=tuple(p.image_size),
        seed=p.seed,
        max_people=p.max_people,
    )
