"""Shared stage helpers of `jax_rcnn.meta_arch`: first-slot runs, mask-ROI sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn.meta_arch import common, roi_heads


@pytest.mark.parametrize(
    "valid_rows,want",
    [
        ([[]], 8),  # no valid slot: the smallest branch
        ([[0, 9]], 16),  # holes: the last valid slot decides
        ([[3], [0, 1, 31]], 32),  # the image needing most slots decides
        ([[0, 64]], 72),  # beyond the largest listed size: all S slots
    ],
)
def test_run_on_first_slots_picks_the_smallest_branch_holding_every_valid_slot(valid_rows, want):
    valid = np.zeros((len(valid_rows), 72), bool)
    for b, rows in enumerate(valid_rows):
        valid[b, rows] = True
    x = jnp.arange(72.0)

    def make_branch(n):
        return lambda x: (jnp.sum(x[:n]), jnp.full((), n))

    total, n = jax.jit(lambda v, x: common.run_on_first_slots(v, make_branch, x))(valid, x)
    assert int(n) == want
    assert float(total) == float(np.sum(np.arange(want)))


def test_sample_mask_rois_draws_foreground_uniformly_as_a_prefix():
    # Image 0: foreground in 6 of 10 slots (with holes); image 1: only 2 (kept whole).
    valid = np.zeros((2, 10), bool)
    valid[0, [0, 1, 2, 4, 7, 9]] = True
    valid[1, [3, 5]] = True
    rois = {"slot": jnp.broadcast_to(jnp.arange(10), (2, 10)), "box": jnp.zeros((2, 10, 4))}
    fn = jax.jit(lambda k: roi_heads.sample_mask_rois(k, rois, jnp.asarray(valid), 3))
    counts = np.zeros(10)
    for i in range(600):
        out, kept = jax.device_get(fn(jax.random.key(i)))
        assert out["box"].shape == (2, 3, 4)
        assert kept[0].all() and len(set(out["slot"][0])) == 3
        assert set(out["slot"][0]) <= {0, 1, 2, 4, 7, 9}
        assert kept[1].tolist() == [True, True, False]  # foreground first
        assert sorted(out["slot"][1, :2]) == [3, 5]
        counts[out["slot"][0]] += 1
    # Each of the 6 foreground slots is kept with probability 1/2 (binomial sd ~12).
    np.testing.assert_allclose(counts[[0, 1, 2, 4, 7, 9]], 300, atol=45)
    assert counts[[3, 5, 6, 8]].sum() == 0
