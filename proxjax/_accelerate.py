"""Accelerated proximal gradient (FISTA) as the last link of an optax chain."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from proxjax._base import check_floating, missing_params

_RESTARTS = (None, "gradient")


class AccelerateState(NamedTuple):
    """State of :func:`accelerate`.

    Attributes:
      iterate: :math:`x_k`, the last point the proximal-gradient step landed
        on, before extrapolation: the iterate with exact zeros, whose
        objective converges at FISTA's rate. Read it with
        :func:`accelerated_iterate`.
      t: :math:`t_k`, the momentum sequence, a scalar in the default float
        dtype (``1.0`` at the start and after each restart).
    """

    iterate: optax.Params
    t: jax.Array


def accelerate(*, restart: str | None = "gradient") -> optax.GradientTransformation:
    r"""Turns a proximal-gradient chain into FISTA.

    Placed after the proximal step, it reads that step's update ``u`` at the
    params :math:`y_k` (the point where the gradient was taken), so that
    :math:`x_{k+1} = y_k + u` is the proximal-gradient iterate, and moves the
    params to the extrapolated point

    .. math::
        t_{k+1} = \frac{1 + \sqrt{1 + 4 t_k^2}}{2}, \qquad
        y_{k+1} = x_{k+1} + \frac{t_k - 1}{t_{k+1}} (x_{k+1} - x_k),

    with :math:`x_0 = y_0` the initial params and :math:`t_0 = 1`. With
    ``restart=None`` this is FISTA as published: with a step size
    :math:`1/L` for an :math:`L`-smooth loss the objective at :math:`x_k`
    falls as :math:`O(1/k^2)` instead of proximal gradient's :math:`O(1/k)`.
    With ``restart="gradient"``, the default, the momentum is reset
    (:math:`t_k \leftarrow 1`, so :math:`y_{k+1} = x_{k+1}`) whenever the
    step opposes it, :math:`(y_k - x_{k+1}) \cdot (x_{k+1} - x_k) > 0`.
    Plain FISTA oscillates once the iterates reach a region where the
    objective is strongly convex, as the Lasso is on its support, and there
    it can be slower than proximal gradient; restarting keeps the fast start
    and converges linearly there. Without a proximal step before it, it is
    Nesterov's accelerated gradient.

    Warning:
      The params hold the extrapolated point :math:`y_k`, not the iterate
      :math:`x_k`: both converge to the solution, but only :math:`x_k` has
      the exact zeros of the proximal step (a coordinate that has just
      become zero is extrapolated past it). Read the solution with
      ``proxjax.accelerated_iterate(state)``. The chain must be full batch,
      with a plain gradient step short enough for the loss's curvature (a
      constant :math:`1/L` from :func:`lipschitz_least_squares`, or the step
      :func:`prox_linesearch` finds at each update), and this link must come
      last, after the proximal step, with nothing after it.

    Note:
      Only the gradient restart of O'Donoghue and Candès is offered: it
      uses quantities the chain already has. Their function restart needs
      the whole objective, penalty included, at each :math:`x_{k+1}`, which
      is an extra evaluation per step at a point the chain never takes a
      gradient at; they report both restarts perform alike.

    Args:
      restart: ``"gradient"`` (adaptive restart) or ``None`` (plain FISTA).

    Returns:
      An `optax.GradientTransformation` whose state is an
      :class:`AccelerateState`; its ``update`` needs ``params``.

    Raises:
      ValueError: if ``restart`` is not one of ``None`` and ``"gradient"``.
        ``init`` raises if a params leaf is not floating point.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = optax.chain(
      ...     optax.sgd(0.5), proxjax.prox_l1(0.5, 0.5), proxjax.accelerate()
      ... )
      >>> params = jnp.array([4.0, 1.0])
      >>> state = opt.init(params)
      >>> for _ in range(2):  # the loss ||p - (2, 0)||^2 / 2
      ...     grads = params - jnp.array([2.0, 0.0])
      ...     updates, state = opt.update(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> proxjax.accelerated_iterate(state).tolist()  # x_2, exact zeros
      [2.125, 0.0]
      >>> [round(p, 3) for p in params.tolist()]  # y_2, extrapolated
      [1.949, -0.07]

    References:
      Beck and Teboulle, `A Fast Iterative Shrinkage-Thresholding Algorithm
      for Linear Inverse Problems <https://doi.org/10.1137/080716542>`_, 2009.

      O'Donoghue and Candès, `Adaptive Restart for Accelerated Gradient
      Schemes <https://doi.org/10.1007/s10208-013-9150-3>`_, 2015.
    """
    if restart not in _RESTARTS:
        raise ValueError(
            f"accelerate: restart must be one of {_RESTARTS}, got {restart!r}."
        )

    def init_fn(params):
        check_floating("accelerate", params)
        # A copy, so that donating both params and state never donates one
        # buffer twice.
        iterate = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        return AccelerateState(iterate=iterate, t=jnp.ones([], float))

    def update_fn(updates, state, params=None):
        if params is None:
            raise missing_params("accelerate")
        u_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        old_leaves = treedef.flatten_up_to(state.iterate)
        u_leaves = [u.astype(p.dtype) for u, p in zip(u_leaves, p_leaves, strict=True)]
        new_leaves = [p + u for p, u in zip(p_leaves, u_leaves, strict=True)]
        moves = [x - x_old for x, x_old in zip(new_leaves, old_leaves, strict=True)]
        t = state.t
        if restart == "gradient":
            # (y_k - x_{k+1}) . (x_{k+1} - x_k) = -u . move, over the whole tree.
            # A sum of products, not jnp.vdot: vdot flattens, which gathers a
            # sharded leaf onto every device.
            alignment = sum(
                jnp.sum(u * m, dtype=t.dtype)
                for u, m in zip(u_leaves, moves, strict=True)
            )
            t = jnp.where(alignment < 0, jnp.ones_like(t), t)
        t_next = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        momentum = (t - 1) / t_next
        new_updates = [
            u + momentum.astype(m.dtype) * m
            for u, m in zip(u_leaves, moves, strict=True)
        ]
        new_state = AccelerateState(iterate=treedef.unflatten(new_leaves), t=t_next)
        return treedef.unflatten(new_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def accelerated_iterate(state: Any) -> optax.Params:
    """The non-extrapolated iterate :math:`x_k` held by :func:`accelerate`.

    Args:
      state: the state of an optimizer with one :func:`accelerate` link
        anywhere in it (for example the state of an `optax.chain`).

    Returns:
      The iterate, a pytree like the params: the last output of the
      proximal step, with its exact zeros.

    Raises:
      ValueError: if ``state`` holds no :class:`AccelerateState`, or more
        than one.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import proxjax
      >>> opt = optax.chain(optax.sgd(1.0), proxjax.accelerate())
      >>> proxjax.accelerated_iterate(opt.init(jnp.ones(2))).tolist()
      [1.0, 1.0]
    """
    found = [
        s
        for s in jax.tree.leaves(
            state, is_leaf=lambda s: isinstance(s, AccelerateState)
        )
        if isinstance(s, AccelerateState)
    ]
    if len(found) != 1:
        raise ValueError(
            "accelerated_iterate: state must hold exactly one AccelerateState, "
            f"found {len(found)}."
        )
    return found[0].iterate
