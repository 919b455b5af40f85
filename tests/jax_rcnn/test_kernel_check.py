"""The GPU self-check of the Pallas kernels (`jax_rcnn.kernel_check`, `kernels.resolve_backend`).

CPU only: a fake GPU platform and device kind are patched into `jax_rcnn.kernels`, so "auto"
and "pallas" go through the self-check; faulty and raising kernels are injected into
`kernels.KERNELS`; kernels called without `interpret` run interpreted (the real backend is CPU).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import kernel_check, kernels
from jax_rcnn.kernel_check import Kernel

DEVICE = "Fake GPU 80GB"
REAL = dict(kernels.KERNELS)


def _passing(op):
    """A "kernel" that is the reference itself, so checks pass at once."""
    ref = REAL[op].reference
    return Kernel(lambda *a, interpret=None, **k: ref(*a, **k), ref, 1)


def _faulty_nms(*args, interpret=None, **kw):
    keep, keep_valid = REAL["nms"].reference(*args, **kw)
    return jnp.roll(keep, 1, axis=1), keep_valid  # wrong order of kept boxes


def _raising_roi_align(*args, interpret=None, **kw):
    raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered")


class Counting:
    """The reference, counting its calls as a kernel."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args, interpret=None, **kw):
        self.calls += 1
        return REAL[self.op].reference(*args, **kw)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_RCNN_CACHE", str(tmp_path))
    monkeypatch.delenv(kernel_check.MODE_ENV, raising=False)
    monkeypatch.setattr(kernel_check, "_MEMORY", {})
    monkeypatch.setattr(kernels, "_WARNED", set())
    monkeypatch.setattr(kernels, "_platform", lambda: "gpu")
    monkeypatch.setattr(kernels, "_device_kind", lambda: DEVICE)
    for op in REAL:
        monkeypatch.setitem(kernels.KERNELS, op, _passing(op))
    return tmp_path


def _nms_inputs():
    boxes, scores, valid = kernel_check.nms_case()
    return boxes, scores, valid


def _jit_nms(backend):
    return jax.jit(
        lambda b, s, v: kernels.nms(b, s, v, iou_threshold=0.5, max_output=8, backend=backend)
    )


def _jit_roi_align_grad(backend):
    feats, boxes, batch_idx, level_idx, _ = kernel_check.roi_align_case(7, 0, "float32")

    def loss(f):
        out = kernels.roi_align(
            f, boxes, batch_idx, level_idx, spatial_scales=(0.5, 0.25), output_size=7,
            sampling_ratio=0, backend=backend,
        )  # fmt: skip
        return jnp.sum(out)

    return jax.jit(jax.grad(loss)), feats


def test_faulty_kernel_falls_back_and_warns(fake_gpu, monkeypatch, caplog):
    monkeypatch.setitem(kernels.KERNELS, "nms", REAL["nms"]._replace(pallas=_faulty_nms))
    args = _nms_inputs()
    with caplog.at_level(logging.WARNING, logger="jax_rcnn.kernels"):
        got = _jit_nms("auto")(*args)  # the check runs while `kernels.nms` is being traced
    want = jax.jit(lambda b, s, v: REAL["nms"].reference(b, s, v, iou_threshold=0.5, max_output=8))(
        *args
    )
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    (record,) = [r for r in caplog.records if "self-check" in r.getMessage()]
    message = record.getMessage()
    assert "Pallas nms kernel" in message and DEVICE in message and "mismatch" in message
    assert kernels.resolve_backend("auto", "nms") == "reference"
    assert kernels.resolve_backend("auto", "roi_align") == "pallas"  # per-op verdicts
    assert kernels.resolve_backend("auto") == "reference"
    _jit_nms("auto")(*args)
    assert len([r for r in caplog.records if "self-check" in r.getMessage()]) == 1  # warns once


def test_raising_kernel_falls_back_and_warns(fake_gpu, monkeypatch, caplog):
    kernel = REAL["roi_align"]._replace(pallas=_raising_roi_align)
    monkeypatch.setitem(kernels.KERNELS, "roi_align", kernel)
    grad_fn, feats = _jit_roi_align_grad("auto")
    with caplog.at_level(logging.WARNING, logger="jax_rcnn.kernels"):
        grads = grad_fn(feats)  # traced under jit(grad): the check still runs eagerly
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "Pallas roi_align kernel failed its self-check" in message
    assert DEVICE in message and "CUDA_ERROR_ILLEGAL_ADDRESS" in message
    assert "RuntimeError" in message


def test_forced_pallas_with_faulty_kernel_raises(fake_gpu, monkeypatch):
    monkeypatch.setitem(kernels.KERNELS, "nms", REAL["nms"]._replace(pallas=_faulty_nms))
    with pytest.raises(kernels.KernelCheckError, match="Pallas nms kernel failed .*Fake GPU"):
        _jit_nms("pallas")(*_nms_inputs())
    kernel = REAL["roi_align"]._replace(pallas=_raising_roi_align)
    monkeypatch.setitem(kernels.KERNELS, "roi_align", kernel)
    with pytest.raises(kernels.KernelCheckError, match="roi_align.*ILLEGAL_ADDRESS"):
        kernels.resolve_backend("pallas", "roi_align")


