"""The decayed-RMS step-size rule."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from proxjax import _hyperparams as hp
from proxjax._base import check_floating, full_like_params

_ACCUMULATIONS = ("sum", "ema")


def check_decayed_rms(name: str, decay_rate: Any, accumulation: str, beta: Any):
    """Checks the decayed-RMS options, naming the function the user called."""
    hp.check_number(name, "decay_rate", decay_rate)
    if accumulation not in _ACCUMULATIONS:
        raise ValueError(
            f"{name}: accumulation must be one of {_ACCUMULATIONS}, "
            f"got {accumulation!r}."
        )
    hp.check_number(name, "beta", beta, upper=1.0)


class ScaleByDecayedRmsState(NamedTuple):
    """State of :func:`scale_by_decayed_rms`.

    Attributes:
      count: the number of updates so far when ``decay_rate`` or ``beta`` is a
        schedule, else ``None`` (no leaf).
      accumulator: ``S``, the running sum or moving average of squared
        gradients, one array per params leaf.
    """

    count: jax.Array | None
    accumulator: optax.Updates


def scale_by_decayed_rms(
    decay_rate: Any = 1.0,
    *,
    accumulation: str = "sum",
    beta: Any = 0.9,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Divides each coordinate by ``1 + decay_rate * sqrt(S_t)``.

    Per coordinate, with :math:`S_0 = 0`,

    .. math::
        S_t = S_{t-1} + g_t^2 \quad \text{(sum)}, \qquad
        S_t = \beta S_{t-1} + (1 - \beta) g_t^2 \quad \text{(ema)},

    .. math::
        u_t = \frac{g_t}{1 + c \sqrt{S_t}}, \qquad c = \text{decay\_rate}.

    Chained with `optax.scale_by_learning_rate` it gives the step size
    :math:`\eta / (1 + c \sqrt{S_t})`: a learning rate that starts at
    :math:`\eta` and decays where gradients have been large. With ``"sum"``
    it is AdaGrad's accumulator without the ``1 +`` (AdaGrad divides by
    :math:`\sqrt{S_t} + \epsilon`); with ``"ema"`` it is RMSprop's (which
    divides by :math:`\sqrt{S_t} + \epsilon`), and like `optax.scale_by_rms`
    with ``initial_scale=0`` it has no bias correction. The ``1 +`` keeps the
    step bounded by :math:`\eta` while :math:`S_t` is small, so no epsilon is
    needed.

    Args:
      decay_rate: :math:`c \ge 0`, a float, an array or a schedule; ``0``
        leaves gradients unchanged.
      accumulation: ``"sum"`` (a running sum) or ``"ema"`` (a moving
        average with ``beta``).
      beta: the moving-average decay in ``[0, 1)``, used by ``"ema"``.
      accumulator_dtype: the dtype of ``S``; ``None`` uses each params leaf's
        dtype. ``jnp.float32`` keeps a low-precision model's running sum from
        stalling.

    Returns:
      An `optax.GradientTransformation` whose state is a
      :class:`ScaleByDecayedRmsState`. Its ``update`` ignores ``params``.

    Raises:
      ValueError: if a static ``decay_rate`` is negative or not finite,
        ``beta`` lies outside ``[0, 1)``, or ``accumulation`` is unknown.
        Arrays and schedules are not checked.

    Example:
      >>> import jax.numpy as jnp
      >>> import proxjax
      >>> opt = proxjax.scale_by_decayed_rms(decay_rate=0.5)
      >>> state = opt.init(jnp.zeros(2))
      >>> updates, state = opt.update(jnp.array([4.0, -2.0]), state)
      >>> updates.tolist()  # 4 / (1 + 0.5 * 4), -2 / (1 + 0.5 * 2)
      [1.3333333730697632, -1.0]

    References:
      Duchi, Hazan and Singer, `Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization
      <https://jmlr.org/papers/v12/duchi11a.html>`_, 2011.

      Tieleman and Hinton, Lecture 6.5, RMSprop, COURSERA: Neural Networks
      for Machine Learning, 2012.
    """
    name = "scale_by_decayed_rms"
    check_decayed_rms(name, decay_rate, accumulation, beta)
    scheduled = hp.uses_schedule(decay_rate, beta)

    def init_fn(params):
        check_floating(name, params)
        accumulator = full_like_params(params, 0.0, accumulator_dtype)
        count = jnp.zeros([], jnp.int32) if scheduled else None
        return ScaleByDecayedRmsState(count=count, accumulator=accumulator)

    def update_fn(updates, state, params=None):
        del params
        c = hp.evaluate(decay_rate, state.count)
        b = hp.evaluate(beta, state.count)

        def accumulate(g, s):
            g2 = jnp.square(g.astype(s.dtype))
            if accumulation == "sum":
                return s + g2
            b_s = hp.cast(b, s.dtype)
            return b_s * s + (1 - b_s) * g2

        def scale(g, s):
            c_s = hp.cast(c, s.dtype)
            return (g / (1 + c_s * jnp.sqrt(s)).astype(g.dtype)).astype(g.dtype)

        accumulator = jax.tree.map(accumulate, updates, state.accumulator)
        updates = jax.tree.map(scale, updates, accumulator)
        count = None if state.count is None else optax.safe_increment(state.count)
        return updates, ScaleByDecayedRmsState(count=count, accumulator=accumulator)

    return optax.GradientTransformation(init_fn, update_fn)
