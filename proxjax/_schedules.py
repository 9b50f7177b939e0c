"""Schedules for learning rates and penalty strengths."""

from typing import Any

import jax
import jax.numpy as jnp

from proxjax import _hyperparams as hp


def inverse_time_decay(
    init_value: float,
    decay_rate: float,
    decay_steps: int = 1,
    staircase: bool = False,
) -> hp.Schedule:
    r"""A schedule that decays like ``1 / t``.

    .. math::
        v_t = \frac{v_0}{1 + r \, t / k}, \quad\text{or}\quad
        \frac{v_0}{1 + r \lfloor t / k \rfloor} \text{ when staircase}.

    The same rule as Keras' ``InverseTimeDecay``. Like any optax schedule it
    can drive a learning rate or a penalty strength.

    Args:
      init_value: :math:`v_0`, a finite number.
      decay_rate: :math:`r \ge 0`.
      decay_steps: :math:`k`, a positive integer.
      staircase: decay in steps of ``decay_steps``.

    Returns:
      A schedule: a function of the step count (an integer or an integer
      array) returning a float array.

    Raises:
      ValueError: if ``init_value`` is not finite, ``decay_rate`` is negative
        or not finite, or ``decay_steps`` is not a positive integer.

    Example:
      >>> import proxjax
      >>> schedule = proxjax.inverse_time_decay(1.0, decay_rate=0.5, decay_steps=2)
      >>> [round(float(schedule(t)), 4) for t in (0, 1, 2, 4)]
      [1.0, 0.8, 0.6667, 0.5]
    """
    name = "inverse_time_decay"
    hp.check_number(name, "init_value", init_value, lower=-float("inf"))
    hp.check_number(name, "decay_rate", decay_rate)
    if (
        isinstance(decay_steps, bool)
        or not isinstance(decay_steps, int)
        or decay_steps <= 0
    ):
        raise ValueError(
            f"{name}: decay_steps must be a positive integer, got {decay_steps!r}."
        )

    def schedule(count: Any) -> jax.Array:
        # The default float dtype: float64 when x64 is enabled.
        t = jnp.asarray(count).astype(jnp.result_type(float)) / decay_steps
        if staircase:
            t = jnp.floor(t)
        return init_value / (1 + decay_rate * t)

    return schedule
