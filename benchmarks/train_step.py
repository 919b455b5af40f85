"""Train-step speed: full-size R50-FPN on this machine, and data-parallel scaling over devices.

    python benchmarks/train_step.py                  # R50-FPN Faster + Mask, batch 2, 800x1333
    python benchmarks/train_step.py --models mask cascade_mask --steps 2
    python benchmarks/train_step.py --scaling        # smoke model on 1, 2, 4, 8 forced devices
    python benchmarks/train_step.py --devices 4 --model smoke --per_device_batch 2

Default mode, per model (each in its own process): compile time (first step minus a steady
step), median s/iter of the steady steps, img/s, peak resident memory (`getrusage`), and the
ratio to Detectron2's eager PyTorch train step on the same 2-core CPU (18.3 s Faster, 18.8 s
Mask R-CNN per iteration at 2 images; see the issue "Training"). On a GPU it measures Detectron2's
per-GPU setting instead: 16 images at 1024x1024 in bf16 (no CPU reference; ratio omitted).

`--scaling` runs `--devices N` for N = 1, 2, 4, 8 in subprocesses (CPU devices are forced with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, which must be set before JAX starts) at a
fixed per-device batch (weak scaling) and prints s/iter, img/s, img/s per device and the scaling
efficiency `img/s(N) / (N * img/s(1))`. Forced CPU devices share the machine's cores, so this
measures the overhead of sharding the program (collectives, partitioning), not a speed-up; on
real accelerators efficiency near 1 is the goal.

Weights are Detectron2's initialisation; the batch is synthetic (random pixels, a few boxes with
polygon masks) and the same at every step, so only the model is timed, not the data loader.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DETECTRON2_S = {"faster": 18.3, "mask": 18.8}
CONFIGS = {
    "faster": "configs/faster_rcnn_R_50_FPN_1x.py",
    "mask": "configs/mask_rcnn_R_50_FPN_1x.py",
    "cascade_mask": "configs/cascade_mask_rcnn_R_50_FPN_1x.py",
    "smoke": "configs/mask_rcnn_R_50_FPN_1x.py:smoke",
}


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=0, help="force N CPU devices (0: as found)")
    p.add_argument("--model", choices=sorted(CONFIGS), help="measure one model in-process")
    p.add_argument("--per_device_batch", type=int, default=0, help="default: 2 (16 on GPU)")
    p.add_argument("--size", type=int, nargs=2, default=None, help="image H W")
    p.add_argument("--dtype", default=None, help="compute dtype (default f32; bf16 on GPU)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    p.add_argument("--scaling", action="store_true", help="smoke model on 1, 2, 4, 8 devices")
    p.add_argument("--json", action="store_true", help="print one JSON line (for the parent)")
    p.add_argument(
        "--models", nargs="+", default=["faster", "mask"], help="full-size mode: models to time"
    )
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices:
    # Before JAX initialises its CPU backend.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    ).strip()

import resource  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT))

from jax_rcnn.config import load_config  # noqa: E402
from jax_rcnn.training import distributed, loop, make_batch  # noqa: E402
from jax_rcnn.training.state import create_train_state, make_train_step  # noqa: E402


def _config(model: str, size: tuple[int, int], dtype: str):
    config = load_config(str(ROOT / CONFIGS[model]))
    config.unlock()
    h, w = size
    if model != "smoke":
        # One bucket of exactly the benchmark size (multiples of 32).
        config.input.buckets = ((-(-h // 32) * 32, -(-w // 32) * 32),)
        config.input.min_size_train = (min(h, w),)
        config.input.max_size_train = max(h, w)
    config.train.compute_dtype = dtype
    # Without pretrained weights every step at a useful LR diverges within a step or two (loss
    # ~1e3 at Detectron2's random init), and NaN steps time a different program path (all
    # proposals invalid, every mask slot busy). LR 0 keeps every timed step on the same finite
    # weights; the step still computes and applies the (zero) update.
    config.solver.base_lr = 0.0
    config.solver.warmup_factor = 1.0
    return config


def _records(n: int, size: tuple[int, int], num_classes: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    h, w = size
    records = []
    for i in range(n):
        anns = []
        for _ in range(5):
            bw, bh = rng.uniform(0.1, 0.4) * w, rng.uniform(0.1, 0.4) * h
            x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
            anns.append(
                {
                    "bbox": [x0, y0, x0 + bw, y0 + bh],
                    "category_id": int(rng.integers(num_classes)),
                    "segmentation": [poly],
                    "iscrowd": 0,
                }
            )
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        records.append({"image": image, "annotations": anns, "image_id": i})
    return records


def _peak_device_gib() -> float | None:
    """Largest peak of bytes in use over the local devices (None where JAX does not track it,
    e.g. on CPU)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) / 2**30 if peaks else None


