"""jax_rcnn.data."""
