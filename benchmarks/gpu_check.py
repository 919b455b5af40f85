"""One command that verifies a GPU machine end to end and prints a table for RESULTS.md.

    python benchmarks/gpu_check.py                    # on a GPU machine: under 10 min on one H100
    python benchmarks/gpu_check.py --out gpu.md       # also write the table to a file
    python benchmarks/gpu_check.py --dry-run          # CPU, interpret mode, tiny sizes (CI)

Rows (`ROWS`), each measured in its own child process, so that a crash, a GPU fault or an
out-of-memory in one row cannot take the others down and every child gets the whole GPU:

* the device and versions;
* the self-check of each Pallas kernel compiled on this GPU vs its pure-JAX reference
  (`jax_rcnn.kernels.self_check`, re-run, and stored as this machine's cached verdict);
* the kernels vs `torchvision.ops` (`roi_align`, `nms`) on the same cases, when torch is
  importable (torch runs in its own process; it is never a dependency);
* kernel timings, Pallas vs reference vs torchvision (`benchmarks/kernels.py`, Detectron2's
  shapes, f32);
* Faster / Mask R-CNN R50-FPN inference img/s at 800x1333, batch 1, `kernels="auto"`
  (`benchmarks/inference.py`);
* a Faster / Mask R-CNN train step img/s at batch 16, 1024x1024, bf16, and its peak device
  memory (`benchmarks/train_step.py`);
* the tiny Mask R-CNN and RetinaNet fixtures (`tests/data/`) with `kernels="pallas"` against
  Detectron2's detections, with the tolerances of `tests/jax_rcnn/test_predictor.py`.

`--dry-run` runs every row on CPU (`JAX_PLATFORMS=cpu`, kernels interpreted) at tiny sizes
(smoke configs, `benchmarks/kernels.py --quick` shapes, one timed call); rows that mean nothing
there say "n/a (dry run)". The exit status is 1 when a row failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KERNEL_OPS = (
    "box pooler 7x7 fwd",
    "box pooler 7x7 fwd+bwd",
    "mask pooler 14x14 fwd",
    "mask pooler 14x14 fwd+bwd",
    "RPN NMS",
    "box-head NMS",
)
# (row, section): the table, in order. A section is one child process.
ROWS = (
    ("device", "env"),
    ("self-check roi_align: compiled kernel vs reference", "self_check"),
    ("self-check nms: compiled kernel vs reference", "self_check"),
    ("self-check soft_nms: compiled kernel vs reference", "self_check"),
    ("roi_align vs torchvision.ops.roi_align", "torch_parity"),
    ("nms vs torchvision.ops.nms", "torch_parity"),
    *((f"time {op} (ms): pallas / reference / torchvision", "kernel_timings") for op in KERNEL_OPS),
    ("Faster R-CNN R50-FPN inference, 800x1333", "inference_faster"),
    ("Mask R-CNN R50-FPN inference, 800x1333", "inference_mask"),
    ("Faster R-CNN R50-FPN train step, 16 x 1024x1024 bf16", "train_faster"),
    ("Faster R-CNN train step peak device memory", "train_faster"),
    ("Mask R-CNN R50-FPN train step, 16 x 1024x1024 bf16", "train_mask"),
    ("Mask R-CNN train step peak device memory", "train_mask"),
    ("tiny Mask R-CNN vs Detectron2, kernels=pallas", "tiny_parity"),
    ("tiny RetinaNet vs Detectron2, kernels=pallas", "tiny_parity"),
)
ROW_NAMES = tuple(r for r, _ in ROWS)
SECTIONS = tuple(dict.fromkeys(s for _, s in ROWS))
# Seconds per section on one H100 (generous; the whole run stops starting sections at DEADLINE).
TIMEOUTS = {
    "env": 60,
    "self_check": 120,
    "torch_parity": 150,
    "kernel_timings": 180,
    "inference_faster": 150,
    "inference_mask": 150,
    "train_faster": 210,
    "train_mask": 210,
    "tiny_parity": 180,
}
DEADLINE_S = 570
DRY = "n/a (dry run)"
NO_TORCH = "n/a (torch not importable)"


def _rows_of(section: str) -> list[str]:
    return [r for r, s in ROWS if s == section]


def _has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---- sections (each runs in a child process) ------------------------------------------------


def _env(dry: bool) -> dict:
    import jax

    d = jax.devices()[0]
    return {
        "device": (
            f"{d.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s))",
            f"jax {jax.__version__}, jaxlib {_version('jaxlib')}, Python "
            f"{platform.python_version()}, torch {_version('torch')}, torchvision "
            f"{_version('torchvision')}",
        )
    }


def _self_check(dry: bool) -> dict:
    from jax_rcnn import kernels

    rows = {}
    for op, row in zip(("roi_align", "nms", "soft_nms"), _rows_of("self_check"), strict=True):
        verdict = kernels.self_check(op, check_mode="rerun")
        result = "pass" if verdict.ok else "FAIL"
        rows[row] = (result + (" (interpreted)" if dry else ""), verdict.detail)
    return rows


def parity_cases() -> tuple[dict, tuple]:
    """NumPy cases for the torchvision comparison: the self-check's, NMS scores made distinct
    in this project's tie order (torchvision's sort is not stable).

    Returns:
      `({(S, sampling_ratio): (features, boxes, batch_idx, level_idx)}, (boxes f32[G, N, 4],
      scores f32[G, N], valid bool[G, N]))`.
    """
    from jax_rcnn import kernel_check

    roi = {}
    for size, sampling_ratio in ((7, 0), (14, 2)):
        feats, boxes, batch_idx, level_idx, _ = kernel_check.roi_align_case(
            size, sampling_ratio, "float32"
        )
        roi[(size, sampling_ratio)] = (
            [np.asarray(f) for f in feats],
            np.asarray(boxes),
            np.asarray(batch_idx),
            np.asarray(level_idx),
        )
    boxes, scores, valid = (np.asarray(a) for a in kernel_check.nms_case())
    n = scores.shape[1]
    distinct = np.zeros_like(scores)
    for g in range(len(scores)):
        order = np.lexsort((np.arange(n), -scores[g]))
        distinct[g, order] = (n - np.arange(n)) / n
    return roi, (boxes, distinct.astype(np.float32), valid)


def _torch_reference(path: str) -> None:
    """torchvision outputs for `parity_cases` (Detectron2's calls), saved to `path` (.npz)."""
    import torch
    from torchvision import ops

    from jax_rcnn import kernel_check

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    roi, (boxes, scores, valid) = parity_cases()
    out = {"device": np.asarray(dev)}
    for (size, sampling_ratio), (feats, rois, batch_idx, level_idx) in roi.items():
        pooled = np.zeros((len(rois), feats[0].shape[-1], size, size), np.float32)
        for level, (f, scale) in enumerate(zip(feats, kernel_check._SCALES, strict=True)):
            sel = np.flatnonzero(level_idx == level)
            x = torch.tensor(f, device=dev).permute(0, 3, 1, 2).contiguous()
            r = np.concatenate([batch_idx[sel, None].astype(np.float32), rois[sel]], 1)
            r = torch.tensor(r, device=dev)
            y = ops.roi_align(x, r, (size, size), scale, sampling_ratio, True)
            pooled[sel] = y.cpu().numpy()
        out[f"roi_{size}_{sampling_ratio}"] = pooled.transpose(0, 2, 3, 1)
    for g in range(len(scores)):
        sel = np.flatnonzero(valid[g])
        b, s = torch.tensor(boxes[g, sel], device=dev), torch.tensor(scores[g, sel], device=dev)
        keep = ops.nms(b, s, kernel_check.NMS_IOU_THRESHOLD).cpu().numpy()
        out[f"nms_{g}"] = sel[keep][: kernel_check.NMS_MAX_OUTPUT]
    np.savez(path, **out)


def _torch_parity(dry: bool) -> dict:
    row_roi, row_nms = _rows_of("torch_parity")
    if not _has_torch():
        return {row_roi: (NO_TORCH, ""), row_nms: (NO_TORCH, "")}
    import jax

    from jax_rcnn import kernel_check, kernels

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "torchvision.npz")
        env = dict(os.environ, JAX_PLATFORMS="cpu")  # the torch process leaves the GPU to torch
        cmd = [sys.executable, __file__, "--section", "torch_reference", "--npz", path]
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, timeout=120)
        with np.load(path) as data:
            want = dict(data)
    roi, (boxes, scores, valid) = parity_cases()
    rows = {}
    notes, ok = [], True
    for (size, sampling_ratio), (feats, rois, batch_idx, level_idx) in roi.items():
        tv = want[f"roi_{size}_{sampling_ratio}"]
        for name, impl in (("pallas", kernels.KERNELS["roi_align"].pallas),
                           ("reference", kernels.KERNELS["roi_align"].reference)):  # fmt: skip
            got = np.asarray(
                jax.jit(
                    lambda f, b, i, lv, impl=impl, s=size, sr=sampling_ratio: impl(
                        f,
                        b,
                        i,
                        lv,
                        spatial_scales=kernel_check._SCALES,
                        output_size=s,
                        sampling_ratio=sr,
                    )  # fmt: skip
                )(feats, rois, batch_idx, level_idx)
            )
            err = float(np.max(np.abs(got - tv)))
            ok &= bool(np.allclose(got, tv, rtol=1e-4, atol=1e-4))
            notes.append(f"{name} {size}x{size} sr{sampling_ratio}: max|d| {err:.1e}")
    detail = f"torchvision on {want['device']}; " + "; ".join(notes)
    rows[row_roi] = ("pass" if ok else "FAIL", detail)
    notes, ok = [], True
    for name, impl in (("pallas", kernels.KERNELS["nms"].pallas),
                       ("reference", kernels.KERNELS["nms"].reference)):  # fmt: skip
        keep, keep_valid = (
            np.asarray(a)
            for a in jax.jit(
                lambda b, s, v, impl=impl: impl(
                    b,
                    s,
                    v,
                    iou_threshold=kernel_check.NMS_IOU_THRESHOLD,
                    max_output=kernel_check.NMS_MAX_OUTPUT,
                )  # fmt: skip
            )(boxes, scores, valid)
        )
        same = all(
            np.array_equal(keep[g][keep_valid[g]], want[f"nms_{g}"]) for g in range(len(keep))
        )
        ok &= same
        notes.append(f"{name}: {'identical' if same else 'DIFFERENT'} kept indices")
    rows[row_nms] = ("pass" if ok else "FAIL", f"{len(scores)} groups; " + "; ".join(notes))
    return rows


