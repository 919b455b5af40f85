"""What the three kernel modules share about the Pallas Triton backend."""

from __future__ import annotations

import jax


def require_triton(pltriton: object | None) -> None:
    """Raise the one error for a JAX without Pallas-Triton.

    Args:
      pltriton: the module's `jax.experimental.pallas.triton` import, or None where that import
        failed (each kernel module keeps its own, so a test can take it away).

    Raises:
      NotImplementedError: `pltriton` is None; names the JAX version and the reference path.
    """
    if pltriton is None:
        raise NotImplementedError(
            f"jax {jax.__version__} has no Pallas Triton backend; use the reference "
            "(config.model.kernels='auto' or 'reference'; see docs/kernels.md)"
        )
