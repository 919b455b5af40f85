"""C4 on a batch of two images of different sizes in Detectron2's exact mode
(`pad_mode = "size_divisibility"`, `size_divisibility = 0`): the host pipeline pads each image to
nothing and the batch to its largest image (`ImageList.from_tensors`), and both the train and the
test path of the C4 Mask R-CNN run on that static shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from jax_rcnn import modeling
from jax_rcnn.config import load_config, validate
from jax_rcnn.data import batching
from jax_rcnn.data.coco import BOX_MODE_XYXY_ABS
from jax_rcnn.meta_arch import rcnn


def _record(image_id: int, shape: tuple[int, int], seed: int) -> dict:
    """An in-memory record with two rectangle instances (polygons = their boxes)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    anns = []
    for x1, y1, x2, y2 in ((5, 6, 40, 50), (w - 45, h - 35, w - 4, h - 3)):
        anns.append(
            {
                "bbox": np.array([x1, y1, x2, y2], np.float32),
                "bbox_mode": BOX_MODE_XYXY_ABS,
                "category_id": image_id % 3,
                "iscrowd": 0,
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
            }
        )
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    return {"image": image, "height": h, "width": w, "image_id": image_id, "annotations": anns}


@pytest.mark.slow  # two compiles of the C4 smoke model: 85 s on the loaded 2-core dev CPU
def test_c4_batch_of_two_sizes_trains_and_infers_in_exact_mode():
    config = load_config("configs/mask_rcnn_R_50_C4_1x.py:smoke")
    with config.unlocked():
        config.input.pad_mode = "size_divisibility"
        config.input.buckets = common.input_config().buckets  # unused in this mode
        config.input.min_size_train = (128,)
        config.input.random_flip = "none"
    validate(config)
    assert config.input.size_divisibility == 0
    records = [_record(1, (100, 130), 0), _record(2, (90, 60), 1)]

    # 100x130 -> 123x160 and 90x60 -> 160x107: each padded to nothing, the batch to 160x160.
    rng = np.random.default_rng(0)
    train = batching.collate([batching.make_train_example(r, config, rng) for r in records])
    test = batching.collate([batching.make_test_example(r, config) for r in records])
    for batch in (train, test):
        assert batch["image"].shape == (2, 160, 160, 3)
        assert batch["image_size"].tolist() == [[123, 160], [160, 107]]
        assert not batch["image"][0, 123:].any() and not batch["image"][1, :, 107:].any()
    assert train["gt_valid"].sum(1).tolist() == [2, 2]

    model = modeling.build_model(config)
    variables = modeling.init_variables(model, jax.random.key(0))
    train_model = modeling.build_model(config, train=True)
    keys = ("image", "image_size", "gt_boxes", "gt_classes", "gt_valid", "gt_masks")
    losses, aux = jax.jit(
        lambda v, b: rcnn.forward_train(train_model, v, b, jax.random.key(1), config=config)
    )(variables, {k: jnp.asarray(train[k]) for k in keys})
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(np.isfinite(float(v)) for v in losses.values())
    # One res4 grid for the batch: ceil(160 / 16) = 10 per side, 15 anchors per position.
    assert aux["rpn_labels"].shape == (2, 10 * 10 * 15)
    assert aux["mask_targets"].shape[-2:] == (14, 14)

    out = jax.jit(lambda v, x, s, o: rcnn.inference(model, v, x, s, o, config=config))(
        variables, test["image"], test["image_size"], test["original_size"]
    )
    d = config.test.detections_per_image
    assert out["boxes"].shape == (2, d, 4) and out["mask_probs"].shape == (2, d, 14, 14)
    for i, (h, w) in enumerate(test["original_size"].tolist()):
        boxes = np.asarray(out["boxes"][i])[np.asarray(out["valid"][i])]
        assert np.all(np.isfinite(boxes)) and np.all(boxes >= 0)
        assert np.all(boxes[:, [2, 3]] <= [w, h])
