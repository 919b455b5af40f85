"""Self-check of the Pallas kernels on the device that will run them, with a cached verdict.

The kernels have been checked interpreted and lowered to Triton IR on CPU; the first compiled
run happens on a user's GPU. Before `jax_rcnn.kernels` uses a kernel on a GPU it asks for a
`Verdict`: the kernel runs once on small deterministic cases against its pure-JAX reference on
that same device (ROIAlign forward and backward, f32 and bf16, adaptive and fixed sampling
grids, boxes on every border rule; NMS with tied scores, an IoU exactly at the threshold,
duplicates, zero-area boxes, an empty group and the `max_output` cap). A mismatch, a compile
error or any exception is a failed verdict that carries the error.

Verdicts are cached per (op, kernel version, device kind, JAX version): in memory for the
process and in `$JAX_RCNN_CACHE/kernel_check.json` (default `~/.cache/jax_rcnn`), so the check
costs once per machine (a few seconds of compile). `$JAX_RCNN_KERNEL_CHECK` selects the mode:
"on" (default), "off" (trust the kernels, check nothing) or "rerun" (ignore the file, check
once more in this process and store the new verdict). A process that dies during a check
(an illegal memory access can kill it) leaves a "running" entry; the next process on the host
reads it as a failure instead of crashing again.

This module never imports `pallas_kernels`: `jax_rcnn.kernels` passes the implementations in.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

MODE_ENV = "JAX_RCNN_KERNEL_CHECK"
MODES = ("on", "off", "rerun")
CACHE_FILE = "kernel_check.json"


class Kernel(NamedTuple):
    """One op's implementations: `pallas(..., interpret=bool)`, `reference(...)`, same contract."""

    pallas: Callable
    reference: Callable
    version: int


class Verdict(NamedTuple):
    """`ok`: the kernel matched its reference; `detail`: max errors, or the error when not ok."""

    ok: bool
    detail: str


class KernelCheckError(RuntimeError):
    """`config.model.kernels="pallas"` on a device where a kernel failed its self-check."""


class _Mismatch(AssertionError):
    pass


# ---- cases ---------------------------------------------------------------------------------

_SCALES = (0.5, 0.25)
# Two images, two levels; C=12 is not a power of two, so the wrapper's channel padding runs.
_LEVEL_SHAPES = ((2, 16, 20, 12), (2, 8, 10, 12))
# (image, level, x1, y1, x2, y2) in image px: every border rule of torchvision's ROIAlign.
_EDGE_ROIS = (
    (0, 0, 4.0, 4.0, 4.0, 4.0),  # zero size
    (1, 0, 3.0, 5.0, 2.0, 9.0),  # inverted: no samples
    (0, 1, -40.0, -30.0, -12.0, -9.0),  # fully outside
    (1, 0, 20.0, 14.0, 60.0, 40.0),  # past the bottom-right border
    (0, 0, 31.0, 22.0, 39.9, 31.9),  # y_low >= H - 1 collapses corners
    (1, 0, 38.5, 30.5, 40.0, 32.0),  # corner: all four corners are one table row
    (1, 0, 0.0, 10.0, 40.0, 11.0),  # thin and long
    (1, 1, 0.0, 0.0, 40.0, 32.0),  # whole image
    (0, 0, 5.3, 7.1, 5.9, 7.4),  # sub-pixel
    (1, 0, -6.0, -3.0, 12.0, 9.0),  # partly outside, top-left
)
# (output_size, sampling_ratio, dtype): the box and mask poolers' lane layouts, the adaptive
# loop and the unrolled fixed grid, and the bf16 feature table of bf16 training.
ROI_ALIGN_VARIANTS = ((7, 0, "float32"), (14, 2, "float32"), (7, 0, "bfloat16"))
# f32: summation order and FMA contraction only. bf16 gradients: one bf16 rounding of each sum.
_ROI_TOL = {"float32": (1e-4, 1e-4), "bfloat16": (1e-4, 1e-2)}  # (forward, gradient)