def _kernel_timings(dry: bool) -> dict:
    import jax

    from benchmarks import kernels as kernel_bench

    shapes = kernel_bench.QUICK if dry else kernel_bench.FULL
    iters = 1 if dry else 20
    with_pallas = jax.default_backend() == "gpu"
    result = kernel_bench.run_jax(shapes, "f32", iters, with_pallas)
    times = dict(result["times"])
    torch_note = "torch not importable"
    if _has_torch():
        cmd = [sys.executable, kernel_bench.__file__, "--torch-worker", "--iters", str(iters)]
        proc = subprocess.run(
            cmd + (["--quick"] if dry else []), capture_output=True, text=True, timeout=120
        )
        if proc.returncode == 0:
            worker = json.loads(proc.stdout.strip().splitlines()[-1])
            times.update(worker["times"])
            torch_note = f"torchvision on {worker['device']}"
        else:
            torch_note = "torch worker failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    rows = {}
    for op, row in zip(KERNEL_OPS, _rows_of("kernel_timings"), strict=True):
        cells = []
        for col in ("pallas", "reference", "torchvision"):
            t = times.get(f"{op}|{col}")
            cells.append(f"{t:.3f}" if t is not None else ("n/a" if dry else "-"))
        check = result["checks"].get(op.rsplit(" fwd", 1)[0], "")
        shape_note = "quick shapes, CPU, 1 call" if dry else "Detectron2 shapes, f32, median of 20"
        rows[row] = (" / ".join(cells), "; ".join(x for x in (shape_note, torch_note, check) if x))
    return rows


