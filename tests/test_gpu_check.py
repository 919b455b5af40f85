"""`benchmarks/gpu_check.py`: the table has every row; the `--dry-run` (CPU, kernels interpreted,
tiny sizes) runs every section and fails none. This is how CI runs the GPU check's code paths."""

import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import gpu_check

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _row_names(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| check | result | detail |"
    return [line[2:].split(" | ")[0] for line in lines[1:]]


def test_table_skeleton_has_every_row_in_order():
    text = gpu_check.table({}, "header")
    assert _row_names(text) == list(gpu_check.ROW_NAMES)
    assert text.count("| not run |") == len(gpu_check.ROWS)
    assert set(gpu_check.SECTIONS) == set(gpu_check.SECTION_FNS) == set(gpu_check.TIMEOUTS)
    assert sum(gpu_check.TIMEOUTS.values()) > gpu_check.DEADLINE_S  # the deadline binds


@pytest.mark.slow
def test_dry_run_prints_every_row(tmp_path):
    env = dict(os.environ, JAX_RCNN_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "gpu_check.md"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_check.py"),
        "--dry-run",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    text = out.read_text().strip()
    print(text)
    assert text in proc.stdout
    assert _row_names(text) == list(gpu_check.ROW_NAMES)
    for line in text.splitlines()[1:]:
        assert "FAIL" not in line and "not run" not in line, line
    assert "| self-check nms: compiled kernel vs reference | pass (interpreted) |" in text
    assert "| self-check soft_nms: compiled kernel vs reference | pass (interpreted) |" in text
    assert "| tiny Mask R-CNN vs Detectron2, kernels=pallas | pass (interpreted) |" in text
