"""The research API (`jax_rcnn.research`): resolution and errors, and each recipe's function
against a direct NumPy / Python-loop re-computation on small cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_rcnn import boxes as box_ops
from jax_rcnn import config as config_lib
from jax_rcnn import matching, research, sampling, soft_nms

# --------------------------------------------------------------------------- resolution


def test_builtins_resolve_and_have_the_signatures():
    for point, (builtins, _, _) in research.POINTS.items():
        for name, fn in builtins.items():
            assert research.resolve(point, name) is fn
            research.check_signature(point, fn)


def test_unknown_name_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown sampler 'hard'.*'random', 'ohem'"):
        research.resolve("sampler", "hard")


def test_user_file_relative_to_cwd_and_module_import(tmp_path, monkeypatch):
    (tmp_path / "my_loss.py").write_text(
        "def l2(pred_deltas, target_deltas, pred_boxes, target_boxes, *, beta):\n"
        "    return ((pred_deltas - target_deltas) ** 2).sum(-1)\n"
        "def bad(x):\n    return x\n"
    )
    monkeypatch.chdir(tmp_path)
    fn = research.resolve("box_reg_loss", "my_loss.py:l2")
    assert fn.__name__ == "l2"
    np.testing.assert_allclose(fn(jnp.ones((2, 4)), jnp.zeros((2, 4)), None, None, beta=0), [4, 4])
    assert (
        research.resolve("box_reg_loss", "jax_rcnn.losses:smooth_l1_box_loss")
        is (research.BOX_REG_LOSSES["smooth_l1"])
    )
    with pytest.raises(ValueError, match="bad.*signature.*BoxRegLoss"):
        research.resolve("box_reg_loss", "my_loss.py:bad")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        research.resolve("box_reg_loss", "my_loss.py:nope")
    with pytest.raises(ValueError, match="does not exist"):
        research.resolve("box_reg_loss", "missing.py:f")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        research.resolve("box_reg_loss", "no_such_module_xyz:f")


def _quickstart():
    from configs import quickstart

    return quickstart.get_config("smoke")


def test_validate_names_the_key_before_compiling(tmp_path, monkeypatch):
    (tmp_path / "s.py").write_text("def sample(key, labels):\n    return labels, labels\n")
    monkeypatch.chdir(tmp_path)
    config = _quickstart()
    config.model.roi_heads.sampler = "s.py:sample"
    config.model.rpn.matcher = "hungarian"
    config.model.roi_box_head.bbox_reg_loss_type = "nowhere_mod:f"
    with pytest.raises(ValueError) as info:
        config_lib.validate(config)
    msg = str(info.value)
    assert "config.model.roi_heads.sampler = 's.py:sample'" in msg and "Sampler" in msg
    assert "config.model.rpn.matcher = 'hungarian': unknown assigner" in msg
    assert "config.model.roi_box_head.bbox_reg_loss_type = 'nowhere_mod:f'" in msg


def test_loss_ranked_sampler_only_in_standard_roi_heads():
    config = _quickstart()
    config.model.rpn.sampler = "ohem"
    with pytest.raises(ValueError, match="model.rpn.sampler.*only in the ROI heads"):
        config_lib.validate(config)


# --------------------------------------------------------------------------- samplers


def _labels_case(seed, n=60, bg=3):
    rng = np.random.RandomState(seed)
    labels = rng.choice([-1, 0, 1, 2, bg, bg, bg], size=n).astype(np.int32)
    quality = np.where(labels == bg, rng.uniform(0, 0.5, n), rng.uniform(0.5, 1, n))
    hardness = rng.choice(np.arange(8) / 4.0, size=n)  # ties on purpose
    return labels, quality.astype(np.float32), hardness.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_ohem_takes_the_hardest_in_index_order_on_ties(seed):
    bg = 3
    labels, quality, hardness = _labels_case(seed, bg=bg)
    pos, neg = sampling.ohem_sampler(
        jax.random.PRNGKey(0),
        jnp.asarray(labels),
        jnp.asarray(quality),
        jnp.asarray(hardness),
        num_samples=16,
        positive_fraction=0.25,
        bg_label=bg,
    )
    is_pos = (labels != -1) & (labels != bg)
    num_pos = min(is_pos.sum(), 4)
    num_neg = min((labels == bg).sum(), 16 - num_pos)

    def hardest(mask, k):
        idx = np.nonzero(mask)[0]
        order = idx[np.argsort(-hardness[idx], kind="stable")]
        out = np.zeros_like(mask)
        out[order[:k]] = True
        return out

    np.testing.assert_array_equal(pos, hardest(is_pos, num_pos))
    np.testing.assert_array_equal(neg, hardest(labels == bg, num_neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_balanced_negatives_match_numpy(seed):
    bg = 3
    labels, quality, _ = _labels_case(seed, n=90, bg=bg)
    key = jax.random.PRNGKey(seed)
    kw = dict(num_samples=32, positive_fraction=0.25, bg_label=bg)
    pos, neg = sampling.iou_balanced_sampler(
        key, jnp.asarray(labels), jnp.asarray(quality), jnp.zeros(90), **kw
    )
    # The same i.i.d. keys the function draws; a group keeps its smallest keys.
    keys = np.asarray(jax.random.bits(key, labels.shape, jnp.uint32))

    def smallest(mask, k):
        idx = np.nonzero(mask)[0]
        out = np.zeros_like(mask)
        out[idx[np.argsort(keys[idx], kind="stable")][: max(k, 0)]] = True
        return out

    is_pos, is_neg = (labels != -1) & (labels != bg), labels == bg
    num_pos = min(is_pos.sum(), 8)
    num_neg = min(is_neg.sum(), 32 - num_pos)
    np.testing.assert_array_equal(pos, smallest(is_pos, num_pos))
    iou = np.where(is_neg, quality, 0)
    width = iou.max() / 3
    bins = np.clip(np.floor(iou / width), 0, 2)
    ref = np.zeros_like(is_neg)
    for b in range(3):
        ref |= smallest(is_neg & (bins == b), num_neg // 3)
    ref |= smallest(is_neg & ~ref, num_neg - ref.sum())
    np.testing.assert_array_equal(neg, ref)
    assert neg.sum() == num_neg and not (neg & pos).any()


def test_random_sampler_is_subsample_labels():
    labels, quality, hardness = _labels_case(0)
    key = jax.random.PRNGKey(3)
    a = sampling.random_sampler(
        key,
        jnp.asarray(labels),
        quality,
        hardness,
        num_samples=16,
        positive_fraction=0.25,
        bg_label=3,
    )
    b = sampling.subsample_labels(key, jnp.asarray(labels), 16, 0.25, bg_label=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- soft-NMS


def _iou(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _soft_nms_loop(boxes, scores, valid, nt, k, method, sigma=0.5, min_score=1e-3):
    """Detectron (v1)'s soft_nms, one group, as a plain Python loop."""
    cur = {i: float(s) for i, s in enumerate(scores) if valid[i] and s >= min_score}
    keep, kept = [], []
    while cur and len(keep) < k:
        j = max(cur, key=lambda i: (cur[i], -i))
        keep.append(j)
        kept.append(cur.pop(j))
        for i in list(cur):
            ov = _iou(boxes[j], boxes[i])
            w = (1 - ov if ov > nt else 1.0) if method == "linear" else np.exp(-ov * ov / sigma)
            cur[i] *= w
            if cur[i] < min_score:
                del cur[i]
    return keep, kept


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_a_loop(method):
    rng = np.random.RandomState(0)
    g, n, k = 3, 12, 8
    xy = rng.uniform(0, 30, (g, n, 2))
    wh = rng.uniform(5, 20, (g, n, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (g, n)).astype(np.float32)
    valid = rng.uniform(size=(g, n)) > 0.2
    fn = soft_nms.soft_nms_linear if method == "linear" else soft_nms.soft_nms_gaussian
    keep, kept, keep_valid = jax.jit(lambda b, s, v: fn(b, s, v, iou_threshold=0.3, max_output=k))(
        boxes, scores, valid
    )
    for i in range(g):
        ref_keep, ref_scores = _soft_nms_loop(boxes[i], scores[i], valid[i], 0.3, k, method)
        m = len(ref_keep)
        assert keep_valid[i].sum() == m and keep_valid[i, :m].all()
        np.testing.assert_array_equal(keep[i, :m], ref_keep)
        np.testing.assert_allclose(kept[i, :m], ref_scores, rtol=1e-5)


def test_soft_nms_worked_example_keeps_what_greedy_drops():
    boxes = jnp.asarray([[[0, 0, 10, 10], [0, 0, 10, 12.5], [50, 50, 60, 60]]], jnp.float32)
    scores = jnp.asarray([[0.9, 0.6, 0.3]])
    valid = jnp.ones((1, 3), bool)
    keep, kept, ok = jax.jit(
        lambda b, s, v: soft_nms.soft_nms_linear(b, s, v, iou_threshold=0.5, max_output=3)
    )(boxes, scores, valid)
    np.testing.assert_array_equal(keep[0], [0, 2, 1])
    np.testing.assert_allclose(kept[0], [0.9, 0.3, 0.12], rtol=1e-5)  # 0.6 x (1 - 0.8)
    g_keep, g_scores, g_ok = soft_nms.greedy_nms(
        boxes, scores, valid, iou_threshold=0.5, max_output=3, backend="reference"
    )
    assert g_ok[0].sum() == 2 and list(g_keep[0, :2]) == [0, 2]


def test_soft_nms_unknown_method_is_a_clear_error():
    boxes = jnp.zeros((1, 2, 4), jnp.float32)
    scores, valid = jnp.ones((1, 2)), jnp.ones((1, 2), bool)
    with pytest.raises(ValueError, match=r"soft_nms method must be one of .*'linear'.*'box'"):
        soft_nms.soft_nms(
            boxes,
            scores,
            valid,
            iou_threshold=0.3,
            max_output=2,
            method="box",
            sigma=0.5,
            min_score=0.001,
        )


# --------------------------------------------------------------------------- ATSS


def _atss_loop(anchors, gt, levels, topk=9):
    """ATSS with a loop over gts and levels, NumPy."""
    a = np.asarray(anchors, np.float64)
    iou = np.asarray(box_ops.pairwise_iou(jnp.asarray(gt), jnp.asarray(anchors)), np.float64)
    acx, acy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    best = np.full(len(a), -1.0)
    matched = np.zeros(len(a), np.int64)
    for g, box in enumerate(gt):
        gcx, gcy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        cand = []
        start = 0
        for size in levels:
            d = np.sqrt(
                (acx[start : start + size] - gcx) ** 2 + (acy[start : start + size] - gcy) ** 2
            )
            cand += list(start + np.argsort(d, kind="stable")[: min(topk, size)])
            start += size
        cand = np.array(cand)
        thr = iou[g, cand].mean() + iou[g, cand].std(ddof=1)
        for i in cand:
            inside = min(acx[i] - box[0], acy[i] - box[1], box[2] - acx[i], box[3] - acy[i]) > 0.01
            if iou[g, i] >= thr and inside and iou[g, i] > best[i]:
                best[i], matched[i] = iou[g, i], g
    return matched, (best >= 0).astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1])