def _inference(name: str, dry: bool) -> dict:
    from benchmarks import inference as inference_bench
    from jax_rcnn import kernels

    config = f"configs/{'faster' if name == 'faster' else 'mask'}_rcnn_R_50_FPN_1x.py:smoke"
    runs = 1 if dry else 10
    rows = inference_bench.run(name, runs, stages=False, config=config if dry else None)
    _, _, med, lo, hi, compile_s, _ = rows[0]
    what = "smoke config, CPU" if dry else "batch 1, Detectron2 init weights"
    detail = (
        f"{what}; median {1e3 * med:.1f} ms/img over {runs} (min {1e3 * lo:.1f}, max "
        f"{1e3 * hi:.1f}); compile {compile_s:.1f} s; kernels {kernels.resolve_backend('auto')}"
    )
    (row,) = _rows_of(f"inference_{name}")
    return {row: (f"{1 / med:.2f} img/s", detail)}


def _train(name: str, dry: bool) -> dict:
    row, memory_row = _rows_of(f"train_{name}")
    if dry and name == "faster":
        note = "the Mask R-CNN rows run the same code on the smoke model"
        return {row: (DRY, note), memory_row: (DRY, note)}
    from benchmarks import train_step as train_bench

    if dry:
        r = train_bench.measure("smoke", 2, (128, 160), "float32", 1)
    else:
        r = train_bench.measure(name, 16, (1024, 1024), "bfloat16", 3)
    detail = (
        f"{r['model']} on {r['backend']} x{r['devices']}, batch {r['global_batch']} at "
        f"{r['size'][0]}x{r['size'][1]} {r['dtype']}; {r['s_per_iter']:.3f} s/iter; compile "
        f"{r['compile_s']:.1f} s; loss {r['total_loss']:.3g}"
    )
    peak = r["peak_device_gib"]
    memory = f"{peak:.1f} GiB" if peak is not None else f"n/a (not tracked on {r['backend']})"
    return {
        row: (f"{r['img_per_s']:.2f} img/s", detail),
        memory_row: (memory, f"peak host RSS {r['peak_rss_gib']:.1f} GiB"),
    }


