"""Image decoding and the geometric input transforms of Detectron2 (host-side NumPy + PIL).

Parity: reproduces `detectron2/data/detection_utils.py:read_image` (PIL decode, EXIF orientation
as in `_apply_exif_orientation`, conversion to RGB then channel flip to BGR),
`data/transforms/augmentation_impl.py:ResizeShortestEdge` (output shape, rounding `int(x + 0.5)`,
"choice" / "range" short-edge sampling), `data/transforms/transform.py:ResizeTransform` (PIL
bilinear on uint8 images, PIL nearest on masks, coordinates scaled by `new / old`) and
`HFlipTransform` (`x -> W - x`). `crop_and_resize_mask` is `structures/masks.py:BitMasks.
crop_and_resize` (ROIAlign `aligned=True`, adaptive sampling, then `>= 0.5`); `roi_align_mask`
computes that ROIAlign in float64 with separable bilinear taps instead of torchvision's float32
loop (bit-equal on the fixture; a value within ~1e-7 of 0.5 could in principle round the other
way).

Deviation: randomness comes from an explicit `numpy.random.Generator` (Detectron2 uses the
global `np.random` state), so the augmentation draws differ from Detectron2's run by run but
follow the same distributions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

# EXIF tag 0x0112 (Orientation) -> the PIL transpose that undoes it (Detectron2's table).
_EXIF_ORIENTATION_TAG = 274
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotates/flips a PIL image as its EXIF Orientation tag says (no-op without one)."""
    try:
        exif = image.getexif()
    except Exception:  # noqa: BLE001 -- broken EXIF blocks are ignored, as in Detectron2
        return image
    method = _EXIF_TRANSPOSE.get(exif.get(_EXIF_ORIENTATION_TAG)) if exif else None
    return image.transpose(method) if method is not None else image


