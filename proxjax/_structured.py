"""Structured penalties and constraints: group lasso and projections.

The group lasso zeroes whole groups of coordinates (a kernel's column is the
incoming weights of one unit), which removes units rather than scattered
weights. A projection onto a convex set is the proximal operator of the set's
indicator, so any projection becomes a last link of a chain as well.
"""

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from proxjax import _hyperparams as hp
from proxjax._base import check_floating, missing_params, proximal_step
from proxjax._operators import soft_threshold

Axis = int | tuple[int, ...] | None

_GROUP_WEIGHTS = ("sqrt_size", "one")


# Operators ------------------------------------------------------------------


def group_l2(z: jax.Array, threshold: Any, axis: Axis = None) -> jax.Array:
    r"""The proximal operator of ``threshold * sum_g ||x_g||_2`` (group lasso).

    A group ``g`` is a slice along ``axis``: the norm is taken over ``axis``,
    as ``jnp.linalg.norm(z, axis=axis, keepdims=True)`` takes it, so for a
    kernel of shape ``(in, out)`` ``axis=0`` makes one group per column and
    ``axis=1`` one group per row; ``None`` makes the whole array one group.

    .. math::
        \operatorname{prox}(z)_g = \max\Big(1 - \frac{t_g}{\|z_g\|_2}, 0\Big)
        z_g = z_g - \min\Big(\frac{t_g}{\|z_g\|_2}, 1\Big) z_g

    Written as the second form, a group with :math:`\|z_g\|_2 \le t_g` comes
    out exactly ``0.0``. The norm is never differentiated at zero (a zero
    group reads a norm of one through a double ``where``), so values and
    gradients are finite everywhere, zero groups included; there the
    gradient is zero, the derivative of the constant zero output. Sums of
    squares of ``bfloat16`` and ``float16`` arrays are taken in ``float32``.

    Args:
      z: the point.
      threshold: ``t``, non-negative: a scalar, or an array of the groups'
        shape (the shape of ``z`` with the reduced axes set to 1), one
        threshold per group. No group weight is applied here; see
        :func:`proxjax.prox_group_l2`.
      axis: ``None``, an axis or a tuple of axes to take the norm over.

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> kernel = jnp.array([[3.0, 0.5], [4.0, 0.0]])  # column norms 5 and 0.5
      >>> operators.group_l2(kernel, 2.5, axis=0).tolist()  # 1 - 2.5 / 5
      [[1.5, 0.0], [2.0, 0.0]]

    References:
      Yuan and Lin, `Model Selection and Estimation in Regression with Grouped
      Variables <https://doi.org/10.1111/j.1467-9868.2005.00532.x>`_, 2006.
    """
    if hp.is_static_zero(threshold):
        return z
    dtype = jnp.result_type(z)
    compute = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
    x = jnp.asarray(z).astype(compute)
    t = hp.cast(threshold, compute)
    squared = jnp.sum(x * x, axis=axis, keepdims=True)
    nonzero = squared > 0
    norm = jnp.sqrt(jnp.where(nonzero, squared, 1.0))
    # A zero group maps to zero when t > 0 (shrink 1) and to itself when t == 0.
    at_zero = jnp.asarray(t > 0, compute)
    shrink = jnp.where(nonzero, jnp.minimum(t / norm, 1.0), at_zero)
    return (x - shrink * x).astype(dtype)


def project_nonnegative(z: jax.Array) -> jax.Array:
    r"""The projection onto the non-negative orthant, ``max(z, 0)``.

    Args:
      z: the point.

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> operators.project_nonnegative(jnp.array([-2.0, 0.5])).tolist()
      [0.0, 0.5]
    """
    return jnp.maximum(z, 0.0)


def project_box(z: jax.Array, lower: Any, upper: Any) -> jax.Array:
    r"""The projection onto the box ``lower <= x <= upper``, a clip.

    Args:
      z: the point.
      lower: the lower bounds, a scalar or an array broadcasting to ``z``.
      upper: the upper bounds, likewise, with ``lower <= upper``.

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> operators.project_box(jnp.array([-2.0, 0.5, 3.0]), 0.0, 1.0).tolist()
      [0.0, 0.5, 1.0]
    """
    dtype = jnp.result_type(z)
    return jnp.clip(z, hp.cast(lower, dtype), hp.cast(upper, dtype))


