"""Training-loader throughput (images/s) for 0, 1, 2, ... grain workers.

Two datasets:

* `shapes`: the built-in synthetic dataset at the smoke config's sizes (128x160 PNGs, short
  side 96..128, buckets 128x160 / 160x128, Mask R-CNN targets);
* `coco-like`: random 640x480 / 480x640 JPEGs with polygon instances, generated in a temporary
  directory, loaded at the full-size config's train resize (short side 640..800, max 1333,
  buckets 800x1344 / 1344x800, Mask R-CNN targets with `gt_mask_size` 112).

Each measurement builds a fresh `TrainLoader`, discards the first `--warmup` batches (worker
start-up) and times the next `--batches`. Example:

    python benchmarks/data.py --workers 0 1 2 --batches 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configs import common  # noqa: E402
from jax_rcnn.data import loader as L  # noqa: E402


def write_coco_like(root: str, num_images: int, seed: int = 0) -> tuple[str, str]:
    """Random 640x480 JPEGs (landscape and portrait) with 1..15 polygon instances each."""
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        h, w = (480, 640) if rng.random() < 0.7 else (640, 480)
        # Smooth noise compresses like a photo (a few tens of kB), not like white noise.
        low = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
        pil = Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR)
        pil.save(os.path.join(img_dir, f"{i:06d}.jpg"), quality=90)
        images.append({"id": i + 1, "file_name": f"{i:06d}.jpg", "height": h, "width": w})
        for _ in range(int(rng.integers(1, 16))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(8, min(h, w) / 3)
            ang = np.sort(rng.uniform(0, 2 * np.pi, 12))
            rad = r * rng.uniform(0.5, 1.0, 12)
            xs = np.clip(cx + rad * np.cos(ang), 0, w)
            ys = np.clip(cy + rad * np.sin(ang), 0, h)
            x0, y0 = xs.min(), ys.min()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, 81)),
                    "bbox": [x0, y0, xs.max() - x0, ys.max() - y0],
                    "segmentation": [np.stack([xs, ys], -1).reshape(-1).round(2).tolist()],
                    "area": float((xs.max() - x0) * (ys.max() - y0)),
                    "iscrowd": 0,
                }
            )
    path = os.path.join(root, "instances.json")
    categories = [{"id": k, "name": f"c{k}"} for k in range(1, 81)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path, img_dir


def measure(config, records, num_workers: int, batches: int, warmup: int) -> float:
    """Images/s of a fresh TrainLoader after `warmup` batches."""
    with L.TrainLoader(
        config, records, shard_index=0, shard_count=1, num_workers=num_workers
    ) as ld:
        for _ in range(warmup):
            next(ld)
        start = time.perf_counter()
        for _ in range(batches):
            next(ld)
        elapsed = time.perf_counter() - start
    return batches * ld.batch_size / elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per run")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch")
    parser.add_argument("--num-images", type=int, default=200, help="coco-like images")
    parser.add_argument("--datasets", nargs="+", default=["shapes", "coco-like"])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        setups = {}
        if "shapes" in args.datasets:
            config = common.base_config(mask_on=True)
            common.smoke(config)
            config.data.cache_dir = tmp
            config.data.shapes.num_train, config.data.shapes.num_val = 200, 1
            setups["shapes (128x160, smoke resize)"] = config
        if "coco-like" in args.datasets:
            json_file, images = write_coco_like(os.path.join(tmp, "coco"), args.num_images)
            config = common.base_config(mask_on=True)
            config.data.train.json, config.data.train.images = json_file, images
            setups["coco-like 640x480 JPEG (640..800, max 1333)"] = config
        rows = []
        for name, config in setups.items():
            config.solver.ims_per_batch = args.batch_size
            records, _ = L.dataset_records(config, "train")
            rates = [measure(config, records, w, args.batches, args.warmup) for w in args.workers]
            rows.append((name, rates))

    print(f"TrainLoader images/s, batch {args.batch_size}, {os.cpu_count()} CPUs")
    header = " | ".join(f"{w} workers" for w in args.workers)
    ratios = " | ".join(f"{w}w / {args.workers[0]}w" for w in args.workers[1:])
    print(f"| dataset | {header} | {ratios} |")
    print("|---" * (1 + 2 * len(args.workers) - 1) + "|")
    for name, rates in rows:
        cells = " | ".join(f"{r:.1f}" for r in rates)
        rel = " | ".join(f"{r / rates[0]:.2f}" for r in rates[1:])
        print(f"| {name} | {cells} | {rel} |")


if __name__ == "__main__":
    main()
