"""Tests for jax_rcnn.sampling: Detectron2 subsample_labels counts, randomness, compaction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import sampling

# Jitted entry points: one compile per call instead of one per primitive keeps the file fast.
subsample = jax.jit(sampling.subsample_labels, static_argnums=(2, 3), static_argnames="bg_label")
compact = jax.jit(sampling.compact_indices, static_argnums=1)
gather = jax.jit(sampling.sampled_indices, static_argnums=2)


def _counts(labels, num_samples, fraction, bg_label=0):
    labels = np.asarray(labels)
    num_pos_avail = int(np.sum((labels != -1) & (labels != bg_label)))
    num_neg_avail = int(np.sum(labels == bg_label))
    num_pos = min(num_pos_avail, int(num_samples * fraction))
    return num_pos, min(num_neg_avail, num_samples - num_pos)


def test_worked_example():
    labels = jnp.array([1, 1, 1, 0, 0, -1])
    pos, neg = subsample(jax.random.key(0), labels, 4, 0.5)
    assert int(pos.sum()) == 2 and bool(pos[:3].sum() == 2) and not bool(pos[3:].any())
    np.testing.assert_array_equal(neg, [0, 0, 0, 1, 1, 0])
    pos, neg = subsample(jax.random.key(0), labels, 8, 0.5)
    np.testing.assert_array_equal(pos, [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(neg, [0, 0, 0, 1, 1, 0])


@pytest.mark.parametrize(
    "num_fg,num_bg,num_samples,fraction",
    [
        (10, 500, 256, 0.5),  # few positives: negatives fill up
        (300, 250, 256, 0.5),  # both capped
        (300, 20, 256, 0.5),  # few negatives: fewer than num_samples sampled
        (0, 0, 256, 0.5),  # nothing to sample
        (50, 500, 512, 0.25),  # ROI-head setting
        (7, 3, 3, 0.34),  # int(3 * 0.34) = 1
    ],
)
def test_counts_and_invariants(num_fg, num_bg, num_samples, fraction):
    # Padded with ignore labels to one length so cases share compilations.
    rng = np.random.RandomState(num_fg + num_bg)
    labels = np.array([1] * num_fg + [0] * num_bg + [-1] * (600 - num_fg - num_bg), np.int32)
    labels = labels[rng.permutation(labels.size)]
    pos, neg = subsample(jax.random.key(1), jnp.asarray(labels), num_samples, fraction)
    expected_pos, expected_neg = _counts(labels, num_samples, fraction)
    assert int(pos.sum()) == expected_pos and int(neg.sum()) == expected_neg
    pos, neg = np.asarray(pos), np.asarray(neg)
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
    assert not np.any(pos & neg)


def test_bg_label_for_roi_heads():
    # ROI heads: class ids 0..K-1 are foreground, K=3 is background.
    labels = jnp.array([0, 2, 3, 3, -1, 1, 3])
    pos, neg = subsample(jax.random.key(3), labels, 6, 0.5, bg_label=3)
    np.testing.assert_array_equal(pos, [1, 1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(neg, [0, 0, 1, 1, 0, 0, 1])


def test_deterministic_per_key_and_varies_across_keys():
    labels = jnp.asarray(np.array([1] * 40 + [0] * 200 + [-1] * 10, np.int32))
    a = subsample(jax.random.key(7), labels, 64, 0.25)
    b = subsample(jax.random.key(7), labels, 64, 0.25)
    c = subsample(jax.random.key(8), labels, 64, 0.25)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_uniform_selection_frequencies():
    """Every eligible element is chosen with probability num_pos / #pos (and likewise bg)."""
    labels = jnp.asarray(np.array([1] * 20 + [0] * 60 + [-1] * 20, np.int32))
    keys = jax.random.split(jax.random.key(0), 2000)
    fn = jax.jit(jax.vmap(lambda k: sampling.subsample_labels(k, labels, 16, 0.25)))
    pos, neg = fn(keys)
    freq_pos = np.asarray(pos[:, :20].mean(0))
    freq_neg = np.asarray(neg[:, 20:80].mean(0))
    # Binomial(2000, p) std: sqrt(p(1-p)/2000) ~ 0.009 for p=0.2; 5 sigma bounds.
    np.testing.assert_allclose(freq_pos, 4 / 20, atol=0.045)
    np.testing.assert_allclose(freq_neg, 12 / 60, atol=0.045)
    assert not pos[:, 20:].any() and not neg[:, :20].any() and not neg[:, 80:].any()


def test_empty_input():
    pos, neg = subsample(jax.random.key(0), jnp.zeros((0,), jnp.int32), 8, 0.5)
    assert pos.shape == (0,) and neg.shape == (0,)
    idx, valid = compact(jnp.zeros((0,), bool), 3)
    np.testing.assert_array_equal(idx, [0, 0, 0])
    np.testing.assert_array_equal(valid, [False] * 3)


def test_compact_indices():
    mask = jnp.array([0, 1, 1, 0, 1, 1, 0], bool)
    idx, valid = compact(mask, 3)
    np.testing.assert_array_equal(idx, [1, 2, 4])
    assert valid.all()
    idx, valid = compact(mask, 6)
    np.testing.assert_array_equal(idx, [1, 2, 4, 5, 0, 0])
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 0, 0])


def test_sampled_indices_positives_first():
    pos = jnp.array([0, 1, 0, 0, 1, 0, 0], bool)
    neg = jnp.array([1, 0, 0, 1, 0, 1, 0], bool)
    idx, valid = gather(pos, neg, 6)
    np.testing.assert_array_equal(idx, [1, 4, 0, 3, 5, 0])
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0])
    idx, valid = gather(pos, neg, 3)
    np.testing.assert_array_equal(idx, [1, 4, 0])
    assert valid.all()


def test_end_to_end_vmap_with_padding():
    """Per-image sampling + gather under jit(vmap); padded (ignored) slots are never chosen."""
    rng = np.random.RandomState(0)
    labels = rng.choice([-1, 0, 1], size=(3, 300), p=[0.2, 0.7, 0.1]).astype(np.int32)
    labels[:, 250:] = -1  # padding

    def per_image(key, lab):
        pos, neg = sampling.subsample_labels(key, lab, 64, 0.25)
        return gather(pos, neg, 64), pos.sum()

    keys = jax.random.split(jax.random.key(5), 3)
    (idx, valid), num_pos = jax.jit(jax.vmap(per_image))(keys, jnp.asarray(labels))
    for i in range(3):
        chosen = np.asarray(idx[i])[np.asarray(valid[i])]
        assert len(set(chosen.tolist())) == chosen.size
        assert np.all(chosen < 250)
        expected_pos, expected_neg = _counts(labels[i], 64, 0.25)
        assert chosen.size == expected_pos + expected_neg
        assert int(num_pos[i]) == expected_pos
        np.testing.assert_array_equal(labels[i][chosen[:expected_pos]], 1)
        np.testing.assert_array_equal(labels[i][chosen[expected_pos:]], 0)
