"""End-to-end parity of `Predictor` with Detectron2 on the fixture photo, batching, compile
counts and bad input."""

import pathlib
import pickle

import numpy as np
import pytest

from jax_rcnn.config import from_detectron2, load_config
from jax_rcnn.data.transforms import read_image
from jax_rcnn.predictor import Predictor

DATA = pathlib.Path(__file__).parents[1] / "data" / "tiny_maskrcnn"
WEIGHTS = DATA / "model_final.pkl"


@pytest.fixture(scope="module")
def inf():
    return np.load(DATA / "inference.npz")


@pytest.fixture(scope="module")
def photo():
    return read_image(DATA / "image.jpg", "BGR")


@pytest.fixture(scope="module")
def predictor():
    return Predictor(from_detectron2(DATA / "config.yaml"), weights=WEIGHTS)


@pytest.fixture(scope="module")
def result(predictor, photo):
    return predictor(photo)


def _mask_iou(a, b):
    inter = (a & b).sum((1, 2))
    union = (a | b).sum((1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def test_final_detections_match_detectron2(result, inf):
    n = len(inf["img0_final_scores"])
    assert len(result["scores"]) == n
    np.testing.assert_allclose(result["boxes"], inf["img0_final_boxes"], atol=0.05)
    np.testing.assert_allclose(result["scores"], inf["img0_final_scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(result["classes"], inf["img0_final_classes"])
    assert result["masks"].shape == inf["img0_final_masks"].shape
    assert _mask_iou(result["masks"], inf["img0_final_masks"]).min() >= 0.99


def test_proposals_match_detectron2(predictor, photo, inf):
    from jax_rcnn.data import batching

    ex = batching.make_test_example(photo, predictor.config)
    out = predictor._run(
        predictor.variables,
        ex["image"][None],
        ex["image_size"][None],
        ex["original_size"][None],
    )
    valid = np.asarray(out["proposal_valid"][0])
    boxes = np.asarray(out["proposal_boxes"][0])[valid]
    logits = np.asarray(out["proposal_logits"][0])[valid]
    ref = inf["img0_proposal_boxes"]
    assert len(boxes) == len(ref)
    dist = np.abs(boxes[:, None] - ref[None]).max(-1)
    nearest = dist.argmin(1)
    matched = dist[np.arange(len(boxes)), nearest] <= 0.01
    assert matched.mean() >= 0.99, matched.mean()
    ref_logits = inf["img0_proposal_objectness_logits"][nearest[matched]]
    np.testing.assert_allclose(logits[matched], ref_logits, rtol=1e-4, atol=1e-4)


def test_batch_of_different_sizes_equals_alone(predictor, photo, result):
    crop = np.ascontiguousarray(photo[40:340, 60:460])  # 300 x 400: another padded shape
    alone = predictor(crop)
    both = predictor.batch([photo, crop])
    # Same padded input per image; only XLA's batch-size-dependent reduction order differs
    # (~1e-4 px measured), so compare with float tolerances and exact classes.
    for got, want in ((both[0], result), (both[1], alone)):
        assert got.keys() == want.keys()
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["classes"], want["classes"])
        assert _mask_iou(got["masks"], want["masks"]).min() >= 0.999


@pytest.mark.parametrize(
    "image, error",
    [
        (np.zeros((20, 30), np.uint8), "grayscale"),
        (np.zeros((20, 30, 4), np.uint8), "4-channel"),
        (np.zeros((20, 30, 3), np.float32), "uint8"),
        (np.zeros((0, 30, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy"),
    ],
)
def test_bad_images_are_clear_errors(predictor, image, error):
    with pytest.raises((TypeError, ValueError), match=error):
        predictor(image)


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        Predictor(from_detectron2(DATA / "config.yaml"), weights="nope.pkl")


def test_checkpoint_for_another_architecture(tmp_path):
    cfg = from_detectron2(DATA / "config.yaml")
    with open(WEIGHTS, "rb") as f:
        ckpt = pickle.load(f)
    # A 4-class checkpoint against an 80-class config must name the mis-shaped keys.
    cfg.unlock()
    cfg.model.roi_heads.num_classes = 80
    with pytest.raises(ValueError, match="cls_score"):
        Predictor(cfg, weights=WEIGHTS)
    # And keys of another backbone depth are listed as unexpected/missing.
    ckpt["model"]["backbone.bottom_up.res4.6.conv1.weight"] = np.zeros((64, 256, 1, 1), np.float32)
    path = tmp_path / "r101ish.pkl"
    with open(path, "wb") as f:
        pickle.dump(ckpt, f)
    with pytest.raises(ValueError, match="res4.6"):
        Predictor(from_detectron2(DATA / "config.yaml"), weights=path)


def test_compiles_once_per_bucket(tmp_path):
    """Buckets mode: images of different sizes in one bucket share one compiled program."""
    import jax

    from jax_rcnn import modeling
    from jax_rcnn.modeling import init_variables

    cfg = load_config("configs/mask_rcnn_R_50_FPN_1x.py:smoke")
    model = modeling.build_model(cfg)
    variables = init_variables(model, jax.random.key(0))
    pred = Predictor(cfg, variables=variables)
    rng = np.random.default_rng(0)
    landscape = [rng.integers(0, 255, (h, w, 3), np.uint8) for h, w in ((60, 80), (90, 100))]
    portrait = rng.integers(0, 255, (100, 70, 3), np.uint8)
    for img in landscape:
        pred(img)
    assert pred.num_traces == 1
    pred(portrait)
    pred.batch(landscape + [portrait])
    assert pred.num_traces == 3  # landscape bucket at batch 1 and 2, portrait bucket at batch 1


RETINANET = pathlib.Path(__file__).parents[1] / "data" / "tiny_retinanet"


def test_retinanet_predictor_matches_detectron2():
    """The whole test path (read, resize, pad, model, postprocess) on the RetinaNet fixture."""
    predictor = Predictor(
        from_detectron2(RETINANET / "config.yaml"), weights=RETINANET / "model_final.pkl"
    )
    want = np.load(RETINANET / "inference.npz")
    out = predictor(read_image(RETINANET / "image.jpg", "BGR"))
    assert set(out) == {"boxes", "scores", "classes"}  # no masks
    assert len(out["scores"]) == len(want["img0_final_scores"])
    np.testing.assert_allclose(out["boxes"], want["img0_final_boxes"], atol=0.05)
    np.testing.assert_allclose(out["scores"], want["img0_final_scores"], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out["classes"], want["img0_final_classes"])


KEYPOINT = pathlib.Path(__file__).parents[1] / "data" / "tiny_keypoint_rcnn"


def test_keypoint_predictor_matches_detectron2():
    """Keypoint R-CNN through the whole test path: `keypoints f32[D, 17, 3]` (x, y, score) in
    original pixels, Detectron2's `pred_keypoints` after `detector_postprocess`."""
    predictor = Predictor(
        from_detectron2(KEYPOINT / "config.yaml"), weights=KEYPOINT / "model_final.pkl"
    )
    want = np.load(KEYPOINT / "inference.npz")
    out = predictor(read_image(KEYPOINT / "image.jpg", "BGR"))
    assert set(out) == {"boxes", "scores", "classes", "keypoints"}
    assert out["keypoints"].shape == want["img0_final_keypoints"].shape
    np.testing.assert_allclose(out["boxes"], want["img0_final_boxes"], atol=0.05)
    np.testing.assert_allclose(
        out["keypoints"][..., :2], want["img0_final_keypoints"][..., :2], atol=0.05
    )
    # 5e-4: float32 noise of these logits, see test_keypoint_parity.SCORE_RTOL.
    np.testing.assert_allclose(
        out["keypoints"][..., 2], want["img0_final_keypoints"][..., 2], rtol=5e-4
    )