def test_atss_matches_a_loop_over_levels(seed):
    rng = np.random.RandomState(seed)
    levels, anchors = [], []
    for stride, size in ((8, 32), (16, 64), (32, 128)):
        ys, xs = np.meshgrid(np.arange(0, 128, stride), np.arange(0, 128, stride), indexing="ij")
        c = np.stack([xs.ravel(), ys.ravel()], -1) + stride / 2
        anchors.append(np.concatenate([c - size / 2, c + size / 2], -1))
        levels.append(len(c))
    anchors = np.concatenate(anchors).astype(np.float32)
    xy = rng.uniform(0, 90, (4, 2))
    gt = np.concatenate([xy, xy + rng.uniform(10, 60, (4, 2))], -1).astype(np.float32)
    valid = np.array([True, True, True, False])
    gt_in = np.where(valid[:, None], gt, 0)
    assign = jax.jit(matching.atss_assigner, static_argnames=research.POINTS["assigner"][2])
    matched, labels = assign(
        jnp.asarray(anchors),
        jnp.asarray(gt_in),
        jnp.asarray(valid),
        thresholds=(0.5,),
        labels=(0, 1),
        allow_low_quality_matches=False,
        num_per_level=tuple(levels),
    )
    ref_matched, ref_labels = _atss_loop(anchors, gt[valid], levels)
    np.testing.assert_array_equal(labels, ref_labels)
    assert labels.sum() > 0
    np.testing.assert_array_equal(
        np.where(labels == 1, matched, 0), np.where(ref_labels == 1, ref_matched, 0)
    )


@pytest.mark.parametrize(
    ("spec", "changed"),
    [
        (
            "quickstart:giou",
            {"model.roi_box_head.bbox_reg_loss_type", "model.roi_box_head.bbox_reg_loss_weight"},
        ),
        ("quickstart:soft_nms", {"model.roi_heads.test_nms"}),
        ("quickstart:ohem", {"model.roi_heads.sampler"}),
        ("quickstart:libra", {"model.roi_heads.sampler"}),
        ("quickstart_retinanet:atss", {"model.retinanet.matcher"}),
        (
            "quickstart_retinanet:atss_a1",
            {
                "model.retinanet.matcher",
                "model.anchor_generator.sizes",
                "model.anchor_generator.aspect_ratios",
            },
        ),
    ],
)
def test_recipes_validate_and_change_only_their_piece(spec, changed):
    import importlib

    module, variant = spec.split(":")
    get = importlib.import_module(f"configs.{module}").get_config
    recipe, base = get(variant), get(None)
    config_lib.validate(recipe)
    flat_r, flat_b = config_lib.to_flat_dict(recipe), config_lib.to_flat_dict(base)
    assert {k for k in flat_r if flat_r[k] != flat_b[k]} == changed
