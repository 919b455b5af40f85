"""The training loop: Detectron2's `DefaultTrainer` + hooks, as one readable function.

`train(config, workdir)`:

1. **Start**: resume from the newest checkpoint in `<workdir>/checkpoints` when there is one
   (its config and variable shapes are checked first, before anything compiles); otherwise
   Detectron2's initialisation, then `config.model.weights` when set (a model-zoo `.pkl`, an
   MSRA `R-50.pkl` backbone, or a jax_rcnn work dir / checkpoint).
2. **Steps**: batches from `TrainLoader`, the jitted `make_train_step` (key `fold_in(base_key,
   step)`), so a resumed run reproduces an uninterrupted one exactly.
3. **Hooks** (Detectron2's `engine/hooks.py`):
   * every `log_period` iterations, one JSON object per line in `<workdir>/metrics.jsonl`
     (Detectron2's `metrics.json`): `iteration` (0-based), `total_loss` and each loss (median
     over the last `log_period` iterations, like `JSONWriter`), `lr` (latest), `time` and
     `data_time` (median seconds per iteration), `eta_seconds`, `grad_norm`; the same scalars
     as TensorBoard events in `<workdir>/tb/` (tensorboardX, when installed); a progress bar
     (tqdm when installed, else a plain line per log step) with losses, lr, img/s and ETA;
   * a checkpoint every `solver.checkpoint_period` iterations and after the last;
   * COCO evaluation every `test.eval_period` iterations (when > 0) and, whatever the period,
     after the last (`EvalHook`, whose `after_train` evaluates even with `EVAL_PERIOD: 0`),
     `{"iteration", "bbox/AP", "bbox/AP50", ..., "segm/AP", ..., "eval_seconds"}` (RPN-only
     models: Detectron2's box-proposal recall `box_proposals/AR@100`, ..., `AR@1000`) in
     `metrics.jsonl`, and a picture of predictions on a few test images in
     `<workdir>/predictions/iter_<N>.png`;
   * compilation: a persistent XLA cache (`jax_rcnn.compile.setup_compilation_cache`); the
     train-step programs of every padding bucket compiled before the first step (in parallel);
     `compiles`, `compile_seconds`, `compile_cache_hits` (process totals) and
     `train_step_programs` in every `metrics.jsonl` line; with `input.auto_buckets` the buckets
     are chosen for the training images (`training_config`) and logged with their expected
     share of padded pixels;
   * a non-finite loss stops the run with `FloatingPointError` naming the iteration (Detectron2's
     message); nothing is saved, so the last checkpoint on disk is the last good state;
   * SIGTERM (a pre-empted job) saves a checkpoint at the current iteration and returns cleanly.

Scale (`jax_rcnn.training.distributed`, `docs/scaling.md`): the same code runs on one device,
on every device of a host and on every host of a cluster. The state is replicated and each
batch sharded over a `("data",)` mesh of all devices; each host loads its share of the global
batch. Only process 0 writes `metrics.jsonl`, TensorBoard events, the progress bar, pictures and
`config.txt`; every host takes part in checkpoints (orbax) and evaluation (each host runs its
share of the test images, then the detections are gathered so that every host computes the same
AP). In a multi-process run a SIGTERM on any host stops all of them at the same iteration, and
each host's data-iterator state is saved under its process index.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import time
from collections import defaultdict
from typing import Any

import jax
import numpy as np

from jax_rcnn import meta_arch, modeling, visualize
from jax_rcnn.compile import compile_stats, setup_compilation_cache
from jax_rcnn.compile import jit as compile_jit
from jax_rcnn.config import format_config
from jax_rcnn.training import checkpointing, distributed
from jax_rcnn.training.state import LossFn, TrainState, create_train_state, make_train_step

try:
    import tqdm
except ImportError:  # the plain-line fallback
    tqdm = None
try:
    import tensorboardX
except ImportError:  # TensorBoard events are optional
    tensorboardX = None

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
_INIT_KEY, _TRAIN_KEY = 0, 1


def default_loss_fn(config) -> LossFn:
    """`forward_train` of the config's meta-architecture on the training-mode model (BN layers
    update `batch_stats`)."""
    model = modeling.build_model(config, train=True)
    abstract = jax.eval_shape(lambda k: modeling.init_variables(model, k), jax.random.key(0))
    mutable = ("batch_stats",) if "batch_stats" in abstract else ()
    forward_train = meta_arch.get(config).forward_train

    def loss_fn(variables, batch, key):
        return forward_train(model, variables, batch, key, config=config, mutable=mutable)

    return loss_fn


def initial_variables(config) -> dict[str, Any]:
    """Detectron2's initialisation, then `config.model.weights` when set.

    Raises:
      ValueError: the weights do not fit the configured model.
    """
    model = modeling.build_model(config)
    key = jax.random.fold_in(jax.random.key(config.seed), _INIT_KEY)
    variables = compile_jit(lambda k: modeling.init_variables(model, k))(key)
    weights = config.model.weights
    if not weights:
        return variables
    if os.path.isdir(weights):
        loaded = checkpointing.load_variables(weights)
        want = checkpointing.variable_shapes(variables)
        got = checkpointing.variable_shapes(loaded)
        if want != got:
            diff = sorted(set(want.items()) ^ set(got.items()))[:10]
            raise ValueError(
                f"config.model.weights={weights!r} is another model's checkpoint: {diff}"
            )
        logger.info("initialised from the jax_rcnn checkpoint %s", weights)
        return jax.device_put(loaded)
    from jax_rcnn.checkpoint.detectron2 import load_weights

    logger.info("initialised from %s", weights)
    return jax.device_put(load_weights(weights, config, jax.device_get(variables)))


class MetricWriter:
    """`<workdir>/metrics.jsonl` (one JSON object per line) and TensorBoard scalars."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if tensorboardX is not None and jax.process_index() == 0:
            self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        """Appends `{"iteration": iteration, **scalars}` (process 0 only)."""
        if jax.process_index() != 0:
            return
        record = {"iteration": int(iteration), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), int(iteration))
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A tqdm bar (or a plain log line) over iterations, with losses, lr, img/s and ETA."""

    def __init__(self, start: int, total: int, ims_per_batch: int):
        self.total, self.ims = total, ims_per_batch
        self._bar = None
        if tqdm is not None and jax.process_index() == 0:
            self._bar = tqdm.tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)

    def update(self, iteration: int, scalars: dict[str, float], n: int) -> None:
        """Advances by `n` iterations and shows `scalars` (as logged at `iteration`)."""
        sec = scalars.get("time", float("nan"))
        losses = "  ".join(
            f"{k}: {v:.4g}" for k, v in scalars.items() if k.startswith("loss") or k == "total_loss"
        )
        eta = scalars.get("eta_seconds", float("nan"))
        eta_txt = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        text = f"{losses}  lr: {scalars['lr']:.3g}  img/s: {self.ims / sec:.3g}"
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(n)
        else:
            logger.info("eta: %s  iter: %d/%d  %s", eta_txt, iteration + 1, self.total, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _canvas(sizes: np.ndarray, multiple: int = 128) -> tuple[int, int]:
    """Static (H, W) holding every original image of a batch (few distinct shapes compile)."""
    h, w = np.max(sizes, axis=0)
    return int(-(-h // multiple) * multiple), int(-(-w // multiple) * multiple)


def evaluate(
    config,
    variables: dict[str, Any],
    workdir: str | None,
    *,
    iteration: int | None = None,
    num_draw: int = 4,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, dict[str, float]]:
    """COCO evaluation of `variables` on the test split (Detectron2's `inference_on_dataset`).

    Every test image is processed once (padded batches with `example_valid`), boxes and pasted
    masks go to `COCOEvaluator`; the first `num_draw` images' predictions are drawn to
    `<workdir>/predictions/iter_<iteration>.png` (or `predictions.png`).

    Each batch is sharded over `mesh`; `config.test.ims_per_batch` (global) is rounded up to a
    multiple of the device count. With several processes each host evaluates its share of the
    images and the per-image detections are gathered once, so every host returns the AP of the
    whole split, the same as a single process.

    Args:
      config: jax_rcnn config.
      variables: model variables (`params`, `frozen`, `batch_stats`).
      workdir: where results and the picture go (None: nowhere).
      iteration: label of the picture.
      num_draw: test images drawn (by process 0).
      mesh: the data mesh (default `distributed.make_mesh()`: every device).

    Returns:
      `{"bbox": {"AP": ..., "AP50": ..., ...}, "segm": {...}}` (AP in percent; LVIS data:
      LVIS's metrics with `APr`, `APc`, `APf`, from `LVISEvaluator`); for a
      `ProposalNetwork`, `{"box_proposals": {"AR@100", "ARs@100", ..., "AR@1000", ...}}`
      (Detectron2's box-proposal recall, in percent; metrics.jsonl: `box_proposals/AR@100`).
    """
    from jax_rcnn.data.buckets import eval_buckets
    from jax_rcnn.data.loader import dataset_records, eval_batches, eval_plan
    from jax_rcnn.evaluation import programs
    from jax_rcnn.evaluation.build import build_evaluators

    mesh = mesh if mesh is not None else distributed.make_mesh()
    num_devices = mesh.devices.size
    eval_batch = -(-int(config.test.ims_per_batch) // num_devices) * num_devices
    if eval_batch != config.test.ims_per_batch:
        logger.info(
            "evaluating %d images per step (a multiple of %d devices)", eval_batch, num_devices
        )
        config = copy.deepcopy(config)
        config.test.ims_per_batch = eval_batch
    records, meta = dataset_records(config, "test")
    if config.input.auto_buckets and config.input.pad_mode == "buckets":
        config = _with_buckets(config, eval_buckets(config, _sizes(records)), "evaluation")
    model = modeling.build_model(config)
    variables = distributed.replicate(mesh, variables)
    # Every padded shape of the split is known from the records: compile them all from the
    # start, in parallel, in the order the batches use them (the plan's shapes are the same for
    # any number of hosts).
    t0, stats0 = time.perf_counter(), compile_stats()
    planned = list(dict.fromkeys((h, w) for (_, h, w), _ in eval_plan(config, records, 0, 1)))
    infer, num_programs = programs.inference_programs(
        config, model, variables, planned, int(config.test.ims_per_batch), mesh
    )
    paste = programs.paste_program(mesh)
    mask_on = bool(config.model.mask_on)
    main_process = jax.process_index() == 0
    out_dir = None if workdir is None or not main_process else os.path.join(workdir, "inference")
    proposals_only = config.model.meta_architecture == "ProposalNetwork"
    semantic_only = config.model.meta_architecture == "SemanticSegmentor"
    evaluator, panoptic_eval = build_evaluators(
        config, records, meta, output_dir=out_dir, process_count=jax.process_count()
    )
    by_id = {r["image_id"]: r for r in records}
    names = tuple(config.data.class_names) or tuple(meta["thing_classes"])
    drawn = []
    shapes = set()
    for batch in eval_batches(config, records):
        shapes.add(np.shape(batch["image"]))
        inputs = distributed.shard_batch(
            mesh, {k: batch[k] for k in ("image", "image_size", "original_size")}
        )
        out = infer(variables, inputs["image"], inputs["image_size"], inputs["original_size"])
        masks = None
        if mask_on:
            # One static canvas for all hosts: every host must run the same program.
            canvas = _canvas(distributed.host_max(np.max(batch["original_size"], axis=0))[None])
            valid = distributed.to_host_local(mesh, out["valid"])
            masks = paste(out["mask_probs"], out["boxes"], valid, canvas)
        out, masks = distributed.to_host_local(mesh, (out, masks))
        if masks is not None:
            masks = programs.pad_slots(masks, out["valid"].shape[1])
        if semantic_only:
            for b in np.flatnonzero(batch["example_valid"]):
                record = by_id[int(batch["image_id"][b])]
                evaluator.process(_sem_labels(config, batch, out, b), record["sem_seg_file_name"])
            continue
        if proposals_only:
            evaluator.process(
                batch["image_id"],
                out["proposal_boxes"],
                out["objectness_logits"],
                out["valid"],
                example_valid=batch["example_valid"],
            )
            continue  # nothing to draw: proposals have no class
        evaluator.process(
            batch["image_id"],
            out["boxes"],
            out["scores"],
            out["classes"],
            out["valid"],
            masks=masks,
            example_valid=batch["example_valid"],
            keypoints=out.get("keypoints"),
        )
        if panoptic_eval is not None:
            _process_panoptic(panoptic_eval, config, batch, out, masks)
        for b in np.flatnonzero(batch["example_valid"]):
            if len(drawn) >= num_draw or workdir is None or not main_process:
                break
            from PIL import Image

            rgb = np.asarray(
                Image.open(by_id[int(batch["image_id"][b])]["file_name"]).convert("RGB")
            )
            drawn.append(
                visualize.draw_instances(
                    rgb,
                    out["boxes"][b],
                    out["classes"][b],
                    out["scores"][b],
                    None if masks is None else masks[b],
                    valid=out["valid"][b],
                    class_names=names,
                )
            )
    if jax.process_count() > 1:
        gathered = distributed.allgather_json(evaluator.results())
        evaluator.reset()
        for host_records in gathered:
            evaluator.extend(host_records)
    if drawn:
        os.makedirs(os.path.join(workdir, "predictions"), exist_ok=True)
        name = "predictions.png" if iteration is None else f"iter_{iteration:07d}.png"
        visualize.grid(drawn).save(os.path.join(workdir, "predictions", name))
    t1 = time.perf_counter()
    results = evaluator.evaluate()
    if panoptic_eval is not None:
        results.update(panoptic_eval.evaluate())
    stats = compile_stats()
    logger.info(
        "evaluation of %d images: %.1f s (inference %.1f s over %d padded shapes, %s padding, "
        "%d inference programs; %d XLA compiles in %.1f s, %d programs from the persistent "
        "cache; COCO eval %.1f s)",
        len(records),
        time.perf_counter() - t0,
        t1 - t0,
        len(shapes),
        config.input.pad_mode,
        num_programs,
        stats["compiles"] - stats0["compiles"],
        stats["compile_seconds"] - stats0["compile_seconds"],
        stats["cache_hits"] - stats0["cache_hits"],
        time.perf_counter() - t1,
    )
    for task, metrics in results.items():
        logger.info("%s: %s", task, {k: round(v, 3) for k, v in metrics.items() if "-" not in k})
    return results


def _process_panoptic(evaluator, config, batch, out, masks) -> None:
    """Per valid image: semantic post-processing, the combine step, then the evaluator."""
    from jax_rcnn import panoptic

    c = config.model.panoptic_fpn.combine
    for b in np.flatnonzero(batch["example_valid"]):
        h0, w0 = (int(v) for v in batch["original_size"][b])
        labels = _sem_labels(config, batch, out, b)
        valid = np.asarray(out["valid"][b], bool)
        seg, info = panoptic.combine_semantic_and_instances(
            np.asarray(masks[b])[valid][:, :h0, :w0],
            np.asarray(out["scores"][b])[valid],
            np.asarray(out["classes"][b])[valid],
            labels,
            overlap_thresh=c.overlap_thresh,
            stuff_area_thresh=c.stuff_area_limit,
            instances_score_thresh=c.instances_confidence_thresh,
        )
        evaluator.process(int(batch["image_id"][b]), seg, info, labels)


def _sem_labels(config, batch, out, b: int) -> np.ndarray:
    """Image b's semantic argmax `i32[H0, W0]` (`sem_seg_postprocess` of its logits)."""
    from jax_rcnn import semantic

    sem = semantic.sem_seg_postprocess(
        np.asarray(out["sem_seg_logits"][b], np.float32),
        batch["image_size"][b],
        batch["original_size"][b],
        config.model.sem_seg_head.common_stride,
    )
    return np.argmax(sem, axis=0).astype(np.int32)


def _compile_scalars() -> dict[str, float]:
    stats = compile_stats()
    return {
        "compiles": stats["compiles"],
        "compile_seconds": stats["compile_seconds"],
        "compile_cache_hits": stats["cache_hits"],
    }


def _timed_evaluate(config, variables, workdir, **kwargs) -> dict[str, float]:
    """`evaluate`, as the scalars written to metrics.jsonl (AP, eval seconds, compiles)."""
    t0 = time.perf_counter()
    results = evaluate(config, variables, workdir, **kwargs)
    return {
        **_eval_scalars(results),
        "eval_seconds": time.perf_counter() - t0,
        **_compile_scalars(),
    }


def _needs_fed_loss_counts(config) -> bool:
    bh = config.model.get("roi_box_head")
    return bool(bh is not None and bh.get("use_fed_loss", False) and not bh.fed_loss_image_counts)


def with_fed_loss_counts(config, records, meta):
    """A copy of `config` with `model.roi_box_head.fed_loss_image_counts` filled: each class's
    training image count, the json's `image_count` (LVIS; Detectron2's `class_image_count`
    metadata), else counted over `records` (logged).

    Args:
      config: the jax_rcnn config (`use_fed_loss`).
      records: the training records (contiguous `category_id`s).
      meta: their `dataset_records` meta (`class_image_count` for LVIS json).

    Raises:
      ValueError: the counts do not have one entry per class of the model.
    """
    k = config.model.roi_heads.num_classes
    counts = meta.get("class_image_count")
    if counts is None or not np.any(counts):
        counts = np.zeros(k, np.int64)
        for r in records:
            for c in {a["category_id"] for a in r["annotations"]}:
                if 0 <= c < k:
                    counts[c] += 1
        logger.info("federated loss: class image counts counted over %d images", len(records))
    if len(counts) != k:
        raise ValueError(
            f"the federated loss needs one image count per class: the training data has "
            f"{len(counts)} classes, config.model.roi_heads.num_classes = {k}"
        )
    config = copy.deepcopy(config)
    with config.unlocked():
        config.model.roi_box_head.fed_loss_image_counts = tuple(int(x) for x in counts)
    return config


def _check_data_paths(config, splits) -> None:
    """COCO paths (or builtin dataset names) of `splits` exist: a clear error before anything
    compiles, and before hours of training when only the test split is wrong."""
    if config.data.source == "coco":
        from jax_rcnn.data.loader import coco_paths

        for split in splits:
            coco_paths(config, split)


def _used_buckets(config, records) -> tuple[tuple[int, int], ...]:
    """The buckets of `config.input.buckets` that some training image can land in."""
    from jax_rcnn.data.batching import pick_bucket
    from jax_rcnn.data.buckets import resized_shape_weights

    i = config.input
    shapes = resized_shape_weights(
        i.min_size_train,
        i.min_size_train_sampling,
        i.max_size_train,
        [(r["height"], r["width"]) for r in records],
    )
    used = sorted({pick_bucket(h, w, i.buckets) for h, w in shapes})
    return tuple(tuple(int(x) for x in i.buckets[b]) for b in used)


def training_config(config, records=None):
    """The config the training loader pads with: with `input.auto_buckets`, `input.buckets`
    replaced by the buckets chosen for `records` (`jax_rcnn.data.buckets`), pad_mode "buckets".

    Args:
      config: the run's config (evaluation keeps using it as it is).
      records: the training records (their sizes), or None (the resize policy alone).

    Returns:
      `config` itself without `auto_buckets`; otherwise a copy.
    """
    if not config.input.auto_buckets:
        return config
    from jax_rcnn.data.buckets import train_buckets

    choice = train_buckets(config, None if records is None else _sizes(records))
    return _with_buckets(config, choice, "training", policy_only=records is None)


def _sizes(records) -> list[tuple[int, int]]:
    return [(r["height"], r["width"]) for r in records]


def _with_buckets(config, choice, what: str, policy_only: bool = False):
    logger.info(
        "%s buckets (H, W) %s: %d programs (input.max_buckets = %d); expected padded pixels "
        "%.1f %% (%.1f %% with exact per-image padding to a multiple of %d), over %d resized "
        "image shapes%s",
        what,
        list(choice.buckets),
        len(choice.buckets),
        config.input.max_buckets,
        100 * choice.padded_share,
        100 * choice.exact_share,
        config.input.size_divisibility,
        choice.num_shapes,
        " (resize policy only)" if policy_only else "",
    )
    out = copy.deepcopy(config)
    out.input.pad_mode = "buckets"
    out.input.buckets = choice.buckets
    return out


def _eval_scalars(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        f"{task}/{k}": v
        for task, metrics in results.items()
        for k, v in metrics.items()
        if not k.startswith("num_images") and math.isfinite(v)
    }


class _SigtermFlag:
    """Sets `.raised` on SIGTERM while active (main thread only; a no-op elsewhere)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handler(self, signum, frame):
        del signum, frame
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _data_state(loader) -> Any:
    """The loader state to checkpoint: one process's own, or every process's by index."""
    if jax.process_count() == 1:
        return loader.get_state()
    return {"process_states": distributed.allgather_json(loader.get_state())}


def _this_process_data_state(saved: Any) -> Any:
    """This process's loader state from a checkpoint's (`_data_state`).

    `TrainLoader` states are global (the same on every host), so a run may resume on any number
    of processes; a loader whose per-host states differ (a custom one) needs the process count
    it was saved with.
    """
    states = (
        saved["process_states"]
        if isinstance(saved, dict) and "process_states" in saved
        else [saved]
    )
    if all(s == states[0] for s in states) and _is_global_loader_state(states[0]):
        return states[0]
    if len(states) != jax.process_count():
        raise ValueError(
            f"the checkpoint was written by {len(states)} process(es), this run has "
            f"{jax.process_count()}, and its data iterator states are per host: they cannot "
            "resume exactly on another process count"
        )
    return states[jax.process_index()]


def _is_global_loader_state(state: Any) -> bool:
    """A `TrainLoader` state: it plans every global batch, the same on every host."""
    from jax_rcnn.data.loader import STATE_VERSION

    return isinstance(state, dict) and state.get("version") == STATE_VERSION and "queues" in state


def train(
    config,
    workdir: str | os.PathLike,
    *,
    loss_fn: LossFn | None = None,
    train_loader: Any = None,
    variables: dict[str, Any] | None = None,
    final_eval: bool = True,
) -> TrainState:
    """Trains (or resumes training) for `config.solver.max_iter` iterations.

    Evaluates every `test.eval_period` iterations (when > 0) and, like Detectron2's
    `EvalHook.after_train`, after the last iteration whatever the period.

    Args:
      config: validated jax_rcnn config.
      workdir: run directory (checkpoints, metrics.jsonl, tb/, predictions/, inference/).
      loss_fn: `loss_fn(variables, batch, key) -> (losses, aux)`; default `default_loss_fn`.
      train_loader: iterator of batches with `get_state()`/`set_state()`; default
        `TrainLoader` on `dataset_records(config, "train")`.
      variables: initial variables of a fresh run (default `initial_variables(config)`).
      final_eval: evaluate after the last iteration (tests of the loop turn it off).

    Returns:
      The final state (or the state saved on SIGTERM).

    Raises:
      checkpointing.CheckpointMismatchError: the work dir holds another model's checkpoint.
      FloatingPointError: the loss became non-finite (the iteration is named).
    """
    _check_data_paths(config, ("train", "test") if final_eval else ("train",))
    records = None
    if _needs_fed_loss_counts(config):
        if train_loader is not None:
            raise ValueError(
                "roi_box_head.use_fed_loss with a custom train_loader: set "
                "config.model.roi_box_head.fed_loss_image_counts (one training image count per "
                "class)"
            )
        from jax_rcnn.data.loader import dataset_records

        records, meta = dataset_records(config, "train")
        config = with_fed_loss_counts(config, records, meta)
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    setup_compilation_cache(config)  # before anything compiles
    s = config.solver
    mesh = distributed.make_mesh()
    distributed.per_device_batch(s.ims_per_batch, mesh, "config.solver.ims_per_batch")
    ckpt = checkpointing.Checkpointer(workdir, config)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.txt"), "w") as f:
            f.write(format_config(config) + "\n")

    # 1. Start: resume (checked before anything compiles), or initialise.
    if variables is None:
        model = modeling.build_model(config)
        key = jax.random.key(0)
        abstract_vars = jax.eval_shape(lambda k: modeling.init_variables(model, k), key)
    else:
        abstract_vars = jax.eval_shape(lambda: variables)
    abstract_state = jax.eval_shape(lambda v: create_train_state(config, v), abstract_vars)
    repl = distributed.replicated(mesh)
    abstract_state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract_state
    )
    data_state = None
    if ckpt.latest_step() is not None:
        ckpt.check_compatible(abstract_state)
        state, data_state = ckpt.restore(abstract_state)
        data_state = _this_process_data_state(data_state)
        logger.info("resuming from %s/%d", ckpt.directory, int(state.step))
    else:
        init = variables if variables is not None else initial_variables(config)
        state = distributed.replicate(mesh, create_train_state(config, init))
    start = int(state.step)

    buckets = ()  # padded shapes of every training batch, when known: compiled up front
    if train_loader is None:
        from jax_rcnn.data.loader import TrainLoader, dataset_records

        if records is None:
            records = dataset_records(config, "train")[0]
        loader_config = training_config(config, records)
        if loader_config.input.pad_mode == "buckets":
            buckets = _used_buckets(loader_config, records)
        train_loader = TrainLoader(loader_config, records)
    if data_state is not None:
        train_loader.set_state(data_state)

    step_fn = make_train_step(config, loss_fn or default_loss_fn(config), mesh=mesh)
    step_fn = distributed.SyncCompiled(step_fn, "train_step")
    base_key = distributed.replicate(
        mesh, jax.random.fold_in(jax.random.key(config.seed), _TRAIN_KEY)
    )
    pending = []  # the first batch, taken early to learn the batch structure
    if buckets and start < s.max_iter:
        pending.append(next(train_loader))
        example = distributed.shard_batch(mesh, pending[0])
        signatures = []
        for h, w in buckets:
            batch_sig = {
                k: jax.ShapeDtypeStruct(
                    (v.shape[0], h, w, *v.shape[3:]) if k == "image" else v.shape,
                    v.dtype,
                    sharding=v.sharding,
                )
                for k, v in example.items()
            }
            signatures.append((state, batch_sig, base_key))
        t0, before = time.perf_counter(), compile_stats()
        step_fn.precompile(signatures)
        after = compile_stats()
        logger.info(
            "train step: %d programs (buckets %s) ready in %.1f s: %d XLA compiles (%.1f s), "
            "%d loaded from the persistent cache",
            len(buckets),
            list(buckets),
            time.perf_counter() - t0,
            after["compiles"] - before["compiles"],
            after["compile_seconds"] - before["compile_seconds"],
            after["cache_hits"] - before["cache_hits"],
        )
    writer = MetricWriter(workdir)
    progress = Progress(start, s.max_iter, s.ims_per_batch)
    history: dict[str, list[float]] = defaultdict(list)
    eval_period = config.test.eval_period
    last_logged = start - 1
    distributed.barrier("jax_rcnn/train_start")  # hosts restore and initialise at their pace
    try:
        with _SigtermFlag() as sigterm:
            for it in range(start, s.max_iter):
                t0 = time.perf_counter()
                batch = pending.pop() if pending else next(train_loader)
                # Multi-process: all hosts agree on stopping (and on the batch shape) here.
                stop = distributed.sync_step(sigterm.raised, np.shape(batch["image"]))
                batch = distributed.shard_batch(mesh, batch)
                t1 = time.perf_counter()
                state, metrics = step_fn(state, batch, base_key)
                metrics = jax.device_get(metrics)
                if not metrics.pop("finite"):
                    losses = {k: float(v) for k, v in metrics.items() if k.startswith("loss")}
                    raise FloatingPointError(
                        f"Loss became infinite or NaN at iteration={it}!\nloss_dict = {losses}\n"
                        f"Nothing was saved; the last good checkpoint is step "
                        f"{ckpt.latest_step()} in {ckpt.directory}."
                    )
                history["time"].append(time.perf_counter() - t0)
                history["data_time"].append(t1 - t0)
                for k, v in metrics.items():
                    history[k].append(float(v))
                done = it + 1
                if done % config.log_period == 0 or done == s.max_iter:
                    window = config.log_period
                    scalars = {
                        k: float(v[-1] if k == "lr" else np.median(v[-window:]))
                        for k, v in history.items()
                    }
                    scalars["eta_seconds"] = scalars["time"] * (s.max_iter - done)
                    scalars["train_step_programs"] = step_fn.num_programs
                    writer.write(it, {**scalars, **_compile_scalars()})
                    progress.update(it, scalars, it - last_logged)
                    last_logged = it
                    history = defaultdict(list, {k: v[-window:] for k, v in history.items()})
                stop = stop or (jax.process_count() == 1 and sigterm.raised)
                if done % s.checkpoint_period == 0 or done == s.max_iter or stop:
                    ckpt.save(state, _data_state(train_loader))
                if stop:
                    logger.warning("SIGTERM: saved a checkpoint at iteration %d; stopping", done)
                    return state
                periodic = eval_period > 0 and done % eval_period == 0
                if periodic or (done == s.max_iter and (final_eval or eval_period > 0)):
                    scalars = _timed_evaluate(
                        config, state.variables(), workdir, iteration=it, mesh=mesh
                    )
                    writer.write(it, scalars)
    finally:
        progress.close()
        writer.close()
        ckpt.close()
        close = getattr(train_loader, "close", None)
        if close is not None:
            close()
    return state


def evaluate_only(config, workdir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """`train.py --eval_only`: evaluates the work dir's latest checkpoint, else the config's
    initial weights (`config.model.weights`), and appends the result to `metrics.jsonl`."""
    _check_data_paths(config, ("test",))
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    setup_compilation_cache(config)
    step = checkpointing.Checkpointer(workdir, config).latest_step()
    if step is not None:
        variables = checkpointing.load_variables(workdir, step)
        model = modeling.build_model(config)
        want = jax.eval_shape(lambda k: modeling.init_variables(model, k), jax.random.key(0))
        if checkpointing.variable_shapes(variables) != checkpointing.variable_shapes(want):
            raise checkpointing.CheckpointMismatchError(
                f"{workdir}: the checkpoint at step {step} is not of the configured model"
            )
        variables = jax.device_put(variables)
    else:
        variables = initial_variables(config)
    iteration = -1 if step is None else step - 1
    t0 = time.perf_counter()
    results = evaluate(config, variables, workdir, iteration=None if step is None else iteration)
    scalars = {**_eval_scalars(results), "eval_seconds": time.perf_counter() - t0}
    MetricWriter(workdir).write(iteration, {**scalars, **_compile_scalars()})
    return results
