"""Ready-made proximal optimizers."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from proxjax import _hyperparams as hp
from proxjax._adaptive import METRIC_CHOICE, check_metric, diagonal_proximal_step
from proxjax._base import place_state_like_params
from proxjax._prox import prox_elastic_net
from proxjax._scaling import check_decayed_rms, scale_by_decayed_rms


def _momentum(name: str, momentum: Any, nesterov: bool) -> optax.GradientTransformation:
    if momentum is None:
        return optax.identity()
    hp.check_number(name, "momentum", momentum, upper=1.0)
    return place_state_like_params(optax.trace(decay=momentum, nesterov=nesterov))


def prox_sgd(
    learning_rate: Any,
    l1: Any = 0.0,
    l2: Any = 0.0,
    momentum: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Proximal stochastic gradient descent with L1 and L2 penalties.

    .. math::
        p^+ = \frac{\operatorname{sign}(z) \max(|z| - \eta_t a_t, 0)}
        {1 + \eta_t b_t}, \qquad z = p - \eta_t d_t,

    where :math:`d_t` is the gradient, or its momentum trace when
    ``momentum`` is set. Without momentum this is FOBOS and TensorFlow's
    ProximalGradientDescent; without penalties it is `optax.sgd`. The
    penalties are not added to the loss: they act through their proximal
    step, which leaves exact zeros.

    Args:
      learning_rate: :math:`\eta`, positive, a float, an array or a schedule.
      l1: :math:`a`, the L1 strength (float, array, schedule or per-leaf tree).
      l2: :math:`b`, the L2 strength, penalty :math:`(b/2)\|p\|^2`.
      momentum: ``None`` for none, else the decay of `optax.trace` in
        ``[0, 1)``.
      nesterov: use Nesterov momentum.

    Returns:
      An `optax.GradientTransformation`; ``update`` needs ``params``. It works
      under `optax.inject_hyperparams`.

    Raises:
      ValueError: if a static ``learning_rate`` is not positive, ``l1`` or
        ``l2`` is negative or not finite, or ``momentum`` lies outside
        ``[0, 1)``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = proxjax.prox_sgd(learning_rate=0.5, l1=0.5)
      >>> params = jnp.array([1.0, 0.25])
      >>> updates, _ = opt.update(jnp.array([1.0, 0.0]), opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()  # threshold 0.5 * 0.5
      [0.25, 0.0]

    References:
      Duchi and Singer, `Efficient Online and Batch Learning Using Forward
      Backward Splitting <https://jmlr.org/papers/v10/duchi09a.html>`_, 2009.
    """
    name = "prox_sgd"
    hp.check_positive(name, "learning_rate", learning_rate)
    hp.check_strength(name, "l1", l1)
    hp.check_strength(name, "l2", l2)
    return optax.chain(
        _momentum(name, momentum, nesterov),
        optax.scale_by_learning_rate(learning_rate),
        prox_elastic_net(l1, l2, learning_rate),
    )


def prox_decayed_rms(
    learning_rate: Any,
    decay_rate: Any = 1.0,
    l1: Any = 0.0,
    l2: Any = 0.0,
    momentum: Any = None,
    *,
    accumulation: str = "sum",
    beta: Any = 0.9,
    nesterov: bool = False,
    metric: str = "scalar",
) -> optax.GradientTransformation:
    r"""The decayed-RMS step size with proximal L1 and L2 penalties.

    .. math::
        d = 1 + c \sqrt{S_t}, \qquad z = p - \frac{\eta_t}{d} g_t,

    .. math::
        p^+ = \frac{\operatorname{sign}(z) \max(|z| - \eta_t a_t, 0)}
        {1 + \eta_t b_t} \quad \text{(scalar)}, \qquad
        p^+ = \frac{\operatorname{sign}(z) \max(|z| - \eta_t a_t / d, 0)}
        {1 + \eta_t b_t / d} \quad \text{(diagonal)},

    with :math:`S_t` as in :func:`scale_by_decayed_rms` (with momentum,
    :math:`g_t / d` is replaced by its trace). By default the threshold is the
    scalar :math:`\eta_t a_t`, the same for every coordinate.

    Which metric:{metric_choice}
      Because :math:`d \ge 1`, the diagonal threshold never exceeds the
      scalar one: coordinates with large gradients are shrunk less.

    Args:
      learning_rate: :math:`\eta`, positive, a float, an array or a schedule.
      decay_rate: :math:`c \ge 0`, see :func:`scale_by_decayed_rms`.
      l1: :math:`a`, the L1 strength (float, array, schedule or per-leaf tree).
      l2: :math:`b`, the L2 strength.
      momentum: ``None`` for none, else the decay of `optax.trace` applied to
        the scaled gradient.
      accumulation: ``"sum"`` or ``"ema"``.
      beta: the moving-average decay for ``"ema"``.
      nesterov: use Nesterov momentum.
      metric: ``"scalar"`` (the default) or ``"diagonal"``.

    Returns:
      An `optax.GradientTransformation`; it works under
      `optax.inject_hyperparams`.

    Raises:
      ValueError: as :func:`prox_sgd` and :func:`scale_by_decayed_rms`, or if
        ``metric`` is unknown.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = proxjax.prox_decayed_rms(learning_rate=1.0, l1=0.25)
      >>> params = jnp.array([2.0, 0.25])
      >>> grads = jnp.array([3.0, 0.0])
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()  # 2 - 3 / (1 + 3) - 0.25
      [1.0, 0.0]
    """
    name = "prox_decayed_rms"
    hp.check_positive(name, "learning_rate", learning_rate)
    check_decayed_rms(name, decay_rate, accumulation, beta)
    hp.check_strength(name, "l1", l1)
    hp.check_strength(name, "l2", l2)
    check_metric(name, metric)
    scaling = optax.chain(
        scale_by_decayed_rms(decay_rate, accumulation=accumulation, beta=beta),
        _momentum(name, momentum, nesterov),
    )
    if metric == "scalar":
        return optax.chain(
            scaling,
            optax.scale_by_learning_rate(learning_rate),
            prox_elastic_net(l1, l2, learning_rate),
        )

    def denominators(old, new):
        # 1 + c sqrt(S), as scale_by_decayed_rms computes it, with c taken at
        # the count it used.
        c = hp.evaluate(decay_rate, old[0].count)
        return jax.tree.map(
            lambda s: 1 + hp.cast(c, s.dtype) * jnp.sqrt(s), new[0].accumulator
        )

    return diagonal_proximal_step(name, scaling, denominators, learning_rate, l1, l2)


prox_decayed_rms.__doc__ = prox_decayed_rms.__doc__.replace(
    "{metric_choice}", METRIC_CHOICE
)
