"""Subprocess side of `test_distributed.py` (XLA_FLAGS must be set before JAX starts).

    python -m tests.jax_rcnn.training.distributed_worker parity OUT.json
    python -m tests.jax_rcnn.training.distributed_worker train WORKDIR MAX_ITER [reference]

`parity` (8 forced CPU devices): one train step of the global batch on a 1-device and an
8-device mesh, the same in bf16, and COCO evaluation on 1 and 8 devices; writes the numbers.
`train`: `loop.train` of the smoke config on landscape and portrait images (two buckets); under
`JAX_COORDINATOR_ADDRESS` etc. it is one of several processes, each loading its slice of every
global batch; `reference` makes a single process load the whole global batches itself. Prints the
padded (H, W) of every batch it trained on ("shapes [[H, W], ...]").
"""

from __future__ import annotations

import copy
import json
import os
import sys

import jax
import numpy as np

from jax_rcnn.config import load_config
from jax_rcnn.data.loader import TrainLoader, dataset_records
from jax_rcnn.training import distributed, loop
from jax_rcnn.training.state import create_train_state, make_train_step

NUM_PROCESSES = 2


def smoke_config(name: str = "configs/mask_rcnn_R_50_FPN_1x.py:smoke", ims_per_batch: int = 8):
    config = load_config(name)
    config.unlock()
    config.solver.ims_per_batch = ims_per_batch
    # The smoke config diverges at its own LR (0.01); the warm-up is off so that the first
    # update is not scaled down to nothing.
    config.solver.base_lr = 1e-4
    config.solver.warmup_factor = 1.0
    # A small shapes dataset (generated under $JAX_RCNN_CACHE, set by the test).
    config.data.shapes.num_train = 16
    config.data.shapes.num_val = 16
    return config


def _step(config, variables, batch, mesh):
    state = distributed.replicate(mesh, create_train_state(config, variables))
    key = distributed.replicate(mesh, jax.random.key(1))
    step = make_train_step(config, loop.default_loss_fn(config), mesh=mesh)
    new_state, metrics = step(state, distributed.shard_batch(mesh, batch), key)
    return jax.device_get(new_state.params), jax.device_get(metrics)


def _max_rel(a, b):
    """Max over leaves of |a - b| / |b| (L2 norms; b: the reference)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)))
    return worst


def parity(out_path: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    config = smoke_config()
    records, _ = dataset_records(config, "train")
    with TrainLoader(config, records, shard_index=0, shard_count=1) as loader:
        batch = next(loader)
    variables = jax.device_get(loop.initial_variables(config))
    result = {}
    updates = {}
    for n in (1, 8):
        mesh = distributed.make_mesh(jax.devices()[:n])
        params, metrics = _step(config, variables, batch, mesh)
        updates[n] = jax.tree.map(lambda new, old: new - old, params, variables["params"])
        result[f"metrics_{n}"] = {k: float(v) for k, v in metrics.items()}
    result["update_max_rel_diff"] = _max_rel(updates[8], updates[1])
    try:
        distributed.per_device_batch(12, distributed.make_mesh(), "config.solver.ims_per_batch")
    except ValueError as e:
        result["indivisible_error"] = str(e)
    result["update_max_abs"] = max(float(np.max(np.abs(u))) for u in jax.tree.leaves(updates[1]))

    bf16 = smoke_config()
    bf16.train.compute_dtype = "bfloat16"
    params, metrics = _step(bf16, variables, batch, distributed.make_mesh())
    result["bf16_param_dtypes"] = sorted({str(p.dtype) for p in jax.tree.leaves(params)})
    result["bf16_metrics"] = {k: float(v) for k, v in metrics.items()}
    result["bf16_metric_dtypes"] = sorted({str(np.asarray(v).dtype) for v in metrics.values()})

    # RetinaNet: its loss normaliser counts the foreground anchors of the global batch.
    retina = smoke_config("configs/retinanet_R_50_FPN_1x.py:smoke")
    retina_vars = jax.device_get(loop.initial_variables(retina))
    retina_updates = {}
    for n in (1, 8):
        mesh = distributed.make_mesh(jax.devices()[:n])
        params, metrics = _step(retina, retina_vars, batch, mesh)
        retina_updates[n] = jax.tree.map(lambda a, b: a - b, params, retina_vars["params"])
        result[f"retinanet_metrics_{n}"] = {k: float(v) for k, v in metrics.items()}
    result["retinanet_update_max_rel_diff"] = _max_rel(retina_updates[8], retina_updates[1])

    for n in (1, 8):
        workdir = os.path.join(os.path.dirname(out_path), f"eval_{n}")
        mesh = distributed.make_mesh(jax.devices()[:n])
        results = loop.evaluate(config, variables, workdir, mesh=mesh)
        result[f"eval_{n}"] = results
        with open(os.path.join(workdir, "inference", "coco_instances_results.json")) as f:
            result[f"detections_{n}"] = json.load(f)
    with open(out_path, "w") as f:
        json.dump(result, f)


def two_orientation_records(config) -> list[dict]:
    """The shapes train split twice, at (128, 160) and at (160, 128): both buckets fill."""
    records, _ = dataset_records(config, "train")
    portrait = copy.deepcopy(config)
    portrait.data.shapes.image_size = (160, 128)
    offset = 1 + max(r["image_id"] for r in records)
    extra = dataset_records(portrait, "train")[0]
    return records + [{**r, "image_id": r["image_id"] + offset} for r in extra]


class ShapeLog:
    """A loader that remembers the padded (H, W) of every batch it returned."""

    def __init__(self, loader):
        self.loader, self.shapes = loader, []

    def __next__(self):
        batch = next(self.loader)
        self.shapes.append(list(batch["image"].shape[1:3]))
        return batch

    def get_state(self):
        return self.loader.get_state()

    def set_state(self, state):
        self.loader.set_state(state)

    def close(self):
        self.loader.close()


def train(workdir: str, max_iter: int, reference: bool) -> None:
    distributed.maybe_initialize_distributed()
    config = smoke_config("configs/faster_rcnn_R_50_FPN_1x.py:smoke", ims_per_batch=4)
    config.solver.max_iter = max_iter
    config.solver.checkpoint_period = 2
    config.log_period = 1
    records = two_orientation_records(config)
    # The reference reads the whole global batches on one host; the processes their slices.
    shard = {"shard_index": 0, "shard_count": 1} if reference else {}
    loader = ShapeLog(TrainLoader(config, records, **shard))
    state = loop.train(config, workdir, train_loader=loader, final_eval=False)
    print("shapes", json.dumps(loader.shapes), flush=True)
    print("done", jax.process_index(), int(state.step), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "parity":
        parity(sys.argv[2])
    elif sys.argv[1] == "train":
        train(sys.argv[2], int(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "reference")
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
