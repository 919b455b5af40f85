"""Benchmark: Pallas ROIAlign / NMS kernels vs the pure-JAX references vs torchvision.

Shapes are Detectron2's (R50-FPN, two 800 x 1333 images padded to 800 x 1344, C=256):

* box pooler: 1024 ROIs, 7x7, sampling_ratio 0, over P2-P5 (forward, and forward+backward);
* mask pooler: 256 ROIs, 14x14, same;
* RPN NMS: 10 groups (2 images x 5 levels) x 2000 boxes, IoU 0.7, keep 1000;
* box-head NMS: 160 groups (2 images x 80 classes) x 1000 boxes, IoU 0.5, keep 100, 10% of
  the boxes valid (score > 0.05).

Columns: our Pallas kernels (compiled; GPU only), the references under XLA, and torchvision
(`roi_align(aligned=True)` per level + index_put as Detectron2's `ROIPooler`; `batched_nms` per
image as Detectron2 calls it) timed in a separate process when torch is importable. Times are
medians over rotating input sets, in ms, including each op's JAX-side work (table build, sort,
unpack); torch NMS times include its host sync.

  On a GPU:   python benchmarks/kernels.py            [--dtype bf16] [--iters 50]
  On a CPU:   python benchmarks/kernels.py --quick    (references only, small shapes)

On the GPU it also prints max |pallas - reference| per op, a compiled-correctness check.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time

import numpy as np

STRIDES = (4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class Shapes:
    images: int
    height: int
    width: int
    channels: int
    box_rois: int
    mask_rois: int
    rpn: tuple[int, int, int]  # groups, boxes per group, keep
    box_nms: tuple[int, int, int]


FULL = Shapes(2, 800, 1344, 256, 1024, 256, (10, 2000, 1000), (160, 1000, 100))
QUICK = Shapes(2, 128, 192, 32, 128, 32, (10, 256, 128), (16, 128, 32))


def _rois(shapes: Shapes, num: int, seed: int):
    """Proposal-like boxes: sizes log-uniform in [16, 800) px; Detectron2 level assignment."""
    rng = np.random.RandomState(seed)
    size = np.exp(rng.uniform(np.log(16), np.log(min(800, shapes.width)), (num, 2)))
    x1 = rng.uniform(-0.1, 1.0, num) * (shapes.width - size[:, 0])
    y1 = rng.uniform(-0.1, 1.0, num) * (shapes.height - size[:, 1])
    boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1).astype(np.float32)
    batch = rng.randint(0, shapes.images, num).astype(np.int32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = np.floor(4 + np.log2(np.sqrt(area) / 224 + 1e-8))
    level = (np.clip(level, 2, 5) - 2).astype(np.int32)
    return boxes, batch, level


def _nms_inputs(groups: int, n: int, valid_frac: float, seed: int):
    """Clustered boxes (so that suppression happens) with distinct scores."""
    rng = np.random.RandomState(seed)
    centers = rng.uniform(0, 1000, (groups, 64, 2))
    pick = rng.randint(0, 64, (groups, n))
    c = np.take_along_axis(centers, pick[..., None], axis=1) + rng.normal(0, 12, (groups, n, 2))
    wh = np.exp(rng.uniform(np.log(20), np.log(300), (groups, n, 2)))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)
    scores = rng.permutation(groups * n).reshape(groups, n).astype(np.float32) / (groups * n)
    valid = rng.rand(groups, n) < valid_frac
    return boxes, scores, valid


def _levels(shapes: Shapes):
    return [(shapes.height // s, shapes.width // s) for s in STRIDES]


# ---- JAX -----------------------------------------------------------------------------------


def _time_jax(fn, inputs, iters):
    import jax

    jax.block_until_ready(fn(*inputs[0]))
    times = []
    for i in range(iters):
        args = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def run_jax(shapes: Shapes, dtype: str, iters: int, with_pallas: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from pallas_kernels import nms as nms_mod
    from pallas_kernels import roi_align as roi_mod

    jdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    rng = np.random.RandomState(0)
    feats = [
        jnp.asarray(rng.randn(shapes.images, h, w, shapes.channels), jdtype)
        for h, w in _levels(shapes)
    ]
    scales = tuple(1.0 / s for s in STRIDES)
    impls = {"reference": (roi_mod.roi_align_reference, nms_mod.nms_reference)}
    if with_pallas:
        impls["pallas"] = (
            lambda *a, **k: roi_mod.roi_align(*a, interpret=False, **k),
            lambda *a, **k: nms_mod.nms(*a, interpret=False, **k),
        )
    results, outputs = {}, {}
    for name, (roi_fn, nms_fn) in impls.items():
        for op, num, size in (
            ("box pooler 7x7", shapes.box_rois, 7),
            ("mask pooler 14x14", shapes.mask_rois, 14),
        ):
            kw = dict(spatial_scales=scales, output_size=size, sampling_ratio=0)
            # Features are arguments, not closed-over constants (XLA would embed them).
            inputs = [
                (feats, *(jnp.asarray(a) for a in _rois(shapes, num, seed))) for seed in range(3)
            ]
            fwd = jax.jit(lambda fs, b, bi, li, f=roi_fn, kw=kw: f(fs, b, bi, li, **kw))
            g = jnp.asarray(rng.randn(num, size, size, shapes.channels), jnp.float32)

            def loss(fs, b, bi, li, f=roi_fn, kw=kw, g=g):
                return jnp.sum(f(fs, b, bi, li, **kw) * g)

            grad = jax.jit(jax.grad(loss))
            results[(op + " fwd", name)] = _time_jax(fwd, inputs, iters)
            results[(op + " fwd+bwd", name)] = _time_jax(grad, inputs, iters)
            outputs[(op, name)] = (np.asarray(fwd(*inputs[0])), grad(*inputs[0]))
        for op, (groups, n, k), thr, frac in (
            ("RPN NMS", shapes.rpn, 0.7, 1.0),
            ("box-head NMS", shapes.box_nms, 0.5, 0.1),
        ):
            inputs = [
                tuple(jnp.asarray(a) for a in _nms_inputs(groups, n, frac, seed))
                for seed in range(3)
            ]
            fn = jax.jit(
                lambda b, s, v, f=nms_fn, thr=thr, k=k: f(b, s, v, iou_threshold=thr, max_output=k)
            )
            results[(op, name)] = _time_jax(fn, inputs, iters)
            outputs[(op, name)] = tuple(np.asarray(x) for x in fn(*inputs[0]))
    checks = {}
    if with_pallas:
        for op in ("box pooler 7x7", "mask pooler 14x14"):
            (fp, gp), (fr, gr) = outputs[(op, "pallas")], outputs[(op, "reference")]
            gerr = max(
                float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                for a, b in zip(gp, gr, strict=True)
            )
            checks[op] = f"fwd max|d| {np.abs(fp - fr).max():.2e}, grad max|d| {gerr:.2e}"
        for op in ("RPN NMS", "box-head NMS"):
            (kp, vp), (kr, vr) = outputs[(op, "pallas")], outputs[(op, "reference")]
            same = np.array_equal(vp, vr) and np.array_equal(kp[vp], kr[vr])
            checks[op] = f"keep identical: {same}"
    return {"times": {f"{a}|{b}": t for (a, b), t in results.items()}, "checks": checks}


# ---- torch (separate process) ---------------------------------------------------------------


def run_torch(shapes: Shapes, dtype: str, iters: int) -> dict:
    import torch
    from torchvision.ops import batched_nms
    from torchvision.ops import roi_align as tv_roi_align

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def bench(fn, inputs):
        fn(*inputs[0])
        sync()
        times = []
        for i in range(iters):
            sync()
            t0 = time.perf_counter()
            fn(*inputs[i % len(inputs)])
            sync()
            times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times))

    rng = np.random.RandomState(0)
    feats = [
        torch.tensor(rng.randn(shapes.images, h, w, shapes.channels), dtype=tdtype, device=dev)
        .permute(0, 3, 1, 2)
        .contiguous()
        .requires_grad_(True)
        for h, w in _levels(shapes)
    ]
    times = {}
    for op, num, size in (
        ("box pooler 7x7", shapes.box_rois, 7),
        ("mask pooler 14x14", shapes.mask_rois, 14),
    ):
        inputs = []
        for seed in range(3):
            boxes, batch, level = _rois(shapes, num, seed)
            rois = np.concatenate([batch[:, None].astype(np.float32), boxes], 1)
            inputs.append(
                (torch.tensor(rois, device=dev, dtype=tdtype), torch.tensor(level, device=dev))
            )
        g = torch.tensor(rng.randn(num, shapes.channels, size, size), dtype=tdtype, device=dev)

        def pooler(rois, level, size=size, num=num):
            # Detectron2 ROIPooler: one ROIAlignV2 per level, index_put into the output.
            out = torch.zeros((num, shapes.channels, size, size), dtype=tdtype, device=dev)
            for lvl, (x, s) in enumerate(zip(feats, STRIDES, strict=True)):
                idx = torch.nonzero(level == lvl).squeeze(1)
                out.index_put_((idx,), tv_roi_align(x, rois[idx], (size, size), 1.0 / s, 0, True))
            return out

        def fwd_bwd(rois, level, g=g):
            for x in feats:
                x.grad = None
            (pooler(rois, level) * g).sum().backward()

        with torch.no_grad():
            times[f"{op} fwd|torchvision"] = bench(pooler, inputs)
        times[f"{op} fwd+bwd|torchvision"] = bench(fwd_bwd, inputs)
    for op, (groups, n, k), thr, frac, per_image in (
        ("RPN NMS", shapes.rpn, 0.7, 1.0, 5),
        ("box-head NMS", shapes.box_nms, 0.5, 0.1, 80),
    ):
        inputs = []
        for seed in range(3):
            boxes, scores, valid = _nms_inputs(groups, n, frac, seed)
            per = []
            for img in range(groups // per_image):
                sl = slice(img * per_image, (img + 1) * per_image)
                v = valid[sl].reshape(-1)
                idxs = np.repeat(np.arange(per_image), n)[v]
                per.append(
                    tuple(
                        torch.tensor(a, device=dev)
                        for a in (boxes[sl].reshape(-1, 4)[v], scores[sl].reshape(-1)[v], idxs)
                    )
                )
            inputs.append((per,))

        def run_nms(per, thr=thr, k=k):
            return [batched_nms(b, s, i, thr)[:k] for b, s, i in per]

        times[f"{op}|torchvision"] = bench(run_nms, inputs)
    return {"times": times, "device": dev}


# ---- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, references only")
    parser.add_argument("--dtype", choices=("f32", "bf16"), default="f32")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = QUICK if args.quick else FULL
    iters = args.iters or (5 if args.quick else 30)
    if args.torch_worker:
        print(json.dumps(run_torch(shapes, args.dtype, iters)))
        return

    import jax

    on_gpu = jax.default_backend() == "gpu"
    with_pallas = on_gpu and not args.quick
    if not args.quick and not on_gpu:
        sys.exit("full-size run needs a GPU (Pallas kernels compile only there); use --quick")
    result = run_jax(shapes, args.dtype, iters, with_pallas)
    times = dict(result["times"])
    torch_note = "torch not importable"
    if not args.no_torch and importlib.util.find_spec("torch") is not None:
        cmd = [sys.executable, __file__, "--torch-worker", "--dtype", args.dtype]
        cmd += ["--iters", str(iters)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            worker = json.loads(proc.stdout.strip().splitlines()[-1])
            times.update(worker["times"])
            torch_note = f"torchvision on {worker['device']}"
        else:
            torch_note = "torch worker failed: " + proc.stderr.strip().splitlines()[-1]

    cols = ("pallas", "reference", "torchvision")
    ops = list(dict.fromkeys(key.split("|")[0] for key in times))
    print(
        f"\njax {jax.__version__} on {jax.devices()[0].device_kind}; dtype {args.dtype}; "
        f"{'quick' if args.quick else 'Detectron2'} shapes {shapes}; {torch_note}"
    )
    print("median ms per call (rotating 3 input sets)")
    header = (
        f"{'op':<26}" + "".join(f"{c:>13}" for c in cols) + f"{'ref/pallas':>12}{'tv/pallas':>11}"
    )
    print(header)
    print("-" * len(header))
    for op in ops:
        row = [times.get(f"{op}|{c}") for c in cols]
        cells = "".join(f"{t:>13.3f}" if t is not None else f"{'-':>13}" for t in row)
        ratios = "".join(
            f"{row[i] / row[0]:>{w}.2f}" if row[0] and row[i] else f"{'-':>{w}}"
            for i, w in ((1, 12), (2, 11))
        )
        print(f"{op:<26}{cells}{ratios}")
    for op, text in result["checks"].items():
        print(f"check {op}: {text}")


if __name__ == "__main__":
    main()