def roi_align_case(output_size: int, sampling_ratio: int, dtype: str, num_random: int = 6):
    """Deterministic ROIAlign inputs.

    Returns:
      `(features, boxes f32[R, 4], batch_idx i32[R], level_idx i32[R], gout f32[R, S, S, C])`,
      features per level `dtype[2, H_l, W_l, 12]`; `gout` is the output cotangent.
    """
    rng = np.random.RandomState(output_size + sampling_ratio)
    feats = [jnp.asarray(rng.randn(*s).astype(np.float32), dtype) for s in _LEVEL_SHAPES]
    xy = rng.uniform(-8, 40, (num_random, 2))
    wh = rng.uniform(0.5, 30, (num_random, 2))
    random_rois = np.concatenate([rng.randint(0, 2, (num_random, 2)), xy, xy + wh], axis=1)
    rois = np.concatenate([np.asarray(_EDGE_ROIS), random_rois]).astype(np.float32)
    c = _LEVEL_SHAPES[0][-1]
    gout = rng.randn(len(rois), output_size, output_size, c).astype(np.float32)
    return (
        feats,
        jnp.asarray(rois[:, 2:]),
        jnp.asarray(rois[:, 0].astype(np.int32)),
        jnp.asarray(rois[:, 1].astype(np.int32)),
        jnp.asarray(gout),
    )


def _roi_align_run(impl, case, output_size: int, sampling_ratio: int, **kw):
    """jit of `impl` on `case`: `(out f32[R, S, S, C], feature grads f32 per level)`."""
    feats, boxes, batch_idx, level_idx, gout = case

    def loss(f):
        out = impl(
            f,
            boxes,
            batch_idx,
            level_idx,
            spatial_scales=_SCALES,
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            **kw,
        )
        return jnp.sum(out * gout), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(feats)
    return np.asarray(out, np.float32), [np.asarray(g, np.float32) for g in grads]


def _check_roi_align(kernel: Kernel, interpret: bool) -> str:
    details = []
    for size, sampling_ratio, dtype in ROI_ALIGN_VARIANTS:
        case = roi_align_case(size, sampling_ratio, dtype)
        run = functools.partial(_roi_align_run, case=case, output_size=size,
                                sampling_ratio=sampling_ratio)  # fmt: skip
        got, got_grads = run(kernel.pallas, interpret=interpret)
        want, want_grads = run(kernel.reference)
        name = f"{size}x{size} sampling_ratio={sampling_ratio} {dtype}"
        fwd_tol, grad_tol = _ROI_TOL[dtype]
        if got.shape != want.shape:
            raise _Mismatch(f"forward {name}: shape {got.shape}, reference {want.shape}")
        fwd_err = float(np.max(np.abs(got - want))) if got.size else 0.0
        if not np.allclose(got, want, rtol=fwd_tol, atol=fwd_tol):
            raise _Mismatch(f"forward {name}: max |kernel - reference| = {fwd_err:.3g}")
        grad_err = 0.0
        for level, (g, w) in enumerate(zip(got_grads, want_grads, strict=True)):
            scale = float(np.max(np.abs(w))) if w.size else 0.0
            err = float(np.max(np.abs(g - w))) if w.size else 0.0
            if g.shape != w.shape or not np.allclose(g, w, rtol=grad_tol, atol=grad_tol * scale):
                raise _Mismatch(
                    f"backward {name}, level {level}: max |kernel - reference| = {err:.3g} "
                    f"(max |reference| {scale:.3g})"
                )
            grad_err = max(grad_err, err / max(scale, 1e-30))
        details.append(f"{name}: fwd {fwd_err:.1e}, grad {grad_err:.1e} rel")
    return "; ".join(details)


NMS_IOU_THRESHOLD = 0.5
NMS_MAX_OUTPUT = 16


