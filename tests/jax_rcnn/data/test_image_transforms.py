"""read_image / resize / flip / crop_and_resize against Detectron2 fixtures and worked examples."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jax_rcnn.data import transforms as T

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data")
PHOTO = os.path.join(DATA, "tiny_maskrcnn", "image.jpg")


@pytest.fixture(scope="module")
def geometry():
    return np.load(os.path.join(DATA, "geometry.npz"))


def test_read_image_matches_detectron2(geometry):
    image = T.read_image(PHOTO, "BGR")
    assert image.dtype == np.uint8 and image.shape == (375, 500, 3)
    np.testing.assert_array_equal(image, geometry["resize_src_bgr"])
    np.testing.assert_array_equal(T.read_image(PHOTO, "RGB"), image[:, :, ::-1])


def test_test_resize_is_bit_exact(geometry):
    src = geometry["resize_src_bgr"]
    newh, neww = T.resize_shortest_edge_shape(375, 500, 800, 1333)
    assert (newh, neww) == (800, 1067)
    out = T.resize_image(src, newh, neww)
    expected = np.load(os.path.join(DATA, "tiny_maskrcnn", "inference.npz"))["input_bgr"]
    np.testing.assert_array_equal(out, expected)
    flat = out.astype(np.int64).ravel()
    np.testing.assert_array_equal(
        [flat.sum(), (flat * flat).sum()], geometry["resize_800_1333_checksum"]
    )


def test_antialiased_downscale_is_bit_exact(geometry):
    src = geometry["resize_src_bgr"]
    newh, neww = T.resize_shortest_edge_shape(375, 500, 256, 1333)
    np.testing.assert_array_equal(T.resize_image(src, newh, neww), geometry["resize_256_1333_bgr"])


def test_resize_shape_table(geometry):
    for h, w, short, max_size, newh, neww in geometry["resize_shape_table"]:
        assert T.resize_shortest_edge_shape(h, w, short, max_size) == (newh, neww)


@pytest.mark.parametrize(
    "orientation, expect",
    [
        (1, lambda a: a),
        (2, lambda a: a[:, ::-1]),
        (3, lambda a: a[::-1, ::-1]),
        (4, lambda a: a[::-1]),
        (5, lambda a: a.transpose(1, 0, 2)),
        (6, lambda a: np.rot90(a, -1)),
        (7, lambda a: np.rot90(a, 2).transpose(1, 0, 2)),
        (8, lambda a: np.rot90(a, 1)),
    ],
)
def test_exif_orientation(tmp_path, orientation, expect):
    # Camera JPEG semantics: orientation 6 = the stored pixels must be rotated 90 deg clockwise.
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[274] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(rgb).save(path, exif=exif)
    out = T.read_image(path, "RGB")
    np.testing.assert_array_equal(out, expect(rgb))


def test_modes_become_three_channels_bgr(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = T.read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10  # red, nearly transparent: alpha is dropped
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(T.read_image(tmp_path / "a.png")[0, 0], [0, 0, 255])

    pal = Image.new("P", (2, 2))
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    out = T.read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 1], [30, 20, 10])
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        T.read_image(tmp_path / "nope.jpg")
    with open(PHOTO, "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated.jpg"):
        T.read_image(truncated)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not a jpeg at all" * 10)
    with pytest.raises(ValueError, match="garbage.jpg"):
        T.read_image(garbage)


def test_sample_short_edge():
    rng = np.random.default_rng(0)
    sizes = (640, 672, 704, 736, 768, 800)
    draws = [T.sample_short_edge(rng, sizes, "choice") for _ in range(300)]
    assert set(draws) == set(sizes)
    draws = [T.sample_short_edge(rng, (10, 12), "range") for _ in range(100)]
    assert set(draws) == {10, 11, 12}
    assert T.sample_short_edge(rng, (800,), "choice") == 800
    a = [T.sample_short_edge(np.random.default_rng(5), sizes) for _ in range(3)]
    b = [T.sample_short_edge(np.random.default_rng(5), sizes) for _ in range(3)]
    assert a == b
    with pytest.raises(ValueError, match="range"):
        T.sample_short_edge(rng, (1, 2, 3), "range")
    with pytest.raises(ValueError, match="choice"):
        T.sample_short_edge(rng, sizes, "relative_range")


def test_flip_and_scale_worked_examples():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(T.hflip_boxes(boxes, 100), [[70.0, 20.0, 90.0, 60.0]])
    np.testing.assert_allclose(T.scale_boxes(boxes, 2.0, 0.5), [[20.0, 10.0, 60.0, 30.0]])
    poly = [[10.0, 20.0, 30.0, 20.0, 30.0, 60.0]]
    np.testing.assert_allclose(T.hflip_polygons(poly, 100)[0], [90, 20, 70, 20, 70, 60])
    np.testing.assert_allclose(T.scale_polygons(poly, 2.0, 0.5)[0], [20, 10, 60, 10, 60, 30])
    img = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    np.testing.assert_array_equal(T.hflip_image(img), img[:, ::-1])
    masks = np.array([[[1, 0, 0]]], bool)
    np.testing.assert_array_equal(T.hflip_masks(masks), [[[0, 0, 1]]])


def test_resize_masks_nearest():
    m = np.zeros((1, 4, 4), bool)
    m[0, :2, :2] = True
    out = T.resize_masks(m, 8, 8)
    assert out.dtype == bool and out.shape == (1, 8, 8)
    np.testing.assert_array_equal(out[0], np.kron(m[0], np.ones((2, 2), bool)))


def test_crop_and_resize_matches_detectron2(geometry):
    masks, boxes = geometry["crop_masks"], geometry["crop_boxes"]
    out = np.stack([T.crop_and_resize_mask(m, b, 28) for m, b in zip(masks, boxes, strict=True)])
    np.testing.assert_array_equal(out, geometry["crop_targets_28"])


def test_roi_align_mask_worked_example():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    # The 2x2 box exactly on the square: every bin samples the inside of the square.
    np.testing.assert_allclose(T.roi_align_mask(mask, [1, 1, 3, 3], 2), np.ones((2, 2)))
    # A box twice as large: the square covers the centre, bins see a quarter of it each.
    np.testing.assert_allclose(T.roi_align_mask(mask, [0, 0, 4, 4], 2), np.full((2, 2), 0.25))
    np.testing.assert_allclose(T.roi_align_mask(mask, [1, 1, 1, 3], 2), np.zeros((2, 2)))
