"""Shared by the tests of `pallas_kernels`: random box groups and CUDA cross-lowering."""

import jax
import numpy as np
import pytest


def random_groups(rng, num_groups, n, spread=200.0):
    """f32[num_groups, n, 4] xyxy boxes in `[0, spread + 60]` and distinct f32 scores."""
    xy = rng.uniform(0, spread, (num_groups, n, 2))
    wh = rng.uniform(5, 60, (num_groups, n, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = rng.permutation(num_groups * n).reshape(num_groups, n).astype(np.float32)
    return boxes, scores


def lower_for_cuda(fn, *args):
    """StableHLO text of `jit(fn)(*args)` lowered for CUDA (no GPU needed; PALLAS.md 5.3).

    Skips the test where this jax cannot lower Pallas for CUDA without a GPU.
    """
    try:
        lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    except Exception as e:  # noqa: BLE001
        if "No supported GPU" in str(e) or "not supported on this platform" in str(e):
            pytest.skip(f"this jax cannot lower Pallas for CUDA without a GPU: {e}")
        raise
    return lowered.as_text()
