"""TFDS source: a mocked `coco/2017` split becomes COCO records the loader and evaluator read."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip(
    "tensorflow_datasets", reason='TFDS source needs the `tfds` extra: pip install -e ".[tfds]"'
)
tf = pytest.importorskip("tensorflow", reason="TFDS mocking needs tensorflow")

from jax_rcnn.data import tfds_source  # noqa: E402

_SIZES = ((30, 40), (40, 30), (24, 24))


def _examples():
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate(_SIZES):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG")
        n = i  # the first image has no objects
        y0, x0 = rng.uniform(0, 0.4, n), rng.uniform(0, 0.4, n)
        bbox = np.stack([y0, x0, y0 + 0.5, x0 + 0.5], -1).astype(np.float32).reshape(n, 4)
        out.append(
            {
                "image": buffer.getvalue(),
                "image/filename": f"{i}.jpg",
                "image/id": np.int64(1000 + i),
                "objects": {
                    "id": np.arange(n, dtype=np.int64),
                    "area": np.full(n, 99, np.int64),
                    "bbox": bbox,
                    "label": np.arange(n, dtype=np.int64) + 5,
                    "is_crowd": np.arange(n) == 1,
                },
            }
        )
    return out


def _as_dataset(self, *args, **kwargs):
    # The structure builder.as_dataset returns with decoders={"image": SkipDecoding()}.
    examples = _examples()
    spec = {
        "image": tf.TensorSpec((), tf.string),
        "image/filename": tf.TensorSpec((), tf.string),
        "image/id": tf.TensorSpec((), tf.int64),
        "objects": {
            "id": tf.TensorSpec((None,), tf.int64),
            "area": tf.TensorSpec((None,), tf.int64),
            "bbox": tf.TensorSpec((None, 4), tf.float32),
            "label": tf.TensorSpec((None,), tf.int64),
            "is_crowd": tf.TensorSpec((None,), tf.bool),
        },
    }
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def test_missing_tfds_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorflow_datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]"'):
        tfds_source.import_tfds()


def test_coco_2017_as_records(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
        records, meta = tfds_source.load_tfds_records(
            "coco/2017", "validation", cache_dir=str(tmp_path)
        )
    assert [r["image_id"] for r in records] == [1000, 1001, 1002]
    assert [(r["height"], r["width"]) for r in records] == list(_SIZES)
    # Names come from TFDS's metadata (the mock without metadata files has "0".."79").
    assert len(meta["thing_classes"]) == 80
    # Official COCO category ids: label 5 ("bus") is id 6, label 6 ("train") id 7.
    assert meta["thing_dataset_id_to_contiguous_id"][6] == 5
    gt = json.loads(open(meta["json_file"]).read())
    assert sorted(a["category_id"] for a in gt["annotations"]) == [6, 6, 7]
    ex = _examples()[2]
    anns = records[2]["annotations"]
    assert [a["category_id"] for a in anns] == [5, 6] and [a["iscrowd"] for a in anns] == [0, 1]
    h, w = _SIZES[2]
    expected = ex["objects"]["bbox"][:, [1, 0, 3, 2]] * [w, h, w, h]
    np.testing.assert_allclose([a["bbox"] for a in anns], expected, atol=1e-4)
    assert "segmentation" not in anns[0]  # TFDS coco/2017 is box-only
    # The image files are TFDS's bytes, unchanged.
    with open(records[1]["file_name"], "rb") as f:
        assert f.read() == _examples()[1]["image"]
    # A second call reuses the export without TFDS reading anything.
    with tfds.testing.mock_data(as_dataset_fn=lambda *a, **k: 1 / 0):
        again, _ = tfds_source.load_tfds_records("coco/2017", "validation", cache_dir=tmp_path)
    assert [r["file_name"] for r in again] == [r["file_name"] for r in records]


def test_loader_reads_tfds_source(tmp_path):
    from configs import common
    from jax_rcnn.data import loader

    config = common.base_config(mask_on=False)  # TFDS coco/2017 has no masks
    common.smoke(config)
    config.data.source, config.data.cache_dir = "tfds", str(tmp_path)
    config.input.buckets = ((160, 160),)
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
        records, _ = loader.dataset_records(config, "train")
    assert [r["image_id"] for r in records] == [1001, 1002]  # the image without objects is out
    batch = next(loader.TrainLoader(config, records, shard_index=0, shard_count=1))
    assert batch["gt_valid"].sum() == 2  # 1 + 2 instances minus the crowd one
