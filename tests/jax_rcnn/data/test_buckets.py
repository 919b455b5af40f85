"""The padding-bucket chooser: at most max_buckets shapes, holding every resized image."""

import itertools

import numpy as np
import pytest

from jax_rcnn.config import load_config
from jax_rcnn.data import buckets as Bk
from jax_rcnn.data import transforms as T
from jax_rcnn.data.batching import pick_bucket

RECIPE = {"min_sizes": (256, 288, 320), "sampling": "choice", "max_size": 512}


def _sizes(seed=0, n=300, lo=256, hi=400):
    return [tuple(s) for s in np.random.default_rng(seed).integers(lo, hi + 1, (n, 2))]


@pytest.mark.parametrize("max_buckets", [1, 2, 3, 4, 6])
def test_every_training_image_fits_within_the_budget(max_buckets):
    sizes = _sizes()
    weights = Bk.resized_shape_weights(**RECIPE, image_sizes=sizes)
    choice = Bk.choose_buckets(weights, 32, max_buckets)
    assert 1 <= len(choice.buckets) <= max_buckets
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in choice.buckets)
    for (h, w), s in itertools.product(sizes, RECIPE["min_sizes"]):
        nh, nw = T.resize_shortest_edge_shape(h, w, s, RECIPE["max_size"])
        pick_bucket(nh, nw, choice.buckets)  # raises if no bucket holds it
    assert 0 <= choice.exact_share <= choice.padded_share < 1


def test_one_bucket_is_the_bound_and_more_buckets_pad_less():
    weights = Bk.resized_shape_weights(**RECIPE, image_sizes=_sizes())
    shares = [Bk.choose_buckets(weights, 32, k).padded_share for k in (1, 2, 4, 8)]
    bound = tuple(max(-(-shape[k] // 32) * 32 for shape in weights) for k in (0, 1))
    assert Bk.choose_buckets(weights, 32, 1).buckets == (bound,)
    assert shares == sorted(shares, reverse=True) and shares[-1] < 0.5 * shares[0]


def test_padded_share_by_hand():
    # Two equally likely shapes, one bucket: padding = 1 - real / bucket area.
    choice = Bk.choose_buckets({(32, 64): 0.5, (64, 32): 0.5}, 32, 1)
    assert choice.buckets == ((64, 64),)
    assert choice.padded_share == pytest.approx(0.5)
    assert Bk.choose_buckets({(32, 64): 0.5, (64, 32): 0.5}, 32, 2).padded_share == 0


def test_without_image_sizes_any_image_fits():
    """Policy-only buckets hold every image, whatever its aspect ratio (1:10 to 10:1)."""
    config = load_config("configs/mask_rcnn_R_50_FPN_1x.py")
    choice = Bk.train_buckets(config)
    assert len(choice.buckets) <= config.input.max_buckets
    rng = np.random.default_rng(1)
    i = config.input
    for _ in range(2000):
        h, w = (int(x) for x in rng.integers(10, 3000, 2))
        s = int(rng.choice(i.min_size_train))
        pick_bucket(*T.resize_shortest_edge_shape(h, w, s, i.max_size_train), choice.buckets)


def test_range_sampling_covers_every_short_edge():
    sizes = _sizes(n=50, lo=300, hi=900)
    weights = Bk.resized_shape_weights((200, 260), "range", 400, sizes)
    choice = Bk.choose_buckets(weights, 32, 3)
    for (h, w), s in itertools.product(sizes, range(200, 261)):
        pick_bucket(*T.resize_shortest_edge_shape(h, w, s, 400), choice.buckets)
