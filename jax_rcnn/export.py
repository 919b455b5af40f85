"""Checkpoint export: Detectron2 model-zoo `.pkl` files and serialised `jax.export` artifacts.

    # a self-contained inference artifact (StableHLO per padded shape + parameters)
    python -m jax_rcnn.export --config configs/mask_rcnn_R_50_FPN_1x.py \\
        --weights work_dirs/mask_rcnn/ --out exported/mask_rcnn
    # a Detectron2 checkpoint that `DetectionCheckpointer(model).load(...)` reads
    python -m jax_rcnn.export --config config.yaml --weights work_dirs/run/checkpoints/5000 \\
        --out exported/d2 --format detectron2
    # what is in a checkpoint
    python -m jax_rcnn.export --info work_dirs/run

    predictor = jax_rcnn.export.load("exported/mask_rcnn")     # no Flax, no jax_rcnn.modeling
    out = predictor(image_bgr)            # == Predictor(config, ...)(image_bgr)
    outs = predictor.batch([img_a, img_b])

`--config` is `configs/x.py[:variant]` or a Detectron2 YAML; `--weights` a Detectron2 `.pkl`
(whole model) or an orbax training checkpoint (a work dir, its `checkpoints/` dir or one
`checkpoints/<step>` dir; `--step` picks one). The weights must fit the config exactly; a
mismatch is an error listing the offending names.

`--format jax` (default) writes DIR/

* `inference_{H}x{W}_b{B}.jaxexport`: `jax.export` serialisation of the model's `inference`
  (`jax_rcnn.meta_arch`) for one padded shape (each bucket of `config.input.buckets`; for
  `pad_mode="size_divisibility"` the `--shapes` given, default the largest test shapes), batch
  `--batch`, lowered for every
  `--platforms` at once (one module runs on CPU and on CUDA). Signature:
  `f(variables {"params/backbone/...": array}, images u8[B, H, W, 3], image_sizes i32[B, 2],
  original_sizes i32[B, 2]) -> {"boxes", "scores", "classes", "valid"[, "mask_probs"][,
  "keypoints"]}` (`mask_probs` for mask models, `keypoints f32[B, D, K, 3]` for keypoint models;
  see `jax_rcnn.meta_arch.rcnn.inference`; `{"proposal_boxes", "objectness_logits", "valid"}`
  for a `ProposalNetwork`; PanopticFPN adds `sem_seg_logits f32[B, H/4, W/4, K]`, a
  SemanticSegmentor has only that, and the loaded predictor returns what `Predictor` returns,
  panoptic post-processing included).
  The parameters are an argument, not constants, so each module is small and every shape shares
  one copy of them;
* `variables.npz`: those parameters, keys `collection/path/to/leaf`;
* `manifest.json`: config, class names, input format, resize, buckets, shapes, batch size,
  platforms, versions and the file list (with sizes).

`--format detectron2` writes DIR/`model_final.pkl` (`{"model": {name: ndarray}, "__author__":
"jax_rcnn", "matching_heuristics": False}`, Detectron2 names and layouts; bit-exact inverse of
the import) and `manifest.json`.

Writes are atomic at the directory level: everything goes to a temporary sibling of DIR which is
renamed into place last, so a DIR that exists is complete. An existing DIR is an error unless
`--overwrite`.

The artifact uses the pure-JAX kernel references on every platform (`jax_rcnn.kernels`): the
Pallas kernels cannot be lowered for CUDA by a CPU-only jax, and one module then serves both.
Pasting masks is done on the host afterwards with `jax_rcnn.masks`, as `Predictor` does.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jax_rcnn
from jax_rcnn import panoptic, postprocess
from jax_rcnn.compile import jit as compile_jit
from jax_rcnn.data import batching
from jax_rcnn.data import transforms as T

logger = logging.getLogger(__name__)

FORMATS = ("jax", "detectron2")
PLATFORMS = ("cpu", "cuda")
MANIFEST = "manifest.json"
VARIABLES = "variables.npz"
D2_CHECKPOINT = "model_final.pkl"
FORMAT_NAME = "jax_rcnn.export"
FORMAT_VERSION = 1
OUTPUT_KEYS = (
    "boxes",
    "scores",
    "classes",
    "valid",
    "mask_probs",
    "sem_seg_logits",
    "keypoints",
)
PROPOSAL_OUTPUT_KEYS = ("proposal_boxes", "objectness_logits", "valid")  # ProposalNetwork
EXPORT_KERNELS = "reference"


# ---------------------------------------------------------------------------------------------
# Variables as flat {"collection/a/b": array} dicts (no Flax: the loader side must not need it).


def flatten_variables(variables: dict[str, Any]) -> dict[str, Any]:
    """`{"params": {"a": {"b": x}}}` -> `{"params/a/b": x}` (sorted keys)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) or hasattr(node, "items") and not hasattr(node, "shape"):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            flat[prefix] = node

    walk("", variables)
    return dict(sorted(flat.items()))


