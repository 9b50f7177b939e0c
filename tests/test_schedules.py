import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax


def test_inverse_time_decay_closed_form():
    schedule = proxjax.inverse_time_decay(2.0, decay_rate=0.5, decay_steps=4)
    steps = np.arange(10)
    expected = 2.0 / (1 + 0.5 * steps / 4)
    np.testing.assert_allclose(jax.vmap(schedule)(jnp.asarray(steps)), expected)


def test_inverse_time_decay_staircase():
    schedule = proxjax.inverse_time_decay(1.0, 1.0, decay_steps=3, staircase=True)
    values = [float(schedule(t)) for t in range(7)]
    assert values == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, float(np.float32(1 / 3))]


def test_inverse_time_decay_drives_learning_rate_and_strength(x64):
    lr = proxjax.inverse_time_decay(1.0, 1.0)
    opt = proxjax.prox_sgd(lr, l1=proxjax.inverse_time_decay(1.0, 1.0))
    params = jnp.array([10.0])
    state = opt.init(params)
    moves = []
    for _ in range(3):
        updates, state = opt.update(jnp.zeros(1), state, params)
        moves.append(-float(updates[0]))
        params = optax.apply_updates(params, updates)
    # threshold eta_t * l1_t = 1 / (1 + t)^2.
    np.testing.assert_allclose(moves, [1.0, 0.25, 1 / 9], rtol=1e-13)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init_value": float("nan"), "decay_rate": 1.0}, "init_value"),
        ({"init_value": 1.0, "decay_rate": -1.0}, "decay_rate"),
        ({"init_value": 1.0, "decay_rate": 1.0, "decay_steps": 0}, "decay_steps"),
        ({"init_value": 1.0, "decay_rate": 1.0, "decay_steps": 1.5}, "decay_steps"),
    ],
)
def test_inverse_time_decay_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        proxjax.inverse_time_decay(**kwargs)
