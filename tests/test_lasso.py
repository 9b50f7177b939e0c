"""Proximal gradient descent reaches scikit-learn's Lasso solution."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

import proxjax


def test_prox_sgd_full_batch_reaches_sklearn_lasso(x64):
    x, y = load_diabetes(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    y = y - y.mean()
    n = x.shape[0]
    alpha = np.abs(x.T @ y).max() / n / 20
    reference = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=10**6)
    reference.fit(x, y)

    # scikit-learn's objective: (1 / 2n) ||y - Xw||^2 + alpha ||w||_1.
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def loss(w):
        return 0.5 * jnp.mean((yj - xj @ w) ** 2)

    step_size = n / np.linalg.norm(x, 2) ** 2  # 1 / Lipschitz constant
    opt = proxjax.prox_sgd(step_size, l1=alpha)

    def step(carry, _):
        w, state = carry
        updates, state = opt.update(jax.grad(loss)(w), state, w)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(x.shape[1])
    (w, _), _ = jax.lax.scan(jax.jit(step), (w0, opt.init(w0)), length=100_000)
    np.testing.assert_allclose(w, reference.coef_, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(w == 0, reference.coef_ == 0)
    assert 0 < np.sum(w == 0) < w.size  # a real support to match
