"""Small helpers the model-zoo configs are built from.

Every key mirrors a Detectron2 config key, lower-cased and nested the same way
(`MODEL.RPN.NMS_THRESH` -> `config.model.rpn.nms_thresh`), with Detectron2's default value
(`detectron2/config/defaults.py` plus `Base-RCNN-FPN.yaml`). Keys that Detectron2 does not
have (static sizes, padding buckets, kernel choice, data paths) are marked "jax_rcnn:".

A config file calls `base_config()` and then adjusts the few values it changes, exactly as a
Detectron2 model-zoo YAML sets `_BASE_` and overrides a handful of keys.
"""

from __future__ import annotations

import ml_collections

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def resnet(depth: int = 50) -> ml_collections.ConfigDict:
    """`MODEL.RESNETS` and `MODEL.BACKBONE` of Detectron2 (MSRA ResNet, FrozenBN)."""
    return ml_collections.ConfigDict(
        {
            "depth": depth,
            "norm": "FrozenBN",  # FrozenBN | BN | SyncBN | GN | "" (none)
            "num_groups": 1,
            "width_per_group": 64,
            "stem_out_channels": 64,
            "res2_out_channels": 256,
            "stride_in_1x1": True,
            "res5_dilation": 1,
            "out_features": ("res2", "res3", "res4", "res5"),
        }
    )


def fpn(out_channels: int = 256) -> ml_collections.ConfigDict:
    """`MODEL.FPN`: lateral 1x1 + output 3x3 convs, nearest x2 top-down, sum, p6 by max-pool."""
    return ml_collections.ConfigDict(
        {
            "in_features": ("res2", "res3", "res4", "res5"),
            "out_channels": out_channels,
            "norm": "",
            "fuse_type": "sum",
        }
    )


def retinanet(num_classes: int = 80) -> ml_collections.ConfigDict:
    """`MODEL.RETINANET` of `Base-RetinaNet.yaml` (smooth-L1 beta 0: plain L1)."""
    return ml_collections.ConfigDict(
        {
            "num_classes": num_classes,
            "in_features": ("p3", "p4", "p5", "p6", "p7"),
            "num_convs": 4,
            "norm": "",  # "" (Detectron2's default) or "GN"
            "prior_prob": 0.01,
            "iou_thresholds": (0.4, 0.5),
            "iou_labels": (0, -1, 1),
            "bbox_reg_weights": (1.0, 1.0, 1.0, 1.0),
            "bbox_reg_loss_type": "smooth_l1",  # or "giou", "diou", "ciou", "module:function"
            "smooth_l1_loss_beta": 0.0,
            "focal_loss_alpha": 0.25,
            "focal_loss_gamma": 2.0,
            "score_thresh_test": 0.05,
            "topk_candidates_test": 1000,
            "nms_thresh_test": 0.5,
            # jax_rcnn: swap points (`jax_rcnn.research`), a built-in name or "module:function".
            "matcher": "iou",  # or "atss"
            "box_coder": "delta_xywh",
            "test_nms": "nms",  # or "soft_nms_linear", "soft_nms_gaussian"
        }
    )


def retinanet_anchor_generator() -> ml_collections.ConfigDict:
    """`MODEL.ANCHOR_GENERATOR` of Base-RetinaNet: sizes x * 2^(0, 1/3, 2/3) on p3..p7."""
    sizes = tuple(tuple(x * 2 ** (k / 3) for k in range(3)) for x in (32, 64, 128, 256, 512))
    return ml_collections.ConfigDict(
        {"sizes": sizes, "aspect_ratios": ((0.5, 1.0, 2.0),), "offset": 0.0}
    )


def anchor_generator() -> ml_collections.ConfigDict:
    """`MODEL.ANCHOR_GENERATOR` of Base-RCNN-FPN (offset 0.0, one size per level)."""
    return ml_collections.ConfigDict(
        {
            "sizes": ((32,), (64,), (128,), (256,), (512,)),
            "aspect_ratios": ((0.5, 1.0, 2.0),),
            "offset": 0.0,
        }
    )


