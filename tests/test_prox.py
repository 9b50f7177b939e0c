"""Closed-form values and compositions of the proximal last links."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax


def _step(opt, grads, params, state=None):
    state = opt.init(params) if state is None else state
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_prox_l1_closed_form_and_exact_zeros():
    params = jnp.array([0.3, -0.3, 1.0, -2.0, 0.0])
    grads = jnp.array([1.0, -1.0, 0.0, 0.0, 0.0])
    opt = optax.chain(optax.sgd(0.25), proxjax.prox_l1(2.0, 0.25))
    new, _ = _step(opt, grads, params)
    # z = p - 0.25 g = [0.05, -0.05, 1, -2, 0]; threshold 0.5.
    np.testing.assert_array_equal(new, [0.0, 0.0, 0.5, -1.5, 0.0])
    zeros = new[:2]
    assert jnp.all(zeros == 0.0) and not jnp.any(jnp.signbit(zeros))


def test_prox_l2_closed_form():
    params = jnp.array([2.0, -4.0])
    opt = optax.chain(optax.sgd(0.5), proxjax.prox_l2(2.0, 0.5))
    new, _ = _step(opt, jnp.array([2.0, 0.0]), params)
    np.testing.assert_array_equal(new, [0.5, -2.0])  # z / (1 + 0.5 * 2)


def test_elastic_net_composition_is_tensorflow_proximal_gradient_descent(x64):
    rng = np.random.default_rng(0)
    lr, l1, l2 = 0.1, 0.3, 0.7
    w = rng.normal(size=50)
    g = rng.normal(size=50)
    # ApplyProximalGradientDescent, transcribed from the TensorFlow kernel.
    v = w - lr * g
    expected = np.sign(v) * np.maximum(np.abs(v) - lr * l1, 0) / (1 + lr * l2)
    chained = optax.chain(
        optax.sgd(lr), proxjax.prox_l1(l1, lr), proxjax.prox_l2(l2, lr)
    )
    fused = optax.chain(optax.sgd(lr), proxjax.prox_elastic_net(l1, l2, lr))
    for opt in (chained, fused, proxjax.prox_sgd(lr, l1=l1, l2=l2)):
        new, _ = _step(opt, jnp.asarray(g), jnp.asarray(w))
        np.testing.assert_allclose(new, expected, rtol=0, atol=1e-15)


def test_threshold_follows_schedules_at_the_learning_rate_count():
    # optax's piecewise_constant_schedule fails under strict promotion.
    def lr(count):
        return jnp.where(count >= 1, 0.5, 1.0)

    def l1(count):
        return jnp.where(count >= 2, 2.0, 0.5)

    opt = optax.chain(optax.scale_by_learning_rate(lr), proxjax.prox_l1(l1, lr))
    params = jnp.array([10.0])
    state = opt.init(params)
    thresholds = []
    for _ in range(3):
        new, state = _step(opt, jnp.zeros(1), params, state)
        thresholds.append(float(params[0] - new[0]))
        params = new
    # eta_t * l1_t at t = 0, 1, 2: 1 * 0.5, 0.5 * 0.5, 0.5 * 2.
    assert thresholds == [0.5, 0.25, 1.0]


def test_state_has_a_count_only_with_a_schedule():
    params = jnp.ones(3)
    constant = proxjax.prox_l1(0.1, 0.1).init(params)
    scheduled = proxjax.prox_l1(optax.constant_schedule(0.1), 0.1).init(params)
    assert jax.tree.leaves(constant) == []
    assert isinstance(scheduled, proxjax.ProximalState)
    assert scheduled.count.dtype == jnp.int32


def test_static_zero_strength_returns_updates_untouched():
    params = jnp.array([0.1, 0.2])
    updates = jnp.array([0.3, -0.7])
    opt = proxjax.prox_elastic_net(0.0, 0.0)
    out, _ = opt.update(updates, opt.init(params), params)
    assert out is updates


def test_per_leaf_strengths_match_masked():
    params = {"w": jnp.array([0.5, -0.05, 2.0]), "b": jnp.array([0.01, -3.0])}
    grads = {"w": jnp.array([1.0, 0.0, 0.0]), "b": jnp.array([0.0, 1.0])}
    per_leaf = optax.chain(optax.sgd(0.5), proxjax.prox_l1({"w": 0.2, "b": None}, 0.5))
    masked = optax.chain(
        optax.sgd(0.5),
        optax.masked(proxjax.prox_l1(0.2, 0.5), {"w": True, "b": False}),
    )
    a, _ = _step(per_leaf, grads, params)
    b, _ = _step(masked, grads, params)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    np.testing.assert_array_equal(a["b"], params["b"] - 0.5 * grads["b"])


def test_prox_before_scaling_breaks_exact_zeros():
    """The documented failure of the wrong order: zeros no longer survive."""
    params = jnp.array([0.05, 1.0])
    grads = jnp.array([0.1, 0.0])
    rmsprop = optax.chain(optax.scale_by_rms(), optax.scale_by_learning_rate(0.01))
    right = optax.chain(rmsprop, proxjax.prox_l1(10.0, 0.01))
    wrong = optax.chain(proxjax.prox_l1(10.0, 0.01), rmsprop)
    assert _step(right, grads, params)[0][0] == 0.0
    assert _step(wrong, grads, params)[0][0] != 0.0


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_prox_keeps_dtypes(dtype):
    params = jnp.array([0.5, -0.01, 2.0], dtype)
    opt = optax.chain(
        optax.sgd(0.1),
        proxjax.prox_l1(optax.linear_schedule(0.1, 0.0, 10), 0.1),
        proxjax.prox_l2(0.1, 0.1),
    )
    state = opt.init(params)
    dtypes = jax.tree.map(lambda x: x.dtype, state)
    for _ in range(2):
        updates, state = opt.update(jnp.ones(3, dtype), state, params)
        params = optax.apply_updates(params, updates)
        assert updates.dtype == dtype and params.dtype == dtype
        assert jax.tree.map(lambda x: x.dtype, state) == dtypes


def test_prox_keeps_float64(x64):
    params = jnp.array([0.5, -0.01], jnp.float64)
    opt = proxjax.prox_sgd(0.1, l1=0.1, l2=0.1)
    updates, _ = opt.update(jnp.ones(2), opt.init(params), params)
    assert updates.dtype == jnp.float64


def test_sparsity():
    tree = {
        "w": jnp.array([[0.0, 1.0], [-0.0, 2.0]]),
        "n": jnp.array([0, 0, 0], jnp.int32),
        "b": jnp.zeros(4, jnp.bfloat16),
    }
    assert float(proxjax.sparsity(tree)) == 6 / 8
    assert float(jax.jit(proxjax.sparsity)(tree)) == 6 / 8
    with pytest.raises(ValueError, match="no floating-point"):
        proxjax.sparsity({"n": jnp.ones(2, jnp.int32)})
