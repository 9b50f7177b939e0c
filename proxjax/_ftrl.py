"""FTRL-proximal, the follow-the-regularized-leader optimizer."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from proxjax import _hyperparams as hp
from proxjax._base import check_floating, full_like_params, missing_params


class FtrlState(NamedTuple):
    """State of :func:`ftrl`.

    Attributes:
      count: the number of updates so far when a hyperparameter is a
        schedule, else ``None`` (no leaf).
      accumulator: ``n``, the initial value plus the sum of squared gradients.
      linear: ``z``, the linear term whose clipped value sets the params.
    """

    count: jax.Array | None
    accumulator: optax.Updates
    linear: optax.Updates


def ftrl(
    learning_rate: Any,
    learning_rate_power: Any = -0.5,
    initial_accumulator_value: Any = 0.1,
    l1: Any = 0.0,
    l2: Any = 0.0,
    l2_shrinkage: Any = 0.0,
    beta: Any = 0.0,
) -> optax.GradientTransformation:
    r"""FTRL-proximal (follow the regularized leader), with exact zeros.

    Per coordinate, with :math:`k = -` ``learning_rate_power``, the
    accumulator :math:`n_0` = ``initial_accumulator_value`` and the linear
    term :math:`z_0 = 0`,

    .. math::
        n_t = n_{t-1} + g_t^2, \qquad
        \sigma_t = \frac{n_t^k - n_{t-1}^k}{\eta_t}, \qquad
        z_t = z_{t-1} + g_t + 2 \lambda_s p - \sigma_t\, p,

    .. math::
        p^+ = \frac{\operatorname{clip}(z_t, -\lambda_1, \lambda_1) - z_t}
        {n_t^k / \eta_t + 2 \lambda_2 + \beta / \eta_t},

    so :math:`p^+` is exactly ``0.0`` wherever :math:`|z_t| \le \lambda_1`.
    The params are the closed-form minimiser of the linearised losses seen so
    far plus the L1 and L2 terms and a proximal term centred on past iterates.
    Step for step this is Keras 3's ``keras.optimizers.Ftrl`` (with
    ``l1_regularization_strength``, ``l2_regularization_strength`` and
    ``l2_shrinkage_regularization_strength`` named ``l1``, ``l2`` and
    ``l2_shrinkage``), and TensorFlow's FTRL.

    Warning:
      Both L2 strengths follow Keras: they weigh :math:`\|p\|^2`, not
      :math:`\|p\|^2 / 2` as ``l2`` does elsewhere in proxjax.
      The update replaces the params rather than adding a step to them, so
      FTRL is a whole optimizer, not a link to chain after another scaling.
      Keras keeps the learning rate in float32; pass ``float32(lr)`` to
      reproduce its figures in float64. As in Keras, with
      ``initial_accumulator_value=0`` and ``l2 = beta = 0`` a coordinate whose
      gradients have all been zero divides zero by zero; keep the
      accumulator positive.

    Args:
      learning_rate: :math:`\eta`, positive, a float, an array or a schedule.
      learning_rate_power: :math:`-k \le 0`, a float or an array; ``-0.5`` is
        AdaGrad's decay, ``0`` a fixed learning rate.
      initial_accumulator_value: :math:`n_0 \ge 0`, a float or an array.
      l1: :math:`\lambda_1 \ge 0`, the L1 strength (float, array, schedule or
        per-leaf tree with ``None`` for leaves without it).
      l2: :math:`\lambda_2 \ge 0`, the strength of the penalty
        :math:`\lambda_2 \|p\|^2` in the closed form (the stabilising L2
        term of the FTRL objective), as ``l1``.
      l2_shrinkage: :math:`\lambda_s \ge 0`, the strength of the penalty
        :math:`\lambda_s \|p\|^2` added through the gradient (a magnitude
        penalty), as ``l1``.
      beta: :math:`\beta \ge 0`, a float or an array, added to the
        accumulator's root in the denominator as in the FTRL-proximal paper.

    Returns:
      An `optax.GradientTransformation` whose state is a :class:`FtrlState`;
      its ``update`` needs ``params``. It works under
      `optax.inject_hyperparams`, `optax.masked` and `optax.chain` (as the
      last link, or followed by links that keep its zeros).

    Raises:
      ValueError: if a static ``learning_rate`` is not positive,
        ``learning_rate_power`` is positive, or ``initial_accumulator_value``,
        ``l1``, ``l2``, ``l2_shrinkage`` or ``beta`` is negative or not finite.
        Arrays and schedules are not checked.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = proxjax.ftrl(0.5, initial_accumulator_value=0.0, l1=1.0)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([4.0, 0.5])  # z = g; n = g^2
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()  # (clip(z) - z) / (2 n^0.5)
      [-0.375, 0.0]

    References:
      McMahan et al., `Ad Click Prediction: a View from the Trenches
      <https://research.google.com/pubs/archive/41159.pdf>`_, 2013.

      McMahan, `Follow-the-Regularized-Leader and Mirror Descent: Equivalence
      Theorems and L1 Regularization
      <https://proceedings.mlr.press/v15/mcmahan11b.html>`_, 2011.
    """
    name = "ftrl"
    hp.check_positive(name, "learning_rate", learning_rate)
    for arg, value in (
        ("learning_rate_power", learning_rate_power),
        ("initial_accumulator_value", initial_accumulator_value),
        ("beta", beta),
    ):
        hp.check_not_schedule(name, arg, value)
    hp.check_number(
        name,
        "learning_rate_power",
        learning_rate_power,
        lower=-float("inf"),
        upper=0.0,
        upper_open=False,
    )
    hp.check_number(name, "initial_accumulator_value", initial_accumulator_value)
    hp.check_strength(name, "l1", l1)
    hp.check_strength(name, "l2", l2)
    hp.check_strength(name, "l2_shrinkage", l2_shrinkage)
    hp.check_number(name, "beta", beta)
    scheduled = hp.uses_schedule(learning_rate, l1, l2, l2_shrinkage)

    def init_fn(params):
        check_floating(name, params)
        return FtrlState(
            count=jnp.zeros([], jnp.int32) if scheduled else None,
            accumulator=full_like_params(params, initial_accumulator_value),
            linear=full_like_params(params, 0.0),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise missing_params(name)
        count = state.count if scheduled else None
        step_size = hp.evaluate(learning_rate, count)
        l1_leaves = hp.per_leaf(l1, params, count)
        l2_leaves = hp.per_leaf(l2, params, count)
        shrinkage_leaves = hp.per_leaf(l2_shrinkage, params, count)
        g_leaves, treedef = jax.tree.flatten(updates)
        leaves = zip(
            g_leaves,
            treedef.flatten_up_to(params),
            treedef.flatten_up_to(state.accumulator),
            treedef.flatten_up_to(state.linear),
            l1_leaves,
            l2_leaves,
            shrinkage_leaves,
            strict=True,
        )
        new_updates, new_n, new_z = [], [], []
        for g, p, n, z, a, b, s in leaves:
            dtype = p.dtype
            lr = hp.cast(step_size, dtype)
            g = g.astype(dtype)
            g_shrunk = g if hp.is_static_zero(s) else g + 2 * hp.cast(s, dtype) * p
            n_next = n + jnp.square(g)
            root, root_next = (
                _power(n, learning_rate_power),
                _power(n_next, learning_rate_power),
            )
            z = z + (g_shrunk - (root_next - root) / lr * p)
            l2_eff = 0.0 if b is None else hp.cast(b, dtype)
            if not hp.is_static_zero(beta):
                l2_eff = l2_eff + hp.cast(beta, dtype) / (2.0 * lr)
            quadratic = root_next / lr + 2 * l2_eff
            if hp.is_static_zero(a):
                numerator = -z
            else:
                a = hp.cast(a, dtype)
                numerator = jnp.clip(z, -a, a) - z
            new_updates.append(numerator / quadratic - p)
            new_n.append(n_next)
            new_z.append(z)
        count = None if state.count is None else optax.safe_increment(state.count)
        new_state = FtrlState(
            count=count,
            accumulator=treedef.unflatten(new_n),
            linear=treedef.unflatten(new_z),
        )
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _power(n: jax.Array, learning_rate_power: Any) -> jax.Array:
    """``n ** -learning_rate_power``, with a square root for the default."""
    if hp.is_number(learning_rate_power):
        if learning_rate_power == -0.5:
            return jnp.sqrt(n)
        return jnp.power(n, -float(learning_rate_power))
    return jnp.power(n, -hp.cast(learning_rate_power, n.dtype))