def rpn() -> ml_collections.ConfigDict:
    """`MODEL.RPN` plus `MODEL.PROPOSAL_GENERATOR.MIN_SIZE` (as `min_size`)."""
    return ml_collections.ConfigDict(
        {
            "in_features": ("p2", "p3", "p4", "p5", "p6"),
            "conv_dims": (-1,),
            "boundary_thresh": -1,
            "iou_thresholds": (0.3, 0.7),
            "iou_labels": (0, -1, 1),
            "batch_size_per_image": 256,
            "positive_fraction": 0.5,
            "bbox_reg_loss_type": "smooth_l1",
            "bbox_reg_loss_weight": 1.0,
            "bbox_reg_weights": (1.0, 1.0, 1.0, 1.0),
            "smooth_l1_beta": 0.0,
            "loss_weight": 1.0,
            "pre_nms_topk_train": 2000,
            "pre_nms_topk_test": 1000,
            "post_nms_topk_train": 1000,
            "post_nms_topk_test": 1000,
            "nms_thresh": 0.7,
            "min_size": 0.0,
            # jax_rcnn: swap points (`jax_rcnn.research`), a built-in name or "module:function".
            "matcher": "iou",
            "sampler": "random",
            "box_coder": "delta_xywh",
        }
    )


def roi_heads(num_classes: int = 80) -> ml_collections.ConfigDict:
    """`MODEL.ROI_HEADS` (StandardROIHeads)."""
    return ml_collections.ConfigDict(
        {
            # "StandardROIHeads" (FPN, DC5), "Res5ROIHeads" (C4: res5 is the head) or
            # "CascadeROIHeads" (`cascade(model)`: adds `roi_box_cascade_head`).
            "name": "StandardROIHeads",
            "num_classes": num_classes,
            "in_features": ("p2", "p3", "p4", "p5"),
            "iou_thresholds": (0.5,),
            "iou_labels": (0, 1),
            "batch_size_per_image": 512,
            "positive_fraction": 0.25,
            "score_thresh_test": 0.05,
            "nms_thresh_test": 0.5,
            "proposal_append_gt": True,
            # jax_rcnn: swap points (`jax_rcnn.research`), a built-in name or "module:function".
            "matcher": "iou",
            "sampler": "random",  # or "ohem", "iou_balanced"
            "test_nms": "nms",  # or "soft_nms_linear", "soft_nms_gaussian"
        }
    )


def roi_box_head(fc_dim: int = 1024) -> ml_collections.ConfigDict:
    """`MODEL.ROI_BOX_HEAD` (FastRCNNConvFCHead, 2 fc) and its ROIAlignV2 pooler."""
    return ml_collections.ConfigDict(
        {
            "num_conv": 0,
            "conv_dim": 256,
            "num_fc": 2,
            "fc_dim": fc_dim,
            "norm": "",
            "pooler_resolution": 7,
            "pooler_sampling_ratio": 0,
            "pooler_type": "ROIAlignV2",
            "bbox_reg_weights": (10.0, 10.0, 5.0, 5.0),
            "bbox_reg_loss_type": "smooth_l1",
            "bbox_reg_loss_weight": 1.0,
            "smooth_l1_beta": 0.0,
            "cls_agnostic_bbox_reg": False,
            # Detectron2's long-tail (LVIS) classifier: sigmoid cross-entropy, optionally over the
            # federated class subset (present classes + FED_LOSS_NUM_CLASSES drawn by
            # image_count ** FED_LOSS_FREQ_WEIGHT_POWER); `jax_rcnn.long_tail`.
            "use_sigmoid_ce": False,
            "use_fed_loss": False,
            "fed_loss_num_classes": 50,
            "fed_loss_freq_weight_power": 0.5,
            # jax_rcnn: each class's training image count for the federated loss; () = filled
            # by train.py from the training data (LVIS `image_count`, else counted).
            "fed_loss_image_counts": (),
            # jax_rcnn: swap points (`jax_rcnn.research`), a built-in name or "module:function".
            "cls_loss": "softmax_ce",
            "box_coder": "delta_xywh",
        }
    )


