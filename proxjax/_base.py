"""The machinery shared by every proximal last link."""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from proxjax import _hyperparams as hp


class ProximalState(NamedTuple):
    """State of a proximal step whose learning rate or strength is scheduled.

    Attributes:
      count: the number of updates so far, the step at which schedules are
        evaluated (the same count that `optax.scale_by_learning_rate` uses).
    """

    count: jax.Array


def check_floating(transform: str, params: Any) -> None:
    """Raises ``ValueError`` if a leaf of ``params`` is not floating point."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{transform}: every params leaf must be floating point, got "
                f"dtype {dtype} at {jax.tree_util.keystr(path) or 'the root'}; "
                "keep such leaves out with optax.masked."
            )


def _place_like(value: jax.Array, param: Any) -> jax.Array:
    # Under jax.jit an array built from a shape alone is not tied to the
    # params: the compiler puts it on one device, or replicates it. Selecting
    # it over the param makes it an output computed from the param, so
    # sharding propagation gives it the param's sharding. The select never
    # reads the param's values, so an inf or nan param cannot leak into it
    # (as it would through ``p * 0``, which also gives -0.0 for negative p).
    param = jnp.asarray(param)
    return jnp.where(True, value, param.astype(value.dtype))


def full_like_params(params: Any, fill_value: float = 0.0, dtype: Any = None) -> Any:
    """A tree like ``params`` filled with ``fill_value``, sharded like them.

    Each leaf has its param's shape and sharding, eagerly and under
    ``jax.jit`` (where ``jnp.zeros(p.shape)`` and ``jnp.zeros_like(p)`` lose
    it), in ``dtype``, or in its param's dtype when ``dtype`` is ``None``.
    """
    return jax.tree.map(
        lambda p: _place_like(
            jnp.asarray(fill_value, jnp.result_type(p) if dtype is None else dtype),
            p,
        ),
        params,
    )


def place_state_like_params(
    transform: optax.GradientTransformation,
) -> optax.GradientTransformation:
    """``transform`` whose params-shaped state is sharded like the params.

    optax builds state such as `optax.trace`'s from shapes, so under
    ``jax.jit(init)`` it lands on one device or is replicated. This re-places
    every subtree of the state that has the structure and leaf shapes of the
    params where the params are, leaving its values and dtypes unchanged.
    """

    def init_fn(params):
        state = transform.init(params)
        param_leaves, treedef = jax.tree.flatten(params)

        def like_params(subtree: Any) -> bool:
            if jax.tree.structure(subtree) != treedef:
                return False
            leaves = jax.tree.leaves(subtree)
            return all(
                jnp.shape(s) == jnp.shape(p)
                for s, p in zip(leaves, param_leaves, strict=True)
            )

        def place(subtree: Any) -> Any:
            if not like_params(subtree):
                return subtree
            leaves = zip(jax.tree.leaves(subtree), param_leaves, strict=True)
            return treedef.unflatten(
                [_place_like(jnp.asarray(s), p) for s, p in leaves]
            )

        return jax.tree.map(place, state, is_leaf=like_params)

    return transform._replace(init=init_fn)


def missing_params(transform: str) -> ValueError:
    return ValueError(
        f"{transform} needs the current params: call update(updates, state, params)."
    )


def init_count(scheduled: bool) -> ProximalState | optax.EmptyState:
    """A step counter where a schedule reads it, and nothing otherwise."""
    if scheduled:
        return ProximalState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()


def next_count(state: Any, scheduled: bool) -> Any:
    if scheduled:
        return ProximalState(count=optax.safe_increment(state.count))
    return state


def proximal_step(
    transform: str,
    prox: Callable[..., jax.Array],
    learning_rate: Any,
    strengths: Mapping[str, Any],
) -> optax.GradientTransformation:
    """A last link that moves the params to ``prox(p + u, *scaled)``.

    ``scaled`` holds ``learning_rate * strength`` for each strength, evaluated
    at the step count and cast to each leaf's dtype. A leaf whose strengths are
    all static zeros (or ``None`` in a per-leaf tree) keeps its update. With no
    strengths at all (a projection) ``prox`` is applied to every leaf.

    Args:
      transform: the public name, for error messages.
      prox: ``prox(z, *scaled) -> array``.
      learning_rate: the learning rate (float, array or schedule).
      strengths: the penalty strengths, by name, each a float, an array, a
        schedule or a pytree of those matching the params.

    Returns:
      An `optax.GradientTransformation` that needs ``params`` in ``update``.
    """
    scheduled = hp.uses_schedule(learning_rate, *strengths.values())

    def init_fn(params):
        check_floating(transform, params)
        return init_count(scheduled)

    def update_fn(updates, state, params=None):
        if params is None:
            raise missing_params(transform)
        count = state.count if scheduled else None
        step_size = hp.evaluate(learning_rate, count)
        leaf_strengths = [hp.per_leaf(s, params, count) for s in strengths.values()]
        u_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        new_leaves = []
        for i, (u, p) in enumerate(zip(u_leaves, p_leaves, strict=True)):
            lams = [s[i] for s in leaf_strengths]
            if lams and all(hp.is_static_zero(lam) for lam in lams):
                new_leaves.append(u)
                continue
            scaled = [
                0.0 if lam is None else hp.product((step_size, lam), p.dtype)
                for lam in lams
            ]
            z = p + u.astype(p.dtype)
            new_leaves.append(prox(z, *scaled) - p)
        return treedef.unflatten(new_leaves), next_count(state, scheduled)

    return optax.GradientTransformation(init_fn, update_fn)
