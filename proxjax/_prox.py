"""Proximal steps as the last link of an optax chain."""

from typing import Any

import optax

from proxjax import _hyperparams as hp
from proxjax import _operators
from proxjax._base import proximal_step

_CHAIN_ORDER = """
      A proximal step is the last link of a chain, after the learning-rate
      scaling (for example after `optax.scale_by_learning_rate` or a whole
      `optax.adam`): it reads the finished step ``u`` and the params ``p`` and
      lands on ``prox(p + u)``. Placed earlier, a later link rescales or moves
      its output, so zeros are no longer exact and the threshold no longer
      follows the learning rate. Pass it the same ``learning_rate`` as the
      scaling, so that the threshold follows the same schedule. To keep it off
      biases, wrap it in `optax.masked` with a mask that is ``True`` for the
      leaves to shrink, or give a per-leaf tree of strengths with ``None``
      leaves.
"""


def prox_l1(l1: Any, learning_rate: Any = 1.0) -> optax.GradientTransformation:
    r"""The proximal step of an L1 penalty: a soft threshold with exact zeros.

    With the incoming update ``u`` (already scaled by the learning rate) and
    the params ``p``, the params move to

    .. math::
        z = p + u, \qquad
        p^+ = \operatorname{sign}(z) \max(|z| - \eta_t \lambda_t, 0),

    the proximal operator of :math:`\eta_t \lambda_t \|p\|_1`, with
    :math:`\eta_t` and :math:`\lambda_t` evaluated at the step count that
    `optax.scale_by_learning_rate` uses. After `optax.apply_updates`,
    coordinates with :math:`|z| \le \eta_t \lambda_t` are exactly ``0.0``.
    With an optax scaling before it this is proximal gradient descent (FOBOS);
    with SGD and no momentum it is TensorFlow's ProximalGradientDescent.

    Warning:{chain_order}
    Args:
      l1: the penalty strength :math:`\lambda`, non-negative: a float, an
        array, an optax schedule, or a pytree of those matching the params
        with ``None`` for leaves to leave alone.
      learning_rate: :math:`\eta`, the learning rate of the scaling before it:
        a positive float, an array or an optax schedule.

    Returns:
      An `optax.GradientTransformation`; its ``update`` needs ``params``. Its
      state holds a step count only when a schedule reads one.

    Raises:
      ValueError: if a static ``l1`` is negative or not finite, or a static
        ``learning_rate`` is not positive. Arrays and schedules are not
        checked. ``init`` raises if a params leaf is not floating point.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = optax.chain(optax.sgd(0.5), proxjax.prox_l1(1.0, 0.5))
      >>> params = jnp.array([0.25, -1.5, 2.0])
      >>> grads = jnp.array([0.0, 0.0, 1.0])
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()
      [0.0, -1.0, 1.0]

    References:
      Duchi and Singer, `Efficient Online and Batch Learning Using Forward
      Backward Splitting <https://jmlr.org/papers/v10/duchi09a.html>`_, 2009.

      Parikh and Boyd, `Proximal Algorithms
      <https://web.stanford.edu/~boyd/papers/prox_algs.html>`_, 2014.
    """
    hp.check_strength("prox_l1", "l1", l1)
    hp.check_positive("prox_l1", "learning_rate", learning_rate)
    return proximal_step(
        "prox_l1", _operators.soft_threshold, learning_rate, {"l1": l1}
    )


def prox_l2(l2: Any, learning_rate: Any = 1.0) -> optax.GradientTransformation:
    r"""L2 decay as a proximal (implicit) step.

    .. math::
        p^+ = \frac{p + u}{1 + \eta_t \lambda_t},

    the exact proximal operator of :math:`(\eta_t \lambda_t / 2) \|p\|_2^2`.
    Unlike `optax.add_decayed_weights`, which adds :math:`\lambda p` to the
    gradient before the scaling (an explicit step), this shrinks after it, is
    stable for any strength, and follows the learning-rate schedule.
    ``chain(prox_l1(a, lr), prox_l2(b, lr))`` is the elastic-net proximal
    step, TensorFlow's ProximalGradientDescent with both penalties.

    Warning:{chain_order}
    Args:
      l2: the penalty strength :math:`\lambda`, non-negative: a float, an
        array, an optax schedule, or a pytree of those matching the params
        with ``None`` for leaves to leave alone.
      learning_rate: :math:`\eta`, the learning rate of the scaling before it.

    Returns:
      An `optax.GradientTransformation`; its ``update`` needs ``params``.

    Raises:
      ValueError: as :func:`prox_l1`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = optax.chain(optax.sgd(0.5), proxjax.prox_l2(1.0, 0.5))
      >>> params = jnp.array([3.0, -3.0])
      >>> updates, _ = opt.update(jnp.zeros(2), opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()
      [2.0, -2.0]

    References:
      Parikh and Boyd, `Proximal Algorithms
      <https://web.stanford.edu/~boyd/papers/prox_algs.html>`_, 2014.
    """
    hp.check_strength("prox_l2", "l2", l2)
    hp.check_positive("prox_l2", "learning_rate", learning_rate)
    return proximal_step("prox_l2", _operators.ridge, learning_rate, {"l2": l2})


def prox_elastic_net(
    l1: Any = 0.0, l2: Any = 0.0, learning_rate: Any = 1.0
) -> optax.GradientTransformation:
    r"""The elastic-net proximal step in one link.

    .. math::
        p^+ = \frac{\operatorname{sign}(z) \max(|z| - \eta_t a_t, 0)}
        {1 + \eta_t b_t}, \qquad z = p + u,

    equal to ``chain(prox_l1(a, lr), prox_l2(b, lr))`` with one pass over the
    params instead of two. A strength that is a static ``0.0`` costs nothing.

    Warning:{chain_order}
    Args:
      l1: the L1 strength :math:`a`, as in :func:`prox_l1`.
      l2: the L2 strength :math:`b`, as in :func:`prox_l2`.
      learning_rate: :math:`\eta`, the learning rate of the scaling before it.

    Returns:
      An `optax.GradientTransformation`; its ``update`` needs ``params``.

    Raises:
      ValueError: as :func:`prox_l1`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = optax.chain(optax.sgd(1.0), proxjax.prox_elastic_net(1.0, 1.0))
      >>> params = jnp.array([-2.0, 0.5, 3.0])
      >>> updates, _ = opt.update(jnp.zeros(3), opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()
      [-0.5, 0.0, 1.0]

    References:
      Zou and Hastie, `Regularization and Variable Selection via the Elastic
      Net <https://doi.org/10.1111/j.1467-9868.2005.00503.x>`_, 2005.
    """
    hp.check_strength("prox_elastic_net", "l1", l1)
    hp.check_strength("prox_elastic_net", "l2", l2)
    hp.check_positive("prox_elastic_net", "learning_rate", learning_rate)
    return proximal_step(
        "prox_elastic_net",
        _operators.elastic_net,
        learning_rate,
        {"l1": l1, "l2": l2},
    )


for _f in (prox_l1, prox_l2, prox_elastic_net):
    _f.__doc__ = _f.__doc__.replace("{chain_order}", _CHAIN_ORDER)
