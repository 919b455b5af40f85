"""TFDS detection datasets (e.g. `coco/2017`) as COCO-format files and records (host side).

`config.data.source = "tfds"` reads `config.data.tfds_name` / `tfds_*_split` through TensorFlow
Datasets (the `tfds` extra: `pip install -e ".[tfds]"`). The split is exported once to
`cache_dir/tfds/<name>_<version>/<split>/` as the encoded images exactly as TFDS stores them
(`SkipDecoding`: for COCO the original JPEG bytes, so pixels are identical to the COCO files)
plus a COCO instances JSON, then read with `load_coco_json`. The training loader and the COCO
evaluator therefore work unchanged (the evaluator gets a ground-truth JSON), and no TensorFlow
code runs in the data workers. The export is written to a temporary directory and renamed, so
an interrupted export leaves nothing half-made.

TFDS features used: `image`, `image/id`, `objects/{bbox (normalised ymin, xmin, ymax, xmax),
label, is_crowd, area (optional)}`. Boxes become `[x, y, w, h]` in pixels (float32 round trip:
within 1e-4 px of the original annotation).

Box only. TFDS `coco/2017` has no instance masks (its features are boxes, labels, crowd flags
and areas; `coco/2017_panoptic` has panoptic PNGs instead), so a TFDS source supports Faster
R-CNN only: with `config.model.mask_on` the loader raises because an instance has no
`segmentation`. Use `config.data.source = "coco"` with the official JSON for Mask R-CNN.

Category ids. A TFDS label is a contiguous index. For an 80-class `coco/*` dataset the exported
JSON uses the official COCO category ids (1..90 with gaps), so detections can be scored against
the official annotation files too; otherwise `label + 1`. Images without objects are kept (TFDS
keeps them); `filter_for_training` removes them for training as for the COCO source.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile

import numpy as np
from PIL import Image

from jax_rcnn.data.cache import default_cache_dir
from jax_rcnn.data.coco import load_coco_json

# The 80 category ids of COCO's instances JSON, in id order (= TFDS label order).
COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)
EXPORT_VERSION = 1
_EXIF_ORIENTATION = 0x0112


def import_tfds():
    """Returns the `tensorflow_datasets` module, or raises with the install command."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "config.data.source = 'tfds' needs TensorFlow Datasets, which is not installed: "
            'pip install -e ".[tfds]"'
        ) from e
    return tfds


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _image_file(image, image_id: int) -> tuple[str, bytes, tuple[int, int]]:
    """(file name, bytes, (height, width) as `read_image` returns it) of one TFDS image."""
    if isinstance(image, bytes | np.bytes_):
        data = bytes(image)
        ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png" if data[:4] == b"\x89PNG" else ".img"
    else:  # a decoded u8[h, w, c] array: store it losslessly
        array = np.asarray(image, np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, "PNG")
        data, ext = buffer.getvalue(), ".png"
    with Image.open(io.BytesIO(data)) as pil:
        w, h = pil.size
        # EXIF orientations 5..8 transpose the image in `read_image`.
        if pil.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            h, w = w, h
    return f"{image_id:012d}{ext}", data, (h, w)


def _write_split(tfds, builder, split: str, out_dir: str) -> None:
    features = builder.info.features
    if "objects" not in features or "bbox" not in features["objects"].feature:
        raise ValueError(
            f"TFDS dataset {builder.info.full_name} has no 'objects/bbox' feature (not a "
            "detection dataset in the coco/2017 layout)"
        )
    names = list(features["objects"]["label"].names)
    coco_ids = len(names) == len(COCO_CATEGORY_IDS) and builder.name == "coco"
    cat_ids = list(COCO_CATEGORY_IDS) if coco_ids else list(range(1, len(names) + 1))
    ds = builder.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
    )
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir)
    images, annotations = [], []
    for ex in tfds.as_numpy(ds):
        image_id = int(ex["image/id"]) if "image/id" in ex else len(images) + 1
        file_name, data, (h, w) = _image_file(ex["image"], image_id)
        with open(os.path.join(img_dir, file_name), "wb") as f:
            f.write(data)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        objects = ex["objects"]
        boxes = np.asarray(objects["bbox"], np.float64).reshape(-1, 4) * [h, w, h, w]
        crowd = np.asarray(objects.get("is_crowd", np.zeros(len(boxes), bool)), bool)
        for k, (y0, x0, y1, x1) in enumerate(boxes):
            bw, bh = float(x1 - x0), float(y1 - y0)
            area = float(objects["area"][k]) if "area" in objects else bw * bh
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[int(objects["label"][k])],
                    "bbox": [float(x0), float(y0), bw, bh],
                    "area": area,
                    "iscrowd": int(crowd[k]),
                }
            )
    coco = {
        "info": {"description": f"TFDS {builder.info.full_name} split {split!r}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in zip(cat_ids, names, strict=True)],
    }
    with open(os.path.join(out_dir, "annotations.json"), "w") as f:
        json.dump(coco, f)


def export_tfds_split(
    name: str,
    split: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    data_dir: str | None = None,
    download: bool = False,
) -> dict:
    """Exports a TFDS detection split as COCO JSON + image files (once; later calls reuse it).

    Args:
        name: TFDS name, e.g. "coco/2017".
        split: TFDS split, e.g. "validation" or "train[:1%]".
        cache_dir: parent directory (None or "": `default_cache_dir()`).
        data_dir: TFDS data dir (None: TFDS's default, `$TFDS_DATA_DIR` or
            `~/tensorflow_datasets`).
        download: let TFDS download and prepare the dataset if it is not there yet.

    Returns:
        `{"json": path of the instances JSON, "images": image directory}`.
    """
    tfds = import_tfds()
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    stamp = {"version": EXPORT_VERSION, "name": builder.info.full_name, "split": split}
    cache_dir = os.path.abspath(os.fspath(cache_dir or default_cache_dir()))
    root = os.path.join(cache_dir, "tfds", _safe(builder.info.full_name), _safe(split))
    paths = {"json": os.path.join(root, "annotations.json"), "images": os.path.join(root, "images")}
    try:
        with open(os.path.join(root, "stamp.json")) as f:
            if json.load(f) == stamp:
                return paths
    except (OSError, ValueError):
        pass
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tfds-tmp-", dir=os.path.dirname(root))
    try:
        _write_split(tfds, builder, split, tmp)
        with open(os.path.join(tmp, "stamp.json"), "w") as f:
            json.dump(stamp, f)
        os.rename(tmp, root)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return paths


def load_tfds_records(
    name: str,
    split: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | None = None,
    download: bool = False,
) -> tuple[list[dict], dict]:
    """`load_coco_json` records of a TFDS detection split (exported on first use).

    Args and the export: see `export_tfds_split`.

    Returns:
        `(records, meta)`; `meta["json_file"]` is the exported ground-truth JSON (for the
        COCO evaluator).
    """
    paths = export_tfds_split(name, split, cache_dir, data_dir=data_dir, download=download)
    records, meta = load_coco_json(paths["json"], paths["images"], dataset_name=f"{name}:{split}")
    return records, {**meta, "json_file": paths["json"]}
