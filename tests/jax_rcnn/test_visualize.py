"""Drawing predictions: boxes, labels and mask overlays land where they should."""

import numpy as np

from jax_rcnn import visualize


def test_draw_instances_boxes_masks_and_threshold():
    image = np.zeros((40, 60, 3), np.uint8)
    boxes = np.array([[10, 12, 30, 32], [40, 5, 55, 20], [0, 0, 5, 5]], np.float32)
    masks = np.zeros((3, 48, 64), bool)  # padded beyond the image: cropped
    masks[0, 20:25, 15:20] = True
    out = np.asarray(
        visualize.draw_instances(
            image,
            boxes,
            np.array([0, 1, 2]),
            np.array([0.9, 0.2, 0.8]),
            masks,
            valid=np.array([True, True, False]),
            class_names=("a", "b", "c"),
        )
    )
    assert out.shape == (40, 60, 3)
    color = np.array(visualize.class_color(0))
    np.testing.assert_array_equal(out[22, 10], color)  # left edge of box 0
    overlay = out[22, 17].astype(int)
    assert np.all(np.abs(overlay - 0.45 * color) <= 1)  # mask blended at alpha 0.45
    assert not out[12:20, 45:54].any()  # box 1 below score_thresh: not drawn
    assert not out[1:4, 1:4].any()  # box 2 invalid: not drawn


def test_grid_tiles_images():
    ims = [visualize.draw_instances(np.zeros((10, 20, 3), np.uint8), [], []) for _ in range(5)]
    g = visualize.grid(ims, columns=2, pad=1)
    assert g.size == (2 * 21 + 1, 3 * 11 + 1)


def test_keypoints_and_skeleton_are_drawn_above_the_threshold():
    image = np.zeros((100, 100, 3), np.uint8)
    kps = np.array([[[20, 50, 0.9], [80, 50, 0.9], [50, 90, 0.01]]], np.float32)
    out = np.asarray(
        visualize.draw_instances(
            image,
            np.array([[5, 5, 95, 95]], np.float32),
            np.array([0]),
            np.array([0.9]),
            keypoints=kps,
            skeleton=((0, 1), (1, 2)),
        )
    )
    color = np.array(visualize.class_color(0))
    np.testing.assert_array_equal(out[50, 50], color)  # the line joining keypoints 0 and 1
    assert out[50, 20].sum() > 0 and out[50, 80].sum() > 0  # the two dots
    assert not out[70, 65].any()  # keypoint 2 scores 0.01 <= 0.05: no dot, no line to it
    assert not out[88:93, 48:53].any()
