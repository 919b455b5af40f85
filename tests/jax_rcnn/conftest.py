"""Shared by the tests of `jax_rcnn`: the model of the `tiny_maskrcnn` fixture."""

import pathlib

from configs import mask_rcnn_R_50_FPN_1x

TINY_MASKRCNN = pathlib.Path(__file__).resolve().parents[1] / "data" / "tiny_maskrcnn"


def tiny_maskrcnn_config():
    """mask_rcnn_R_50_FPN_1x with the fixture's narrow widths (tests/data/tiny_maskrcnn)."""
    config = mask_rcnn_R_50_FPN_1x.get_config()
    m = config.model
    m.resnets.stem_out_channels = 16
    m.resnets.res2_out_channels = 64
    m.resnets.width_per_group = 16
    m.fpn.out_channels = 32
    m.roi_box_head.fc_dim = 64
    m.roi_mask_head.conv_dim = 32
    m.roi_heads.num_classes = 4
    return config
