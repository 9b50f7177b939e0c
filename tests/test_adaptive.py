"""Proximal steps in the metric of AdaGrad, decayed-RMS and Adam scalings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax


def _tensorflow_proximal_adagrad(w, grads, lr, l1, l2, initial):
    """ApplyProximalAdagrad, transcribed from the TensorFlow kernel."""
    accum = np.full_like(w, initial)
    trajectory = []
    for g in grads:
        accum = accum + g * g
        learning_rate = lr / np.sqrt(accum)
        prox_var = w - g * learning_rate
        if l1 > 0:
            w = (
                np.sign(prox_var)
                * np.maximum(np.abs(prox_var) - learning_rate * l1, 0.0)
                / (1.0 + l2 * learning_rate)
            )
        else:
            w = prox_var / (1.0 + l2 * learning_rate)
        trajectory.append(w)
    return trajectory


@pytest.mark.parametrize(
    "l1, l2, initial", [(0.0, 0.0, 0.1), (0.5, 0.0, 0.1), (0.5, 0.3, 0.5)]
)
def test_prox_adagrad_is_tensorflow_proximal_adagrad(x64, l1, l2, initial):
    rng = np.random.default_rng(0)
    lr, steps = 0.2, 60
    w0 = rng.normal(size=(40,))
    # Sparse-ish gradients, so some coordinates sit at zero for many steps.
    grads = rng.normal(size=(steps, 40)) * (rng.random((steps, 40)) < 0.7)
    expected = _tensorflow_proximal_adagrad(w0, grads, lr, l1, l2, initial)
    opt = proxjax.prox_adagrad(lr, l1=l1, l2=l2, initial_accumulator_value=initial)
    params = jnp.asarray(w0)
    state = opt.init(params)
    step = jax.jit(opt.update)
    for g, w in zip(grads, expected, strict=True):
        updates, state = step(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params, w, rtol=0, atol=1e-10)
    if l1 > 0:
        # The zeros are exact, and where the kernel has them.
        np.testing.assert_array_equal(params == 0, expected[-1] == 0)
        assert jnp.any(params == 0)


def _diagonal_optimizers():
    return {
        "prox_adagrad": proxjax.prox_adagrad(0.3, l1=0.2, l2=0.5),
        "prox_decayed_rms": proxjax.prox_decayed_rms(
            0.3, decay_rate=0.7, l1=0.2, l2=0.5, metric="diagonal"
        ),
        "prox_adam": proxjax.prox_adam(0.3, l1=0.2, l2=0.5, metric="diagonal"),
    }


def _denominators(name, state):
    """d_i read back from the state after the step, by the scaling's formula."""
    scaling = state.scaling
    if name == "prox_adagrad":
        return jnp.sqrt(scaling.sum_of_squares)
    if name == "prox_decayed_rms":
        return 1 + 0.7 * jnp.sqrt(scaling[0].accumulator)
    t = scaling.count.astype(scaling.nu.dtype)
    return jnp.sqrt(scaling.nu / (1 - 0.999**t)) + 1e-8


@pytest.mark.parametrize("name", ["prox_adagrad", "prox_decayed_rms", "prox_adam"])
def test_diagonal_prox_satisfies_the_optimality_condition(x64, name):
    # x = argmin_x l1 |x| + (l2 / 2) x^2 + d / (2 eta) (x - z)^2, coordinate by
    # coordinate, holds iff d (z - x) / eta - l2 x lies in l1 * subgrad |x|.
    eta, l1, l2 = 0.3, 0.2, 0.5
    opt = _diagonal_optimizers()[name]
    without_prox = {
        "prox_adagrad": proxjax.prox_adagrad(eta),
        "prox_decayed_rms": proxjax.prox_decayed_rms(
            eta, decay_rate=0.7, metric="diagonal"
        ),
        "prox_adam": proxjax.prox_adam(eta, metric="diagonal"),
    }[name]
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(size=200) * 0.5)
    grads = jnp.asarray(rng.normal(size=200) * np.exp(rng.normal(size=200)))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    x = params + updates
    plain, _ = without_prox.update(grads, without_prox.init(params), params)
    z = params + plain
    d = _denominators(name, state)
    residual = d * (z - x) / eta - l2 * x
    zero = x == 0
    assert 10 < int(jnp.sum(zero)) < 190  # both cases are exercised
    # Where x != 0 the residual is l1 sign(x); where x == 0 it lies in
    # [-l1, l1]. z - x is rounded to a few ulps of |z|, then scaled by d / eta.
    tolerance = 4 * np.finfo(np.float64).eps * (1 + jnp.abs(z)) * d / eta
    assert jnp.all(
        jnp.abs(jnp.where(zero, 0.0, residual - l1 * jnp.sign(x))) <= tolerance
    )
    assert jnp.all(jnp.abs(jnp.where(zero, residual, 0.0)) <= l1 + tolerance)


