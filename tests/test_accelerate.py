"""FISTA as a last link, its step sizes and the full-batch driver."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

import proxjax


def _diabetes():
    x, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(x), y - y.mean()


def _least_squares(w, x, y):
    return 0.5 * jnp.mean((y - x @ w) ** 2)


def _soft(z, threshold):
    return np.sign(z) * np.maximum(np.abs(z) - threshold, 0.0)


@pytest.mark.parametrize("divisor", [20, 100])
@pytest.mark.parametrize("chain", ["prox_sgd", "prox_l1"])
def test_fista_reaches_sklearn_lasso_in_fewer_iterations_than_ista(x64, divisor, chain):
    x, y = _diabetes()
    n = x.shape[0]
    alpha = np.abs(x.T @ y).max() / n / divisor
    reference = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=10**6)
    reference.fit(x, y)
    step_size = n / np.linalg.norm(x, 2) ** 2  # 1 / L
    if chain == "prox_sgd":
        ista = proxjax.prox_sgd(step_size, l1=alpha)
    else:
        ista = optax.chain(optax.sgd(step_size), proxjax.prox_l1(alpha, step_size))
    fista = optax.chain(ista, proxjax.accelerate(restart="gradient"))
    data = (jnp.asarray(x), jnp.asarray(y))
    w0 = jnp.zeros(x.shape[1])
    kwargs = dict(maxiter=100_000, tol=1e-12)
    slow = proxjax.minimize(_least_squares, w0, ista, *data, **kwargs)
    fast = proxjax.minimize(_least_squares, w0, fista, *data, **kwargs)
    w = proxjax.accelerated_iterate(fast.state)

    np.testing.assert_allclose(w, reference.coef_, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(w == 0, reference.coef_ == 0)
    assert 0 < np.sum(w == 0) < w.size  # a real support to match
    np.testing.assert_allclose(slow.params, reference.coef_, rtol=0, atol=1e-8)
    assert fast.iterations < slow.iterations < kwargs["maxiter"]


def _fista_transcription(a, b, lam, step, steps, restart):
    """FISTA on (1/2)||a w - b||^2 + lam ||w||_1, written out in NumPy."""
    x_old = y = np.zeros(a.shape[1])
    t = 1.0
    trace = []
    for _ in range(steps):
        x = _soft(y - step * a.T @ (a @ y - b), step * lam)
        restarted = restart and np.dot(y - x, x - x_old) > 0
        if restarted:
            t = 1.0
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = x + (t - 1) / t_next * (x - x_old)
        x_old, t = x, t_next
        trace.append((x, y, t, restarted))
    return trace


@pytest.mark.parametrize("restart", [None, "gradient"])
def test_matches_a_numpy_transcription_of_fista(x64, restart):
    rng = np.random.default_rng(0)
    # Columns of different scales: momentum overshoots along the large ones,
    # so that the gradient test restarts, and the L1 term zeroes some.
    a = rng.normal(size=(30, 8)) * np.geomspace(1.0, 0.3, 8)
    b = rng.normal(size=30)
    lam = 1.0
    step = 1 / np.linalg.norm(a, 2) ** 2
    steps = 60
    expected = _fista_transcription(a, b, lam, step, steps, restart == "gradient")

    opt = optax.chain(
        optax.sgd(step), proxjax.prox_l1(lam, step), proxjax.accelerate(restart=restart)
    )
    a_j, b_j = jnp.asarray(a), jnp.asarray(b)

    def loss(w):
        return 0.5 * jnp.sum((a_j @ w - b_j) ** 2)

    params = jnp.zeros(8)
    state = opt.init(params)
    update = jax.jit(opt.update)
    for x, y, t, _ in expected:
        updates, state = update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        accelerate_state = state[-1]
        np.testing.assert_allclose(proxjax.accelerated_iterate(state), x, atol=1e-13)
        np.testing.assert_allclose(params, y, atol=1e-13)
        np.testing.assert_allclose(accelerate_state.t, t, rtol=1e-15)
    restarts = sum(r for *_, r in expected)
    assert 0 < np.sum(x == 0) < x.size  # the prox is active
    if restart == "gradient":
        assert restarts > 1  # the test exercises the restart
    else:
        assert float(state[-1].t) > steps / 2  # t_k grows like k / 2


def test_gradient_restart_resets_momentum_when_the_step_opposes_it():
    opt = proxjax.accelerate(restart="gradient")
    params = jnp.zeros(1)
    state = opt.init(params)
    golden = (1 + math.sqrt(5)) / 2
    # Two unit steps build momentum; a small step back still moves the
    # iterate forward, (y - x+) . (x+ - x) > 0, and must restart.
    for u in (1.0, 1.0, -0.125):
        updates, state = opt.update(jnp.array([u]), state, params)
        params = optax.apply_updates(params, updates)
    x2 = 2.0
    t2 = (1 + math.sqrt(1 + 4 * golden**2)) / 2
    y2 = x2 + (golden - 1) / t2 * 1.0
    x3 = y2 - 0.125
    assert x3 > x2
    np.testing.assert_allclose(state.t, golden, rtol=1e-6)
    np.testing.assert_allclose(params, [x3], rtol=1e-6)  # y3 = x3: no momentum
    np.testing.assert_allclose(proxjax.accelerated_iterate(state), [x3], rtol=1e-6)


def test_plain_fista_meets_the_beck_teboulle_bound(x64):
    # F(x_k) - F* <= 2 L ||x_0 - x*||^2 / (k + 1)^2 (Beck and Teboulle 2009,
    # Theorem 4.4) at every k, on an ill-conditioned Lasso.
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 20)) * np.geomspace(1.0, 1e-3, 20)
    b = rng.normal(size=40)
    lam = 0.01
    lipschitz = np.linalg.norm(a, 2) ** 2
    step = 1 / lipschitz

    def objective(w):
        return 0.5 * np.sum((a @ w - b) ** 2) + lam * np.abs(w).sum()

    a_j, b_j = jnp.asarray(a), jnp.asarray(b)

    def loss(w):
        return 0.5 * jnp.sum((a_j @ w - b_j) ** 2)

    prox_gradient = optax.chain(optax.sgd(step), proxjax.prox_l1(lam, step))
    solution = proxjax.minimize(
        loss,
        jnp.zeros(20),
        optax.chain(prox_gradient, proxjax.accelerate(restart="gradient")),
        maxiter=200_000,
        tol=1e-15,
    )
    x_star = np.asarray(proxjax.accelerated_iterate(solution.state))
    f_star = objective(x_star)
    opt = optax.chain(prox_gradient, proxjax.accelerate(restart=None))
    params = jnp.zeros(20)
    state = opt.init(params)
    step_fn = jax.jit(opt.update)
    gaps = []
    for k in range(1, 501):
        updates, state = step_fn(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
        gap = objective(np.asarray(proxjax.accelerated_iterate(state))) - f_star
        bound = 2 * lipschitz * np.sum(x_star**2) / (k + 1) ** 2
        assert gap <= bound, k
        gaps.append(gap)
    assert bound < gaps[0] / 10  # the bound says something by the end


def test_params_and_iterate_differ_only_by_extrapolation():
    opt = optax.chain(optax.sgd(0.5), proxjax.prox_l1(0.5, 0.5), proxjax.accelerate())
    params = jnp.array([4.0, 1.0])
    state = opt.init(params)
    for _ in range(2):
        grads = params - jnp.array([2.0, 0.0])
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    iterate = proxjax.accelerated_iterate(state)
    assert iterate[1] == 0.0 and params[1] != 0.0  # only the iterate is sparse


def test_accelerate_on_a_tree_equals_accelerate_on_the_flat_vector(x64):
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=5) for _ in range(6)]
    opt = optax.chain(
        optax.sgd(0.3),
        proxjax.prox_l1(0.4, 0.3),
        proxjax.accelerate(restart="gradient"),
    )
    flat = jnp.asarray(rng.normal(size=5))
    tree = {"a": flat[:2], "b": flat[2:]}
    flat_state, tree_state = opt.init(flat), opt.init(tree)
    for g in grads:
        g = jnp.asarray(g) - 0.5 * flat  # depends on the point, so paths matter
        updates, flat_state = opt.update(g, flat_state, flat)
        flat = optax.apply_updates(flat, updates)
        g_tree = {"a": g[:2], "b": g[2:]}
        updates, tree_state = opt.update(g_tree, tree_state, tree)
        tree = optax.apply_updates(tree, updates)
        np.testing.assert_allclose(jnp.concatenate([tree["a"], tree["b"]]), flat)
    np.testing.assert_allclose(tree_state[-1].t, flat_state[-1].t)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_accelerate_keeps_the_params_dtype(dtype):
    opt = optax.chain(optax.sgd(0.5), proxjax.prox_l1(0.25), proxjax.accelerate())
    params = jnp.ones(3, dtype)
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update(jnp.ones(3, dtype), state, params)
        assert updates.dtype == dtype
        params = optax.apply_updates(params, updates)
    assert proxjax.accelerated_iterate(state).dtype == dtype


@pytest.mark.parametrize(
    "shape, n", [((442, 10), None), ((300, 120), None), ((80, 400), 1), ((90, 90), 7)]
)
def test_lipschitz_matches_the_spectral_norm(x64, shape, n):
    if shape == (442, 10):
        x = _diabetes()[0]
    else:
        x = np.random.default_rng(3).normal(size=shape)
    scale = x.shape[0] if n is None else n
    expected = np.linalg.norm(x, 2) ** 2 / scale
    estimate = proxjax.lipschitz_least_squares(jnp.asarray(x), n=n)
    np.testing.assert_allclose(estimate, expected, rtol=1e-6)
    assert estimate <= expected * (1 + 1e-12)  # Ritz values approach from below
    logistic = proxjax.lipschitz_logistic(jnp.asarray(x), n=n)
    np.testing.assert_allclose(logistic, expected / 4, rtol=1e-6)


def test_lipschitz_is_traceable_and_keeps_the_dtype():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(50, 20)), jnp.float32)
    estimate = jax.jit(proxjax.lipschitz_least_squares)(x)
    assert estimate.dtype == jnp.float32
    expected = np.linalg.norm(np.asarray(x, np.float64), 2) ** 2 / 50
    np.testing.assert_allclose(estimate, expected, rtol=1e-5)  # float32 rounding


def test_minimize_stops_at_the_first_step_within_tol(x64):
    target = jnp.array([3.0, -1.0, 0.5])

    def loss(w):
        return 0.5 * jnp.sum(jnp.array([1.0, 0.5, 0.1]) * (w - target) ** 2)

    opt = optax.sgd(1.0)
    tol = 1e-3
    result = proxjax.minimize(loss, jnp.zeros(3), opt, maxiter=10_000, tol=tol)
    # The same loop in Python: the first k with ||p_k - p_{k-1}|| <= tol ||p_k||.
    params, k = np.zeros(3), 0
    while True:
        new = params - np.array([1.0, 0.5, 0.1]) * (params - np.asarray(target))
        k += 1
        change = np.linalg.norm(new - params)
        params = new
        if change <= tol * np.linalg.norm(params):
            break
    assert int(result.iterations) == k
    np.testing.assert_allclose(result.params, params, rtol=1e-12)
    assert result.update_norm <= tol * np.linalg.norm(params)
    short = proxjax.minimize(loss, jnp.zeros(3), opt, maxiter=k - 1, tol=tol)
    assert int(short.iterations) == k - 1
    assert short.update_norm > tol * np.linalg.norm(short.params)


def test_minimize_under_jit_compiles_once_for_new_data():
    traces = []

    def loss(w, target):
        traces.append(None)
        return 0.5 * jnp.sum((w - target) ** 2)

    opt = optax.chain(optax.sgd(0.5), proxjax.prox_l1(0.5, 0.5))
    solve = jax.jit(proxjax.minimize, static_argnums=(0, 2), static_argnames="maxiter")
    for target in ([2.0, 0.25], [-4.0, 1.0]):
        result = solve(loss, jnp.zeros(2), opt, jnp.array(target), maxiter=60, tol=0.0)
    np.testing.assert_allclose(result.params, [-3.5, 0.5])
    assert len(traces) == 1  # value_and_grad traces the loss once


def test_prox_linesearch_backtracks_to_the_curvature(x64):
    curvature = jnp.array([8.0, 8.0])  # L = 8

    def loss(w):
        return 0.5 * jnp.sum(curvature * (w - jnp.array([1.0, 0.05])) ** 2)

    opt = proxjax.prox_linesearch(
        lambda eta: optax.chain(optax.sgd(eta), proxjax.prox_l1(0.5, eta)),
        learning_rate=1.0,
        increase_factor=2.0,
    )
    params = jnp.zeros(2)
    state = opt.init(params)
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = opt.update(grads, state, params, value=value, value_fn=loss)
    # Tried 2, 1, 1/2, 1/4, 1/8: the first that passes is 1 / L.
    assert float(state.learning_rate) == 0.125
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, [1.0 - 0.5 / 8, 0.0])  # the exact solution
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = opt.update(grads, state, params, value=value, value_fn=loss)
    # At the solution the step is zero, too small for the test to tell
    # anything: the learning rate stays at the last one accepted.
    assert float(state.learning_rate) == 0.125
    np.testing.assert_array_equal(updates, [0.0, 0.0])


def test_fista_with_linesearch_reaches_sklearn_lasso(x64):
    x, y = _diabetes()
    n = x.shape[0]
    alpha = np.abs(x.T @ y).max() / n / 20
    reference = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=10**6)
    reference.fit(x, y)
    opt = optax.chain(
        proxjax.prox_linesearch(
            lambda eta: optax.chain(optax.sgd(eta), proxjax.prox_l1(alpha, eta))
        ),
        proxjax.accelerate(restart="gradient"),
    )
    result = proxjax.minimize(
        _least_squares,
        jnp.zeros(x.shape[1]),
        opt,
        jnp.asarray(x),
        jnp.asarray(y),
        maxiter=100_000,
        tol=1e-12,
    )
    w = proxjax.accelerated_iterate(result.state)
    np.testing.assert_allclose(w, reference.coef_, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(w == 0, reference.coef_ == 0)


def test_minimize_drives_optax_backtracking_linesearch():
    def loss(w):
        return jnp.sum((w - jnp.array([1.0, -2.0])) ** 2)

    opt = optax.chain(
        optax.sgd(1.0),
        optax.scale_by_backtracking_linesearch(max_backtracking_steps=20),
    )
    result = proxjax.minimize(loss, jnp.zeros(2), opt, maxiter=100, tol=1e-6)
    np.testing.assert_allclose(result.params, [1.0, -2.0], atol=1e-5)


def _lipschitz(**kwargs):
    return proxjax.lipschitz_least_squares(jnp.ones((3, 2)), **kwargs)


def _minimize(**kwargs):
    return proxjax.minimize(jnp.sum, jnp.ones(2), optax.sgd(1.0), **kwargs)


@pytest.mark.parametrize(
    "name, build, argument, value",
    [
        (
            "accelerate",
            lambda: proxjax.accelerate(restart="function"),
            "restart",
            "'function'",
        ),
        ("accelerate", lambda: proxjax.accelerate(restart=True), "restart", "True"),
        (
            "lipschitz_least_squares",
            lambda: proxjax.lipschitz_least_squares(jnp.ones(3)),
            "X",
            "(3,)",
        ),
        (
            "lipschitz_least_squares",
            lambda: proxjax.lipschitz_least_squares(jnp.ones((3, 2), jnp.int32)),
            "X",
            "int32",
        ),
        ("lipschitz_least_squares", lambda: _lipschitz(n=0), "n", "0"),
        ("lipschitz_least_squares", lambda: _lipschitz(maxiter=0), "maxiter", "0"),
        (
            "lipschitz_logistic",
            lambda: proxjax.lipschitz_logistic(jnp.ones((3, 2)), rtol=-1.0),
            "rtol",
            "-1.0",
        ),
        ("minimize", lambda: _minimize(maxiter=-1), "maxiter", "-1"),
        ("minimize", lambda: _minimize(maxiter=2.5), "maxiter", "2.5"),
        ("minimize", lambda: _minimize(tol=-1e-3), "tol", "-0.001"),
        (
            "prox_linesearch",
            lambda: proxjax.prox_linesearch(optax.sgd, decrease_factor=1.0),
            "decrease_factor",
            "1.0",
        ),
        (
            "prox_linesearch",
            lambda: proxjax.prox_linesearch(optax.sgd, increase_factor=0.5),
            "increase_factor",
            "0.5",
        ),
        (
            "prox_linesearch",
            lambda: proxjax.prox_linesearch(optax.sgd, learning_rate=0.0),
            "learning_rate",
            "0.0",
        ),
        (
            "prox_linesearch",
            lambda: proxjax.prox_linesearch(optax.sgd, max_backtracking_steps=0),
            "max_backtracking_steps",
            "0",
        ),
        ("prox_linesearch", lambda: proxjax.prox_linesearch(0.1), "step", "0.1"),
    ],
)
def test_bad_input_raises_naming_the_function_and_argument(
    name, build, argument, value
):
    with pytest.raises(ValueError) as error:
        build()
    message = str(error.value)
    assert message.startswith(name + ":"), message
    assert argument in message and value in message, message


def test_misuse_at_update_raises():
    opt = proxjax.accelerate()
    state = opt.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="accelerate needs the current params"):
        opt.update(jnp.zeros(2), state)
    with pytest.raises(ValueError, match="accelerate: every params leaf"):
        opt.init(jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="accelerated_iterate: .* found 0"):
        proxjax.accelerated_iterate(optax.sgd(1.0).init(jnp.zeros(2)))
    both = optax.chain(proxjax.accelerate(), proxjax.accelerate())
    with pytest.raises(ValueError, match="found 2"):
        proxjax.accelerated_iterate(both.init(jnp.zeros(2)))
    search = proxjax.prox_linesearch(optax.sgd)
    with pytest.raises(ValueError, match="prox_linesearch needs params, value="):
        search.update(jnp.zeros(2), search.init(jnp.zeros(2)), jnp.zeros(2))


def test_prox_linesearch_grows_the_learning_rate_back(x64):
    def loss(w):
        return 4.0 * jnp.sum((w - jnp.array([100.0, -50.0])) ** 2)  # L = 8

    opt = proxjax.prox_linesearch(
        lambda eta: optax.chain(optax.sgd(eta), proxjax.prox_l1(0.5, eta)),
        learning_rate=0.01,
        increase_factor=2.0,
    )
    params = jnp.zeros(2)
    state = opt.init(params)
    rates = []
    for _ in range(4):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params, value=value, value_fn=loss)
        params = optax.apply_updates(params, updates)
        rates.append(float(state.learning_rate))
    # Doubled while the test passes; 0.16 > 1 / L fails and halves to 0.08.
    np.testing.assert_allclose(rates, [0.02, 0.04, 0.08, 0.08], rtol=1e-15)


def test_prox_linesearch_does_not_raise_the_rate_on_an_unresolved_test(x64):
    # Next to a loss of 1e20 the quadratic term of the test is below its
    # rounding: no trial is resolved, so the rate must stay at the last
    # accepted one (0.1) rather than grow by increase_factor at each step.
    def loss(w):
        return 1e20 + jnp.sum((w - 1.0) ** 2)

    opt = proxjax.prox_linesearch(optax.sgd, learning_rate=0.1)
    result = proxjax.minimize(loss, jnp.zeros(2), opt, maxiter=3, tol=0.0)
    assert float(result.state.learning_rate) == 0.1
    # Gradient steps of 0.1 on (w - 1)^2: w <- 0.8 w + 0.2.
    np.testing.assert_allclose(result.params, [0.488, 0.488], rtol=1e-14)
