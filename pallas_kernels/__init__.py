"""Pallas GPU kernels (Triton backend) for ROIAlign and NMS, with their pure-JAX references.

A leaf package: imports only `jax` (never `jax_rcnn`). The `*_reference` functions are the
semantic specification and the CPU implementation; `jax_rcnn.kernels` is the one dispatch point.
"""
