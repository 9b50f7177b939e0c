"""L1-penalised linear models solved on a working set of features."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from proxjax import _hyperparams as hp
from proxjax._operators import soft_threshold
from proxjax._solve import (
    DECREASE_FACTOR,
    INCREASE_FACTOR,
    MAX_BACKTRACKING_STEPS,
    _is_int,
    backtrack,
    check_matrix,
    resolution_of,
)


class L1LinearResult(NamedTuple):
    """What :func:`minimize_l1_linear` returns.

    Attributes:
      params: the coefficients, a vector with exact zeros.
      iterations: the FISTA updates made, over all working sets, an int32
        scalar (the Newton steps are not counted).
      working_sets: the working sets solved, an int32 scalar; ``0`` when the
        problem is small enough to be solved whole.
      violation: the largest violation of the optimality condition over all
        features at ``params``: :math:`\\max(|g_j| - \\lambda, 0)` where
        :math:`w_j = 0` and :math:`|g_j + \\lambda \\operatorname{sign}
        w_j|` elsewhere, with :math:`g` the gradient of the loss.
      overflowed: whether the rest was solved on all features: the working
        set filled up with non-zero coefficients while features outside it
        still violated the optimality condition, or the warm start had more
        non-zeros than the largest working set.
    """

    params: jax.Array
    iterations: jax.Array
    working_sets: jax.Array
    violation: jax.Array
    overflowed: jax.Array


class _Fista(NamedTuple):
    """The carry of :func:`_fista_linear`."""

    iterate: jax.Array  # x_k, with exact zeros
    predictions: jax.Array  # X x_k
    point: jax.Array  # y_k, the extrapolated point
    point_predictions: jax.Array  # X y_k
    t: jax.Array
    learning_rate: jax.Array
    count: jax.Array
    update_norm: jax.Array
    stable: jax.Array  # updates since the support of the iterate last changed
    attempted: jax.Array  # the count at the last Newton step tried


def _fista_linear(loss, X, l1, params, learning_rate, args, tol, maxiter, newton):
    """FISTA with backtracking and gradient restart on ``loss(X @ w) + l1|w|_1``.

    The same steps as ``chain(prox_linesearch(...), accelerate())`` run by
    :func:`minimize`, with the same stopping test, but for a linear model:
    the predictions at the extrapolated point follow from those at the last
    two iterates without a product with ``X``, so a step costs two products
    (the gradient and the trial point) instead of three. With ``newton``,
    a Newton step on the support is tried once the support has held for a
    few updates, at most once every ``2 * features`` updates (the first
    after as many); when it is taken the momentum restarts from it.

    Returns the iterate, its predictions, the last learning rate and the
    number of updates (Newton steps not counted).
    """
    dtype = X.dtype
    features = X.shape[1]
    predictions = X @ params

    def not_done(carry):
        threshold = hp.cast(tol, dtype) * jnp.linalg.norm(carry.point)
        return (carry.count < maxiter) & (carry.update_norm > threshold)

    def step(carry):
        value, dloss = jax.value_and_grad(loss)(carry.point_predictions, *args)
        grad = dloss @ X
        resolution = resolution_of(value)

        def trial(eta):
            iterate = soft_threshold(carry.point - eta * grad, eta * l1)
            predictions = X @ iterate
            u = iterate - carry.point
            quadratic = jnp.vdot(u, u) / (2 * eta)
            resolved = quadratic > resolution

            def sufficient_decrease():
                gain = loss(predictions, *args) - value
                return gain <= jnp.vdot(grad, u) + quadratic

            passed = jax.lax.cond(resolved, sufficient_decrease, lambda: True)
            return iterate, predictions, passed, resolved

        iterate, predictions, eta = backtrack(
            trial,
            carry.learning_rate,
            INCREASE_FACTOR,
            DECREASE_FACTOR,
            MAX_BACKTRACKING_STEPS,
        )
        u = iterate - carry.point
        move = iterate - carry.iterate
        t = jnp.where(jnp.vdot(u, move) < 0, jnp.ones_like(carry.t), carry.t)
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        momentum = (t - 1) / t_next
        point = iterate + momentum * move
        point_predictions = predictions + momentum * (predictions - carry.predictions)
        same_support = jnp.all((iterate != 0) == (carry.iterate != 0))
        stable = jnp.where(same_support, carry.stable + 1, 0)
        # FISTA crawls on ill-conditioned problems once the support has
        # settled; a Newton step on the support then lands on the solution.
        due = carry.count + 1 - carry.attempted >= _SPACING * features
        try_newton = newton & (stable >= _STABLE_UPDATES) & due

        def newton_step():
            w, z, accepted = _newton_on_support(loss, X, l1, iterate, predictions, args)
            return jax.lax.cond(
                accepted,
                lambda: (w, z, w, z, jnp.ones_like(t_next)),
                lambda: (iterate, predictions, point, point_predictions, t_next),
            )

        if newton:
            iterate, predictions, point, point_predictions, t_next = jax.lax.cond(
                try_newton,
                newton_step,
                lambda: (iterate, predictions, point, point_predictions, t_next),
            )
        return _Fista(
            iterate,
            predictions,
            point,
            point_predictions,
            t_next,
            eta,
            carry.count + 1,
            jnp.linalg.norm(point - carry.point),
            stable,
            jnp.where(try_newton, carry.count + 1, carry.attempted),
        )

    carry = _Fista(
        params,
        predictions,
        params,
        predictions,
        jnp.ones([], dtype),
        learning_rate,
        jnp.zeros([], jnp.int32),
        jnp.full([], jnp.inf, dtype),
        jnp.zeros([], jnp.int32),
        jnp.zeros([], jnp.int32),
    )
    carry = jax.lax.while_loop(not_done, step, carry)
    return carry.iterate, carry.predictions, carry.learning_rate, carry.count


# Updates with an unchanged support before a Newton step is tried.
_STABLE_UPDATES = 2
# Updates, per feature, between two Newton steps tried. With f features and
# n samples, counting multiply-adds, a step costs about as much as
# f / 2 + f^2 / 6n updates (the Hessian X^T H X and its solve, against two
# products with X per update):
# a Newton step that fails every time adds about a quarter to the cost when
# f <= n, and half when f = 3n.
_SPACING = 2


def _newton_on_support(loss, X, l1, params, predictions, args):
    """A Newton step on the support of ``params``; whether it is taken.

    On the support, with the signs fixed, the objective is smooth: the step
    solves the Newton system there (exactly, for least squares) and is taken
    only if it keeps every sign, is finite and lowers the objective.
    """
    support = params != 0
    sign = jnp.sign(params)

    def gradient(z):
        return jax.grad(loss)(z, *args)

    grad = gradient(predictions) @ X
    # X^T H X, with H the loss's Hessian in the predictions applied to each
    # column: far fewer operations than jax.hessian of w -> loss(X @ w).
    hessian_columns = jax.vmap(
        lambda column: jax.jvp(gradient, (predictions,), (column,))[1],
        in_axes=1,
    )(X)
    hessian = hessian_columns @ X
    # Off the support, the identity and a zero right-hand side: no move.
    off = jnp.diag((~support).astype(X.dtype))
    hessian = jnp.where(support[:, None] & support[None, :], hessian, off)
    rhs = jnp.where(support, grad + l1 * sign, 0)
    candidate = params - jnp.linalg.solve(hessian, rhs)
    candidate_predictions = X @ candidate

    def objective(w, z):
        return loss(z, *args) + l1 * jnp.sum(jnp.abs(w))

    accepted = (
        jnp.all(jnp.isfinite(candidate))
        & jnp.all(jnp.sign(candidate) == sign)
        & (
            objective(candidate, candidate_predictions)
            <= objective(params, predictions)
        )
    )
    return candidate, candidate_predictions, accepted


def _violation(params: jax.Array, gradient: jax.Array, l1: jax.Array) -> jax.Array:
    """The optimality-condition violation of each coordinate."""
    return jnp.where(
        params == 0,
        jnp.maximum(jnp.abs(gradient) - l1, 0),
        jnp.abs(gradient + l1 * jnp.sign(params)),
    )


def minimize_l1_linear(
    loss: Callable[..., jax.Array],
    X: Any,
    l1: Any,
    *args: Any,
    params: Any = None,
    tol: float = 1e-6,
    maxiter: int = 10_000,
    capacity: int = 256,
    max_working_sets: int = 50,
) -> L1LinearResult:
    r"""Fits an L1-penalised linear model by FISTA on a working set of features.

    Solves

    .. math::
        \min_w \; \ell(X w) + \lambda \|w\|_1

    for a smooth loss :math:`\ell` of the linear predictions, such as least
    squares or the logistic loss. At the solution each coordinate satisfies
    :math:`|g_j| \le \lambda` where :math:`w_j = 0`, with :math:`g = X^\top
    \nabla \ell(X w)`. The solver keeps the ``capacity`` features most
    likely to break that condition (the non-zero coefficients, then the
    largest :math:`|g_j|`), solves the problem restricted to their columns,
    then computes the gradient over all features once; while a feature
    outside the working set violates the condition, the working set is
    chosen again and solved from the last coefficients. Each working set
    costs a gather of its columns and one product of the loss's gradient
    with all of ``X``, and steps on its own columns only, where
    whole-problem FISTA reads all of ``X`` at every step: on the sparse
    problems of proxjax's Lasso benchmark 3 to 11 working sets sufficed.
    The working sets start at 16 features (or ``capacity``, if smaller) and
    at most double each time, up to ``capacity``; a problem with at most 16
    features is solved whole.

    Each restricted problem is solved by the steps of FISTA with
    backtracking and gradient restart (``chain(prox_linesearch(...),
    accelerate())`` run by :func:`minimize`, fused so that each step costs
    two products with the columns instead of three). On an ill-conditioned
    problem FISTA finds the support long before it converges on it: after
    twice as many steps as the working set has features, once the support
    has held for two steps, and then at most once per as many steps, a
    Newton step on the support (with the signs fixed, the objective is
    smooth there) is tried, and taken if it keeps every sign and lowers the
    objective. For least squares it lands on the solution.

    Everything runs in `jax.lax` loops; the function is traceable, and
    ``loss`` and the static options should be static under `jax.jit`.

    Warning:
      The working set has a fixed size, so that the shapes are static. If it
      fills up with non-zero coefficients while features outside still
      violate the condition (a solution with more than ``capacity``
      non-zeros), the solver finishes on all features, which is correct but
      as slow as plain FISTA; ``overflowed`` in the result reports it.
      Raise ``capacity`` above the expected number of non-zeros (a warm
      start with more non-zeros than ``capacity`` goes to all features at
      once). When a FISTA run stops at ``maxiter``, or the working sets run
      out at ``max_working_sets``, the result is not converged and nothing
      but ``violation`` says so: compare it with ``l1``. The penalty
      applies to every coefficient: for an unpenalised intercept, centre
      ``X`` and the target (least squares), as scikit-learn does.

    Args:
      loss: the smooth loss of the predictions, ``loss(X @ w, *args) ->
        scalar``, twice differentiable for the Newton step; it must not
        depend on ``w`` otherwise. Its value is cast to the dtype of ``X``.
      X: the design matrix, ``(samples, features)``, floating point.
      l1: the penalty strength :math:`\lambda`, non-negative (a number or a
        scalar array).
      *args: further arguments of ``loss``, such as the targets.
      params: the initial coefficients, a vector of ``features`` (zeros by
        default); a warm start along a regularisation path.
      tol: the tolerance of each FISTA run, on the relative change of the
        coefficients (as in :func:`minimize`).
      maxiter: the largest number of FISTA updates per working set.
      capacity: the number of features in the working set, a positive int.
      max_working_sets: the largest number of working sets solved.

    Returns:
      An :class:`L1LinearResult`.

    Raises:
      ValueError: if ``loss`` is not callable, ``X`` is not a non-empty 2-D
        floating array, ``params`` does not match its columns, ``l1`` or
        ``tol`` is not a scalar, or an option is out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import proxjax
      >>> X = jnp.eye(4) * 2.0
      >>> y = jnp.array([4.0, -2.0, 0.5, 0.0])
      >>> def least_squares(z, y):
      ...     return 0.5 * jnp.sum((z - y) ** 2)
      >>> result = proxjax.minimize_l1_linear(least_squares, X, 2.0, y, capacity=2)
      >>> [round(w, 4) for w in result.params.tolist()]  # soft(2 y, 2) / 4
      [1.5, -0.5, 0.0, 0.0]
      >>> bool(result.violation < 1e-5)
      True

    References:
      Tibshirani, Bien, Friedman, Hastie, Simon, Taylor and Tibshirani,
      `Strong Rules for Discarding Predictors in Lasso-type Problems
      <https://doi.org/10.1111/j.1467-9868.2011.01004.x>`_, 2012.

      Massias, Gramfort and Salmon, `Celer: a Fast Solver for the Lasso with
      Dual Extrapolation <https://proceedings.mlr.press/v80/massias18a.html>`_,
      2018.
    """
    name = "minimize_l1_linear"
    if not callable(loss):
        raise ValueError(
            f"{name}: loss must be a function of the predictions, got {loss!r}."
        )
    X = check_matrix(name, X)
    features = X.shape[1]
    for option, value in (("l1", l1), ("tol", tol)):
        if not hp.is_number(value) and not (
            isinstance(value, (jax.Array, np.ndarray, np.generic))
            and np.ndim(value) == 0
        ):
            raise ValueError(
                f"{name}: {option} must be a number or a scalar array, got {value!r}."
            )
        hp.check_number(name, option, value)
    for option, value in (
        ("maxiter", maxiter),
        ("capacity", capacity),
        ("max_working_sets", max_working_sets),
    ):
        if isinstance(value, bool) or not _is_int(value) or value < 1:
            raise ValueError(f"{name}: {option} must be a positive int, got {value!r}.")
    if params is None:
        params = jnp.zeros(features, X.dtype)
    else:
        params = jnp.asarray(params)
        if params.shape != (features,):
            raise ValueError(
                f"{name}: params must have shape ({features},) to match X, got "
                f"{params.shape}."
            )
        params = params.astype(X.dtype)
    l1 = jnp.asarray(l1, X.dtype)
    user_loss = loss

    def loss(predictions, *args):
        # In the dtype of X, whatever the loss computes in: the solver mixes
        # its value and gradient with the coefficients.
        return jnp.asarray(user_loss(predictions, *args)).astype(X.dtype)

    def gradient(predictions):
        # v @ X, not X.T @ v: XLA:CPU copies the transpose for the latter.
        return jax.grad(loss)(predictions, *args) @ X

    def fista(X, params, learning_rate, newton=True):
        return _fista_linear(
            loss, X, l1, params, learning_rate, args, tol, maxiter, newton
        )

    learning_rate = jnp.ones([], X.dtype)
    no = jnp.zeros([], bool)
    sizes = _working_set_sizes(features, capacity)
    if sizes == (features,):
        params, predictions, _, iterations = fista(X, params, learning_rate)
        violation = jnp.max(_violation(params, gradient(predictions), l1))
        zero = jnp.zeros([], jnp.int32)
        return L1LinearResult(params, iterations, zero, violation, no)

    def solve_on(size):
        def solve(params, grad, learning_rate):
            if size == features:
                columns = jnp.arange(features)
                X_set = X
            else:
                # The non-zero coefficients first, then the largest gradients.
                score = jnp.where(params != 0, jnp.inf, jnp.abs(grad))
                columns = jnp.sort(jax.lax.top_k(score, size)[1])
                X_set = jnp.take(X, columns, axis=1)
            w, predictions, learning_rate, k = fista(
                X_set, params[columns], learning_rate
            )
            params = jnp.zeros_like(params).at[columns].set(w)
            grad = gradient(predictions)
            inside = jnp.zeros(features, bool).at[columns].set(True)
            # A feature outside counts only if it violates the condition by
            # more than the working set's own solution does: below that the
            # violation is the inexactness of FISTA, not a missing feature.
            violation = _violation(params, grad, l1)
            tolerated = jnp.max(jnp.where(inside, violation, 0))
            entering = jnp.any(~inside & (violation > tolerated))
            # Only the largest working set can overflow: a smaller one grows.
            full = size == sizes[-1] and jnp.count_nonzero(w) == size
            return _Outer(params, grad, learning_rate, k, entering, entering & full)

        return solve

    branches = [solve_on(size) for size in sizes]
    bounds = jnp.asarray(sizes, jnp.int32)

    def not_done(carry):
        outer, count = carry
        return outer.violated & ~outer.overflowed & (count < max_working_sets)

    def solve_working_set(carry):
        outer, count = carry
        support = jnp.count_nonzero(outer.params).astype(jnp.int32)
        violators = (outer.params == 0) & (jnp.abs(outer.grad) > l1)
        violators = jnp.count_nonzero(violators).astype(jnp.int32)
        # At most double the working set at a time: a gradient at a point far
        # from the solution names many features that will not stay.
        wanted = support + jnp.minimum(violators, jnp.maximum(support, sizes[0]))
        branch = jnp.minimum(jnp.searchsorted(bounds, wanted), len(sizes) - 1)
        solved = jax.lax.switch(
            branch, branches, outer.params, outer.grad, outer.learning_rate
        )
        return solved._replace(iterations=outer.iterations + solved.iterations), (
            count + 1
        )

    zero = jnp.zeros([], jnp.int32)
    # A warm start with more non-zeros than the largest working set holds
    # goes to the whole problem at once, rather than losing some of them.
    too_many = jnp.count_nonzero(params) > sizes[-1]
    start = _Outer(params, gradient(X @ params), learning_rate, zero, ~no, too_many)
    outer, count = jax.lax.while_loop(not_done, solve_working_set, (start, zero))

    def finish_whole(outer):
        # No Newton step on all the features: its Hessian would be
        # features x features.
        params, predictions, _, k = fista(
            X, outer.params, outer.learning_rate, newton=False
        )
        return outer._replace(
            params=params,
            grad=gradient(predictions),
            iterations=outer.iterations + k,
        )

    outer = jax.lax.cond(outer.overflowed, finish_whole, lambda outer: outer, outer)
    violation = jnp.max(_violation(outer.params, outer.grad, l1))
    return L1LinearResult(
        outer.params, outer.iterations, count, violation, outer.overflowed
    )


class _Outer(NamedTuple):
    """The carry of the loop over working sets."""

    params: jax.Array
    grad: jax.Array  # the gradient of the loss over all features
    learning_rate: jax.Array  # the last one FISTA accepted
    iterations: jax.Array
    violated: jax.Array  # whether a feature outside the last set violated
    overflowed: jax.Array


# The smallest working set; each larger one doubles it, up to the capacity.
_FIRST_SIZE = 16


def _working_set_sizes(features: int, capacity: int) -> tuple[int, ...]:
    """The static sizes of the working sets, the last one the largest."""
    largest = min(features, capacity)
    sizes = []
    size = _FIRST_SIZE
    while size < largest:
        sizes.append(size)
        size *= 2
    return (*sizes, largest)
