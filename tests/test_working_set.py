"""The working-set solver reaches the same L1-penalised fits as whole-problem ones."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_diabetes, make_regression
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

import proxjax
from proxjax import _working_set


def _least_squares(predictions, y):
    residual = predictions - y
    return 0.5 * jnp.vdot(residual, residual) / y.shape[0]


def _logistic(predictions, labels):
    # labels in {-1, 1}
    return jnp.mean(jax.nn.softplus(-labels * predictions))


def _regression(samples=200, features=1000, informative=20, seed=0):
    x, y = make_regression(
        n_samples=samples,
        n_features=features,
        n_informative=informative,
        noise=5.0,
        random_state=seed,
    )
    return x, y, np.abs(x.T @ y).max() / samples


def _fista_chain(x, y, alpha, **kwargs):
    """The chain minimize_l1_linear fuses, run by minimize on all of x."""
    opt = optax.chain(
        proxjax.prox_linesearch(
            lambda eta: optax.chain(optax.sgd(eta), proxjax.prox_l1(alpha, eta))
        ),
        proxjax.accelerate(),
    )

    def fun(w, x, y):
        return _least_squares(x @ w, y)

    w0 = jnp.zeros(x.shape[1])
    return proxjax.minimize(fun, w0, opt, jnp.asarray(x), jnp.asarray(y), **kwargs)


def _numpy_violation(x, coef, gradient_of_predictions, l1):
    gradient = x.T @ gradient_of_predictions
    return np.where(
        coef == 0,
        np.maximum(np.abs(gradient) - l1, 0),
        np.abs(gradient + l1 * np.sign(coef)),
    )


@pytest.mark.parametrize("divisor", [5, 50])
def test_matches_sklearn_lasso_with_working_sets(x64, divisor):
    x, y, alpha_max = _regression()
    alpha = alpha_max / divisor
    reference = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=10**6)
    reference.fit(x, y)
    result = proxjax.minimize_l1_linear(
        _least_squares, x, alpha, jnp.asarray(y), tol=1e-12, capacity=64
    )
    support = np.count_nonzero(reference.coef_)
    assert 5 <= support < 64  # a real support, smaller than the capacity
    # More than one working set was solved, and never all the features.
    assert int(result.working_sets) >= 2
    assert not bool(result.overflowed)
    np.testing.assert_allclose(result.params, reference.coef_, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(result.params == 0, reference.coef_ == 0)
    # The reported violation is the optimality condition computed in NumPy.
    residual = (x @ np.asarray(result.params) - y) / len(y)
    violation = _numpy_violation(x, np.asarray(result.params), residual, alpha)
    # Both are differences of terms of the size of alpha: equal to rounding.
    np.testing.assert_allclose(
        result.violation, violation.max(), rtol=0, atol=1e-12 * alpha
    )
    assert float(result.violation) < 1e-8 * alpha_max


def test_overflow_finishes_on_all_features(x64):
    x, y, alpha_max = _regression(features=300, informative=40)
    alpha = alpha_max / 100
    reference = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=10**6)
    reference.fit(x, y)
    assert np.count_nonzero(reference.coef_) > 32
    result = proxjax.minimize_l1_linear(
        _least_squares, x, alpha, jnp.asarray(y), tol=1e-12, capacity=32
    )
    assert bool(result.overflowed)
    np.testing.assert_allclose(result.params, reference.coef_, rtol=0, atol=1e-8)


# With 16 features, no Newton step is tried before the 32nd update.
@pytest.mark.parametrize("maxiter", [1, 3, 10, 31])
def test_a_small_problem_takes_the_steps_of_the_fista_chain(x64, maxiter):
    x, y, alpha_max = _regression(samples=100, features=16, informative=10)
    alpha = alpha_max / 20
    tol = 0.0
    result = proxjax.minimize_l1_linear(
        _least_squares, x, alpha, jnp.asarray(y), tol=tol, maxiter=maxiter
    )
    assert int(result.working_sets) == 0  # 16 features: solved whole
    whole = _fista_chain(x, y, alpha, maxiter=maxiter, tol=tol)
    assert int(result.iterations) == int(whole.iterations) == maxiter
    expected = proxjax.accelerated_iterate(whole.state)
    np.testing.assert_allclose(result.params, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(result.params == 0, expected == 0)


def test_newton_step_lands_on_an_ill_conditioned_solution(x64):
    # Diabetes has nearly collinear features (s1, s2, s3, s4): FISTA alone
    # stopped at tol=1e-3 is 8e-3 away from the solution in its coefficients.
    x, y = load_diabetes(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    y = y - y.mean()
    alpha = np.abs(x.T @ y).max() / len(y) / 100
    reference = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=10**6)
    reference.fit(x, y)
    fista = _fista_chain(x, y, alpha, tol=1e-3)
    fista_error = np.abs(proxjax.accelerated_iterate(fista.state) - reference.coef_)
    assert fista_error.max() > 1e-3
    result = proxjax.minimize_l1_linear(
        _least_squares, x, alpha, jnp.asarray(y), tol=1e-3
    )
    np.testing.assert_allclose(result.params, reference.coef_, rtol=0, atol=1e-9)
    assert int(result.iterations) < int(fista.iterations)


@pytest.mark.parametrize(
    "params, taken", [([1.0, 0.0], True), ([1.0, -0.2], False), ([1.0, 0.2], False)]
)
def test_newton_step_is_taken_only_if_it_keeps_the_signs(x64, params, taken):
    # With X = I the solution is soft((3, -0.5), 1) = (2, 0). On the support
    # {0, 1} the Newton step goes to (2, 0.5) with signs (+, -) and to
    # (2, -1.5) with signs (+, +): sign changes both.
    x = jnp.eye(2)
    y = jnp.array([3.0, -0.5])
    params = jnp.array(params)
    candidate, predictions, accepted = _working_set._newton_on_support(
        lambda z, y: 0.5 * jnp.sum((z - y) ** 2), x, 1.0, params, x @ params, (y,)
    )
    assert bool(accepted) == taken
    if taken:
        np.testing.assert_allclose(candidate, [2.0, 0.0])
    np.testing.assert_allclose(predictions, x @ candidate)


def test_newton_step_is_refused_when_it_raises_the_objective_or_is_not_finite(x64):
    # sqrt(1 + (z - 10)^2) from z = 11.2: the Newton step overshoots to 8.27,
    # keeping the sign but raising the loss from 1.56 to 2.0.
    candidate, _, accepted = _working_set._newton_on_support(
        lambda z: jnp.sum(jnp.sqrt(1 + (z - 10.0) ** 2)),
        jnp.ones((1, 1)),
        0.0,
        jnp.array([11.2]),
        jnp.array([11.2]),
        (),
    )
    assert float(candidate[0]) > 0 and not bool(accepted)
    # Two equal columns, both in the support: a singular Hessian.
    x = jnp.ones((3, 2))
    params = jnp.array([1.0, 1.0])
    candidate, _, accepted = _working_set._newton_on_support(
        lambda z: 0.5 * jnp.sum((z - 3.0) ** 2), x, 0.1, params, x @ params, ()
    )
    assert not bool(accepted)


def test_logistic_loss_meets_the_optimality_condition(x64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 600))
    truth = np.zeros(600)
    truth[:8] = 3 * rng.standard_normal(8)
    labels = np.where(x @ truth + 0.5 * rng.standard_normal(150) > 0, 1.0, -1.0)
    # The smallest l1 with a zero solution: ||X^T grad(0)||_inf.
    l1_max = np.abs(x.T @ (-labels / 2)).max() / len(labels)
    l1 = l1_max / 10
    result = proxjax.minimize_l1_linear(
        _logistic, x, l1, jnp.asarray(labels), tol=1e-12, capacity=32
    )
    coef = np.asarray(result.params)
    assert 16 < np.count_nonzero(coef) < 32  # more than the first working set
    assert int(result.working_sets) >= 2
    margins = labels * (x @ coef)
    gradient_of_predictions = -labels / (1 + np.exp(margins)) / len(labels)
    violation = _numpy_violation(x, coef, gradient_of_predictions, l1)
    assert violation.max() < 1e-8 * l1_max


def test_warm_start_reaches_the_same_solution_in_fewer_iterations(x64):
    x, y, alpha_max = _regression()
    y = jnp.asarray(y)
    solve = jax.jit(
        lambda alpha, params: proxjax.minimize_l1_linear(
            _least_squares, x, alpha, y, params=params, tol=1e-10, capacity=64
        )
    )
    previous = solve(alpha_max / 10, jnp.zeros(1000))
    cold = solve(alpha_max / 12, jnp.zeros(1000))
    warm = solve(alpha_max / 12, previous.params)
    np.testing.assert_allclose(warm.params, cold.params, rtol=0, atol=1e-7)
    assert int(warm.iterations) < int(cold.iterations)


def test_warm_start_with_more_non_zeros_than_the_capacity_is_kept(x64):
    x, y, alpha_max = _regression(features=300, informative=60)
    alpha = alpha_max / 100
    y = jnp.asarray(y)
    solution = proxjax.minimize_l1_linear(
        _least_squares, x, alpha, y, tol=1e-10, capacity=256
    )
    assert np.count_nonzero(solution.params) > 32
    # Started at the solution with a capacity of 32, it goes to all the
    # features at once and stops within a few updates, the solution kept.
    again = proxjax.minimize_l1_linear(
        _least_squares, x, alpha, y, params=solution.params, tol=1e-10, capacity=32
    )
    assert bool(again.overflowed) and int(again.working_sets) == 0
    assert int(again.iterations) <= 3
    np.testing.assert_allclose(again.params, solution.params, rtol=0, atol=1e-8)


def test_an_unconverged_result_shows_in_the_violation(x64):
    x, y, alpha_max = _regression()
    alpha = alpha_max / 50
    y = jnp.asarray(y)
    converged = proxjax.minimize_l1_linear(
        _least_squares, x, alpha, y, tol=1e-12, capacity=64
    )
    assert int(converged.working_sets) > 1
    assert float(converged.violation) < 1e-8 * alpha
    for options in ({"max_working_sets": 1}, {"maxiter": 3}):
        cut = proxjax.minimize_l1_linear(
            _least_squares, x, alpha, y, tol=1e-12, capacity=64, **options
        )
        assert not bool(cut.overflowed)
        assert float(cut.violation) > 0.1 * alpha


def test_a_zero_column_stays_at_zero(x64):
    x, y, alpha_max = _regression(features=100)
    x[:, 7] = 0.0
    params = jnp.zeros(100).at[7].set(5.0)  # a warm start on the zero column
    result = proxjax.minimize_l1_linear(
        _least_squares, x, alpha_max / 20, jnp.asarray(y), params=params, tol=1e-10
    )
    assert float(result.params[7]) == 0.0
    assert float(result.violation) < 1e-8 * alpha_max


def test_mixed_precision_loss_under_strict_promotion(x64):
    # A float64 loss of float32 predictions: the solver works in float32.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 80))
    y = rng.standard_normal(60)

    def float64_loss(predictions, y):
        return _least_squares(predictions.astype(jnp.float64), y)

    exact = proxjax.minimize_l1_linear(
        _least_squares, x, 0.05, jnp.asarray(y), tol=1e-12, capacity=16
    )
    result = proxjax.minimize_l1_linear(
        float64_loss,
        jnp.asarray(x, jnp.float32),
        jnp.asarray(0.05),  # float64 options with a float32 design
        jnp.asarray(y),
        params=jnp.zeros(80),
        tol=jnp.asarray(1e-6),
        capacity=16,
    )
    assert result.params.dtype == result.violation.dtype == jnp.float32
    assert 0 < np.count_nonzero(exact.params) < 80
    np.testing.assert_allclose(result.params, exact.params, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(result.params == 0, exact.params == 0)


@pytest.mark.parametrize(
    "kwargs, argument, value",
    [
        ({"X": jnp.ones(3)}, "X", "(3,)"),
        ({"X": jnp.ones((3, 2), jnp.int32)}, "X", "int32"),
        ({"l1": -0.5}, "l1", "-0.5"),
        ({"tol": -1.0}, "tol", "-1.0"),
        ({"capacity": 0}, "capacity", "0"),
        ({"maxiter": 2.5}, "maxiter", "2.5"),
        ({"max_working_sets": True}, "max_working_sets", "True"),
        ({"params": jnp.zeros(3)}, "params", "(3,)"),
        ({"l1": jnp.full(2, 0.1)}, "l1", "Array([0.1, 0.1]"),
        ({"l1": optax.constant_schedule(0.1)}, "l1", "function"),
        ({"tol": jnp.ones(3)}, "tol", "Array([1., 1., 1.]"),
        ({"loss": "least squares"}, "loss", "'least squares'"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, argument, value):
    arguments = {"loss": _least_squares, "X": jnp.ones((3, 2)), "l1": 0.1}
    arguments.update(kwargs)
    loss, x, l1 = arguments.pop("loss"), arguments.pop("X"), arguments.pop("l1")
    with pytest.raises(ValueError) as error:
        proxjax.minimize_l1_linear(loss, x, l1, jnp.ones(3), **arguments)
    message = str(error.value)
    assert message.startswith("minimize_l1_linear:"), message
    assert argument in message and value in message, message
