"""Checking and evaluating hyperparameters.

A hyperparameter is a Python number, an array (as `optax.inject_hyperparams`
passes it), an optax schedule (a callable of the step count) or, for
strengths, a pytree of those matching the params with ``None`` leaves.
Python numbers are checked when a transform is built; arrays and schedules
are not, since their values are only known inside the traced update.
"""

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_number(value: Any) -> bool:
    """Whether ``value`` is a static (Python or NumPy scalar) real number."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_static_zero(value: Any) -> bool:
    """Whether ``value`` is ``None`` or a static number equal to zero."""
    return value is None or (is_number(value) and value == 0)


def is_schedule(value: Any) -> bool:
    """Whether ``value`` is a schedule: a callable that is a pytree leaf.

    A callable pytree node, such as a Flax NNX ``Variable`` in a per-leaf tree
    of strengths (calling it forwards to its value), is a container.
    """
    return callable(value) and jax.tree_util.treedef_is_leaf(jax.tree.structure(value))


def _is_scalar_like(value: Any) -> bool:
    return (
        is_schedule(value)
        or is_number(value)
        or isinstance(value, (jax.Array, np.ndarray, np.generic))
    )


def check_number(
    transform: str,
    name: str,
    value: Any,
    *,
    lower: float = 0.0,
    lower_open: bool = False,
    upper: float | None = None,
    upper_open: bool = True,
) -> None:
    """Raises ``ValueError`` if a static number lies outside its interval.

    Arrays and schedules pass unchecked: their values are only known later.
    """
    if callable(value) or isinstance(value, (jax.Array, np.ndarray)):
        return
    if not is_number(value):
        raise ValueError(
            f"{transform}: {name} must be a number, an array or a schedule, "
            f"got {value!r}."
        )
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{transform}: {name} must be finite, got {value!r}.")
    too_low = x <= lower if lower_open else x < lower
    too_high = upper is not None and (x >= upper if upper_open else x > upper)
    if too_low or too_high:
        left = "(" if lower_open else "["
        right = ")" if upper_open else "]"
        interval = f"{left}{lower:g}, {'inf' if upper is None else f'{upper:g}'}"
        raise ValueError(
            f"{transform}: {name} must lie in {interval}{right}, got {value!r}."
        )


def check_not_schedule(transform: str, name: str, value: Any) -> None:
    """Refuses a schedule where a hyperparameter must stay constant."""
    if callable(value):
        raise ValueError(
            f"{transform}: {name} must be a number or an array, not a schedule, "
            f"got {value!r}."
        )


def check_positive(transform: str, name: str, value: Any) -> None:
    """Checks a step size or a learning rate: finite and positive."""
    check_number(transform, name, value, lower_open=True)


def check_strength(transform: str, name: str, value: Any) -> None:
    """Checks a penalty strength: a non-negative number, or a tree of them."""
    if _is_scalar_like(value):
        check_number(transform, name, value)
        return
    leaves = jax.tree.leaves(value, is_leaf=is_schedule)
    for leaf in leaves:
        if not _is_scalar_like(leaf):
            raise ValueError(
                f"{transform}: {name} must be a number, a schedule or a pytree "
                f"of them matching the params, got a leaf {leaf!r}."
            )
        check_number(transform, name, leaf)


def uses_schedule(*values: Any) -> bool:
    """Whether any of ``values`` (or any leaf of a strength tree) is a schedule."""
    return any(
        is_schedule(leaf)
        for v in values
        for leaf in jax.tree.leaves(v, is_leaf=is_schedule)
    )


def evaluate(value: Any, count: jax.Array | None) -> Any:
    """The value of a scalar hyperparameter at ``count`` (schedules are called)."""
    return value(count) if is_schedule(value) else value


def per_leaf(value: Any, params: Any, count: jax.Array | None) -> list[Any]:
    """One evaluated strength for each leaf of ``params``, in flattening order.

    ``value`` is a scalar hyperparameter (used for every leaf) or a pytree with
    the structure of ``params`` in which ``None`` may stand for a whole
    subtree; such leaves come out as ``None``.
    """
    n = len(jax.tree.leaves(params))
    if _is_scalar_like(value):
        return [evaluate(value, count)] * n
    out: list[Any] = []

    def collect(strength: Any, subtree: Any) -> None:
        k = len(jax.tree.leaves(subtree))
        out.extend([None if strength is None else evaluate(strength, count)] * k)

    jax.tree.map(collect, value, params, is_leaf=lambda x: x is None or is_schedule(x))
    return out


def cast(value: Any, dtype: Any) -> Any:
    """``value`` in ``dtype``; static numbers stay weakly typed Python floats."""
    if is_number(value):
        return float(value)
    return jnp.asarray(value).astype(dtype)


def product(values: Sequence[Any], dtype: Any) -> Any:
    """The product of hyperparameters, exact in Python when all are static."""
    result: Any = 1.0
    for v in values:
        result = result * cast(v, dtype)
    return result


Schedule = Callable[[jax.Array], jax.Array]