def read_image(path: str | os.PathLike, format: str = "BGR") -> np.ndarray:
    """Decodes an image file like Detectron2's `read_image`.

    Grayscale, palette, CMYK and RGBA images are converted to 3 channels with PIL's
    `convert("RGB")` (alpha is dropped, not composited), exactly as Detectron2 does.

    Args:
        path: image file (JPEG, PNG, ... anything PIL decodes).
        format: "BGR" (Detectron2's INPUT.FORMAT default) or "RGB".

    Returns:
        u8[H, W, 3] in `format` channel order, EXIF orientation applied.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file cannot be decoded (corrupt or truncated; the message names it),
            or `format` is not "BGR"/"RGB".
    """
    if format not in ("BGR", "RGB"):
        raise ValueError(f"read_image: format must be 'BGR' or 'RGB', got {format!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as pil:
            pil = _apply_exif_orientation(pil)
            array = np.asarray(pil.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image file {path}: {e}") from e
    if format == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def resize_shortest_edge_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) of Detectron2's `ResizeShortestEdge.get_output_shape`.

    Scales the short side to `short_edge`, then shrinks so the long side is at most
    `max_size`, rounding each side with `int(x + 0.5)`.

    Example: (375, 500, 800, 1333) -> (800, 1067); (100, 1000, 800, 1333) -> (133, 1333).
    """
    size = float(short_edge)
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def sample_short_edge(rng: np.random.Generator, min_sizes, sampling: str = "choice") -> int:
    """Draws the training short-edge length like `ResizeShortestEdge.get_transform`.

    Args:
        rng: the example's generator.
        min_sizes: `config.input.min_size_train`, a sequence of ints (or one int).
        sampling: "choice" (uniform over `min_sizes`) or "range" (uniform integer in
            `[min_sizes[0], min_sizes[1]]`, both ends included).

    Returns:
        The short-edge length in pixels.
    """
    sizes = (int(min_sizes),) if np.isscalar(min_sizes) else tuple(int(s) for s in min_sizes)
    if sampling == "choice":
        return sizes[int(rng.integers(len(sizes)))] if len(sizes) > 1 else sizes[0]
    if sampling == "range":
        if len(sizes) != 2:
            raise ValueError(f"min_size_train_sampling='range' needs 2 sizes, got {sizes}")
        return int(rng.integers(sizes[0], sizes[1] + 1))
    raise ValueError(f"min_size_train_sampling must be 'choice' or 'range', got {sampling!r}")


def resize_image(image: np.ndarray, newh: int, neww: int) -> np.ndarray:
    """Resizes a uint8 image with PIL bilinear, bit-exact with Detectron2's `ResizeTransform`.

    PIL's bilinear filter is antialiased on down-scaling (its support grows with the scale),
    which a plain bilinear interpolation does not reproduce.

    Args:
        image: u8[H, W, 3] (or u8[H, W]).
        newh: output height.
        neww: output width.

    Returns:
        u8[newh, neww, 3] (or u8[newh, neww]).
    """
    if image.dtype != np.uint8:
        raise ValueError(f"resize_image expects uint8, got {image.dtype}")
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((neww, newh), Image.Resampling.BILINEAR))


def resize_masks(masks: np.ndarray, newh: int, neww: int) -> np.ndarray:
    """Resizes binary masks with PIL nearest, one mask at a time (Detectron2's bitmask path).

    Args:
        masks: bool/u8[N, H, W].
        newh: output height.
        neww: output width.

    Returns:
        bool[N, newh, neww].
    """
    out = np.zeros((len(masks), newh, neww), dtype=bool)
    for i, m in enumerate(masks):
        pil = Image.fromarray(np.ascontiguousarray(m, dtype=np.uint8))
        out[i] = np.asarray(pil.resize((neww, newh), Image.Resampling.NEAREST)) > 0
    return out


def scale_boxes(boxes: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Scales f[N, 4] xyxy boxes (ResizeTransform.apply_box: x * new_w / w, y * new_h / h)."""
    return np.asarray(boxes, np.float64) * np.array([scale_x, scale_y, scale_x, scale_y])


def scale_polygons(polygons: list, scale_x: float, scale_y: float) -> list[np.ndarray]:
    """Scales one instance's polygons, each a flat [x0, y0, x1, y1, ...] list -> f64[2V]."""
    out = []
    for p in polygons:
        q = np.asarray(p, np.float64).reshape(-1, 2) * np.array([scale_x, scale_y])
        out.append(q.reshape(-1))
    return out


def hflip_image(image: np.ndarray) -> np.ndarray:
    """Mirrors a u8[H, W, C] image left-right."""
    return np.ascontiguousarray(image[:, ::-1])


def hflip_masks(masks: np.ndarray) -> np.ndarray:
    """Mirrors bool[N, H, W] masks left-right."""
    return np.ascontiguousarray(masks[:, :, ::-1])


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirrors f[N, 4] xyxy boxes in an image of `width`: [W - x2, y1, W - x1, y2]."""
    boxes = np.asarray(boxes, np.float64)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1)


def hflip_polygons(polygons: list, width: float) -> list[np.ndarray]:
    """Mirrors one instance's flat polygons: x -> W - x (HFlipTransform.apply_coords)."""
    out = []
    for p in polygons:
        q = np.array(p, np.float64).reshape(-1, 2)
        q[:, 0] = width - q[:, 0]
        out.append(q.reshape(-1))
    return out


def transform_keypoints(
    keypoints: np.ndarray,
    scale_x: float,
    scale_y: float,
    new_size: tuple[int, int],
    flip: bool = False,
    hflip_indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Detectron2's `transform_keypoint_annotations` for ResizeShortestEdge (+ HFlip).

    x, y are scaled by (scale_x, scale_y) in float64 (and mirrored, `x -> w - x`, when
    `flip`); a keypoint outside `[0, w] x [0, h]` (inclusive) gets v = 0; with a flip the
    keypoints are permuted by `hflip_indices` (left <-> right); finally every keypoint with
    v = 0 becomes (0, 0, 0).

    Args:
        keypoints: `f32[N, K, 3]` (x, y, v) in the original image.
        scale_x: new_w / old_w.
        scale_y: new_h / old_h.
        new_size: (h, w) of the resized image.
        flip: horizontal flip after the resize.
        hflip_indices: K ints (`coco.keypoint_hflip_indices`); required with `flip`.

    Returns:
        `f32[N, K, 3]`.
    """
    kps = np.asarray(keypoints, np.float64).copy()
    h, w = new_size
    x = kps[..., 0] * scale_x
    y = kps[..., 1] * scale_y
    if flip:
        x = w - x
    inside = (x >= 0) & (y >= 0) & (x <= w) & (y <= h)
    kps[..., 0], kps[..., 1] = x, y
    kps[..., 2] = np.where(inside, kps[..., 2], 0)
    if flip:
        if hflip_indices is None:
            raise ValueError("cannot flip keypoints without flip indices (keypoint_flip_map)")
        if len(hflip_indices) != kps.shape[-2]:
            raise ValueError(
                f"keypoints have {kps.shape[-2]} points but the flip indices {len(hflip_indices)}"
            )
        kps = kps[..., np.asarray(hflip_indices, np.int64), :]
    kps[kps[..., 2] == 0] = 0
    return kps.astype(np.float32)


def _roi_align_samples(start: float, length: float, size: int, limit: int):
    """One axis of ROIAlign(aligned=True, sampling_ratio=0): bilinear taps of every sample.

    Output bin i averages `grid = ceil(length / size)` samples; sample k of bin i reads
    indices `low[i, k]`, `high[i, k]` with weights `w_low[i, k]`, `w_high[i, k]` (already
    divided by `grid`), following torchvision's border rules: a sample beyond [-1, limit]
    contributes 0, coordinates are clamped to [0, limit - 1].

    Returns:
        (low, high, w_low, w_high), each [size, grid] (grid 0 for an empty box).
    """
    grid = max(int(np.ceil(length / size)), 0)
    bin_size = length / size
    offsets = (np.arange(grid) + 0.5) * bin_size / max(grid, 1)
    coords = start + np.arange(size)[:, None] * bin_size + offsets[None, :]  # [size, grid]
    inside = (coords >= -1.0) & (coords <= limit)
    c = np.maximum(coords, 0.0)
    low = np.minimum(np.floor(c).astype(np.int64), limit - 1)
    at_edge = low >= limit - 1
    high = np.where(at_edge, low, low + 1)
    frac = np.where(at_edge, 0.0, c - low)
    scale = inside / max(grid, 1)
    low, high = np.where(inside, low, 0), np.where(inside, high, 0)
    return low, high, (1.0 - frac) * scale, frac * scale


def roi_align_mask(mask: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """ROIAlign(aligned=True, sampling_ratio=0) of one single-channel map over one box.

    The box is shifted by -0.5 px (aligned=True) and each of the size x size bins averages
    `ceil(box_side / size)` bilinear samples per axis, with torchvision's border rules. The
    bilinear weights are separable, so rows are pooled first, then columns.

    Args:
        mask: bool/u8/float[H, W] map (a full-image bitmask, or any 2-D map).
        box: f[4] xyxy, abs px, in the map's frame.
        size: output side M.

    Returns:
        f64[M, M] pooled values (for a bitmask: the coverage in [0, 1]).
    """
    h, w = mask.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    ylo, yhi, wylo, wyhi = _roi_align_samples(y1 - 0.5, y2 - y1, size, h)
    xlo, xhi, wxlo, wxhi = _roi_align_samples(x1 - 0.5, x2 - x1, size, w)
    if ylo.shape[1] == 0 or xlo.shape[1] == 0:
        return np.zeros((size, size), np.float64)
    c0, c1 = int(min(xlo.min(), xhi.min())), int(max(xlo.max(), xhi.max())) + 1
    cols = np.asarray(mask[:, c0:c1])
    rows = (wylo[..., None] * cols[ylo] + wyhi[..., None] * cols[yhi]).sum(1)  # [M, Wc]
    xlo, xhi = xlo - c0, xhi - c0
    return (rows[:, xlo] * wxlo + rows[:, xhi] * wxhi).sum(-1)


def crop_and_resize_mask(mask: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Detectron2's `BitMasks.crop_and_resize` for one mask and one box.

    Args:
        mask: bool/u8[H, W] full-image mask.
        box: f[4] xyxy, abs px, in the mask's frame.
        size: output side M.

    Returns:
        bool[M, M] = `roi_align_mask(mask, box, M) >= 0.5`.
    """
    # Exact ties (0.5 by construction, e.g. a bin half outside the image) must count as
    # foreground as in torchvision; float64 summation order can leave them at 0.5 - 1e-16.
    return roi_align_mask(mask, box, size) >= 0.5 - 1e-9


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """Validates a Predictor input: a non-empty `u8[H, W, 3]` array (BGR).

    Raises:
      TypeError / ValueError naming the problem (grayscale, RGBA, wrong dtype, empty).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy u8[H, W, 3] BGR array, got {type(image)}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"{name}: expected dtype uint8 (0..255 BGR, as cv2.imread gives), got {image.dtype}"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise ValueError(
            f"{name}: grayscale image of shape {image.shape}; convert it to 3 channels (BGR) "
            "first, e.g. np.repeat(img[..., None], 3, axis=-1)"
        )
    if image.ndim == 3 and image.shape[2] == 4:
        raise ValueError(f"{name}: 4-channel (RGBA/BGRA) image; drop the alpha channel first")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected shape [H, W, 3], got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    return image
