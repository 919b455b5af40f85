"""Drawing detections with PIL: boxes, class names, scores, mask overlays, keypoint skeletons,
panoptic segments.

Used by the training loop (a picture of predictions on a few validation images after each
evaluation) and by `jax_rcnn.demo`. Host side: NumPy and PIL only.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KEYPOINT_THRESHOLD = 0.05  # Detectron2's `Visualizer._KEYPOINT_THRESHOLD`


def class_color(class_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread RGB colour per class (golden-ratio hues)."""
    h = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    *,
    valid: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    score_thresh: float = 0.5,
    mask_alpha: float = 0.45,
    keypoints: np.ndarray | None = None,
    skeleton: Sequence[tuple[int, int]] = (),
    keypoint_thresh: float = KEYPOINT_THRESHOLD,
) -> Image.Image:
    """Draws one image's instances.

    Args:
      image: u8[H, W, 3] RGB.
      boxes: f32[D, 4] xyxy, abs px in `image`'s frame.
      classes: i32[D] contiguous class ids.
      scores: f32[D] or None (ground truth: drawn without scores, no threshold).
      masks: bool[D, H', W'] full-image masks with H' >= H, W' >= W (cropped), or None.
      valid: bool[D]; default all valid.
      class_names: names by class id (ids shown when empty).
      score_thresh: instances scoring below are not drawn.
      mask_alpha: opacity of mask overlays.
      keypoints: f32[D, K, 3] (x, y, score) in `image`'s frame, or None.
      skeleton: 0-based (i, j) keypoint pairs joined by a line when both are drawn.
      keypoint_thresh: keypoints scoring at most this are not drawn (Detectron2's
        `Visualizer` threshold 0.05).

    Returns:
      An RGB `PIL.Image`, larger instances drawn first so small ones stay visible.
    """
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    keep = np.ones(len(boxes), bool) if valid is None else np.asarray(valid, bool).copy()
    if scores is not None:
        scores = np.asarray(scores, np.float32).reshape(-1)
        keep &= scores >= score_thresh
    idx = np.flatnonzero(keep)
    areas = (boxes[idx, 2] - boxes[idx, 0]) * (boxes[idx, 3] - boxes[idx, 1])
    idx = idx[np.argsort(-areas, kind="stable")]

    canvas = image.astype(np.float32)
    if masks is not None:
        masks = np.asarray(masks)
        for i in idx:
            m = masks[i, :h, :w].astype(bool)
            color = np.asarray(class_color(int(classes[i])), np.float32)
            canvas[m] = canvas[m] * (1 - mask_alpha) + color * mask_alpha
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for i in idx:
        c = int(classes[i])
        color = class_color(c)
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color, width=max(1, round(min(h, w) / 200)))
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        label = name if scores is None else f"{name} {scores[i]:.0%}"
        tx, ty = x1, max(0.0, y1 - 11)
        left, top, right, bottom = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=color)
        draw.text((tx, ty), label, fill=(0, 0, 0), font=font)
    if keypoints is not None:
        radius = max(1.5, min(h, w) / 250)
        for i in idx:
            _draw_keypoints(draw, np.asarray(keypoints[i], np.float32), skeleton, keypoint_thresh,
                            class_color(int(classes[i])), radius)  # fmt: skip
    return out


def draw_panoptic(
    image: np.ndarray,
    panoptic_seg: np.ndarray,
    segments_info: Sequence[dict],
    *,
    stuff_names: Sequence[str] = (),
    alpha: float = 0.5,
) -> Image.Image:
    """Draws a panoptic segmentation: every segment filled with its category's colour (things
    and stuff from separate palettes), stuff names at their segments' centres.

    Args:
      image: u8[H, W, 3] RGB.
      panoptic_seg: i32[H, W] segment ids (0 = void, left as is).
      segments_info: Detectron2's list (`id`, `isthing`, `category_id`).
      stuff_names: names by semantic label (0 = "things").
      alpha: opacity of the fills.

    Returns:
      An RGB `PIL.Image` (draw the things' boxes on it with `draw_instances(masks=None)`).
    """
    canvas = np.asarray(image, np.uint8).astype(np.float32)
    labels = []
    for seg in segments_info:
        m = np.asarray(panoptic_seg) == seg["id"]
        if not m.any():
            continue
        c = int(seg["category_id"])
        color = np.asarray(class_color(c if seg["isthing"] else 1000 + c), np.float32)
        canvas[m] = canvas[m] * (1 - alpha) + color * alpha
        if not seg["isthing"]:
            ys, xs = np.nonzero(m)
            name = stuff_names[c] if 0 <= c < len(stuff_names) else f"stuff {c}"
            labels.append((float(xs.mean()), float(ys.mean()), name))
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for x, y, name in labels:
        draw.text((x, y), name, fill=(255, 255, 255), font=font, anchor="mm")
    return out


def _draw_keypoints(draw, kps, skeleton, thresh, color, radius) -> None:
    """One instance's skeleton lines, then its keypoints as dots (score > thresh only)."""
    shown = kps[:, 2] > thresh
    for a, b in skeleton:
        if a < len(kps) and b < len(kps) and shown[a] and shown[b]:
            draw.line(
                [tuple(kps[a, :2]), tuple(kps[b, :2])], fill=color, width=max(1, round(radius))
            )
    for x, y in kps[shown, :2]:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255),
                     outline=color)  # fmt: skip


def grid(images: Sequence[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Tiles images (any sizes) row by row on a white canvas."""
    if not images:
        raise ValueError("grid: no images")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cw = max(im.width for im in images)
    ch = max(im.height for im in images)
    out = Image.new("RGB", (columns * (cw + pad) + pad, rows * (ch + pad) + pad), "white")
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        out.paste(im, (pad + c * (cw + pad), pad + r * (ch + pad)))
    return out