def unflatten_variables(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_variables`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# ---------------------------------------------------------------------------------------------
# Reading checkpoints (exporter side: may import the model code).


def load_config_spec(spec: str):
    """A config from `configs/x.py[:variant]` or a Detectron2 YAML (`--config`)."""
    from jax_rcnn.config import load_config
    from jax_rcnn.config_from_detectron2 import from_detectron2

    path = spec.split(":")[0]
    if path.endswith((".yaml", ".yml")):
        return from_detectron2(path)
    return load_config(spec)


def is_orbax_checkpoint(path: str | os.PathLike) -> bool:
    """True for a directory (a work dir, `checkpoints/` or `checkpoints/<step>`)."""
    return os.path.isdir(path)


def _orbax_location(path: str | os.PathLike, step: int | None) -> tuple[str, int]:
    """(`checkpoints/` dir, step) of a work dir / `checkpoints/` / `checkpoints/<step>` path."""
    import orbax.checkpoint as ocp

    from jax_rcnn.training import checkpointing

    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(os.path.join(path, checkpointing.CHECKPOINT_DIR)):
        path = os.path.join(path, checkpointing.CHECKPOINT_DIR)
    base = os.path.basename(path.rstrip("/"))
    if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
        path, step = os.path.dirname(path), int(base)
    manager = ocp.CheckpointManager(path, item_names=("state", "data", "config", "shapes"))
    steps = sorted(manager.all_steps())
    manager.close()
    if not steps:
        raise FileNotFoundError(f"no jax_rcnn training checkpoint under {path}")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint at step {step} under {path} (steps: {steps})")
    return path, step


def _read_orbax_json(path: str, step: int) -> dict[str, Any]:
    """The `config` and `shapes` JSON items of an orbax training checkpoint."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(path, item_names=("state", "data", "config", "shapes"))
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(config=ocp.args.JsonRestore(), shapes=ocp.args.JsonRestore()),
        )
    finally:
        manager.close()
    return {"config": dict(restored["config"]), "shapes": dict(restored["shapes"])}


def load_checkpoint(path: str | os.PathLike, config, step: int | None = None) -> dict[str, Any]:
    """Model variables for `config` from a Detectron2 `.pkl` or an orbax training checkpoint.

    Args:
      path: `.pkl` file, or a work dir / `checkpoints/` / `checkpoints/<step>` directory.
      config: the jax_rcnn config the variables must fit exactly.
      step: orbax step (default: the latest, or the one named by `path`).

    Returns:
      `{"params": ..., "frozen": ...[, "batch_stats": ...]}` of NumPy arrays.

    Raises:
      FileNotFoundError: nothing at `path`, or no checkpoint in the directory.
      ValueError: the checkpoint does not fit `config` (names listed), or not a checkpoint.
    """
    from jax_rcnn.checkpoint import detectron2 as d2_checkpoint

    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {os.fspath(path)!r}")
    if not is_orbax_checkpoint(path):
        state_dict = d2_checkpoint.load_detectron2_pkl(path)
        try:
            return d2_checkpoint.convert_detectron2_to_flax(state_dict, config)
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)!r}: {e}") from None

    from jax_rcnn.config import to_flat_dict
    from jax_rcnn.training import checkpointing

    ckpt_dir, step = _orbax_location(path, step)
    saved = _read_orbax_json(ckpt_dir, step)["config"]
    current = json.loads(json.dumps(to_flat_dict(config), default=str))
    differ = [
        f"{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k.startswith("model.")
        and k not in ("model.weights", "model.kernels")
        and saved.get(k) != current.get(k)
    ]
    for line in differ:
        logger.warning("checkpoint %s was trained with another value: %s", ckpt_dir, line)
    variables = checkpointing.load_variables(ckpt_dir, step)
    try:  # the converter names every missing, unexpected or mis-shaped variable
        d2_checkpoint.convert_flax_to_detectron2(variables, config)
    except ValueError as e:
        raise ValueError(f"{ckpt_dir} (step {step}): {e}") from None
    return variables


# ---------------------------------------------------------------------------------------------
# Atomic directory writes


@contextlib.contextmanager
def _staging_dir(out: str | os.PathLike, overwrite: bool) -> Iterator[str]:
    """Yields a temporary sibling of `out`, renamed to `out` when the block succeeds."""
    out = os.path.abspath(os.fspath(out))
    parent, name = os.path.split(out)
    if os.path.lexists(out):
        if not overwrite:
            raise FileExistsError(
                f"output directory {out} already exists; pass --overwrite (overwrite=True) "
                "to replace it"
            )
        if not os.path.isdir(out) or os.path.islink(out):
            raise FileExistsError(f"{out} exists and is not a directory; not replacing it")
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    except OSError as e:
        raise PermissionError(
            f"cannot write the export to {out}: {parent} is not a writable directory ({e})"
        ) from e
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        if os.path.lexists(out):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(out, os.path.join(old, name))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _file_entry(path: str) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def _versions() -> dict[str, str]:
    out = {"jax_rcnn": jax_rcnn.__version__, "jax": jax.__version__, "numpy": np.__version__}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["jaxlib"] = importlib.metadata.version("jaxlib")
    return out


def _base_manifest(config, kind: str, source: str, class_names: Sequence[str]) -> dict:
    from jax_rcnn import config as config_lib

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": os.path.abspath(source),
        "class_names": list(class_names),
        "meta_architecture": str(config.model.meta_architecture),
        "num_classes": config_lib.num_classes(config),
        "mask_on": bool(config.model.mask_on),
        "input_format": str(config.input.format),
        "config": json.loads(json.dumps(config.to_dict(), default=str)),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write_manifest(directory: str, manifest: dict) -> None:
    manifest["files"] = {
        f: _file_entry(os.path.join(directory, f)) for f in sorted(os.listdir(directory))
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Exporters


def export_detectron2(
    variables: dict[str, Any],
    config,
    out: str | os.PathLike,
    *,
    source: str = "",
    class_names: Sequence[str] = (),
    overwrite: bool = False,
) -> str:
    """Writes `out/model_final.pkl` (Detectron2 model zoo layout) and `out/manifest.json`.

    Returns:
      The path of the `.pkl`.
    """
    from jax_rcnn.checkpoint import detectron2 as d2_checkpoint

    state_dict = d2_checkpoint.convert_flax_to_detectron2(variables, config)
    with _staging_dir(out, overwrite) as tmp:
        with open(os.path.join(tmp, D2_CHECKPOINT), "wb") as f:
            payload = {"model": state_dict, "__author__": "jax_rcnn", "matching_heuristics": False}
            pickle.dump(payload, f, protocol=4)
        manifest = _base_manifest(config, "detectron2", source, class_names)
        manifest["num_parameters"] = int(sum(v.size for v in state_dict.values()))
        _write_manifest(tmp, manifest)
    return os.path.join(os.path.abspath(os.fspath(out)), D2_CHECKPOINT)


def default_shapes(config) -> tuple[tuple[int, int], ...]:
    """Padded (H, W) shapes to export: the buckets, or the largest size-divisible test shapes."""
    from jax_rcnn import config as config_lib

    inp = config.input
    if inp.pad_mode == "buckets":
        return tuple((int(h), int(w)) for h, w in inp.buckets)
    if not inp.min_size_test:
        raise ValueError(
            "config.input.min_size_test = 0 (no test resize): the padded shapes are unbounded; "
            "pass --shapes HxW,..."
        )
    d = max(int(inp.size_divisibility), 1)
    shapes = config_lib.largest_resized_shapes(int(inp.min_size_test), int(inp.max_size_test))
    return tuple((-(-h // d) * d, -(-w // d) * d) for h, w in shapes)


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """ "800x1088,1088x800" -> ((800, 1088), (1088, 800))."""
    shapes = []
    for item in text.split(","):
        h, sep, w = item.strip().lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise ValueError(f"--shapes: expected 'HxW[,HxW...]' positive ints, got {item!r}")
        shapes.append((int(h), int(w)))
    return tuple(shapes)


def export_jax(
    variables: dict[str, Any],
    config,
    out: str | os.PathLike,
    *,
    shapes: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 1,
    platforms: Sequence[str] = PLATFORMS,
    source: str = "",
    class_names: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes the `jax.export` artifact (module docstring) and returns its manifest.

    Raises:
      ValueError: bad shapes, batch size or platforms; variables that do not fit `config`.
    """
    from jax_rcnn import meta_arch, modeling
    from jax_rcnn.checkpoint import detectron2 as d2_checkpoint

    bad = [p for p in platforms if p not in PLATFORMS]
    if bad or not platforms:
        raise ValueError(f"platforms must be a non-empty subset of {PLATFORMS}, got {platforms}")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    shapes = tuple(default_shapes(config) if shapes is None else shapes)
    d = max(int(config.input.size_divisibility), 1)
    for h, w in shapes:
        if h % d or w % d:
            raise ValueError(f"shape {h}x{w} is not a multiple of size_divisibility={d}")
    d2_checkpoint.convert_flax_to_detectron2(variables, config)  # names every mismatch

    flat = {k: np.asarray(v) for k, v in flatten_variables(variables).items()}
    flat_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
    model = modeling.build_model(config)
    model_inference = meta_arch.get(config).inference
    proposals_only = config.model.meta_architecture == "ProposalNetwork"
    output_keys = PROPOSAL_OUTPUT_KEYS if proposals_only else OUTPUT_KEYS
    traced_keys: list[str] = []  # the outputs this meta-architecture has, set when traced

    def inference(flat_variables, images, image_sizes, original_sizes):
        out = model_inference(
            model,
            unflatten_variables(flat_variables),
            images,
            image_sizes,
            original_sizes,
            config=config,
            backend=EXPORT_KERNELS,
        )
        traced_keys[:] = [k for k in output_keys if k in out]
        return {k: out[k] for k in traced_keys}

    b = int(batch_size)
    sizes = jax.ShapeDtypeStruct((b, 2), jnp.int32)
    lowered: dict[str, bytes] = {}
    platforms = tuple(platforms)
    errors: dict[str, str] = {}
    for h, w in shapes:
        images = jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8)
        while True:
            try:
                exp = jax.export.export(jax.jit(inference), platforms=platforms)(
                    flat_specs, images, sizes, sizes
                )
                break
            except Exception as e:  # noqa: BLE001 - fall back to CPU only, and report it
                if platforms == ("cpu",) or "cpu" not in platforms:
                    raise
                errors[",".join(platforms)] = f"{type(e).__name__}: {e}"[:2000]
                logger.warning("lowering for %s failed (%s); exporting for cpu only", platforms, e)
                platforms = ("cpu",)
        lowered[f"inference_{h}x{w}_b{b}.jaxexport"] = bytes(exp.serialize())

    with _staging_dir(out, overwrite) as tmp:
        np.savez(os.path.join(tmp, VARIABLES), **flat)
        for name, blob in lowered.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(blob)
        manifest = _base_manifest(config, "jax", source, class_names)
        manifest.update(
            pad_mode=str(config.input.pad_mode),
            buckets=[list(map(int, s)) for s in config.input.buckets],
            size_divisibility=int(config.input.size_divisibility),
            resize={
                "min_size_test": int(config.input.min_size_test),
                "max_size_test": int(config.input.max_size_test),
            },
            shapes=[[h, w] for h, w in shapes],
            modules={f"{h}x{w}": name for (h, w), name in zip(shapes, lowered, strict=True)},
            batch_size=b,
            platforms=list(platforms),
            platform_errors=errors,
            kernels=EXPORT_KERNELS,
            outputs=list(traced_keys),
            calling_convention_version=int(exp.calling_convention_version),
            num_parameters=int(sum(v.size for v in flat.values())),
        )
        _write_manifest(tmp, manifest)
    return manifest


def export_checkpoint(
    config, weights: str | os.PathLike, out: str | os.PathLike, *, format: str = "jax", **kwargs
):
    """Reads `weights` for `config` and exports it in `format` ("jax" or "detectron2").

    Args:
      config: the jax_rcnn config.
      weights: Detectron2 `.pkl` or orbax checkpoint (`load_checkpoint`; `step=` in kwargs).
      out: output directory.
      format: one of `FORMATS`.
      **kwargs: `step`, and the keyword arguments of `export_jax` / `export_detectron2`.

    Returns:
      The manifest (jax) or the `.pkl` path (detectron2).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {FORMATS}")
    overwrite = kwargs.get("overwrite", False)
    if os.path.lexists(out) and not overwrite:  # fail before the slow part
        raise FileExistsError(
            f"output directory {os.path.abspath(out)} already exists; pass --overwrite "
            "(overwrite=True) to replace it"
        )
    variables = load_checkpoint(weights, config, kwargs.pop("step", None))
    kwargs.setdefault("source", os.fspath(weights))
    if format == "detectron2":
        return export_detectron2(variables, config, out, **kwargs)
    return export_jax(variables, config, out, **kwargs)


# ---------------------------------------------------------------------------------------------
# Loading (no Flax, no jax_rcnn.modeling)


def _current_platform() -> str:
    platform = jax.default_backend()
    return "cuda" if platform == "gpu" else platform


class ExportedPredictor:
    """`Predictor`'s interface over a `--format jax` export (see `load`).

    Attributes:
      manifest: the export's `manifest.json`.
      class_names: names by class id (may be empty).
      shapes: the exported padded (H, W) shapes.
      batch_size: the exported batch size (larger batches run in chunks).
    """

    def __init__(self, directory: str | os.PathLike, manifest: dict, platform: str):
        self.directory = os.fspath(directory)
        self.manifest = manifest
        self.class_names = tuple(manifest["class_names"])
        self.shapes = tuple(tuple(s) for s in manifest["shapes"])
        self.batch_size = int(manifest["batch_size"])
        self.platform = platform
        resize = manifest["resize"]
        # make_test_example resizes only (size_divisibility 1); padding is to an exported shape.
        self._input_config = types.SimpleNamespace(
            input=types.SimpleNamespace(
                min_size_test=resize["min_size_test"],
                max_size_test=resize["max_size_test"],
                pad_mode="size_divisibility",
                size_divisibility=1,
                format=manifest["input_format"],
            )
        )
        # the post-processing keys (`model.sem_seg_head`, `model.panoptic_fpn.combine`)
        self._config = ml_collections.ConfigDict(manifest["config"])
        with np.load(os.path.join(self.directory, VARIABLES)) as data:
            self.variables = {k: jax.device_put(data[k]) for k in data.files}
        self._run = {}
        for key, name in manifest["modules"].items():
            with open(os.path.join(self.directory, name), "rb") as f:
                exported = jax.export.deserialize(bytearray(f.read()))
            h, w = (int(x) for x in key.split("x"))
            self._run[(h, w)] = compile_jit(exported.call)

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Detections for one `u8[H, W, 3]` image (`manifest["input_format"]` channel order)."""
        return self.batch([image])[0]

    def batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections for several images of any sizes (grouped by padded shape, as `Predictor`).

        Raises:
          ValueError: an image that no exported shape holds (re-export with `--shapes`).
        """
        examples = []
        for i, img in enumerate(images):
            ex = batching.make_test_example(T.check_image(img, f"images[{i}]"), self._input_config)
            h, w = (int(s) for s in ex["image_size"])
            fits = [s for s in self.shapes if s[0] >= h and s[1] >= w]
            if not fits:
                raise ValueError(
                    f"images[{i}]: resized to {h}x{w}, which no exported shape holds "
                    f"({[f'{a}x{b}' for a, b in self.shapes]}); export again with "
                    f"--shapes including one at least that large"
                )
            ex["image"] = batching.pad_image(ex["image"], min(fits, key=lambda s: s[0] * s[1]))
            examples.append(ex)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(ex["image"].shape[:2], []).append(i)
        results: list[dict[str, np.ndarray] | None] = [None] * len(examples)
        n = self.batch_size
        for shape, idx in groups.items():
            for start in range(0, len(idx), n):
                chunk = idx[start : start + n]
                # Fill a short chunk with copies of its first image (their outputs are dropped).
                filled = chunk + [chunk[0]] * (n - len(chunk))
                batch = batching.collate([examples[i] for i in filled])
                out = self._run[shape](
                    self.variables,
                    jnp.asarray(batch["image"]),
                    jnp.asarray(batch["image_size"]),
                    jnp.asarray(batch["original_size"]),
                )
                out = jax.device_get(out)
                for j, i in enumerate(chunk):
                    size = tuple(int(s) for s in batch["original_size"][j])
                    if "sem_seg_logits" in out:  # PanopticFPN, SemanticSegmentor
                        resized = tuple(int(s) for s in batch["image_size"][j])
                        results[i] = panoptic.panoptic_for_image(
                            out, j, resized, size, self._config
                        )
                    else:
                        results[i] = postprocess.instances_for_image(out, j, size)
        return results  # type: ignore[return-value]


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an export directory.

    Raises:
      FileNotFoundError: no such directory, or no manifest (not an export, or incomplete).
      ValueError: a manifest of another format or a newer version.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"export directory not found: {directory!r}")
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{directory!r} has no {MANIFEST}: not a jax_rcnn export (or an incomplete one)"
        )
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a jax_rcnn export manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: export format version {manifest['format_version']} is newer than this "
            f"jax_rcnn reads ({FORMAT_VERSION}); upgrade jax_rcnn"
        )
    missing = [
        f for f in manifest.get("files", {}) if not os.path.isfile(os.path.join(directory, f))
    ]
    if missing:
        raise FileNotFoundError(f"{directory!r}: files listed in {MANIFEST} are missing: {missing}")
    return manifest


def load(directory: str | os.PathLike) -> ExportedPredictor:
    """Loads a `--format jax` export as a callable with `Predictor`'s interface.

    Needs only jax, NumPy, Pillow and the host-side `jax_rcnn.data` / `jax_rcnn.masks`: neither
    Flax nor `jax_rcnn.modeling` is imported. Each padded shape compiles on its first use.

    Raises:
      FileNotFoundError / ValueError: not a (complete) jax export; wrong platform.
    """
    manifest = read_manifest(directory)
    if manifest["kind"] != "jax":
        raise ValueError(
            f"{os.fspath(directory)!r} is a {manifest['kind']!r} export; load its "
            f"{D2_CHECKPOINT} with Predictor(config, weights=...) or Detectron2 instead"
        )
    platform = _current_platform()
    if platform not in manifest["platforms"]:
        raise ValueError(
            f"{os.fspath(directory)!r} was exported for {manifest['platforms']}, but jax runs on "
            f"{platform!r}; export again with --platforms {platform}"
        )
    return ExportedPredictor(directory, manifest, platform)


# ---------------------------------------------------------------------------------------------
# --info


def _count_by_prefix(shapes: dict[str, Sequence[int]], depth: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, shape in shapes.items():
        key = "/".join(name.replace(".", "/").split("/")[:depth])
        counts[key] = counts.get(key, 0) + int(np.prod(shape, dtype=np.int64))
    return counts


def info(path: str | os.PathLike, step: int | None = None) -> str:
    """A summary of a checkpoint: step, config summary and parameter counts.

    Args:
      path: an orbax training checkpoint (work dir, `checkpoints/`, `checkpoints/<step>`) or
        a Detectron2 `.pkl`.
      step: orbax step (default: latest).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {os.fspath(path)!r}")
    lines = []
    if is_orbax_checkpoint(path):
        ckpt_dir, step = _orbax_location(path, step)
        items = _read_orbax_json(ckpt_dir, step)
        cfg = items["config"]
        shapes = {k: v[0] for k, v in items["shapes"].items()}
        lines.append(f"checkpoint: {ckpt_dir} (orbax, step {step})")
        lines.append("config:")
        for key in (
            "model.meta_architecture",
            "model.resnets.depth",
            "model.resnets.norm",
            "model.backbone.name",
            "model.fpn.out_channels",
            "model.roi_heads.name",
            "model.roi_heads.num_classes",
            "model.retinanet.num_classes",
            "model.mask_on",
            "input.pad_mode",
            "input.buckets",
            "data.name",
            "solver.max_iter",
            "solver.ims_per_batch",
            "solver.base_lr",
        ):
            if key in cfg:
                lines.append(f"  {key}: {cfg[key]!r}")
        names = cfg.get("data.class_names") or []
        if names:
            lines.append(f"  data.class_names: {len(names)} ({', '.join(map(str, names[:5]))}...)")
    else:
        from jax_rcnn.checkpoint import detectron2 as d2_checkpoint

        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="latin1")
        state_dict = d2_checkpoint.load_detectron2_pkl(path)
        shapes = {k: v.shape for k, v in state_dict.items()}
        lines.append(f"checkpoint: {os.path.abspath(path)} (Detectron2 .pkl)")
        if isinstance(raw, dict):
            for key in ("__author__", "iteration", "matching_heuristics"):
                if key in raw:
                    lines.append(f"  {key}: {raw[key]!r}")
        cls = shapes.get("roi_heads.box_predictor.cls_score.weight") or shapes.get(
            "roi_heads.box_predictor.0.cls_score.weight"  # CascadeROIHeads: one per stage
        )
        if cls:
            lines.append(f"  num_classes: {cls[0] - 1}")
        lines.append(f"  mask head: {any('mask_head' in n for n in shapes)}")
    total = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    lines.append(f"parameters: {total:,} in {len(shapes)} arrays")
    depth = 2 if is_orbax_checkpoint(path) else 1
    for key, n in sorted(_count_by_prefix(shapes, depth).items()):
        lines.append(f"  {key}: {n:,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m jax_rcnn.export` (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m jax_rcnn.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="configs/x.py[:variant] or a Detectron2 YAML")
    parser.add_argument("--weights", help="Detectron2 .pkl, or an orbax work dir / checkpoint")
    parser.add_argument("--out", help="output directory (must not exist, see --overwrite)")
    parser.add_argument("--format", default="jax", help=f"one of {FORMATS} (default jax)")
    parser.add_argument("--step", type=int, default=None, help="orbax step (default latest)")
    parser.add_argument("--shapes", default=None, help="padded shapes HxW,... (jax format)")
    parser.add_argument("--batch", type=int, default=1, help="exported batch size (jax format)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS), help="e.g. cpu,cuda")
    parser.add_argument("--class-names", default=None, help="comma-separated, by class id")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--info", metavar="CKPT", help="print a checkpoint summary and exit")
    args = parser.parse_args(argv)

    try:
        if args.info:
            print(info(args.info, args.step))
            return 0
        if not (args.config and args.weights and args.out):
            parser.error("--config, --weights and --out are required (or use --info CKPT)")
        if args.format not in FORMATS:
            parser.error(f"--format must be one of {FORMATS}, got {args.format!r}")
        from jax_rcnn import config as config_lib
        from jax_rcnn.demo import class_names_for

        config = load_config_spec(args.config)
        config_lib.validate(config)
        kwargs: dict[str, Any] = dict(
            step=args.step,
            class_names=class_names_for(config, args.class_names),
            overwrite=args.overwrite,
        )
        if args.format == "jax":
            kwargs.update(
                shapes=parse_shapes(args.shapes) if args.shapes else None,
                batch_size=args.batch,
                platforms=tuple(p.strip() for p in args.platforms.split(",") if p.strip()),
            )
        result = export_checkpoint(config, args.weights, args.out, format=args.format, **kwargs)
        if args.format == "detectron2":
            print(f"wrote {result}")
        else:
            size = sum(f["bytes"] for f in result["files"].values())
            print(
                f"wrote {os.path.abspath(args.out)}: shapes {result['shapes']}, batch "
                f"{result['batch_size']}, platforms {result['platforms']}, {size:,} bytes"
            )
            for plats, err in result["platform_errors"].items():
                print(f"warning: lowering for {plats} failed, exported cpu only: {err}")
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