def _tiny_parity(dry: bool) -> dict:
    from jax_rcnn.config import from_detectron2
    from jax_rcnn.data.transforms import read_image
    from jax_rcnn.predictor import Predictor

    rows = {}
    fixtures = ("tiny_maskrcnn", "tiny_retinanet")
    for fixture, row in zip(fixtures, _rows_of("tiny_parity"), strict=True):
        data = ROOT / "tests" / "data" / fixture
        if not (data / "inference.npz").exists():
            rows[row] = ("n/a (tests/data not found: run from a checkout)", "")
            continue
        config = from_detectron2(data / "config.yaml")
        config.model.kernels = "pallas"
        out = Predictor(config, weights=data / "model_final.pkl")(
            read_image(data / "image.jpg", "BGR")
        )
        with np.load(data / "inference.npz") as f:
            want = {k: f[k] for k in f.files if k.startswith("img0_final_")}
        problems, notes = [], [f"{len(want['img0_final_scores'])} detections"]
        if len(out["scores"]) != len(want["img0_final_scores"]):
            problems.append(f"{len(out['scores'])} detections")
        else:
            box = float(np.max(np.abs(out["boxes"] - want["img0_final_boxes"]), initial=0))
            score_ok = np.allclose(out["scores"], want["img0_final_scores"], rtol=1e-4, atol=1e-6)
            notes.append(f"max |box - Detectron2| {box:.3f} px")
            if box > 0.05:
                problems.append("boxes differ")
            if not score_ok:
                problems.append("scores differ")
            if not np.array_equal(out["classes"], want["img0_final_classes"]):
                problems.append("classes differ")
            if "masks" in out:
                a, b = out["masks"], want["img0_final_masks"]
                union = (a | b).sum((1, 2))
                iou = np.where(union == 0, 1.0, (a & b).sum((1, 2)) / np.maximum(union, 1))
                notes.append(f"min mask IoU {float(np.min(iou, initial=1)):.3f}")
                if np.min(iou, initial=1) < 0.99:
                    problems.append("masks differ")
        result = "pass" if not problems else "FAIL: " + ", ".join(problems)
        rows[row] = (result + (" (interpreted)" if dry else ""), "; ".join(notes))
    return rows