def project_linf_ball(z: jax.Array, radius: Any = 1.0) -> jax.Array:
    r"""The projection onto the ball ``||x||_inf <= radius``, a clip.

    By the Moreau decomposition it is the complement of the soft threshold:
    ``z = soft_threshold(z, r) + project_linf_ball(z, r)``.

    Args:
      z: the point.
      radius: ``r``, non-negative.

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> operators.project_linf_ball(jnp.array([-2.0, 0.5, 3.0]), 1.0).tolist()
      [-1.0, 0.5, 1.0]
    """
    r = hp.cast(radius, jnp.result_type(z))
    return jnp.clip(z, -r, r)


def project_l1_ball(z: jax.Array, radius: Any = 1.0) -> jax.Array:
    r"""The projection onto the ball ``||x||_1 <= radius``.

    Inside the ball ``z`` is returned; outside, the projection is a soft
    threshold at the :math:`\theta > 0` that lands on the sphere,
    :math:`\sum_i \max(|z_i| - \theta, 0) = r`, found by sorting
    :math:`|z|` (:math:`O(n \log n)`). The whole array is one ball; apply it
    per row with ``jax.vmap``.

    Args:
      z: the point.
      radius: ``r``, non-negative.

    Returns:
      An array like ``z``.

    Example:
      >>> import jax.numpy as jnp
      >>> from proxjax import operators
      >>> operators.project_l1_ball(jnp.array([3.0, -1.0, 0.5]), 2.0).tolist()
      [2.0, 0.0, 0.0]

    References:
      Duchi, Shalev-Shwartz, Singer and Chandra, `Efficient Projections onto
      the l1-Ball for Learning in High Dimensions
      <https://doi.org/10.1145/1390156.1390191>`_, 2008.
    """
    z = jnp.asarray(z)
    if z.size == 0:
        return z
    dtype = z.dtype
    r = hp.cast(radius, dtype)
    magnitudes = jnp.sort(jnp.abs(z).ravel())[::-1]
    partial_sums = jnp.cumsum(magnitudes)
    k = jnp.arange(1, z.size + 1, dtype=dtype)
    # The support of the projection is the k largest magnitudes with
    # u_k > (sum_{j<=k} u_j - r) / k; at least one, so that r = 0 thresholds
    # at max |z| and the division below never meets zero.
    support = jnp.maximum(jnp.count_nonzero(magnitudes * k > partial_sums - r), 1)
    theta = (partial_sums[support - 1] - r) / support.astype(dtype)
    inside = partial_sums[-1] <= r
    return jnp.where(inside, z, soft_threshold(z, jnp.maximum(theta, 0.0)))


# Transforms -----------------------------------------------------------------


def _check_axis(transform: str, axis: Any) -> tuple[int, ...] | None:
    def is_int(a: Any) -> bool:
        return isinstance(a, numbers.Integral) and not isinstance(a, bool)

    if axis is None:
        return None
    if is_int(axis):
        return (int(axis),)
    if (
        isinstance(axis, tuple)
        and axis
        and all(is_int(a) for a in axis)
        and len(set(axis)) == len(axis)
    ):
        return tuple(int(a) for a in axis)
    raise ValueError(
        f"{transform}: axis must be None, an int or a tuple of distinct ints, "
        f"got {axis!r}."
    )


def _strength_leaves(value: Any, params: Any) -> list[Any]:
    """One unevaluated strength per params leaf; ``None`` where left alone."""
    n = len(jax.tree.leaves(params))
    if hp._is_scalar_like(value):
        return [value] * n
    out: list[Any] = []

    def collect(strength: Any, subtree: Any) -> None:
        out.extend([strength] * len(jax.tree.leaves(subtree)))

    jax.tree.map(
        collect, value, params, is_leaf=lambda x: x is None or hp.is_schedule(x)
    )
    return out


