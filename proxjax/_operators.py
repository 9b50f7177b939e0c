"""Proximal operators as pure functions of an array.

Each operator takes the point ``z`` and the already-scaled strength (the
step size times the penalty strength) and returns
``argmin_x h(x) + ||x - z||^2 / 2`` for its penalty ``h``. A strength that is
a static zero returns ``z`` untouched, so no work is traced for it.
"""

from typing import Any

import jax
import jax.numpy as jnp

from proxjax._hyperparams import is_static_zero


def soft_threshold(z: jax.Array, threshold: Any) -> jax.Array:
    r"""The proximal operator of ``threshold * ||x||_1``.

    .. math::
        \operatorname{prox}(z)_i = \operatorname{sign}(z_i)
        \max(|z_i| - t_i, 0) = z_i - \operatorname{clip}(z_i, -t_i, t_i)

    Written with a clip, coordinates inside the threshold come out exactly
    ``0.0`` (``z - z``), and the gradient is finite everywhere.

    Args:
      z: the point.
      threshold: ``t``, a non-negative scalar or an array broadcasting to ``z``
        (one threshold per coordinate under a diagonal metric).

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> operators.soft_threshold(jnp.array([-2.0, 0.5, 3.0]), 1.0).tolist()
      [-1.0, 0.0, 2.0]
    """
    if is_static_zero(threshold):
        return z
    return z - jnp.clip(z, -threshold, threshold)


def ridge(z: jax.Array, strength: Any) -> jax.Array:
    r"""The proximal operator of ``(strength / 2) * ||x||_2^2``.

    .. math::
        \operatorname{prox}(z) = \frac{z}{1 + s}

    Args:
      z: the point.
      strength: ``s``, non-negative, a scalar or an array broadcasting to ``z``.

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> operators.ridge(jnp.array([-2.0, 3.0]), 1.0).tolist()
      [-1.0, 1.5]
    """
    if is_static_zero(strength):
        return z
    return z / (1 + strength)


def elastic_net(z: jax.Array, l1_threshold: Any, l2_strength: Any) -> jax.Array:
    r"""The proximal operator of ``t ||x||_1 + (s / 2) ||x||_2^2``.

    .. math::
        \operatorname{prox}(z) = \frac{\operatorname{sign}(z)
        \max(|z| - t, 0)}{1 + s}

    This is :func:`soft_threshold` followed by :func:`ridge`, in that order
    only; the other order shrinks by ``t / (1 + s)`` instead of ``t``.

    Args:
      z: the point.
      l1_threshold: ``t``, non-negative.
      l2_strength: ``s``, non-negative.

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> operators.elastic_net(jnp.array([-2.0, 0.5, 3.0]), 1.0, 1.0).tolist()
      [-0.5, 0.0, 1.0]
    """
    return ridge(soft_threshold(z, l1_threshold), l2_strength)