def roi_mask_head(conv_dim: int = 256) -> ml_collections.ConfigDict:
    """`MODEL.ROI_MASK_HEAD` (MaskRCNNConvUpsampleHead) and its ROIAlignV2 pooler."""
    return ml_collections.ConfigDict(
        {
            "num_conv": 4,
            "conv_dim": conv_dim,
            "norm": "",
            "pooler_resolution": 14,
            "pooler_sampling_ratio": 0,
            "pooler_type": "ROIAlignV2",
            "cls_agnostic_mask": False,
            # jax_rcnn extension, not in Detectron2: train the mask head on at most this many
            # foreground ROIs per image, drawn uniformly at random from the sampled
            # foreground (each image's mean mask loss is estimated without bias; images with
            # more than this many foreground ROIs weigh less in the batch mean than in
            # Detectron2's; TF's Mask R-CNN `num_sampled_masks`). 0 = every foreground ROI.
            "num_sampled_masks": 0,
        }
    )


def model(*, mask_on: bool, depth: int = 50, num_classes: int = 80) -> ml_collections.ConfigDict:
    """`MODEL.*` of `Base-RCNN-FPN.yaml` (+ `MODEL.MASK_ON`)."""
    return ml_collections.ConfigDict(
        {
            "meta_architecture": "GeneralizedRCNN",
            "mask_on": mask_on,
            # A Detectron2 `.pkl` (model zoo or MSRA `R-50.pkl`) or an orbax checkpoint dir.
            "weights": "",
            # jax_rcnn: "auto" = Pallas kernels on GPU, pure-JAX references elsewhere.
            "kernels": "auto",
            "pixel_mean": (103.53, 116.28, 123.675),
            "pixel_std": (1.0, 1.0, 1.0),
            "backbone": {"name": "build_resnet_fpn_backbone", "freeze_at": 2},
            "resnets": resnet(depth),
            "fpn": fpn(),
            "anchor_generator": anchor_generator(),
            "rpn": rpn(),
            "roi_heads": roi_heads(num_classes),
            "roi_box_head": roi_box_head(),
            "roi_mask_head": roi_mask_head(),
        }
    )


# `Base-RCNN-C4.yaml`'s RPN top-k (the defaults of `config/defaults.py`): one map, so "per level"
# is per image.
_SINGLE_MAP_RPN_TOPK = dict(
    pre_nms_topk_train=12000, post_nms_topk_train=2000, pre_nms_topk_test=6000,
    post_nms_topk_test=1000,
)  # fmt: skip


def _single_map(m: ml_collections.ConfigDict, feature: str) -> None:
    """A plain-ResNet layout (no FPN) with the RPN and ROI heads on `feature` at stride 16."""
    del m["fpn"]
    m.backbone.name = "build_resnet_backbone"
    m.resnets.out_features = (feature,)
    m.anchor_generator.sizes = ((32, 64, 128, 256, 512),)  # 15 anchors on the one map
    m.rpn.in_features = (feature,)
    m.rpn.update(_SINGLE_MAP_RPN_TOPK)
    m.roi_heads.in_features = (feature,)


def c4_model(*, mask_on: bool, depth: int = 50, num_classes: int = 80) -> ml_collections.ConfigDict:
    """`MODEL.*` of `Base-RCNN-C4.yaml`: ResNet up to res4 (stride 16, no FPN), RPN on res4,
    `Res5ROIHeads` (14x14 pool, res5 head, mask head without convs on the res5 output).

    No FPN keys, no box-head layer keys and no mask pooler keys: C4 reads none of them.
    """
    m = model(mask_on=mask_on, depth=depth, num_classes=num_classes)
    _single_map(m, "res4")
    m.roi_heads.name = "Res5ROIHeads"
    m.roi_box_head.pooler_resolution = 14
    for key in ("num_conv", "conv_dim", "num_fc", "fc_dim", "norm"):
        del m.roi_box_head[key]
    m.roi_mask_head.num_conv = 0
    for key in ("pooler_resolution", "pooler_sampling_ratio", "pooler_type"):
        del m.roi_mask_head[key]
    return m