def nms_case():
    """Deterministic NMS groups with ties.

    Returns:
      `(boxes f32[4, 40, 4], scores f32[4, 40], valid bool[4, 40])`: random boxes with scores
      from five values; the worked example at IoU exactly 0.5 (not suppressed), duplicates with
      equal scores and zero-area boxes; an empty group; a dense cluster that hits the cap.
    """
    rng = np.random.RandomState(0)
    groups, n = 4, 40
    xy = rng.uniform(0, 100, (groups, n, 2))
    wh = rng.uniform(5, 40, (groups, n, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = (rng.randint(0, 5, (groups, n)) / 5).astype(np.float32)
    valid = rng.rand(groups, n) > 0.2
    special = np.array(
        [[0, 0, 2, 2], [0, 0, 2, 1], [5, 5, 6, 6], [5, 5, 6, 6], [10, 10, 10, 10], [10, 10, 10, 10]]
        + [[20, 20, 30, 30]] * 4,
        np.float32,
    )
    boxes[1, : len(special)] = special
    scores[1, : len(special)] = [0.9, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5, 0.5, 0.4]
    valid[1] = np.arange(n) < len(special)
    valid[2] = False
    boxes[3] = boxes[3] * 0.1 + np.float32(np.arange(n) % 20 * 30)[:, None]
    valid[3] = True
    return jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid)


def _check_nms(kernel: Kernel, interpret: bool) -> str:
    boxes, scores, valid = nms_case()

    def run(impl, **kw):
        fn = jax.jit(
            lambda b, s, v: impl(
                b, s, v, iou_threshold=NMS_IOU_THRESHOLD, max_output=NMS_MAX_OUTPUT, **kw
            )
        )
        return tuple(np.asarray(x) for x in fn(boxes, scores, valid))

    (keep, keep_valid), (want, want_valid) = (
        run(kernel.pallas, interpret=interpret),
        run(kernel.reference),
    )
    if keep_valid.shape != want_valid.shape or not np.array_equal(keep_valid, want_valid):
        raise _Mismatch(
            f"kept counts per group {keep_valid.sum(-1).tolist()}, "
            f"reference {want_valid.sum(-1).tolist()}"
        )
    if not np.array_equal(keep[keep_valid], want[want_valid]):
        bad = int(np.argmax(np.any((keep != want) & want_valid, axis=1)))
        raise _Mismatch(
            f"kept indices differ in group {bad}: {keep[bad][keep_valid[bad]].tolist()}, "
            f"reference {want[bad][want_valid[bad]].tolist()}"
        )
    return f"{int(want_valid.sum())} kept boxes in {len(want)} groups identical"


def _check_soft_nms(kernel: Kernel, interpret: bool) -> str:
    boxes, scores, valid = nms_case()
    details = []
    for method in ("linear", "gaussian"):

        def run(impl, method=method, **kw):
            fn = jax.jit(
                lambda b, s, v: impl(
                    b,
                    s,
                    v,
                    iou_threshold=NMS_IOU_THRESHOLD,
                    max_output=NMS_MAX_OUTPUT,
                    method=method,
                    sigma=0.5,
                    min_score=1e-3,
                    **kw,
                )
            )
            return tuple(np.asarray(x) for x in fn(boxes, scores, valid))

        (keep, keep_s, keep_v), (want, want_s, want_v) = (
            run(kernel.pallas, interpret=interpret),
            run(kernel.reference),
        )
        if not np.array_equal(keep_v, want_v) or not np.array_equal(keep[keep_v], want[want_v]):
            raise _Mismatch(
                f"{method}: kept {keep_v.sum(-1).tolist()} per group, reference "
                f"{want_v.sum(-1).tolist()}; first difference in group "
                f"{int(np.argmax(np.any((keep != want) | (keep_v != want_v), axis=1)))}"
            )
        err = float(np.max(np.abs(keep_s - want_s), initial=0.0))
        if err > 1e-5:
            raise _Mismatch(f"{method}: kept scores differ by {err:.2e}")
        details.append(f"{method} {int(want_v.sum())} picks identical, scores within {err:.1e}")
    return "; ".join(details)


CHECKS = {"roi_align": _check_roi_align, "nms": _check_nms, "soft_nms": _check_soft_nms}


def check_kernel(op: str, kernel: Kernel, *, interpret: bool) -> Verdict:
    """Runs `op`'s kernel and reference on the default device and compares them; never raises.

    Runs eagerly even when called while a caller is being traced (`resolve_backend` runs at
    trace time): in a fresh thread, whose JAX trace state is empty. (`ensure_compile_time_eval`
    is not enough: it also evaluates the Pallas kernel bodies eagerly, which fails.)

    Args:
      op: a key of `CHECKS` ("roi_align", "nms" or "soft_nms").
      kernel: the implementations to compare.
      interpret: passed to `kernel.pallas` (True off GPU).

    Returns:
      the `Verdict`; any exception (compile error, runtime fault) is a failed one.
    """
    t0 = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kernel_check") as pool:
            detail = pool.submit(CHECKS[op], kernel, interpret).result()
    except _Mismatch as e:
        return Verdict(False, f"mismatch with the reference: {e}")
    except Exception as e:  # noqa: BLE001 - every failure is a verdict, reported by the caller
        return Verdict(False, f"{type(e).__name__}: {str(e)[:1500]}")
    return Verdict(True, f"{detail} ({time.perf_counter() - t0:.1f} s)")


# ---- cached verdicts -----------------------------------------------------------------------

_MEMORY: dict[str, Verdict] = {}


def mode() -> str:
    """`$JAX_RCNN_KERNEL_CHECK` ("on" when unset); raises ValueError on other values."""
    value = os.environ.get(MODE_ENV, "on").strip().lower() or "on"
    if value not in MODES:
        raise ValueError(f"${MODE_ENV} must be one of {MODES}, got {value!r}")
    return value


def cache_path() -> str:
    """`$JAX_RCNN_CACHE/kernel_check.json`, default `~/.cache/jax_rcnn/kernel_check.json`."""
    root = os.environ.get("JAX_RCNN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jax_rcnn"
    )
    return os.path.join(root, CACHE_FILE)


def cache_key(op: str, version: int, device_kind: str) -> str:
    """The key of one verdict: op, kernel version, device kind and JAX version."""
    return f"{op} v{version} | {device_kind} | jax {jax.__version__}"


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: str, key: str, entry: dict) -> None:
    """Read-modify-write of one entry with an atomic rename; a cache that cannot be written
    only costs a re-check, so errors are logged, not raised."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read(path)
        data[key] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        logger.info("could not write the kernel self-check cache %s: %s", path, e)


def _alive(pid: int) -> bool:
    if pid <= 0:  # os.kill would address a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stored(entry: dict, path: str) -> Verdict | None:
    """The verdict a cache entry holds, None when it holds none (yet)."""
    if entry.get("state") == "done":
        return Verdict(bool(entry.get("ok")), str(entry.get("detail", "")))
    if (
        entry.get("state") == "running"
        and entry.get("host") == socket.gethostname()
        and not _alive(int(entry.get("pid", -1)))
    ):
        return Verdict(
            False,
            f"a previous self-check (pid {entry.get('pid')}, {entry.get('time')}) never finished: "
            f"the process died during it (a GPU fault?). To check again: {MODE_ENV}=rerun or "
            f"delete {path}",
        )
    return None


def verdict(
    op: str,
    kernel: Kernel,
    *,
    device_kind: str,
    interpret: bool,
    check_mode: str | None = None,
) -> Verdict:
    """The cached verdict for `op`'s kernel on this device, checking it first if needed.

    Args:
      op: "roi_align" or "nms".
      kernel: the implementations (`kernel.version` is part of the cache key).
      device_kind: `jax.devices()[0].device_kind` of the device that will run the kernel.
      interpret: passed to the kernel (True off GPU: tests).
      check_mode: "on", "off" or "rerun"; None reads `$JAX_RCNN_KERNEL_CHECK`.

    Returns:
      the `Verdict` (ok without a check when the mode is "off").
    """
    check_mode = check_mode or mode()
    if check_mode == "off":
        return Verdict(True, f"not checked (${MODE_ENV}=off)")
    key = cache_key(op, kernel.version, device_kind)
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_path()
    if check_mode != "rerun":
        stored = _stored(_read(path).get(key, {}), path)
        if stored is not None:
            _MEMORY[key] = stored
            if not stored.ok:
                _write(path, key, {"state": "done", "ok": False, "detail": stored.detail})
            return stored
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write(path, key, {"state": "running", "host": socket.gethostname(), "pid": os.getpid()}
           | {"time": now})  # fmt: skip
    logger.info("self-checking the Pallas %s kernel on %s (once per machine)", op, device_kind)
    result = check_kernel(op, kernel, interpret=interpret)
    _write(path, key, {"state": "done", "ok": result.ok, "detail": result.detail, "time": now})
    _MEMORY[key] = result
    return result