def test_real_kernels_pass_in_interpret_mode(fake_gpu, monkeypatch):
    for op, kernel in REAL.items():
        monkeypatch.setitem(kernels.KERNELS, op, kernel)
    for op in REAL:
        verdict = kernels.self_check(op)
        assert verdict.ok, verdict.detail
    assert kernels.resolve_backend("auto") == "pallas"
    assert kernels.resolve_backend("pallas") == "pallas"
    data = json.loads((fake_gpu / kernel_check.CACHE_FILE).read_text())
    assert {e["state"] for e in data.values()} == {"done"}
    assert all(e["ok"] for e in data.values()) and len(data) == len(REAL) == 3


def test_cached_verdict_is_reused(fake_gpu, monkeypatch):
    counting = Counting("nms")
    monkeypatch.setitem(kernels.KERNELS, "nms", REAL["nms"]._replace(pallas=counting, version=7))
    assert kernels.resolve_backend("auto", "nms") == "pallas"
    calls = counting.calls
    assert calls == 1
    kernels.resolve_backend("auto", "nms")
    _jit_nms("auto")(*_nms_inputs())  # the model's own call is the kernel's second call
    assert counting.calls == calls + 1
    # A new process (empty memory cache) reads the verdict from disk.
    monkeypatch.setattr(kernel_check, "_MEMORY", {})
    assert kernels.self_check("nms").ok and counting.calls == calls + 1
    data = json.loads((fake_gpu / kernel_check.CACHE_FILE).read_text())
    key = f"nms v7 | {DEVICE} | jax {jax.__version__}"
    assert data[key]["state"] == "done" and data[key]["ok"] is True
    # "rerun" checks again; a new kernel version or device kind is a new key.
    monkeypatch.setattr(kernel_check, "_MEMORY", {})
    monkeypatch.setenv(kernel_check.MODE_ENV, "rerun")
    kernels.resolve_backend("auto", "nms")
    assert counting.calls == calls + 2
    monkeypatch.setenv(kernel_check.MODE_ENV, "on")
    monkeypatch.setattr(kernels, "_device_kind", lambda: "Another GPU")
    kernels.resolve_backend("auto", "nms")
    assert counting.calls == calls + 3
    # "off" trusts the kernels without a check.
    monkeypatch.setattr(kernel_check, "_MEMORY", {})
    monkeypatch.setenv(kernel_check.MODE_ENV, "off")
    monkeypatch.setattr(kernels, "_device_kind", lambda: "Third GPU")
    assert kernels.resolve_backend("auto", "nms") == "pallas" and counting.calls == calls + 3
    monkeypatch.setenv(kernel_check.MODE_ENV, "sometimes")
    with pytest.raises(ValueError, match=kernel_check.MODE_ENV):
        kernels.resolve_backend("auto", "nms")


def test_cached_failure_is_reused(fake_gpu, monkeypatch, caplog):
    monkeypatch.setitem(kernels.KERNELS, "nms", REAL["nms"]._replace(pallas=_faulty_nms))
    assert kernels.resolve_backend("auto", "nms") == "reference"
    monkeypatch.setattr(kernel_check, "_MEMORY", {})
    monkeypatch.setattr(kernels, "_WARNED", set())
    counting = Counting("nms")  # now correct, but the stored verdict for this version is kept
    monkeypatch.setitem(kernels.KERNELS, "nms", REAL["nms"]._replace(pallas=counting))
    with caplog.at_level(logging.WARNING, logger="jax_rcnn.kernels"):
        assert kernels.resolve_backend("auto", "nms") == "reference"
    assert counting.calls == 0 and "mismatch" in caplog.text


def test_check_that_died_is_a_failure(fake_gpu):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is no longer alive
    key = kernel_check.cache_key("nms", kernels.KERNELS["nms"].version, DEVICE)
    entry = {"state": "running", "host": socket.gethostname(), "pid": proc.pid, "time": "t"}
    (fake_gpu / kernel_check.CACHE_FILE).write_text(json.dumps({key: entry}))
    verdict = kernels.self_check("nms")
    assert not verdict.ok and "never finished" in verdict.detail
    assert kernels.resolve_backend("auto", "nms") == "reference"
    # A check still running in a live process (another worker) is not a verdict: check here.
    entry["pid"] = os.getpid()
    (fake_gpu / kernel_check.CACHE_FILE).write_text(json.dumps({key: entry}))
    kernel_check._MEMORY.clear()
    assert kernels.self_check("nms").ok


def test_cpu_auto_is_reference_without_a_check(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_RCNN_CACHE", str(tmp_path))
    counting = Counting("nms")
    monkeypatch.setitem(kernels.KERNELS, "nms", REAL["nms"]._replace(pallas=counting))
    assert jax.default_backend() == "cpu"
    assert kernels.resolve_backend("auto") == "reference"
    assert kernels.resolve_backend("pallas") == "pallas"  # interpreted, nothing compiled
    assert counting.calls == 0 and not (tmp_path / kernel_check.CACHE_FILE).exists()


def test_jax_without_pallas_triton_falls_back(fake_gpu, monkeypatch, caplog):
    """docs/kernels.md, plan step 1: when JAX drops Pallas-Triton, "auto" runs the references."""
    from pallas_kernels import nms as nms_module

    monkeypatch.setattr(nms_module, "pltriton", None)
    monkeypatch.setitem(kernels.KERNELS, "nms", REAL["nms"])
    with caplog.at_level(logging.WARNING, logger="jax_rcnn.kernels"):
        assert kernels.resolve_backend("auto", "nms") == "reference"
    assert "no Pallas Triton backend" in caplog.text