def dc5_model(
    *, mask_on: bool, depth: int = 50, num_classes: int = 80
) -> ml_collections.ConfigDict:
    """`MODEL.*` of `Base-RCNN-DilatedC5.yaml`: ResNet with res5 at stride 16 (stride 1,
    dilation 2 in its 3x3 convs), RPN and `StandardROIHeads` (2fc box head, 4-conv mask head) on
    res5. No FPN keys."""
    m = model(mask_on=mask_on, depth=depth, num_classes=num_classes)
    _single_map(m, "res5")
    m.resnets.res5_dilation = 2
    return m


LAYOUTS = ("FPN", "C4", "DC5")


def cascade(m: ml_collections.ConfigDict) -> None:
    """Turns an FPN R-CNN `MODEL.*` into `Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml`'s
    `CascadeROIHeads`: class-agnostic boxes, 2000 training proposals per image, and
    `roi_box_cascade_head` (`MODEL.ROI_BOX_CASCADE_HEAD`): one IoU threshold and one box
    weight tuple per stage; the number of stages is `len(ious)` (2 or 4 stages work)."""
    m.roi_heads.name = "CascadeROIHeads"
    m.roi_box_head.cls_agnostic_bbox_reg = True
    m.rpn.post_nms_topk_train = 2000
    m.roi_box_cascade_head = ml_collections.ConfigDict(
        {
            "ious": (0.5, 0.6, 0.7),
            "bbox_reg_weights": (
                (10.0, 10.0, 5.0, 5.0),
                (20.0, 20.0, 10.0, 10.0),
                (30.0, 30.0, 15.0, 15.0),
            ),
        }
    )


def roi_keypoint_head() -> ml_collections.ConfigDict:
    """`MODEL.ROI_KEYPOINT_HEAD` (KRCNNConvDeconvUpsampleHead) and its ROIAlignV2 pooler."""
    return ml_collections.ConfigDict(
        {
            "name": "KRCNNConvDeconvUpsampleHead",
            "pooler_resolution": 14,
            "pooler_sampling_ratio": 0,
            "pooler_type": "ROIAlignV2",
            "conv_dims": (512,) * 8,
            "num_keypoints": 17,
            "min_keypoints_per_image": 1,
            "normalize_loss_by_visible_keypoints": True,
            "loss_weight": 1.0,
        }
    )


def people_data(config: ml_collections.ConfigDict) -> None:
    """jax_rcnn: the built-in keypoint dataset (`jax_rcnn.data.people`: stick figures with COCO's
    17 person keypoints, generated on first use) as `config.data`."""
    config.data.source = "people"
    config.data.name = "people"
    config.data.people = ml_collections.ConfigDict(
        {"num_train": 1000, "num_val": 200, "image_size": (128, 160), "max_people": 4, "seed": 0}
    )


def keypoint(config: ml_collections.ConfigDict) -> None:
    """Turns an FPN R-CNN config into `COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml`'s model:
    `model.keypoint_on`, `model.roi_keypoint_head` (`MODEL.ROI_KEYPOINT_HEAD`), one class
    (person), box smooth-L1 beta 0.5, 1500 training proposals per image, and
    `test.keypoint_oks_sigmas` (`TEST.KEYPOINT_OKS_SIGMAS`; empty = pycocotools' COCO sigmas)."""
    m = config.model
    m.keypoint_on = True
    m.roi_keypoint_head = roi_keypoint_head()
    m.roi_heads.num_classes = 1
    m.roi_box_head.smooth_l1_beta = 0.5
    m.rpn.post_nms_topk_train = 1500
    config.test.keypoint_oks_sigmas = ()


def retinanet_model(*, depth: int = 50, num_classes: int = 80) -> ml_collections.ConfigDict:
    """`MODEL.*` of `Base-RetinaNet.yaml`: ResNet res3-res5, FPN p3-p5 + P6/P7 from C5, head.

    No RPN or ROI-head keys: they do nothing in a RetinaNet, so setting one is an error.
    """
    resnets = resnet(depth)
    resnets.out_features = ("res3", "res4", "res5")
    fpn_config = fpn()
    fpn_config.in_features = ("res3", "res4", "res5")
    return ml_collections.ConfigDict(
        {
            "meta_architecture": "RetinaNet",
            "mask_on": False,
            "weights": "",
            "kernels": "auto",
            "pixel_mean": (103.53, 116.28, 123.675),
            "pixel_std": (1.0, 1.0, 1.0),
            "backbone": {"name": "build_retinanet_resnet_fpn_backbone", "freeze_at": 2},
            "resnets": resnets,
            "fpn": fpn_config,
            "anchor_generator": retinanet_anchor_generator(),
            "retinanet": retinanet(num_classes),
        }
    )