def prox_group_l2(
    l2: Any,
    learning_rate: Any = 1.0,
    *,
    axis: Axis = None,
    group_weight: str = "sqrt_size",
) -> optax.GradientTransformation:
    r"""The group-lasso proximal step: whole groups of params become zero.

    With the incoming update ``u`` (already scaled by the learning rate) and
    the params ``p``, each group ``g`` of each leaf moves to

    .. math::
        z = p + u, \qquad
        p^+_g = \max\Big(1 - \frac{\eta_t w_g \lambda_t}{\|z_g\|_2}, 0\Big) z_g,

    the proximal operator of :math:`\eta_t \lambda_t \sum_g w_g \|p_g\|_2`.
    A group is a slice along ``axis``, the axes the norm is taken over, as in
    ``jnp.linalg.norm(p, axis=axis, keepdims=True)``: for a Dense kernel of
    shape ``(in, out)``, ``axis=0`` makes one group per output unit (its
    incoming weights, a column) and ``axis=1`` one group per input feature (a
    row); ``None`` makes each leaf one group. A unit whose column is exactly
    zero after `optax.apply_updates` can be removed from the network.

    The group weight :math:`w_g` is :math:`\sqrt{|g|}`, the square root of the
    group size, by default (``group_weight="sqrt_size"``), which puts groups of
    different sizes on the same footing (Yuan and Lin); ``group_weight="one"``
    uses :math:`w_g = 1`. Values and gradients are finite at :math:`z_g = 0`.

    Warning:
      The same ``axis`` applies to every leaf that has a strength, so give
      biases (and leaves of other ranks) a ``None`` strength in a per-leaf
      tree or wrap the link in `optax.masked`; ``init`` raises if ``axis`` does
      not exist in a penalized leaf. As every proximal step, it is the last
      link of a chain, after the learning-rate scaling, and should be given
      the same ``learning_rate``.

    Args:
      l2: the penalty strength :math:`\lambda`, non-negative: a float, an
        array, an optax schedule, or a pytree of those matching the params
        with ``None`` for leaves to leave alone. An array leaf of a per-leaf
        tree may also hold one strength per group, in the groups' shape (the
        leaf's shape with the ``axis`` dimensions set to 1).
      learning_rate: :math:`\eta`, the learning rate of the scaling before it.
      axis: ``None``, an int or a tuple of ints: the axes each group spans.
      group_weight: ``"sqrt_size"`` or ``"one"``.

    Returns:
      An `optax.GradientTransformation`; its ``update`` needs ``params``. Its
      state holds a step count only when a schedule reads one.

    Raises:
      ValueError: if a static ``l2`` is negative or not finite, a static
        ``learning_rate`` is not positive, ``axis`` is not ``None``, an int or
        a tuple of distinct ints, or ``group_weight`` is unknown. ``init``
        raises if a params leaf is not floating point or a penalized leaf has
        no such axis.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> kernel = jnp.array([[1.0, 0.25], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
      >>> # Columns of 4 entries: w = 2, threshold 2 * 0.5; column norms 2 and 0.25.
      >>> opt = optax.chain(optax.sgd(1.0), proxjax.prox_group_l2(0.5, axis=0))
      >>> updates, _ = opt.update(jnp.zeros((4, 2)), opt.init(kernel), kernel)
      >>> optax.apply_updates(kernel, updates).tolist()  # 1 - 1 / 2, and zero
      [[0.5, 0.0], [0.5, 0.0], [0.5, 0.0], [0.5, 0.0]]

    References:
      Yuan and Lin, `Model Selection and Estimation in Regression with Grouped
      Variables <https://doi.org/10.1111/j.1467-9868.2005.00532.x>`_, 2006.

      Scardapane, Comminiello, Hussain and Uncini, `Group Sparse
      Regularization for Deep Neural Networks
      <https://doi.org/10.1016/j.neucom.2017.02.029>`_, 2017.
    """
    name = "prox_group_l2"
    hp.check_strength(name, "l2", l2)
    hp.check_positive(name, "learning_rate", learning_rate)
    axes = _check_axis(name, axis)
    if group_weight not in _GROUP_WEIGHTS:
        raise ValueError(
            f"{name}: group_weight must be one of {_GROUP_WEIGHTS}, "
            f"got {group_weight!r}."
        )

    def group_size(shape: tuple[int, ...]) -> int:
        if axes is None:
            return math.prod(shape)
        return math.prod(shape[a] for a in axes)

    def prox(z: jax.Array, threshold: Any) -> jax.Array:
        if group_weight == "sqrt_size":
            threshold = threshold * math.sqrt(group_size(z.shape))
        return group_l2(z, threshold, axis=axes)

    step = proximal_step(name, prox, learning_rate, {"l2": l2})

    def init_fn(params):
        state = step.init(params)
        if axes is None:
            return state
        strengths = _strength_leaves(l2, params)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        for (path, leaf), strength in zip(flat, strengths, strict=True):
            if hp.is_static_zero(strength):
                continue
            ndim = jnp.ndim(leaf)
            if any(not -ndim <= a < ndim for a in axes):
                raise ValueError(
                    f"{name}: axis={axis!r} does not exist in the params leaf "
                    f"of shape {jnp.shape(leaf)} at "
                    f"{jax.tree_util.keystr(path) or 'the root'}; give it a None "
                    "strength or keep it out with optax.masked."
                )
        return state

    return step._replace(init=init_fn)


