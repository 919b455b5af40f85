"""The compiled programs of an evaluation: inference over every padded shape, mask pasting.

Evaluation knows every padded image shape of the split before it runs (`data.loader.eval_plan`)
and compiles them all up front, in parallel. With Detectron2's exact padding a split has many
shapes (300 images of 256-400 px at short side 320: 13), and the whole R-CNN inference program
took ~8 s per shape to compile on the 2-core dev CPU, two thirds of it the ROI heads, which do
not care about the image shape. So an R-CNN model (a meta-architecture with `inference_front`
and `inference_heads`) is compiled as two programs:

* `front` per padded shape: backbone, RPN, proposals; its features edge-padded to the largest
  padded shape of the split (`meta_arch.common.edge_pad_features`);
* `heads` once: the ROI heads (boxes, masks, keypoints) on those canvas-sized features.

Same detections as the one-program `inference` (ROIAlign's border clamp is reproduced by the
edge padding; equal up to float32 rounding, tested). Other meta-architectures compile their
`inference` per shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from jax_rcnn import masks as mask_ops
from jax_rcnn import meta_arch
from jax_rcnn.compile import jit as compile_jit
from jax_rcnn.meta_arch.common import edge_pad_features
from jax_rcnn.training import distributed

PASTE_SLOT_SIZES = (16, 32, 64)
"""Detection slots pasted: the first n (valid detections come first) for the smallest n here,
or all D, that holds every valid detection of the batch."""


def _without_heatmaps(out: dict) -> dict:
    """Inference outputs less the keypoint heatmap logits (`f32[B, D, K, 56, 56]`, ~21 MB per
    image), which evaluation does not read."""
    return {k: v for k, v in out.items() if k != "keypoint_heatmaps"}


def _compile(work: list[tuple[distributed.SyncCompiled, list[tuple]]]) -> None:
    """Starts compiling every program of `work` (`(function, signatures)` pairs, in the order
    they will run). One process: in background threads, so the first images run while later
    shapes compile (a call waits for its own program). Several processes: all compiled ahead,
    then a barrier (`distributed.precompile_all`)."""
    if jax.process_count() > 1:
        distributed.precompile_all(work)
        return
    pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
    for fn, signatures in work:
        fn.compile_in_background(signatures, pool)
    pool.shutdown(wait=False)


def _spec(struct, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=sharding)


def inference_programs(
    config,
    model: Any,
    variables: dict[str, Any],
    shapes: list[tuple[int, int]],
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> tuple[Callable[..., dict[str, jax.Array]], int]:
    """Inference for every padded shape of a split, every program compiling from the start
    (`_compile`: in background threads with one process, ahead with several).

    Args:
      config: jax_rcnn config.
      model: `modeling.build_model(config)`.
      variables: the model variables, replicated over `mesh`.
      shapes: the padded `(H, W)` image shapes the split uses, in the order they will run.
      batch_size: images per step (global, a multiple of the mesh size).
      mesh: the data mesh.

    Returns:
      `(infer, programs)`: `infer(variables, image u8[B, H, W, 3], image_size i32[B, 2],
      original_size i32[B, 2]) -> outputs` (`meta_arch.get(config).inference`'s, less the
      keypoint heatmaps), and the number of programs compiled for it.
    """
    module = meta_arch.get(config)
    repl, data = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    size = jax.ShapeDtypeStruct((batch_size, 2), np.int32, sharding=data)

    def image(h, w):
        return jax.ShapeDtypeStruct((batch_size, h, w, 3), np.uint8, sharding=data)

    if not hasattr(module, "inference_heads"):
        whole = compile_jit(
            lambda v, im, sz, osz: _without_heatmaps(
                module.inference(model, v, im, sz, osz, config=config)
            ),
            in_shardings=(repl, data, data, data),
            out_shardings=data,
        )
        whole = distributed.SyncCompiled(whole, "infer")
        _compile([(whole, [(variables, image(h, w), size, size) for h, w in shapes])])
        return whole, len(shapes)

    def front_fn(v, im, sz):
        return module.inference_front(model, v, im, sz, config=config)

    canvas = (max(h for h, _ in shapes), max(w for _, w in shapes))
    canvas_features, props = jax.eval_shape(front_fn, variables, image(*canvas), size)
    targets = {k: f.shape for k, f in canvas_features.items()}

    def padded_front(v, im, sz):
        features, props = front_fn(v, im, sz)
        return edge_pad_features(features, targets), props

    front = distributed.SyncCompiled(
        compile_jit(padded_front, in_shardings=(repl, data, data), out_shardings=data),
        "infer_front",
    )
    heads = distributed.SyncCompiled(
        compile_jit(
            lambda v, f, p, sz, osz: _without_heatmaps(
                module.inference_heads(model, v, f, p, sz, osz, config=config)
            ),
            in_shardings=(repl, data, data, data, data),
            out_shardings=data,
        ),
        "infer_heads",
    )
    heads_args = (
        variables,
        jax.tree.map(lambda s: _spec(s, data), canvas_features),
        jax.tree.map(lambda s: _spec(s, data), props),
        size,
        size,
    )
    # The heads program is the longest compile and every image needs it: first in the pool.
    _compile([(heads, [heads_args]), (front, [(variables, image(h, w), size) for h, w in shapes])])

    def infer(v, im, sz, osz):
        features, props = front(v, im, sz)
        return heads(v, features, props, sz, osz)

    return infer, len(shapes) + 1


def paste_program(mesh: jax.sharding.Mesh) -> Callable[..., jax.Array]:
    """`paste(mask_probs f32[B, D, M, M], boxes f32[B, D, 4], valid bool[B_local, D], canvas)
    -> bool[B, n, H, W]`: `masks.paste_masks_in_image` of each image's first n detection slots
    (`canvas = (H, W)` static, `valid` this host's rows).

    Valid detections come first, so the first n slots, n the smallest of `PASTE_SLOT_SIZES`
    (or D) that holds every valid detection of the batch on every host, hold them all (one small
    program per (n, canvas)); the caller pads the result back to D slots (`pad_slots`).
    """
    data = distributed.batch_sharding(mesh)
    run = distributed.SyncCompiled(
        compile_jit(
            lambda probs, boxes, n, canvas: jax.vmap(
                lambda p, b: mask_ops.paste_masks_in_image(p, b, canvas)
            )(probs[:, :n], boxes[:, :n]),
            static_argnums=(2, 3),
            out_shardings=data,
        ),
        "paste",
        static_argnums=(2, 3),
    )

    def paste(probs, boxes, valid, canvas):
        busy = np.flatnonzero(np.any(np.asarray(valid), axis=0))
        needed = int(distributed.host_max(np.int32(busy[-1] + 1 if busy.size else 0)))
        n = min([s for s in PASTE_SLOT_SIZES if s >= needed] + [probs.shape[1]])
        return run(probs, boxes, n, canvas)

    return paste


def pad_slots(masks: np.ndarray, num_slots: int) -> np.ndarray:
    """`bool[B, n, H, W]` -> `bool[B, num_slots, H, W]`, False in the added slots."""
    extra = num_slots - masks.shape[1]
    return masks if extra == 0 else np.pad(masks, ((0, 0), (0, extra), (0, 0), (0, 0)))
