"""Inference speed of full-size R50-FPN Faster / Mask R-CNN, Cascade Mask R-CNN, RetinaNet,
Keypoint R-CNN and Panoptic FPN, and of R50-C4 / R50-DC5 Faster / Mask R-CNN, at 800x1333 (s/image).

    python benchmarks/inference.py                       # the FPN models, 15 timed runs each
    python benchmarks/inference.py --models faster retinanet --runs 5
    python benchmarks/inference.py --models mask_c4 mask_dc5 --runs 5 --no_stages

Prints, per model: compile time (first call minus a steady call), the median and spread of
steady-state seconds per image, the time of each stage jitted on its own, and the ratio to
Detectron2's eager PyTorch time on the same 2-core machine (2.85 s Faster, 2.98 s Mask R-CNN,
3.48 s RetinaNet, 2.19 s C4 Mask R-CNN, 3.12 s Cascade Mask R-CNN, 3.32 s Keypoint R-CNN, 3.94 s
Panoptic FPN: medians of 5 on a quiet machine, Detectron2's initialisation; see the issues "The
detector family, part 1" to "part 5"). Panoptic FPN's end-to-end time includes the host-side
steps Detectron2 runs inside its forward: the semantic logits resized to the image and the
panoptic combine (`panoptic.panoptic_for_image`).

Weights are Detectron2's initialisation (no checkpoint is downloaded), as in the issues'
Detectron2 timings. The input is a real photo (the parity fixture) upscaled to 800x1333. With
these weights the RPN's deltas are huge and every proposal is clipped to an empty box, in
Detectron2 as in ours, so the ROI heads see no valid proposal: heads that run on padded slots
(FPN box heads) cost what they cost on padding, heads under `run_on_first_slots` (C4's res5,
mask, keypoint) run on the smallest slot bucket (`benchmarks/RESULTS.md`).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jax_rcnn import meta_arch, modeling, panoptic  # noqa: E402
from jax_rcnn.compile import jit as compile_jit  # noqa: E402
from jax_rcnn.config import load_config  # noqa: E402
from jax_rcnn.data import batching, transforms  # noqa: E402
from jax_rcnn.meta_arch import common, dense_head, rcnn, rpn  # noqa: E402

DETECTRON2_S = {
    "faster": 2.85,
    "mask": 2.98,
    "retinanet": 3.48,
    "mask_c4": 2.19,
    "cascade_mask": 3.12,
    "keypoint": 3.32,
    "panoptic": 3.94,
}
CONFIGS = {
    "faster": "configs/faster_rcnn_R_50_FPN_1x.py",
    "mask": "configs/mask_rcnn_R_50_FPN_1x.py",
    "retinanet": "configs/retinanet_R_50_FPN_1x.py",
    "faster_c4": "configs/faster_rcnn_R_50_C4_1x.py",
    "mask_c4": "configs/mask_rcnn_R_50_C4_1x.py",
    "faster_dc5": "configs/faster_rcnn_R_50_DC5_1x.py",
    "mask_dc5": "configs/mask_rcnn_R_50_DC5_1x.py",
    "cascade_mask": "configs/cascade_mask_rcnn_R_50_FPN_1x.py",
    "keypoint": "configs/keypoint_rcnn_R_50_FPN_1x.py",
    "panoptic": "configs/panoptic_fpn_R_50_1x.py",
}
DEFAULT_MODELS = ("faster", "mask", "retinanet")


def _time(fn, *args, runs: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, times


def _stages(cfg, model, variables, images, sizes):
    """Each stage of the model's `inference` jitted alone, fed with the previous stage's outputs."""
    m = cfg.model

    def nets(v):
        return common.Networks(model, v)

    feats_fn = compile_jit(lambda v, x, s: common.backbone_features(cfg, nets(v), x, s))
    feats = feats_fn(variables, images, sizes)
    if m.meta_architecture == "RetinaNet":

        def detect(v, f):
            return dense_head.detect(cfg, dense_head.dense_head(cfg, nets(v), f), m.kernels)

        det_fn = compile_jit(detect)
        return [
            ("backbone+FPN", feats_fn, (variables, images, sizes)),
            ("head+decode+NMS", det_fn, (variables, feats)),
        ]

    def proposals(v, f, s):
        out = rpn.rpn_head(cfg, nets(v), f)
        return rpn.select_proposals(cfg, out, s, training=False, backend=m.kernels)

    heads = rcnn.roi_heads_stages(cfg)  # StandardROIHeads, C4's Res5ROIHeads or Cascade
    rpn_fn = compile_jit(proposals)
    props = rpn_fn(variables, feats, sizes)
    box_fn = compile_jit(lambda v, f, p, s: heads.detect_boxes(cfg, nets(v), f, p, s, m.kernels))
    dets = box_fn(variables, feats, props, sizes)
    stages = [
        ("backbone" + ("+FPN" if "fpn" in m else ""), feats_fn, (variables, images, sizes)),
        ("RPN head+proposals", rpn_fn, (variables, feats, sizes)),
        ("box pool+head+NMS", box_fn, (variables, feats, props, sizes)),
    ]
    if m.mask_on:
        mask_fn = compile_jit(lambda v, f, d: heads.mask_probs(cfg, nets(v), f, d, m.kernels))
        stages.append(("mask pool+head", mask_fn, (variables, feats, dets)))
    return stages


def run(name: str, runs: int, *, stages: bool = True, config: str | None = None) -> list[tuple]:
    """Rows `(model, stage, median s, min s, max s, compile s, ratio to Detectron2)`.

    Args:
      name: a key of `CONFIGS`.
      runs: timed calls after the first (compiling) one.
      stages: also time each stage jitted alone (more compiles).
      config: another config path (`path.py[:arg]`) to run instead of `CONFIGS[name]`.
    """
    cfg = load_config(config or CONFIGS[name])
    model = modeling.build_model(cfg)
    variables = modeling.init_variables(model, jax.random.key(0))
    photo = transforms.read_image(ROOT / "tests/data/tiny_maskrcnn/image.jpg")
    photo = transforms.resize_image(photo, 800, 1333)  # an 800x1333 input, as in the issue
    ex = batching.make_test_example(photo, cfg)
    images = jnp.asarray(ex["image"][None])
    sizes = jnp.asarray(ex["image_size"][None])
    originals = jnp.asarray(ex["original_size"][None])
    inference = meta_arch.get(cfg).inference
    full = compile_jit(lambda v, x, s, o: inference(model, v, x, s, o, config=cfg))
    if cfg.model.meta_architecture in ("PanopticFPN", "SemanticSegmentor"):
        jitted = full
        size, original = tuple(ex["image_size"]), tuple(ex["original_size"])

        def full(*args):  # + the host-side post-processing Detectron2 runs in its forward
            out = jax.device_get(jitted(*args))
            return panoptic.panoptic_for_image(out, 0, size, original, cfg)["sem_seg_labels"]

    first, times = _time(full, variables, images, sizes, originals, runs=runs)
    med = statistics.median(times)
    ref = DETECTRON2_S.get(name)
    rows = [
        (name if "_" in name else f"{name} R50-FPN", "end to end", med, min(times), max(times),
         first - med, med / ref if ref else None)
    ]  # fmt: skip
    for stage, fn, args in _stages(cfg, model, variables, images, sizes) if stages else []:
        f, t = _time(fn, *args, runs=max(3, runs // 3))
        rows.append(
            ("", stage, statistics.median(t), min(t), max(t), f - statistics.median(t), None)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(CONFIGS))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no_stages", action="store_true", help="end to end only")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"{'model':18} {'stage':20} {'median s':>9} {'min':>7} {'max':>7} {'compile s':>9} "
          f"{'vs Detectron2':>13}")  # fmt: skip
    for name in args.models:
        for model, stage, med, lo, hi, comp, ratio in run(
            name, args.runs, stages=not args.no_stages
        ):
            r = f"{ratio:.2f}x" if ratio is not None else ""
            print(f"{model:18} {stage:20} {med:9.3f} {lo:7.3f} {hi:7.3f} {comp:9.1f} {r:>13}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
