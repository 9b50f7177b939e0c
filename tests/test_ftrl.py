"""FTRL-proximal against Keras 3's Ftrl and a NumPy transcription of it."""

import os

# Keras reads its backend once, when first imported.
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax

CONFIGS = {
    "l1": {"l1": 1.0},
    "all_penalties": {"l1": 0.5, "l2": 0.3, "l2_shrinkage": 0.1, "beta": 0.5},
    "fixed_rate": {
        "learning_rate_power": 0.0,
        "initial_accumulator_value": 0.5,
        "l1": 0.5,
        "l2": 0.05,
    },
    "power_one": {"learning_rate_power": -1.0, "l1": 1.0, "beta": 1.0},
}
STEPS = 60


def _numpy_ftrl_step(w, n, z, g, lr, config):
    """Keras 3's Ftrl update step, transcribed to NumPy."""
    power = config.get("learning_rate_power", -0.5)
    l1 = config.get("l1", 0.0)
    l2 = config.get("l2", 0.0) + config.get("beta", 0.0) / (2.0 * lr)
    g_shrunk = g + 2 * config.get("l2_shrinkage", 0.0) * w
    n_new = n + np.square(g)
    z = z + (g_shrunk - (n_new**-power - n**-power) / lr * w)
    quadratic = n_new**-power / lr + 2 * l2
    return (np.clip(z, -l1, l1) - z) / quadratic, n_new, z


class _Problem:
    """Gradients of ``||w - target||^2 / 2`` plus noise, on a sparse target.

    Each coordinate gets a gradient at only some steps, as with sparse
    features. The gradient depends on the current weights, so FTRL's zeros
    settle where the target is zero.
    """

    def __init__(self, shape=(5, 8)):
        rng = np.random.default_rng(0)
        self.w0 = rng.normal(size=shape)
        self.target = rng.normal(size=shape) * (rng.random(shape) < 0.3)
        self.noise = rng.normal(size=(STEPS, *shape)) * 0.05
        self.active = rng.random((STEPS, *shape)) < 0.7

    def grad(self, w, t):
        return ((np.asarray(w) - self.target) + self.noise[t]) * self.active[t]


def _opt_step(opt):
    update = jax.jit(opt.update)

    def step(g, state, params):
        updates, state = update(jnp.asarray(g), state, params)
        return optax.apply_updates(params, updates), state

    return step