def proposal_model(*, depth: int = 50, layout: str = "FPN") -> ml_collections.ConfigDict:
    """`MODEL.*` of `Base-RCNN-FPN.yaml` (`layout` "C4": `Base-RCNN-C4.yaml`; "DC5":
    `Base-RCNN-DilatedC5.yaml`) with `META_ARCHITECTURE: ProposalNetwork`: the R-CNN backbone
    and RPN, no ROI heads (`rpn_R_50_FPN_1x.yaml` also sets `POST_NMS_TOPK_TEST` 2000,
    `rpn_R_50_C4_1x.yaml` `PRE_NMS_TOPK_TEST` 12000 and `POST_NMS_TOPK_TEST` 2000).

    No ROI-head keys: they do nothing in a ProposalNetwork, so setting one is an error.
    """
    if layout == "C4":
        config = c4_model(mask_on=False, depth=depth)
    elif layout == "DC5":
        config = dc5_model(mask_on=False, depth=depth)
    else:
        config = model(mask_on=False, depth=depth)
    for key in ("roi_heads", "roi_box_head", "roi_mask_head"):
        del config[key]
    config.meta_architecture = "ProposalNetwork"
    return config


def sem_seg_head(num_classes: int = 54, loss_weight: float = 1.0) -> ml_collections.ConfigDict:
    """`MODEL.SEM_SEG_HEAD.*` (`SemSegFPNHead`); panoptic: class 0 = "things", 1.. = stuff."""
    return ml_collections.ConfigDict(
        {
            "name": "SemSegFPNHead",
            "in_features": ("p2", "p3", "p4", "p5"),
            "ignore_value": 255,
            "num_classes": num_classes,
            "convs_dim": 128,
            "common_stride": 4,
            "norm": "GN",
            "loss_weight": loss_weight,
        }
    )


def panoptic_fpn() -> ml_collections.ConfigDict:
    """`MODEL.PANOPTIC_FPN.*`: the instance-loss weight and the combine thresholds."""
    return ml_collections.ConfigDict(
        {
            "instance_loss_weight": 1.0,
            "combine": {
                "overlap_thresh": 0.5,
                "stuff_area_limit": 4096,
                "instances_confidence_thresh": 0.5,
            },
        }
    )


def panoptic_model(*, depth: int = 50) -> ml_collections.ConfigDict:
    """`MODEL.*` of `COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml`: Mask R-CNN FPN plus
    `sem_seg_head` (54 classes, loss weight 0.5) and `panoptic_fpn`."""
    m = model(mask_on=True, depth=depth)
    m.meta_architecture = "PanopticFPN"
    m.sem_seg_head = sem_seg_head(54, loss_weight=0.5)
    m.panoptic_fpn = panoptic_fpn()
    return m


def semantic_model(*, depth: int = 50) -> ml_collections.ConfigDict:
    """`MODEL.*` of `Misc/semantic_R_50_FPN_1x.yaml`: ResNet-FPN and `sem_seg_head` only.

    No RPN or ROI-head keys: they do nothing in a SemanticSegmentor.
    """
    m = proposal_model(depth=depth)
    for key in ("rpn", "anchor_generator"):
        del m[key]
    m.meta_architecture = "SemanticSegmentor"
    m.sem_seg_head = sem_seg_head(54)
    return m


