"""Ready-made optimizers: equivalences, wrappers, jit and retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax


def _params():
    return {"w": jnp.array([[0.5, -0.02], [1.5, 0.0]]), "b": jnp.array([0.1, -0.3])}


def _grads(i):
    k1, k2 = jax.random.split(jax.random.key(i))
    return {"w": jax.random.normal(k1, (2, 2)), "b": jax.random.normal(k2, (2,))}


def _run(opt, steps=5, jit=True):
    params = _params()
    state = opt.init(params)
    update = jax.jit(opt.update) if jit else opt.update
    for i in range(steps):
        updates, state = update(_grads(i), state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_prox_sgd_without_penalties_is_sgd(momentum):
    ours = _run(proxjax.prox_sgd(0.1, momentum=momentum))
    theirs = _run(optax.sgd(0.1, momentum=momentum))
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)


def test_prox_decayed_rms_is_its_chain():
    ours = _run(proxjax.prox_decayed_rms(0.1, 0.5, l1=0.05, l2=0.01))
    chain = optax.chain(
        proxjax.scale_by_decayed_rms(0.5),
        optax.scale_by_learning_rate(0.1),
        proxjax.prox_l1(0.05, 0.1),
        proxjax.prox_l2(0.01, 0.1),
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        ours,
        _run(chain),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: proxjax.prox_sgd(0.1, l1=0.05, l2=0.01, momentum=0.5),
        lambda: proxjax.prox_decayed_rms(0.1, l1=0.05, accumulation="ema"),
        lambda: optax.chain(
            proxjax.scale_by_decayed_rms(),
            optax.scale_by_learning_rate(proxjax.inverse_time_decay(0.1, 0.1)),
            proxjax.prox_l1(0.05, proxjax.inverse_time_decay(0.1, 0.1)),
        ),
    ],
)
def test_jit_and_no_jit_agree(make):
    jitted = _run(make(), jit=True)
    eager = _run(make(), jit=False)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        jitted,
        eager,
    )


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (proxjax.prox_sgd, {"l2": 0.0}),
        (proxjax.prox_decayed_rms, {"l2": 0.0}),
        (proxjax.prox_decayed_rms, {"metric": "diagonal"}),
        (proxjax.prox_adagrad, {}),
        (proxjax.prox_adam, {"metric": "scalar"}),
        (proxjax.prox_adam, {"metric": "diagonal"}),
        (proxjax.ftrl, {}),
    ],
)
def test_inject_hyperparams_changes_without_retracing(factory, kwargs):
    opt = optax.inject_hyperparams(factory)(learning_rate=0.1, l1=0.0, **kwargs)
    params = _params()
    state = opt.init(params)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state, _grads(0))
    assert proxjax.sparsity(params["w"]) < 0.5
    # Same dtype as inject_hyperparams stores, so the step is not retraced.
    state.hyperparams["l1"] = jnp.asarray(1e4, jnp.float32)
    state.hyperparams["learning_rate"] = jnp.asarray(0.05, jnp.float32)
    params, state = step(params, state, _grads(1))
    assert float(proxjax.sparsity(params)) == 1.0  # everything shrunk to zero


def test_inject_hyperparams_with_integer_and_float64_params(x64):
    opt = optax.inject_hyperparams(proxjax.prox_decayed_rms)(
        learning_rate=1, decay_rate=1, l1=1, l2=0
    )
    params = jnp.array([0.5, 3.0], jnp.float64)
    updates, _ = opt.update(jnp.array([0.0, 1.0]), opt.init(params), params)
    assert updates.dtype == jnp.float64


def test_inside_masked_multisteps_and_apply_if_finite():
    base = proxjax.prox_sgd(0.5, l1=0.1)
    mask = {"w": True, "b": False}
    opt = optax.apply_if_finite(
        optax.MultiSteps(optax.masked(base, mask), every_k_schedule=2),
        max_consecutive_errors=2,
    )
    # optax's MultiSteps divides an int32 by a float32, which strict promotion
    # refuses; proxjax's own links run strict everywhere else.
    with jax.numpy_dtype_promotion("standard"):
        _check_masked_multisteps_apply_if_finite(opt)


def test_inside_masked_and_apply_if_finite_strict():
    opt = optax.apply_if_finite(
        optax.masked(proxjax.prox_sgd(0.5, l1=0.1), {"w": True, "b": False}), 2
    )
    params = _params()
    g = _grads(0)
    updates, state = opt.update(g, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    expected_w = proxjax.operators.soft_threshold(params["w"] - 0.5 * g["w"], 0.05)
    np.testing.assert_allclose(new["w"], expected_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(new["b"], params["b"] + g["b"])


def _check_masked_multisteps_apply_if_finite(opt):
    params = _params()
    state = opt.init(params)
    g = _grads(0)
    updates, state = opt.update(g, state, params)
    # MultiSteps accumulates the first mini-step: nothing moves yet.
    assert all(jnp.all(u == 0) for u in jax.tree.leaves(updates))
    updates, state = opt.update(g, state, params)
    new = optax.apply_updates(params, updates)
    expected_w = proxjax.operators.soft_threshold(params["w"] - 0.5 * g["w"], 0.05)
    np.testing.assert_allclose(new["w"], expected_w, rtol=1e-6, atol=1e-7)
    # Masked-out leaves get no update from the masked transform.
    np.testing.assert_array_equal(new["b"], params["b"] + g["b"])
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), g)
    updates, state = opt.update(nan, state, params)
    assert all(jnp.all(u == 0) for u in jax.tree.leaves(updates))
    assert int(state.notfinite_count) == 1


def test_update_without_params_names_the_transform():
    for opt, name in [
        (proxjax.prox_l1(0.1), "prox_l1"),
        (proxjax.prox_l2(0.1), "prox_l2"),
        (proxjax.prox_sgd(0.1, l1=0.1), "prox_elastic_net"),
    ]:
        state = opt.init(jnp.ones(2))
        with pytest.raises(ValueError, match=name):
            opt.update(jnp.ones(2), state)


@pytest.mark.parametrize(
    "opt",
    [proxjax.prox_l1(0.1), proxjax.scale_by_decayed_rms(), proxjax.prox_sgd(0.1, 0.1)],
)
def test_integer_leaves_are_refused_at_init(opt):
    params = {"w": jnp.ones(2), "step": jnp.zeros([], jnp.int32)}
    with pytest.raises(ValueError, match=r"\['step'\].*int32|int32.*\['step'\]"):
        opt.init(params)
