"""jax_rcnn.data: records, static-shape examples and the grain loaders (host side, NumPy).

`dataset_records(config, split)` -> `TrainLoader(config, records)` (infinite, bucket-grouped,
checkpointable) and `eval_batches(config, records)` (every image once, padded batches).
TFDS datasets (`jax_rcnn.data.tfds_source`) are imported lazily, only for `source = "tfds"`.
"""

from jax_rcnn.data.batching import collate, make_test_example, make_train_example
from jax_rcnn.data.coco import filter_for_training, load_coco_json
from jax_rcnn.data.loader import TrainLoader, dataset_records, eval_batches
from jax_rcnn.data.shapes import ensure_shapes_dataset

__all__ = [
    "TrainLoader",
    "collate",
    "dataset_records",
    "ensure_shapes_dataset",
    "eval_batches",
    "filter_for_training",
    "load_coco_json",
    "make_test_example",
    "make_train_example",
]