@pytest.mark.parametrize("momentum", [None, 0.9])
@pytest.mark.parametrize("accumulation", ["sum", "ema"])
def test_diagonal_without_penalties_is_the_scaling_to_the_bit(momentum, accumulation):
    kwargs = {"momentum": momentum, "accumulation": accumulation}
    scalar = proxjax.prox_decayed_rms(0.1, 0.5, **kwargs)
    diagonal = proxjax.prox_decayed_rms(0.1, 0.5, metric="diagonal", **kwargs)
    for a, b in [
        (scalar, diagonal),
        (proxjax.prox_adam(0.1), proxjax.prox_adam(0.1, metric="diagonal")),
    ]:
        jax.tree.map(np.testing.assert_array_equal, _run(a), _run(b))


def test_prox_adam_without_penalties_is_optax_adam():
    ours = _run(proxjax.prox_adam(0.05, b1=0.8, b2=0.99, eps=1e-6))
    # optax's Adam raises an int32 count to a float power, refused by strict
    # promotion; its arithmetic is otherwise the same.
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(optax.adam(0.05, b1=0.8, b2=0.99, eps=1e-6))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        ours,
        theirs,
    )


def test_scalar_metric_is_adam_then_prox_elastic_net():
    ours = _run(proxjax.prox_adam(0.05, l1=0.1, l2=0.2))
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(
            optax.chain(optax.adam(0.05), proxjax.prox_elastic_net(0.1, 0.2, 0.05))
        )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        ours,
        theirs,
    )


def test_diagonal_thresholds_shrink_large_gradient_coordinates_less():
    # One step from p = 1 with g = 3 and 1: decayed RMS (sum, c = 1) gives
    # d = 4 and 2, z = 1 - 0.5 g / d = 0.625 and 0.75, and the thresholds
    # 0.5 * 0.5 / d = 0.0625 and 0.125, against 0.25 for both with the scalar
    # metric. Every figure is a power of two, so the comparisons are exact.
    params = jnp.ones(2)
    grads = jnp.array([3.0, 1.0])
    moved = {}
    for metric in ("scalar", "diagonal"):
        opt = proxjax.prox_decayed_rms(0.5, l1=0.5, metric=metric)
        updates, _ = opt.update(grads, opt.init(params), params)
        moved[metric] = jnp.array([0.625, 0.75]) - (params + updates)
    np.testing.assert_array_equal(moved["scalar"], [0.25, 0.25])
    np.testing.assert_array_equal(moved["diagonal"], [0.0625, 0.125])


def test_learning_rate_and_strengths_follow_schedules():
    def lr(count):
        return jnp.where(count >= 1, 0.5, 1.0)

    def l1(count):
        return jnp.where(count >= 2, 2.0, 0.5)

    # Zero gradients with AdaGrad from S = 1 keep d = 1: the threshold is
    # eta_t * l1_t.
    opt = proxjax.prox_adagrad(lr, l1=l1, initial_accumulator_value=1.0)
    params = jnp.array([10.0])
    state = opt.init(params)
    thresholds = []
    for _ in range(3):
        updates, state = opt.update(jnp.zeros(1), state, params)
        thresholds.append(-float(updates[0]))
        params = params + updates
    assert thresholds == [0.5, 0.25, 1.0]
    assert int(state.count) == 3


def _params():
    return {"w": jnp.array([[0.5, -0.02], [1.5, 0.0]]), "b": jnp.array([0.1, -0.3])}


def _grads(i):
    k1, k2 = jax.random.split(jax.random.key(i))
    return {"w": jax.random.normal(k1, (2, 2)), "b": jax.random.normal(k2, (2,))}