SECTION_FNS = {
    "env": _env,
    "self_check": _self_check,
    "torch_parity": _torch_parity,
    "kernel_timings": _kernel_timings,
    "inference_faster": lambda dry: _inference("faster", dry),
    "inference_mask": lambda dry: _inference("mask", dry),
    "train_faster": lambda dry: _train("faster", dry),
    "train_mask": lambda dry: _train("mask", dry),
    "tiny_parity": _tiny_parity,
}


# ---- the parent -----------------------------------------------------------------------------


def _run_section(section: str, dry: bool, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--section", section] + (["--dry-run"] if dry else [])
    env = dict(os.environ, JAX_PLATFORMS="cpu") if dry else dict(os.environ)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
        )
    except subprocess.TimeoutExpired:
        return {row: (f"FAILED: timed out after {timeout:.0f} s", "") for row in _rows_of(section)}
    elapsed = time.perf_counter() - t0
    print(f"[gpu_check] {section}: {elapsed:.1f} s, exit {proc.returncode}", file=sys.stderr)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-6000:])
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {row: (f"FAILED (exit {proc.returncode})", last) for row in _rows_of(section)}
    rows = json.loads(lines[-1])
    for row in _rows_of(section):
        rows.setdefault(row, ("FAILED: row missing from the section's output", ""))
    return {k: tuple(v) for k, v in rows.items()}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(results: dict, header: str) -> str:
    """The markdown table: one line per row of `ROWS` (rows not run say so)."""
    lines = [header, "", "| check | result | detail |", "|---|---|---|"]
    for row in ROW_NAMES:
        value, detail = results.get(row, ("not run", ""))
        lines.append(f"| {_cell(row)} | {_cell(value)} | {_cell(detail)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpret mode, tiny sizes")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--section", choices=[*SECTIONS, "torch_reference"], help=argparse.SUPPRESS)
    parser.add_argument("--npz", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section == "torch_reference":
        _torch_reference(args.npz)
        return 0
    if args.section:
        print(json.dumps(SECTION_FNS[args.section](args.dry_run)), flush=True)
        return 0

    # The dry run compiles on a (possibly loaded) CPU: its time is not the GPU budget's.
    slack = 4 if args.dry_run else 1
    start = time.perf_counter()
    results: dict = {}
    for section in SECTIONS:
        left = slack * DEADLINE_S - (time.perf_counter() - start)
        if left < 20:
            for row in _rows_of(section):
                results[row] = (f"not run: the {slack * DEADLINE_S} s budget is spent", "")
            continue
        timeout = min(slack * TIMEOUTS[section], left)
        results.update(_run_section(section, args.dry_run, timeout))
    command = "python benchmarks/gpu_check.py" + (" --dry-run" if args.dry_run else "")
    header = (
        f"GPU check, {time.strftime('%Y-%m-%d')}, `{command}`, {time.perf_counter() - start:.0f} s"
    )
    text = table(results, header)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
    failed = [r for r, (v, _) in results.items() if str(v).startswith("FAIL")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
