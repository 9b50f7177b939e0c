"""Measures of sparsity."""

from typing import Any

import jax
import jax.numpy as jnp


def _floating(tree: Any) -> list[jax.Array]:
    return [
        x
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]


def sparsity(tree: Any) -> jax.Array:
    """The fraction of entries that are exactly zero over floating leaves.

    Integer and boolean leaves are skipped. ``-0.0`` counts as zero. It is a
    traceable function, usable inside ``jax.jit``.

    Args:
      tree: a pytree of arrays, for example the params.

    Returns:
      A scalar float array in ``[0, 1]``.

    Raises:
      ValueError: if the tree has no floating-point leaf with entries.

    Example:
      >>> import jax.numpy as jnp
      >>> import proxjax
      >>> tree = {"w": jnp.array([[0.0, 1.0], [0.0, -0.0]]), "b": jnp.ones(4)}
      >>> float(proxjax.sparsity(tree))
      0.375
    """
    leaves = _floating(tree)
    total = sum(x.size for x in leaves)
    if total == 0:
        raise ValueError("sparsity: tree has no floating-point entries.")
    zeros = sum(jnp.count_nonzero(x == 0) for x in leaves)
    return zeros / total
