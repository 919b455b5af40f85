"""Detectron2's combine step on hand-made instances: score order and stop, empty masks, the
overlap threshold, the remaining-pixels assignment and the stuff area limit."""

import numpy as np

from jax_rcnn import panoptic


def _mask(rows, cols, shape=(4, 6)):
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def test_combine_worked_example():
    masks = np.stack(
        [
            _mask(slice(0, 2), slice(0, 2)),  # 4 px, 2 taken: exactly 0.5 is kept; last
            _mask(slice(0, 2), slice(1, 4)),  # 6 px, score 0.9: first
            _mask(slice(0, 2), slice(0, 4)),  # 8 px, 6 taken (0.75 > 0.5): skipped (3rd)
            np.zeros((4, 6), bool),  # empty, score 0.8: skipped
            _mask(slice(2, 4), slice(0, 1)),  # score 0.4 < 0.5: the loop stops here
        ]
    )
    scores = np.array([0.6, 0.9, 0.7, 0.8, 0.4], np.float32)
    classes = np.array([3, 1, 2, 0, 0])
    semantic = np.zeros((4, 6), np.int32)
    semantic[2:, :3] = 2  # 6 px of stuff 2: kept (>= 5)
    semantic[2:, 3:] = 1  # 6 px of stuff 1 ...
    semantic[0, 5] = 1  # ... plus an unassigned pixel on row 0: 7 px
    seg, info = panoptic.combine_semantic_and_instances(
        masks, scores, classes, semantic,
        overlap_thresh=0.5, stuff_area_thresh=5, instances_score_thresh=0.5,
    )  # fmt: skip
    want = np.array(
        [
            [2, 1, 1, 1, 0, 3],
            [2, 1, 1, 1, 0, 0],
            [4, 4, 4, 3, 3, 3],
            [4, 4, 4, 3, 3, 3],
        ]
    )
    np.testing.assert_array_equal(seg, want)
    assert [(s["id"], s["isthing"], s["category_id"]) for s in info] == [
        (1, True, 1),
        (2, True, 3),
        (3, False, 1),
        (4, False, 2),
    ]
    assert [s.get("instance_id") for s in info[:2]] == [1, 0]
    assert [s.get("area") for s in info[2:]] == [7, 6]
    # the kept instance 0 only gets its pixels not already taken (column 0)
    seg_hi, _ = panoptic.combine_semantic_and_instances(
        masks, scores, classes, semantic,
        overlap_thresh=0.5, stuff_area_thresh=7, instances_score_thresh=0.5,
    )  # fmt: skip
    assert (seg_hi == 4).sum() == 0 and (seg_hi == 3).sum() == 7  # stuff 2 (6 px) dropped