def _check_zeros(params, state, l1):
    # Exactly zero wherever the linear term lies inside [-l1, l1], else not.
    inside = jnp.abs(state.linear) <= l1
    np.testing.assert_array_equal(params == 0, inside)
    assert not jnp.any(jnp.signbit(jnp.where(inside, params, 1.0)))
    assert 0 < int(jnp.sum(inside)) < inside.size  # both cases are exercised


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ftrl_is_keras_ftrl(x64, name):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("Keras runs on another backend in this process.")
    config = CONFIGS[name]
    lr = 0.1
    problem = _Problem()
    variable = keras.Variable(problem.w0, dtype="float64")
    theirs = keras.optimizers.Ftrl(
        learning_rate=lr,
        learning_rate_power=config.get("learning_rate_power", -0.5),
        initial_accumulator_value=config.get("initial_accumulator_value", 0.1),
        l1_regularization_strength=config.get("l1", 0.0),
        l2_regularization_strength=config.get("l2", 0.0),
        l2_shrinkage_regularization_strength=config.get("l2_shrinkage", 0.0),
        beta=config.get("beta", 0.0),
    )
    theirs.build([variable])
    # Keras stores its learning rate as a float32 variable.
    opt = proxjax.ftrl(float(np.float32(lr)), **config)
    step = _opt_step(opt)
    params = jnp.asarray(problem.w0)
    state = opt.init(params)
    for t in range(STEPS):
        g = problem.grad(variable.value, t)
        theirs.apply_gradients([(jnp.asarray(g), variable)])
        params, state = step(g, state, params)
        np.testing.assert_allclose(params, variable.value, rtol=0, atol=1e-10)
    assert variable.value.dtype == jnp.float64
    np.testing.assert_array_equal(params == 0, np.asarray(variable.value) == 0)
    _check_zeros(params, state, config["l1"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ftrl_is_its_numpy_transcription(x64, name):
    config = CONFIGS[name]
    problem = _Problem()
    w = problem.w0
    n = np.full_like(w, config.get("initial_accumulator_value", 0.1))
    z = np.zeros_like(w)
    opt = proxjax.ftrl(0.1, **config)
    step = _opt_step(opt)
    params = jnp.asarray(w)
    state = opt.init(params)
    for t in range(STEPS):
        g = problem.grad(w, t)
        w, n, z = _numpy_ftrl_step(w, n, z, g, 0.1, config)
        params, state = step(g, state, params)
        np.testing.assert_allclose(params, w, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(params == 0, w == 0)
    _check_zeros(params, state, config["l1"])


def test_learning_rate_and_l1_schedules_are_read_at_the_step_count(x64):
    # Schedules in float64: optax's compute in float32, where the compiled
    # update and an eager call may round differently by an ulp.
    def lr(count):
        return 0.2 * 0.9 ** count.astype(jnp.float64)

    def l1(count):
        return jnp.minimum(count.astype(jnp.float64) / (STEPS // 2), 1.0)

    opt = proxjax.ftrl(lr, l1=l1)
    step = _opt_step(opt)
    problem = _Problem()
    w = problem.w0
    n, z = np.full_like(w, 0.1), np.zeros_like(w)
    params = jnp.asarray(w)
    state = opt.init(params)
    for t in range(STEPS):
        g = problem.grad(w, t)
        count = jnp.asarray(t, jnp.int32)
        config = {"l1": float(l1(count))}
        w, n, z = _numpy_ftrl_step(w, n, z, g, float(lr(count)), config)
        params, state = step(g, state, params)
        np.testing.assert_allclose(params, w, rtol=0, atol=1e-10)
    assert int(state.count) == STEPS


def _params():
    return {"w": jnp.array([[0.5, -0.02], [1.5, 0.0]]), "b": jnp.array([0.1, -0.3])}


def _grads(i):
    k1, k2 = jax.random.split(jax.random.key(i))
    return {"w": jax.random.normal(k1, (2, 2)), "b": jax.random.normal(k2, (2,))}


def test_inside_masked_and_chain():
    params = _params()
    opt = proxjax.ftrl(0.5, l1=0.2)
    masked = optax.chain(optax.clip(10.0), optax.masked(opt, {"w": True, "b": False}))
    g = _grads(0)
    updates, _ = jax.jit(masked.update)(g, masked.init(params), params)
    alone, _ = jax.jit(opt.update)(
        {"w": g["w"]}, opt.init({"w": params["w"]}), {"w": params["w"]}
    )
    np.testing.assert_array_equal(updates["w"], alone["w"])
    np.testing.assert_array_equal(updates["b"], g["b"])


def test_per_leaf_l1_leaves_none_leaves_without_it():
    params = _params()
    g = _grads(0)
    per_leaf = proxjax.ftrl(0.5, l1={"w": 0.2, "b": None})
    u, _ = per_leaf.update(g, per_leaf.init(params), params)
    for l1, leaf in [(0.0, "b"), (0.2, "w")]:
        single = proxjax.ftrl(0.5, l1=l1)
        expected, _ = single.update(g[leaf], single.init(params[leaf]), params[leaf])
        np.testing.assert_array_equal(u[leaf], expected)


def test_float64(x64):
    opt = proxjax.ftrl(0.1, l1=0.01)
    params = jnp.ones(3, jnp.float64)
    updates, state = opt.update(jnp.ones(3, jnp.float64), opt.init(params), params)
    assert updates.dtype == state.accumulator.dtype == jnp.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0}, r"ftrl: learning_rate.*0\.0"),
        ({"learning_rate_power": 0.5}, r"ftrl: learning_rate_power.*0\.5"),
        (
            {"initial_accumulator_value": -0.1},
            r"ftrl: initial_accumulator_value.*-0\.1",
        ),
        ({"l1": -1.0}, r"ftrl: l1.*-1\.0"),
        ({"l2": -1.0}, r"ftrl: l2.*-1\.0"),
        ({"l2_shrinkage": -0.5}, r"ftrl: l2_shrinkage.*-0\.5"),
        ({"beta": -2.0}, r"ftrl: beta.*-2\.0"),
        ({"beta": float("inf")}, r"ftrl: beta.*inf"),
        (
            {"learning_rate_power": optax.constant_schedule(-0.5)},
            r"ftrl: learning_rate_power.*schedule",
        ),
    ],
)
def test_bad_input_raises_at_construction(kwargs, match):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        proxjax.ftrl(**kwargs)


def test_update_without_params_and_integer_leaves_name_ftrl():
    opt = proxjax.ftrl(0.1)
    state = opt.init(jnp.ones(2))
    with pytest.raises(ValueError, match="ftrl"):
        opt.update(jnp.ones(2), state)
    with pytest.raises(ValueError, match=r"ftrl.*int32"):
        opt.init({"w": jnp.ones(2), "step": jnp.zeros([], jnp.int32)})