def input_config() -> ml_collections.ConfigDict:
    """`INPUT.*` plus jax_rcnn's static-shape padding policy."""
    return ml_collections.ConfigDict(
        {
            "format": "BGR",
            "min_size_train": (640, 672, 704, 736, 768, 800),
            "min_size_train_sampling": "choice",
            "max_size_train": 1333,
            "min_size_test": 800,
            "max_size_test": 1333,
            "random_flip": "horizontal",
            "mask_format": "bitmask",
            # jax_rcnn: "buckets" pads every image into the smallest bucket (H, W) that holds it
            # (one compile per bucket); "size_divisibility" pads like Detectron2 to a multiple of
            # `size_divisibility` of the batch's largest image (one compile per padded shape).
            "pad_mode": "buckets",
            "size_divisibility": 32,
            # (H, W) padded shapes, each a multiple of `size_divisibility`. The defaults hold any
            # image resized to short side <= 800, long side <= 1333 (landscape and portrait).
            "buckets": ((800, 1344), (1344, 800)),
            # jax_rcnn: training pads into at most `max_buckets` shapes chosen at start-up from
            # the resize policy and the training images' sizes (fewest padded pixels; one
            # compile each; `jax_rcnn.data.buckets`) instead of `pad_mode`, which then only
            # applies to evaluation and inference. `from_detectron2` turns it on.
            "auto_buckets": False,
            "max_buckets": 4,
            # jax_rcnn: static cap on ground-truth instances per image (overflow is counted and
            # logged, never silent) and the side of the fixed-size training mask representation.
            "max_gt": 100,
            "gt_mask_size": 112,
        }
    )


def data(dataset: str = "coco_2017") -> ml_collections.ConfigDict:
    """jax_rcnn: where the data comes from (Detectron2's `DATASETS` names a registry instead)."""
    return ml_collections.ConfigDict(
        {
            # "coco": the COCO-format paths below; "shapes": the built-in synthetic dataset;
            # "tfds": a TFDS detection dataset (extra `tfds`).
            "source": "coco",
            "name": dataset,
            # `name`: a Detectron2 dataset name (`DATASETS.TRAIN` / `TEST`); a builtin one
            # (`coco_2017_train`, ...) gives the paths under $DETECTRON2_DATASETS when they are
            # empty (`jax_rcnn.data.builtin`).
            # Annotation format of the json files: "coco", "lvis" (LVIS v0.5 / v1: images by
            # coco_url, federated LVIS AP), or "auto" (a builtin `lvis_*` name: "lvis"; else "coco").
            "format": "auto",
            "train": {"json": "", "images": "", "name": ""},
            "test": {"json": "", "images": "", "name": ""},
            "tfds_name": "coco/2017",
            "tfds_train_split": "train",
            "tfds_test_split": "validation",
            "cache_dir": "",  # "" = $JAX_RCNN_CACHE or ~/.cache/jax_rcnn
            # The built-in synthetic dataset (`source = "shapes"`), generated on first use.
            # `image_size_range = (lo, hi)`: each image's height and width drawn in [lo, hi]
            # (variable sizes and aspect ratios) instead of the fixed `image_size`;
            # `num_classes`: the first N of the 8 shape classes; `num_stuff_classes` > 0: the
            # panoptic variant (backgrounds of sky / grass / water / wall regions, semantic and
            # panoptic annotations; `jax_rcnn.data.shapes`).
            "shapes": {
                "num_train": 1000,
                "num_val": 200,
                "image_size": (128, 160),
                "image_size_range": (),
                "num_classes": 8,
                "num_stuff_classes": 0,
                "seed": 0,
                # The long-tailed variant (LVIS json and LVIS AP; `shapes.ensure_shapes_dataset`).
                "long_tail": False,
            },
            "class_names": (),  # filled from the dataset when empty
        }
    )


def dataloader() -> ml_collections.ConfigDict:
    """`DATALOADER.*`."""
    return ml_collections.ConfigDict(
        {
            "num_workers": 4,
            "aspect_ratio_grouping": True,
            "filter_empty_annotations": True,
            # "RepeatFactorTrainingSampler" repeats images of rare categories (LVIS recipe).
            "sampler_train": "TrainingSampler",
            "repeat_threshold": 0.0,
            "repeat_sqrt": True,
        }
    )