def measure(model: str, per_device: int, size: tuple[int, int], dtype: str, steps: int) -> dict:
    """Times `steps + 1` train steps of `model` on every device (the first one compiles)."""
    config = _config(model, size, dtype)
    mesh = distributed.make_mesh()
    n = mesh.devices.size
    config.solver.ims_per_batch = per_device * n
    batch = make_batch(
        _records(per_device * n, size, int(config.model.roi_heads.num_classes)), config, rng=0
    )
    batch = distributed.shard_batch(mesh, batch)
    state = distributed.replicate(mesh, create_train_state(config, loop.initial_variables(config)))
    key = distributed.replicate(mesh, jax.random.key(0))
    step = make_train_step(config, loop.default_loss_fn(config), mesh=mesh)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times[1:])
    ims = per_device * n
    return {
        "model": model,
        "devices": n,
        "backend": jax.default_backend(),
        "global_batch": ims,
        "size": list(size),
        "dtype": dtype,
        "compile_s": times[0] - sec,
        "s_per_iter": sec,
        "img_per_s": ims / sec,
        "img_per_s_per_device": ims / sec / n,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_device_gib": _peak_device_gib(),
        "total_loss": float(metrics["total_loss"]),
    }


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--json", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(steps: int, per_device: int) -> None:
    rows = [
        _child(
            [
                "--devices",
                str(n),
                "--model",
                "smoke",
                "--steps",
                str(steps),
                "--per_device_batch",
                str(per_device),
            ]
        )  # fmt: skip
        for n in (1, 2, 4, 8)
    ]
    base = rows[0]["img_per_s"]
    print(f"smoke Mask R-CNN, {per_device} images/device, {rows[0]['backend']}, weak scaling")
    print("| devices | global batch | compile s | s/iter | img/s | img/s/device | efficiency |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        eff = r["img_per_s"] / (r["devices"] * base)
        print(
            f"| {r['devices']} | {r['global_batch']} | {r['compile_s']:.1f} | "
            f"{r['s_per_iter']:.3f} | {r['img_per_s']:.2f} | {r['img_per_s_per_device']:.2f} | "
            f"{eff:.2f} |"
        )


def full_size(steps: int, models=("faster", "mask")) -> None:
    gpu = jax.default_backend() == "gpu"
    per_device, size, dtype = (16, (1024, 1024), "bfloat16") if gpu else (2, (800, 1333), "float32")
    rows = []
    for model in models:
        args = ["--model", model, "--steps", str(steps), "--per_device_batch", str(per_device)]
        rows.append(_child([*args, "--size", *map(str, size), "--dtype", dtype]))
    print(f"R50-FPN train step, {per_device} images/device at {size[0]}x{size[1]}, {dtype}")
    print(
        "| model | backend | compile s | s/iter | img/s | peak RSS GiB | Detectron2 s/iter |",
        end="",
    )
    print(" ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d2 = None if gpu else DETECTRON2_S.get(r["model"])
        ref = f"{d2:.1f}" if d2 else ""
        ratio = f"{r['s_per_iter'] / d2:.2f}" if d2 else ""
        print(
            f"| {r['model']} | {r['backend']} x{r['devices']} | {r['compile_s']:.1f} | "
            f"{r['s_per_iter']:.2f} | {r['img_per_s']:.2f} | {r['peak_rss_gib']:.1f} | {ref} | "
            f"{ratio} |"
        )


def main(args) -> None:
    if args.model:
        gpu = jax.default_backend() == "gpu"
        size = tuple(args.size or ((1024, 1024) if gpu else (800, 1333)))
        if args.model == "smoke" and not args.size:
            size = (128, 160)
        per_device = args.per_device_batch or (16 if gpu and args.model != "smoke" else 2)
        dtype = args.dtype or ("bfloat16" if gpu else "float32")
        row = measure(args.model, per_device, size, dtype, args.steps)
        print(json.dumps(row) if args.json else row, flush=True)
    elif args.scaling:
        scaling(args.steps, args.per_device_batch or 2)
    else:
        full_size(args.steps, tuple(args.models))


if __name__ == "__main__":
    main(ARGS)