def _projection_step(
    transform: str, projection: Callable[[Any], Any], per_leaf: bool
) -> optax.GradientTransformation:
    def init_fn(params):
        check_floating(transform, params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise missing_params(transform)
        z = jax.tree.map(lambda u, p: p + u.astype(p.dtype), updates, params)
        projected = jax.tree.map(projection, z) if per_leaf else projection(z)
        new_updates = jax.tree.map(
            lambda x, p: jnp.asarray(x).astype(p.dtype) - p, projected, params
        )
        return new_updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def prox_from_projection(
    projection: Callable[[Any], Any], *, per_leaf: bool = False
) -> optax.GradientTransformation:
    r"""A projection onto a convex set as the last link of a chain.

    With the incoming update ``u`` (already scaled by the learning rate) and
    the params ``p``,

    .. math::
        p^+ = \Pi_C(p + u),

    the proximal operator of the indicator of :math:`C`, whatever the step
    size: projected gradient descent when ``u`` is a gradient step. Any
    function from a pytree to a pytree of the same structure works: optax's
    ``optax.projections.projection_non_negative``, ``projection_box`` with
    its bounds bound by `functools.partial`, ``projection_l1_ball``, ..., or
    the operators of :mod:`proxjax.operators`.

    By default the projection sees the whole params tree, as optax's
    projections do: ``projection_l1_ball`` then constrains the L1 norm of all
    the params together. With ``per_leaf=True`` it is applied to each leaf
    separately (one ball per leaf), and functions of a single array, such as
    ``proxjax.operators.project_l1_ball``, work too. For separable sets (a
    box, the non-negative orthant) both give the same result. To constrain
    some leaves only, wrap the link in `optax.masked`.

    Note:
      The link returns ``projection(p + u) - p``, so after
      `optax.apply_updates` the params equal the projection up to the
      rounding of that sum (exactly where it is zero). A point on a boundary
      such as an upper bound may thus miss it by an ulp.

    Args:
      projection: a function from the params tree (or, with ``per_leaf``, one
        array) to its projection, with the same structure and shapes.
      per_leaf: apply ``projection`` to each leaf instead of to the tree.

    Returns:
      An `optax.GradientTransformation` with an empty state; its ``update``
      needs ``params``.

    Raises:
      ValueError: if ``projection`` is not callable. ``init`` raises if a
        params leaf is not floating point.

    Example:
      >>> import functools
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> box = functools.partial(
      ...     optax.projections.projection_box, lower=0.0, upper=1.0
      ... )
      >>> opt = optax.chain(optax.sgd(1.0), proxjax.prox_from_projection(box))
      >>> params = jnp.array([0.5, 0.5, 0.5])
      >>> grads = jnp.array([1.0, 0.25, -1.0])
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()
      [0.0, 0.25, 1.0]
    """
    name = "prox_from_projection"
    if not callable(projection):
        raise ValueError(f"{name}: projection must be callable, got {projection!r}.")
    return _projection_step(name, projection, bool(per_leaf))


def prox_nonnegative() -> optax.GradientTransformation:
    r"""Keeps the params non-negative: the projection ``p+ = max(p + u, 0)``.

    The same step as `optax.keep_params_nonnegative`, written as a
    projection. After an L1 step it makes the proximal step of the
    non-negative L1 penalty :math:`\lambda \|p\|_1 + \iota_{p \ge 0}`, that
    is :math:`p^+ = \max(p + u - \eta_t \lambda_t, 0)`, exactly (the two
    proximal operators compose).

    Returns:
      An `optax.GradientTransformation` with an empty state; its ``update``
      needs ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = optax.chain(
      ...     optax.sgd(1.0), proxjax.prox_l1(0.5), proxjax.prox_nonnegative()
      ... )
      >>> params = jnp.array([2.0, 0.25, -1.0])
      >>> updates, _ = opt.update(jnp.zeros(3), opt.init(params), params)
      >>> optax.apply_updates(params, updates).tolist()  # max(p - 0.5, 0)
      [1.5, 0.0, 0.0]
    """
    return _projection_step("prox_nonnegative", project_nonnegative, per_leaf=True)
