"""Proximal steps in the metric of an adaptive scaling: AdaGrad and Adam."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from proxjax import _hyperparams as hp
from proxjax import _operators
from proxjax._base import (
    check_floating,
    full_like_params,
    missing_params,
    proximal_step,
)

METRICS = ("scalar", "diagonal")

METRIC_CHOICE = r"""
      With an adaptive scaling, coordinate :math:`i` moves with its own step
      size :math:`\eta_t / d_i`. ``metric="diagonal"`` takes the proximal step
      in the same metric,

      .. math::
          p^+_i = \operatorname*{argmin}_x\; a |x| + \frac{b}{2} x^2
          + \frac{d_i}{2 \eta_t} (x - z_i)^2
          = \frac{\operatorname{sign}(z_i)
          \max(|z_i| - \eta_t a / d_i, 0)}{1 + \eta_t b / d_i},

      so each coordinate is shrunk by its own threshold
      :math:`\eta_t a / d_i`. Its fixed points are exactly the stationary
      points of :math:`f(p) + a \|p\|_1 + (b/2) \|p\|_2^2`, whatever the
      scaling. ``metric="scalar"`` shrinks every coordinate by the same
      :math:`\eta_t a`: it is ``prox_elastic_net(a, b, learning_rate)``
      chained after the scaling, the step that composes with any optax
      optimizer. Its fixed points are those of the reweighted penalty
      :math:`\sum_i a\, d_i |p_i|`, with weights set by the gradient history:
      coordinates with large gradients are penalised more. Choose the
      diagonal metric to solve the penalised problem you wrote down (as
      TensorFlow's ProximalAdagrad and FTRL do); choose the scalar one for a
      threshold in the units of the params, the same for all of them.
"""


class DiagonalProximalState(NamedTuple):
    """State of a proximal step taken in the metric of an adaptive scaling.

    Attributes:
      count: the number of updates so far when the learning rate or a
        strength is a schedule, else ``None`` (no leaf).
      scaling: the state of the scaling whose per-coordinate step sizes set
        the thresholds.
    """

    count: jax.Array | None
    scaling: optax.OptState


Metric = Callable[[optax.OptState, optax.OptState], optax.Updates]
"""``metric(old_state, new_state)``: the denominators ``d`` of a scaling.

The scaling's output times ``learning_rate`` is the step, and coordinate
``i`` of it moves with the step size ``learning_rate / d_i``. Both the state
before and after the update are given, so a schedule inside the scaling can be
evaluated at the count the scaling used.
"""


def check_metric(transform: str, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(
            f"{transform}: metric must be one of {METRICS}, got {metric!r}."
        )


def diagonal_proximal_step(
    transform: str,
    scaling: optax.GradientTransformation,
    metric: Metric,
    learning_rate: Any,
    l1: Any,
    l2: Any,
) -> optax.GradientTransformation:
    """A scaling, the learning rate and an elastic-net prox in its metric.

    The scaling's output ``s`` gives ``z = p - eta * s``; coordinate ``i``
    then moves to ``ridge(soft_threshold(z, eta l1 / d_i), eta l2 / d_i)``
    with ``d = metric(old_state, new_state)``. The denominators are computed
    from the scaling's state inside the same update, so under jit they fuse
    with the scaling and cost no extra state and no extra pass over memory.

    Args:
      transform: the public name, for error messages.
      scaling: the adaptive scaling (without the learning rate).
      metric: the scaling's denominators, see :data:`Metric`.
      learning_rate: the learning rate (float, array or schedule).
      l1: the L1 strength (float, array, schedule or per-leaf tree).
      l2: the L2 strength, as ``l1``.

    Returns:
      An `optax.GradientTransformation` with a :class:`DiagonalProximalState`;
      its ``update`` needs ``params``.
    """
    scheduled = hp.uses_schedule(learning_rate, l1, l2)

    def init_fn(params):
        check_floating(transform, params)
        count = jnp.zeros([], jnp.int32) if scheduled else None
        return DiagonalProximalState(count=count, scaling=scaling.init(params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise missing_params(transform)
        direction, scaling_state = scaling.update(updates, state.scaling, params)
        denominators = metric(state.scaling, scaling_state)
        count = state.count if scheduled else None
        step_size = hp.evaluate(learning_rate, count)
        l1_leaves = hp.per_leaf(l1, params, count)
        l2_leaves = hp.per_leaf(l2, params, count)
        s_leaves, treedef = jax.tree.flatten(direction)
        p_leaves = treedef.flatten_up_to(params)
        d_leaves = treedef.flatten_up_to(denominators)
        new_leaves = []
        for s, p, d, a, b in zip(
            s_leaves, p_leaves, d_leaves, l1_leaves, l2_leaves, strict=True
        ):
            # The same arithmetic as scale_by_learning_rate, so that without
            # penalties the step is the scaling's to the last bit.
            u = -hp.cast(step_size, s.dtype) * s
            if hp.is_static_zero(a) and hp.is_static_zero(b):
                new_leaves.append(u)
                continue
            z = p + u.astype(p.dtype)
            coordinate_step = hp.cast(step_size, p.dtype) / d.astype(p.dtype)
            if not hp.is_static_zero(a):
                z = _operators.soft_threshold(z, coordinate_step * hp.cast(a, p.dtype))
            if not hp.is_static_zero(b):
                z = _operators.ridge(z, coordinate_step * hp.cast(b, p.dtype))
            new_leaves.append(z - p)
        count = None if state.count is None else optax.safe_increment(state.count)
        new_state = DiagonalProximalState(count=count, scaling=scaling_state)
        return treedef.unflatten(new_leaves), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_root_sum_of_squares(
    initial_accumulator_value: Any,
) -> optax.GradientTransformation:
    """``g / sqrt(S)`` with ``S = initial + sum g^2``, without an epsilon."""

    def init_fn(params):
        return optax.ScaleByRssState(
            sum_of_squares=full_like_params(params, initial_accumulator_value)
        )

    def update_fn(updates, state, params=None):
        del params
        sums = jax.tree.map(
            lambda g, s: s + jnp.square(g.astype(s.dtype)),
            updates,
            state.sum_of_squares,
        )
        updates = jax.tree.map(
            lambda g, s: (g / jnp.sqrt(s).astype(g.dtype)).astype(g.dtype),
            updates,
            sums,
        )
        return updates, optax.ScaleByRssState(sum_of_squares=sums)

    return optax.GradientTransformation(init_fn, update_fn)


def _root_sum_of_squares(old: Any, new: Any) -> optax.Updates:
    del old
    return jax.tree.map(jnp.sqrt, new.sum_of_squares)


def prox_adagrad(
    learning_rate: Any,
    l1: Any = 0.0,
    l2: Any = 0.0,
    initial_accumulator_value: Any = 0.1,
) -> optax.GradientTransformation:
    r"""Proximal AdaGrad: AdaGrad steps with per-coordinate L1 and L2 prox.

    Per coordinate, with :math:`S_0` the initial accumulator value,

    .. math::
        S_t = S_{t-1} + g_t^2, \qquad
        \eta_{t,i} = \frac{\eta_t}{\sqrt{S_{t,i}}}, \qquad
        z = p - \eta_{t,i}\, g_t,

    .. math::
        p^+ = \frac{\operatorname{sign}(z) \max(|z| - \eta_{t,i}\, a, 0)}
        {1 + \eta_{t,i}\, b}.

    The threshold of each coordinate is its own AdaGrad step size times
    :math:`a`: this is the proximal step in AdaGrad's metric, step for step
    TensorFlow's ApplyProximalAdagrad. After `optax.apply_updates`,
    coordinates with :math:`|z| \le \eta_{t,i} a` are exactly ``0.0``.

    Warning:
      Unlike `optax.adagrad`, there is no epsilon: the accumulator must start
      positive. Unlike TensorFlow, the learning rate and the strengths may be
      optax schedules, evaluated at the step count.

    Args:
      learning_rate: :math:`\eta`, positive, a float, an array or a schedule.
      l1: :math:`a`, the L1 strength (float, array, schedule or per-leaf tree
        with ``None`` for leaves to leave alone).
      l2: :math:`b`, the L2 strength, penalty :math:`(b/2)\|p\|^2`.
      initial_accumulator_value: :math:`S_0 > 0`, a float or an array.

    Returns:
      An `optax.GradientTransformation` whose state is a
      :class:`DiagonalProximalState` around an `optax.ScaleByRssState`; its
      ``update`` needs ``params``. It works under `optax.inject_hyperparams`.

    Raises:
      ValueError: if a static ``learning_rate`` or
        ``initial_accumulator_value`` is not positive, or ``l1`` or ``l2`` is
        negative or not finite. Arrays and schedules are not checked.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = proxjax.prox_adagrad(1.0, l1=0.5, initial_accumulator_value=0.0625)
      >>> params = jnp.array([3.0, 0.25])
      >>> grads = jnp.array([0.0, 0.0])  # step sizes 1 / sqrt(0.0625) = 4
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()  # thresholds 4 * 0.5
      [1.0, 0.0]

    References:
      Duchi, Hazan and Singer, `Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization
      <https://jmlr.org/papers/v12/duchi11a.html>`_, 2011.

      Duchi and Singer, `Efficient Online and Batch Learning Using Forward
      Backward Splitting <https://jmlr.org/papers/v10/duchi09a.html>`_, 2009.
    """
    name = "prox_adagrad"
    hp.check_positive(name, "learning_rate", learning_rate)
    hp.check_strength(name, "l1", l1)
    hp.check_strength(name, "l2", l2)
    hp.check_not_schedule(name, "initial_accumulator_value", initial_accumulator_value)
    hp.check_positive(name, "initial_accumulator_value", initial_accumulator_value)
    return diagonal_proximal_step(
        name,
        _scale_by_root_sum_of_squares(initial_accumulator_value),
        _root_sum_of_squares,
        learning_rate,
        l1,
        l2,
    )


def _adam_denominator(nu: jax.Array, count: jax.Array, b2: Any, eps: Any) -> Any:
    """``sqrt(nu_hat) + eps``, with ``nu`` bias-corrected at ``count``."""
    b2 = hp.cast(b2, nu.dtype)
    correction = 1 - b2 ** count.astype(nu.dtype)
    return jnp.sqrt(nu / correction) + hp.cast(eps, nu.dtype)


def _scale_by_adam(b1: Any, b2: Any, eps: Any) -> optax.GradientTransformation:
    """Adam's scaling, with every dtype cast made explicit."""

    def init_fn(params):
        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=full_like_params(params, 0.0),
            nu=full_like_params(params, 0.0),
        )

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)

        def first_moment(g, m):
            b1_m = hp.cast(b1, m.dtype)
            return b1_m * m + (1 - b1_m) * g.astype(m.dtype)

        def second_moment(g, v):
            b2_v = hp.cast(b2, v.dtype)
            return b2_v * v + (1 - b2_v) * jnp.square(g.astype(v.dtype))

        def scale(g, m, v):
            b1_m = hp.cast(b1, m.dtype)
            m_hat = m / (1 - b1_m ** count.astype(m.dtype))
            return (m_hat / _adam_denominator(v, count, b2, eps)).astype(g.dtype)

        mu = jax.tree.map(first_moment, updates, state.mu)
        nu = jax.tree.map(second_moment, updates, state.nu)
        updates = jax.tree.map(scale, updates, mu, nu)
        return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def prox_adam(
    learning_rate: Any,
    l1: Any = 0.0,
    l2: Any = 0.0,
    *,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    metric: str = "scalar",
) -> optax.GradientTransformation:
    r"""Adam with proximal L1 and L2 penalties, in a scalar or diagonal metric.

    With Adam's bias-corrected moments :math:`\hat m_t, \hat v_t`,

    .. math::
        d = \sqrt{\hat v_t} + \epsilon, \qquad
        z = p - \eta_t \frac{\hat m_t}{d},

    .. math::
        p^+ = \frac{\operatorname{sign}(z) \max(|z| - \eta_t a / d, 0)}
        {1 + \eta_t b / d} \quad \text{(diagonal)}, \qquad
        p^+ = \frac{\operatorname{sign}(z) \max(|z| - \eta_t a, 0)}
        {1 + \eta_t b} \quad \text{(scalar)}.

    Without penalties both are `optax.adam`. The penalties are not added to
    the gradient (that would be Adam with L1 regularisation, which leaves no
    exact zeros, or AdamW's decoupled decay): they act through their proximal
    step after the Adam step.

    Which metric:{metric_choice}
      A complete optimizer, rather than a last link to chain, lets the
      diagonal step read Adam's second moment, so the learning rate is given
      once and no extra state is kept.

    Warning:
      The two metrics' strengths are not on one scale. The diagonal ``l1``
      weighs the penalty against the loss itself; the scalar one acts like
      ``l1 * d_i``, and Adam's :math:`d_i` is about the gradients' RMS, often
      far below one. A diagonal run therefore needs a much smaller ``l1`` for
      the same sparsity. With ``metric="diagonal"``, a coordinate whose
      gradients have all been zero has :math:`d = \epsilon` and a threshold
      :math:`\eta a / \epsilon`: it is set to zero at once (the exact
      proximal step, since its loss is flat so far). A larger ``eps`` softens
      this.

    Args:
      learning_rate: :math:`\eta`, positive, a float, an array or a schedule.
      l1: :math:`a`, the L1 strength (float, array, schedule or per-leaf tree
        with ``None`` for leaves to leave alone).
      l2: :math:`b`, the L2 strength, penalty :math:`(b/2)\|p\|^2`.
      b1: the first-moment decay in ``[0, 1)``.
      b2: the second-moment decay in ``[0, 1)``.
      eps: :math:`\epsilon > 0`, added to :math:`\sqrt{\hat v_t}`.
      metric: ``"scalar"`` (the default) or ``"diagonal"``.

    Returns:
      An `optax.GradientTransformation`; its ``update`` needs ``params``. It
      works under `optax.inject_hyperparams`, and its update keeps the
      params' dtype under strict dtype promotion (where `optax.adam` raises).

    Raises:
      ValueError: if a static ``learning_rate`` or ``eps`` is not positive,
        ``l1`` or ``l2`` is negative or not finite, ``b1`` or ``b2`` lies
        outside ``[0, 1)``, or ``metric`` is unknown.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> params = jnp.array([1.0, 0.5])
      >>> grads = jnp.array([4.0, 0.01])  # first Adam step: about -lr * sign
      >>> for metric in ("scalar", "diagonal"):
      ...     opt = proxjax.prox_adam(0.25, l1=1.0, metric=metric)
      ...     updates, _ = opt.update(grads, opt.init(params), params)
      ...     print(metric, optax.apply_updates(params, updates).round(4).tolist())
      scalar [0.5, 0.0]
      diagonal [0.6875, 0.0]

    References:
      Kingma and Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2015.

      Yun, Lozano and Yang, Adaptive Proximal Gradient Methods for
      Structured Neural Networks, NeurIPS 2021.
    """
    name = "prox_adam"
    hp.check_positive(name, "learning_rate", learning_rate)
    hp.check_strength(name, "l1", l1)
    hp.check_strength(name, "l2", l2)
    for arg, value in (("b1", b1), ("b2", b2), ("eps", eps)):
        hp.check_not_schedule(name, arg, value)
    hp.check_number(name, "b1", b1, upper=1.0)
    hp.check_number(name, "b2", b2, upper=1.0)
    hp.check_positive(name, "eps", eps)
    check_metric(name, metric)
    scaling = _scale_by_adam(b1, b2, eps)
    if metric == "scalar":
        return optax.chain(
            scaling,
            optax.scale_by_learning_rate(learning_rate),
            proximal_step(
                name, _operators.elastic_net, learning_rate, {"l1": l1, "l2": l2}
            ),
        )

    def denominators(old, new):
        del old
        return jax.tree.map(lambda v: _adam_denominator(v, new.count, b2, eps), new.nu)

    return diagonal_proximal_step(name, scaling, denominators, learning_rate, l1, l2)


prox_adam.__doc__ = prox_adam.__doc__.replace("{metric_choice}", METRIC_CHOICE)
