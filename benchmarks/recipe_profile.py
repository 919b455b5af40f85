"""Where the recipe's train step spends its time: each stage jitted alone, forward + backward.

    python benchmarks/recipe_profile.py [--yaml tests/data/recipes/d2_scratch_gn_mask_rcnn.yaml]
        [--size 320 512] [--runs 3] [--trace N]

The recipe (GN Mask R-CNN R50-FPN, narrow, batch 4) on a synthetic batch at one bucket. Rows:
the whole train step; backbone+FPN (fwd+bwd of a linear function of the features); the RPN head
(fwd+bwd); the box head on 4 x 512 pooled ROIs (fwd+bwd); the mask head on 4 x 128 pooled ROIs
(fwd+bwd); ROIAlign of 4 x 512 boxes (7x7) and 4 x 128 boxes (14x14) from p2-p5 (fwd+bwd). Medians
of `--runs` after one warm-up; compile excluded. CPU numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_rcnn import config as config_lib
from jax_rcnn import modeling, poolers
from jax_rcnn.compile import jit
from jax_rcnn.modeling import GeneralizedRCNN
from jax_rcnn.training import loop
from jax_rcnn.training.state import create_train_state, make_train_step


def _time(fn, *args, runs):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _print_trace(fn, steps: int, top: int = 25):
    """Traces `steps` calls of `fn` and prints the ops with the most thread time per step.

    Reads the trace back with `jax.profiler.ProfileData` (no xprof needed). XLA:CPU runs
    convolutions and dots asynchronously, so their events cover the dispatch only: the table
    ranks the elementwise, gather / scatter and loop work, not the convolutions.
    """
    import collections
    import glob
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(steps):
                jax.block_until_ready(fn())
        path = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(path)
        per_op = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if "Eigen" not in line.name:  # XLA:CPU's intra-op worker threads
                    continue
                for event in line.events:
                    if "ThunkExecutor" not in event.name:
                        per_op[event.name] += event.duration_ns
    print("| XLA op | thread ms per step |\n|---|---|")
    for name, ns in per_op.most_common(top):
        print(f"| {name} | {ns / 1e6 / steps:.1f} |")


def _batch(config, h, w, b, rng):
    g, m = config.input.max_gt, config.input.gt_mask_size
    boxes = np.zeros((b, g, 4), np.float32)
    valid = np.zeros((b, g), bool)
    for i in range(b):
        for k in range(6):
            x0, y0 = rng.uniform(0, w - 80), rng.uniform(0, h - 80)
            s = rng.uniform(10, 80)
            boxes[i, k] = (x0, y0, x0 + s, y0 + s)
            valid[i, k] = True
    return {
        "image": rng.integers(0, 255, (b, h, w, 3), dtype=np.uint8),
        "image_size": np.tile(np.array([[h - 10, w - 20]], np.int32), (b, 1)),
        "gt_boxes": boxes,
        "gt_classes": rng.integers(0, config.model.roi_heads.num_classes, (b, g)).astype(np.int32),
        "gt_valid": valid,
        "gt_masks": np.full((b, g, m, m), 255, np.uint8),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--yaml", default="tests/data/recipes/d2_scratch_gn_mask_rcnn.yaml")
    p.add_argument("--size", type=int, nargs=2, default=(320, 512))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--no_step", action="store_true", help="skip the whole-step row (a long compile)"
    )
    p.add_argument(
        "--trace",
        type=int,
        default=0,
        metavar="N",
        help="also trace N whole steps (jax.profiler) and print the 25 costliest XLA ops",
    )
    a = p.parse_args()
    config = config_lib.from_detectron2(a.yaml)
    h, w = a.size
    b = config.solver.ims_per_batch
    rng = np.random.default_rng(0)
    batch = _batch(config, h, w, b, rng)
    variables = loop.initial_variables(config)
    model = modeling.build_model(config, train=True)
    rows = []

    if not a.no_step:
        step = make_train_step(config, loop.default_loss_fn(config))
        key = jax.random.key(0)
        jb = jax.device_put(batch)
        # The step donates its state: time it by threading the state through.
        # (on a copy: the donated buffers must not be the ones the stage rows use below).
        holder = {"s": create_train_state(config, jax.tree.map(jnp.copy, variables))}

        def once():
            holder["s"], metrics = step(holder["s"], jb, key)
            return metrics

        rows.append(("train step (all)", _time(once, runs=a.runs)))
        if a.trace:
            _print_trace(once, a.trace)
        del holder

    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    x = jnp.asarray(rng.normal(size=(b, h, w, 3)), jnp.float32)

    def feats(p, x):
        return model.apply({"params": p, **rest}, x, method=GeneralizedRCNN.features)

    f = jit(feats)(params, x)
    wts = jax.tree.map(lambda t: jnp.full(t.shape, 1e-3, t.dtype), f)
    g = jit(
        jax.grad(
            lambda p, x: sum(
                jnp.vdot(f1, w1)
                for f1, w1 in zip(jax.tree.leaves(feats(p, x)), jax.tree.leaves(wts), strict=True)
            )
        )
    )
    rows.append(("backbone+FPN fwd+bwd", _time(g, params, x, runs=a.runs)))

    def rpn(p, f):
        lo, de = model.apply({"params": p, **rest}, f, method=GeneralizedRCNN.rpn_head)
        return sum(jnp.sum(t) for t in lo) + sum(jnp.sum(t) for t in de)

    rows.append(
        ("RPN head fwd+bwd", _time(jit(jax.grad(rpn, argnums=(0, 1))), params, f, runs=a.runs))
    )

    levels = [f[k] for k in ("p2", "p3", "p4", "p5")]
    c = levels[0].shape[-1]
    for name, n, s, method in (
        ("box", 512, 7, GeneralizedRCNN.box_head),
        ("mask", 128, 14, GeneralizedRCNN.mask_head),
    ):
        xy = rng.uniform(0, min(h, w) - 60, (b, n, 2))
        bx = jnp.asarray(np.concatenate([xy, xy + rng.uniform(8, 120, (b, n, 2))], -1), jnp.float32)

        def pool(levels, bx, s=s):
            return poolers.roi_pool(levels, bx, min_level=2, output_size=s, sampling_ratio=0)

        def pool_loss(levels, bx):
            return jnp.sum(pool(levels, bx))

        rows.append(
            (
                f"ROIAlign {b}x{n} {s}x{s} fwd+bwd",
                _time(jit(jax.grad(pool_loss)), levels, bx, runs=a.runs),
            )
        )
        pooled = jnp.asarray(rng.normal(size=(b, n, s, s, c)), jnp.float32)

        def head(p, pooled, method=method):
            out = model.apply({"params": p, **rest}, pooled, method=method)
            return sum(jnp.sum(t) for t in jax.tree.leaves(out))

        rows.append(
            (
                f"{name} head {b}x{n} fwd+bwd",
                _time(jit(jax.grad(head, argnums=(0, 1))), params, pooled, runs=a.runs),
            )
        )

    print(f"| stage ({h}x{w}, batch {b}) | median s |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} |")


if __name__ == "__main__":
    main()