def solver() -> ml_collections.ConfigDict:
    """`SOLVER.*` of `Base-RCNN-FPN.yaml` (1x schedule)."""
    return ml_collections.ConfigDict(
        {
            "ims_per_batch": 16,
            "base_lr": 0.02,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 1e-4,
            "weight_decay_norm": 0.0,
            # WEIGHT_DECAY_BIAS: None = same as weight_decay (Detectron2's default).
            "weight_decay_bias": ml_collections.config_dict.placeholder(float),
            "bias_lr_factor": 1.0,
            # "WarmupMultiStepLR" or "WarmupCosineLR" (which decays to base_lr_end).
            "lr_scheduler_name": "WarmupMultiStepLR",
            "base_lr_end": 0.0,
            "steps": (60000, 80000),
            "max_iter": 90000,
            "gamma": 0.1,
            "warmup_factor": 1.0 / 1000,
            "warmup_iters": 1000,
            "warmup_method": "linear",
            "checkpoint_period": 5000,
            "clip_gradients": {
                "enabled": False,
                "clip_type": "value",
                "clip_value": 1.0,
                "norm_type": 2.0,
            },
            # jax_rcnn: orbax keeps this many checkpoints in the work dir.
            "max_to_keep": 3,
        }
    )


def test_config() -> ml_collections.ConfigDict:
    """`TEST.*` plus jax_rcnn's static evaluation batch."""
    return ml_collections.ConfigDict(
        {
            "eval_period": 0,
            "detections_per_image": 100,
            "ims_per_batch": 1,  # jax_rcnn: images per evaluation step (last batch padded)
        }
    )


def train_config() -> ml_collections.ConfigDict:
    """jax_rcnn: numerics of the train step."""
    return ml_collections.ConfigDict(
        {
            "compute_dtype": "float32",
            # Persistent XLA compilation cache: "" = $JAX_RCNN_CACHE/xla or
            # ~/.cache/jax_rcnn/xla; "off" = none (`jax_rcnn.compile.setup_compilation_cache`).
            "compilation_cache_dir": "",
        }
    )


def base_config(
    *,
    mask_on: bool = False,
    depth: int = 50,
    meta_architecture: str = "GeneralizedRCNN",
    layout: str = "FPN",
) -> ml_collections.ConfigDict:
    """The whole `Base-RCNN-FPN.yaml` (or `Base-RetinaNet.yaml`; for "ProposalNetwork" without
    the ROI heads) config, unlocked so a config file can adjust it; `layout` "C4" / "DC5" gives
    `Base-RCNN-C4.yaml` / `Base-RCNN-DilatedC5.yaml` (R-CNN and ProposalNetwork)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if meta_architecture == "RetinaNet":
        if mask_on:
            raise ValueError("RetinaNet has no mask head (mask_on must be False)")
        if layout != "FPN":
            raise ValueError("RetinaNet needs an FPN (layout must be 'FPN')")
        model_config = retinanet_model(depth=depth)
    elif meta_architecture == "ProposalNetwork":
        if mask_on:
            raise ValueError("ProposalNetwork has no mask head (mask_on must be False)")
        model_config = proposal_model(depth=depth, layout=layout)
    elif meta_architecture in ("PanopticFPN", "SemanticSegmentor"):
        if layout != "FPN":
            raise ValueError(f"{meta_architecture} needs an FPN (layout must be 'FPN')")
        if meta_architecture == "PanopticFPN":
            model_config = panoptic_model(depth=depth)
        else:
            if mask_on:
                raise ValueError("SemanticSegmentor has no mask head (mask_on must be False)")
            model_config = semantic_model(depth=depth)
    elif layout == "C4":
        model_config = c4_model(mask_on=mask_on, depth=depth)
    elif layout == "DC5":
        model_config = dc5_model(mask_on=mask_on, depth=depth)
    else:
        model_config = model(mask_on=mask_on, depth=depth)
    config = ml_collections.ConfigDict(
        {
            "seed": 0,
            "log_period": 20,
            "model": model_config,
            "input": input_config(),
            "data": data(),
            "dataloader": dataloader(),
            "solver": solver(),
            "test": test_config(),
            "train": train_config(),
        }
    )
    if meta_architecture == "RetinaNet":
        config.solver.base_lr = 0.01  # Base-RetinaNet.yaml: half the R-CNN rate
    if meta_architecture == "PanopticFPN":
        config.dataloader.filter_empty_annotations = False  # Base-Panoptic-FPN.yaml
    if layout != "FPN":
        # A plain ResNet has size_divisibility 0: Detectron2 pads a batch only to its largest
        # image (pad_mode "size_divisibility"); buckets may then be any shape.
        config.input.size_divisibility = 0
    return config


def schedule_3x(config: ml_collections.ConfigDict) -> None:
    """Detectron2's `3x` schedule (`mask_rcnn_R_50_FPN_3x.yaml`): 270k iterations."""
    config.solver.steps = (210000, 250000)
    config.solver.max_iter = 270000