def _run(opt, steps=5):
    params = _params()
    state = opt.init(params)
    update = jax.jit(opt.update)
    for i in range(steps):
        updates, state = update(_grads(i), state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize(
    "opt",
    [
        proxjax.prox_adagrad(0.5, l1=0.2),
        proxjax.prox_adam(0.5, l1=0.2, metric="diagonal"),
        proxjax.prox_decayed_rms(0.5, l1=0.2, metric="diagonal"),
    ],
)
def test_inside_masked_and_chain(opt):
    params = _params()
    mask = {"w": True, "b": False}
    masked = optax.chain(optax.clip(10.0), optax.masked(opt, mask))
    state = masked.init(params)
    g = _grads(0)
    updates, _ = jax.jit(masked.update)(g, state, params)
    alone, _ = jax.jit(opt.update)(
        {"w": g["w"]}, opt.init({"w": params["w"]}), {"w": params["w"]}
    )
    np.testing.assert_array_equal(updates["w"], alone["w"])
    np.testing.assert_array_equal(updates["b"], g["b"])


def test_per_leaf_strengths_leave_none_leaves_unshrunk():
    params = _params()
    g = _grads(0)
    per_leaf = proxjax.prox_adagrad(0.5, l1={"w": 0.2, "b": None})
    plain = proxjax.prox_adagrad(0.5)
    shrunk = proxjax.prox_adagrad(0.5, l1=0.2)
    u, _ = per_leaf.update(g, per_leaf.init(params), params)
    u_plain, _ = plain.update(g, plain.init(params), params)
    u_shrunk, _ = shrunk.update(g, shrunk.init(params), params)
    np.testing.assert_array_equal(u["b"], u_plain["b"])
    np.testing.assert_array_equal(u["w"], u_shrunk["w"])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize(
    "make",
    [
        lambda: proxjax.prox_adagrad(0.1, l1=0.01, l2=0.01),
        lambda: proxjax.prox_adam(0.1, l1=0.01, metric="diagonal"),
        lambda: proxjax.prox_adam(0.1, l1=0.01),
        lambda: proxjax.prox_decayed_rms(0.1, l1=0.01, l2=0.1, metric="diagonal"),
        lambda: proxjax.prox_adagrad(optax.constant_schedule(0.1), l1=0.01),
        lambda: proxjax.ftrl(0.1, l1=0.01),
        lambda: proxjax.ftrl(0.1, l1=0.01, l2_shrinkage=0.1, beta=1.0),
    ],
)
def test_updates_and_state_keep_their_dtypes(dtype, make):
    opt = make()
    params = {"w": jnp.ones((3,), dtype), "b": jnp.zeros((2,), jnp.float32)}
    state = opt.init(params)
    dtypes = jax.tree.map(lambda x: x.dtype, state)
    step = jax.jit(opt.update)
    for value in (0.5, 1.5):
        grads = jax.tree.map(lambda p, v=value: jnp.full(p.shape, v, p.dtype), params)
        updates, state = step(grads, state, params)
        assert updates["w"].dtype == dtype and updates["b"].dtype == jnp.float32
        assert jax.tree.map(lambda x: x.dtype, state) == dtypes
        params = optax.apply_updates(params, updates)


def test_float64(x64):
    opt = proxjax.prox_adam(0.1, l1=0.01, metric="diagonal")
    params = jnp.ones(3, jnp.float64)
    updates, state = opt.update(jnp.ones(3, jnp.float64), opt.init(params), params)
    assert updates.dtype == jnp.float64
    assert state.scaling.nu.dtype == jnp.float64


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: proxjax.prox_adagrad(0.0), r"prox_adagrad: learning_rate.*0\.0"),
        (lambda: proxjax.prox_adagrad(0.1, l1=-1.0), r"prox_adagrad: l1.*-1\.0"),
        (lambda: proxjax.prox_adagrad(0.1, l2=-0.5), r"prox_adagrad: l2.*-0\.5"),
        (
            lambda: proxjax.prox_adagrad(0.1, initial_accumulator_value=0.0),
            r"prox_adagrad: initial_accumulator_value.*0\.0",
        ),
        (
            lambda: proxjax.prox_adagrad(
                0.1, initial_accumulator_value=optax.constant_schedule(0.1)
            ),
            r"prox_adagrad: initial_accumulator_value.*schedule",
        ),
        (lambda: proxjax.prox_adam(-0.1), r"prox_adam: learning_rate.*-0\.1"),
        (lambda: proxjax.prox_adam(0.1, l1=-2.0), r"prox_adam: l1.*-2\.0"),
        (lambda: proxjax.prox_adam(0.1, b1=1.0), r"prox_adam: b1.*1\.0"),
        (lambda: proxjax.prox_adam(0.1, b2=-0.1), r"prox_adam: b2.*-0\.1"),
        (lambda: proxjax.prox_adam(0.1, eps=0.0), r"prox_adam: eps.*0\.0"),
        (lambda: proxjax.prox_adam(0.1, metric="full"), r"prox_adam: metric.*full"),
        (
            lambda: proxjax.prox_decayed_rms(0.1, metric="Diagonal"),
            r"prox_decayed_rms: metric.*Diagonal",
        ),
        (
            lambda: proxjax.prox_decayed_rms(0.1, l1=float("nan"), metric="diagonal"),
            r"prox_decayed_rms: l1.*nan",
        ),
    ],
)
def test_bad_input_raises_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "opt, name",
    [
        (proxjax.prox_adagrad(0.1), "prox_adagrad"),
        (proxjax.prox_adam(0.1, metric="diagonal"), "prox_adam"),
        (proxjax.prox_adam(0.1), "prox_adam"),
        (proxjax.prox_decayed_rms(0.1, metric="diagonal"), "prox_decayed_rms"),
    ],
)
def test_update_without_params_and_integer_leaves_name_the_transform(opt, name):
    state = opt.init(jnp.ones(2))
    with pytest.raises(ValueError, match=name):
        opt.update(jnp.ones(2), state)
    with pytest.raises(ValueError, match=rf"{name}.*int32"):
        opt.init({"w": jnp.ones(2), "step": jnp.zeros([], jnp.int32)})
