"""Generate-once cache directories of the built-in synthetic datasets (host side).

`shapes` (and its long-tail and panoptic variants) and `people` are written on first use under
`cache_dir/{name}_v{version}_{digest}/`, where `digest` is the first 12 hex digits of the SHA-1
of the generator's parameters as sorted-key JSON (`params_digest`). A `stamp.json` holding the
parameters is written last; a directory counts as complete when its stamp equals the parameters,
every expected path exists and each image directory holds the expected number of files. The
dataset is written to a temporary directory in `cache_dir` and renamed into place, so an
interrupted run leaves nothing half-made and two processes racing keep one complete copy.
Changing a parameter or the generator version lands in a new directory.

Usage::

    paths = generate_once(
        cache_dir, "shapes", params, layout=_paths,
        file_counts={"train_images": n_train, "val_images": n_val}, write=_write_all,
    )
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """`$JAX_RCNN_CACHE` or `~/.cache/jax_rcnn` (what `config.data.cache_dir = ""` means)."""
    return os.environ.get("JAX_RCNN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jax_rcnn"
    )


def params_digest(params: Mapping) -> str:
    """12 hex digits naming a parameter set: SHA-1 of its sorted-key JSON."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def dataset_dir(cache_dir: str | os.PathLike | None, name: str, params: Mapping) -> str:
    """Absolute `cache_dir/{name}_v{params["version"]}_{params_digest(params)}`.

    Args:
        cache_dir: parent directory (None or "": `default_cache_dir()`).
        name: dataset name, e.g. "shapes".
        params: the generator's parameters, JSON-serialisable, with an int `version`.
    """
    cache_dir = os.path.abspath(os.fspath(cache_dir or default_cache_dir()))
    return os.path.join(cache_dir, f"{name}_v{params['version']}_{params_digest(params)}")


def is_complete(
    root: str, params: Mapping, paths: Mapping[str, str], file_counts: Mapping[str, int]
) -> bool:
    """Whether `root` holds a finished dataset made with `params`.

    Args:
        root: the dataset directory.
        params: the parameters its `stamp.json` must equal.
        paths: every path the dataset must contain.
        file_counts: `{key of paths: number of entries that directory must hold}`.
    """
    try:
        with open(os.path.join(root, "stamp.json")) as f:
            if json.load(f) != params:
                return False
    except (OSError, ValueError):
        return False
    return all(os.path.exists(v) for v in paths.values()) and all(
        len(os.listdir(paths[k])) == n for k, n in file_counts.items()
    )


def generate_once(
    cache_dir: str | os.PathLike | None,
    name: str,
    params: Mapping,
    *,
    layout: Callable[[str], dict],
    file_counts: Mapping[str, int],
    write: Callable[[str], None],
) -> dict:
    """Returns a dataset's paths, writing it with `write` unless a complete copy exists.

    Args:
        cache_dir: parent directory (None or "": `default_cache_dir()`).
        name: dataset name; the directory is `dataset_dir(cache_dir, name, params)`.
        params: the generator's parameters (with `version`), stored as `stamp.json`.
        layout: `root -> {key: absolute path}` of the dataset's files and directories.
        file_counts: `{key of layout: number of entries}` checked by `is_complete`.
        write: writes the whole dataset (without `stamp.json`) into the directory it is given.

    Returns:
        `layout(root)`.
    """
    root = dataset_dir(cache_dir, name, params)
    cache_dir = os.path.dirname(root)
    paths = layout(root)
    if is_complete(root, params, paths, file_counts):
        return paths
    if os.path.exists(root):
        logger.warning("%s dataset at %s is incomplete or stale; regenerating", name, root)
        shutil.rmtree(root)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=cache_dir)
    try:
        counts = ", ".join(f"{n} {k}" for k, n in file_counts.items())
        logger.info("generating %s dataset (%s) in %s", name, counts, root)
        write(tmp)
        with open(os.path.join(tmp, "stamp.json"), "w") as f:
            json.dump(params, f)
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished first; keep its copy if it is complete.
            if not is_complete(root, params, paths, file_counts):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return paths