def smoke(config: ml_collections.ConfigDict) -> None:
    """Shrink a config to a tiny network and tiny images for tests (seconds on a CPU).

    Keeps the architecture (depth 50 bottlenecks, FPN p2-p6, both heads) and every
    behaviour; only widths, image sizes and static counts shrink.
    """
    m = config.model
    m.resnets.stem_out_channels = 8
    m.resnets.res2_out_channels = 32
    m.resnets.width_per_group = 8
    if "fpn" in m:
        m.fpn.out_channels = 16
    if m.meta_architecture == "RetinaNet":
        m.retinanet.num_classes = 3
        m.retinanet.topk_candidates_test = 100
    elif m.meta_architecture == "SemanticSegmentor":
        pass  # no RPN, no ROI heads
    else:
        if m.meta_architecture != "ProposalNetwork":
            if "fc_dim" in m.roi_box_head:
                m.roi_box_head.fc_dim = 32
            m.roi_mask_head.conv_dim = 16
            m.roi_heads.num_classes = 3
            m.roi_heads.batch_size_per_image = 64
        m.rpn.pre_nms_topk_train = 200
        m.rpn.post_nms_topk_train = 100
        m.rpn.pre_nms_topk_test = 100
        m.rpn.post_nms_topk_test = 50
        m.rpn.batch_size_per_image = 64
    if "sem_seg_head" in m:
        m.sem_seg_head.convs_dim = 32  # GN(32) needs a multiple of 32
        m.sem_seg_head.num_classes = 4
        config.data.shapes.num_stuff_classes = 3
    config.test.detections_per_image = 20
    i = config.input
    i.min_size_train = (96, 128)
    i.max_size_train = 160
    i.min_size_test = 128
    i.max_size_test = 160
    i.buckets = ((128, 160), (160, 128))
    i.max_gt = 16
    i.gt_mask_size = 32
    config.data.source = "shapes"
    config.data.name = "shapes"
    config.data.class_names = ()
    config.dataloader.num_workers = 0
    config.solver.ims_per_batch = 2
    config.solver.base_lr = 0.01
    config.solver.steps = (8,)
    config.solver.max_iter = 10
    config.solver.warmup_iters = 2
    config.solver.checkpoint_period = 5
    config.test.eval_period = 0
    config.test.ims_per_batch = 2
    config.log_period = 1


def lvis(config: ml_collections.ConfigDict, *, version: str) -> None:
    """Detectron2's LVIS Mask R-CNN recipe (`LVIS{v0.5,v1}-InstanceSegmentation/*.yaml`) on an
    R-CNN config: the LVIS classes, the repeat-factor sampler, 640..800 training sizes, 300
    detections per image at score >= 1e-4, and the `lvis_<version>_{train,val}` datasets."""
    if version not in ("v0.5", "v1"):
        raise ValueError(f"LVIS version must be 'v0.5' or 'v1', got {version!r}")
    config.model.roi_heads.num_classes = 1230 if version == "v0.5" else 1203
    config.model.roi_heads.score_thresh_test = 0.0001
    config.input.min_size_train = (640, 672, 704, 736, 768, 800)
    config.test.detections_per_image = 300
    config.dataloader.sampler_train = "RepeatFactorTrainingSampler"
    config.dataloader.repeat_threshold = 0.001
    config.data.name = f"lvis_{version}"
    config.data.train.name = f"lvis_{version}_train"
    config.data.test.name = f"lvis_{version}_val"


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock the config: a typo in an override is an error, never a silently new key."""
    config.lock()
    return config
