"""Bad input is refused when a transform is built, naming argument and value."""

import jax.numpy as jnp
import optax
import pytest

import proxjax

nan, inf = float("nan"), float("inf")

CASES = [
    # (factory, kwargs, the argument named, the value named)
    (proxjax.prox_l1, {"l1": -0.1}, "l1", "-0.1"),
    (proxjax.prox_l1, {"l1": nan}, "l1", "nan"),
    (proxjax.prox_l1, {"l1": 0.1, "learning_rate": 0.0}, "learning_rate", "0.0"),
    (proxjax.prox_l1, {"l1": 0.1, "learning_rate": -1.0}, "learning_rate", "-1.0"),
    (proxjax.prox_l1, {"l1": 0.1, "learning_rate": inf}, "learning_rate", "inf"),
    (proxjax.prox_l1, {"l1": {"w": 0.1, "b": -2.0}}, "l1", "-2.0"),
    (proxjax.prox_l1, {"l1": True}, "l1", "True"),
    (proxjax.prox_l1, {"l1": "0.1"}, "l1", "'0.1'"),
    (proxjax.prox_l2, {"l2": -1e-3}, "l2", "-0.001"),
    (proxjax.prox_l2, {"l2": inf}, "l2", "inf"),
    (proxjax.prox_elastic_net, {"l1": 0.1, "l2": -0.1}, "l2", "-0.1"),
    (proxjax.scale_by_decayed_rms, {"decay_rate": -1.0}, "decay_rate", "-1.0"),
    (proxjax.scale_by_decayed_rms, {"decay_rate": nan}, "decay_rate", "nan"),
    (proxjax.scale_by_decayed_rms, {"beta": 1.0}, "beta", "1.0"),
    (proxjax.scale_by_decayed_rms, {"beta": -0.1}, "beta", "-0.1"),
    (proxjax.scale_by_decayed_rms, {"accumulation": "mean"}, "accumulation", "mean"),
    (proxjax.prox_sgd, {"learning_rate": 0.0}, "learning_rate", "0.0"),
    (proxjax.prox_sgd, {"learning_rate": 0.1, "l1": -1.0}, "l1", "-1.0"),
    (proxjax.prox_sgd, {"learning_rate": 0.1, "l2": nan}, "l2", "nan"),
    (proxjax.prox_sgd, {"learning_rate": 0.1, "momentum": 1.5}, "momentum", "1.5"),
    (proxjax.prox_decayed_rms, {"learning_rate": -0.1}, "learning_rate", "-0.1"),
    (proxjax.prox_decayed_rms, {"learning_rate": 0.1, "beta": 2.0}, "beta", "2.0"),
    (
        proxjax.prox_decayed_rms,
        {"learning_rate": 0.1, "accumulation": "max"},
        "accumulation",
        "max",
    ),
]


@pytest.mark.parametrize("factory, kwargs, argument, value", CASES)
def test_bad_input_is_refused_at_construction(factory, kwargs, argument, value):
    with pytest.raises(ValueError) as info:
        factory(**kwargs)
    message = str(info.value)
    assert factory.__name__ in message
    assert argument in message and value in message


@pytest.mark.parametrize(
    "make",
    [
        lambda: proxjax.prox_l1(jnp.asarray(-1.0)),
        lambda: proxjax.prox_l1(optax.constant_schedule(-1.0)),
        lambda: proxjax.prox_sgd(jnp.asarray(0.0), l1=jnp.asarray(-1.0)),
        lambda: proxjax.scale_by_decayed_rms(jnp.asarray(-1.0), beta=jnp.asarray(1.0)),
    ],
)
def test_arrays_and_schedules_are_not_checked(make):
    """Their values are only known inside the traced update (documented)."""
    assert isinstance(make(), optax.GradientTransformation)
