"""Properties that every proximal operator and projection must have.

Each property runs on hypothesis-generated float64 points of one small fixed
shape, so that every operator compiles once. Tolerances are a small multiple
of float64's machine epsilon times the magnitudes involved: the operators are
exact up to the rounding of a few operations per entry (and of the sums of at
most a dozen terms in a norm).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from proxjax import operators

SHAPE = (4, 3)
EPS = np.finfo(np.float64).eps
# Rounding slack, in units of the magnitudes at play (see the module docstring).
SLACK = 64 * EPS

PROPERTY = settings(max_examples=200, deadline=None)


def _zero_flags(bits: int, count: int) -> np.ndarray:
    # Two bits per flag: each flag is set with probability 1/4.
    return np.array([(bits >> (2 * i)) & 3 == 3 for i in range(count)])


@st.composite
def points(draw, count=1):
    """``count`` float64 arrays of SHAPE, stacked, with zero entries, rows and
    columns; entries below 1e-100 in magnitude, whose squares underflow and
    whose group norms lose their meaning, are drawn as exact zeros."""
    shape = (count, *SHAPE)
    z = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e3, 1e3)))
    rows, columns = SHAPE
    n_flags = count * (rows * columns + rows + columns)
    flags = _zero_flags(draw(st.integers(0, 4**n_flags - 1)), n_flags)
    entries, flags = np.split(flags, [count * rows * columns])
    zero_rows, zero_columns = np.split(flags, [count * rows])
    zero = (
        entries.reshape(shape)
        | zero_rows.reshape(count, rows, 1)
        | zero_columns.reshape(count, 1, columns)
    )
    z = np.where(zero | (np.abs(z) < 1e-100), 0.0, z)
    return z[0] if count == 1 else z


STEP_SIZES = st.floats(1e-3, 10.0)
STRENGTHS = st.one_of(st.just(0.0), st.floats(0.0, 10.0))
RADII = st.one_of(st.just(0.0), st.floats(0.0, 100.0))
DENOMINATORS = hnp.arrays(np.float64, SHAPE, elements=st.floats(1e-3, 1e3))


@st.composite
def boxes(draw):
    a, b = draw(hnp.arrays(np.float64, (2, *SHAPE), elements=st.floats(-1e3, 1e3)))
    # XLA on CPU flushes subnormal numbers to zero, so a subnormal bound
    # would not survive the clip; bounds that small are drawn as zeros.
    a, b = (np.where(np.abs(v) < 1e-100, 0.0, v) for v in (a, b))
    return np.minimum(a, b), np.maximum(a, b)


def _diagonal_elastic_net(z, l1_threshold, l2_strength, denominators):
    # The elastic-net step in the metric diag(d) / eta: each coordinate has its
    # own threshold t / d_i and ridge strength s / d_i, as adaptive optimizers
    # (AdaGrad, Adam with a diagonal metric) apply it.
    return operators.elastic_net(
        z, l1_threshold / denominators, l2_strength / denominators
    )


def _group(axis):
    return jax.jit(functools.partial(operators.group_l2, axis=axis))


GROUPS = {axis: _group(axis) for axis in (0, 1, None)}

# Each proximal operator with a strategy for its arguments after ``z``.
PROXES = {
    "soft_threshold": (jax.jit(operators.soft_threshold), st.tuples(STRENGTHS)),
    "ridge": (jax.jit(operators.ridge), st.tuples(STRENGTHS)),
    "elastic_net": (jax.jit(operators.elastic_net), st.tuples(STRENGTHS, STRENGTHS)),
    "group_l2_axis0": (GROUPS[0], st.tuples(STRENGTHS)),
    "group_l2_axis1": (GROUPS[1], st.tuples(STRENGTHS)),
    "group_l2_all": (GROUPS[None], st.tuples(STRENGTHS)),
    "diagonal_elastic_net": (
        jax.jit(_diagonal_elastic_net),
        st.tuples(STRENGTHS, STRENGTHS, DENOMINATORS),
    ),
}
PROJECTIONS = {
    "project_nonnegative": (jax.jit(operators.project_nonnegative), st.tuples()),
    "project_box": (jax.jit(operators.project_box), boxes()),
    "project_linf_ball": (jax.jit(operators.project_linf_ball), st.tuples(RADII)),
    "project_l1_ball": (jax.jit(operators.project_l1_ball), st.tuples(RADII)),
}
ALL = {**PROXES, **PROJECTIONS}


def _gradient(fn):
    return jax.jit(jax.grad(lambda z, *args: jnp.sum(fn(z, *args))))


GRADIENTS = {name: _gradient(fn) for name, (fn, _) in ALL.items()}


def _np(x):
    return np.asarray(x, np.float64)


# Firm nonexpansiveness ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
@PROPERTY
@given(data=st.data())
def test_firmly_nonexpansive(name, data):
    fn, arguments = ALL[name]
    x, y = data.draw(points(2))
    args = data.draw(arguments)
    with jax.enable_x64(True):
        px, py = _np(fn(x, *args)), _np(fn(y, *args))
    if name == "diagonal_elastic_net":
        # Firmly nonexpansive in the norm of its metric, ||v||^2 = sum d v^2.
        d = args[2]
    else:
        d = np.ones(SHAPE)
    dp, dz = px - py, x - y
    lhs = np.sum(d * dp * dp)
    rhs = np.sum(d * dp * dz)
    scale = np.sum(d * (np.abs(x) + np.abs(y)) ** 2)
    assert lhs <= rhs + SLACK * scale


# Optimality conditions ------------------------------------------------------


def _assert_in_l1_subgradient(r, x, lam, tol):
    """r is in lam * d||x||_1: lam * sign(x) where x != 0, |r| <= lam elsewhere."""
    nonzero = x != 0
    assert np.all(np.abs(r - lam * np.sign(x))[nonzero] <= tol[nonzero])
    assert np.all(np.abs(r[~nonzero]) <= lam + tol[~nonzero])


@PROPERTY
@given(z=points(), eta=STEP_SIZES, lam=STRENGTHS)
def test_soft_threshold_optimality(z, eta, lam):
    with jax.enable_x64(True):
        x = _np(PROXES["soft_threshold"][0](z, eta * lam))
    r = (z - x) / eta
    _assert_in_l1_subgradient(r, x, lam, SLACK * (np.abs(z) / eta + lam))


@PROPERTY
@given(z=points(), eta=STEP_SIZES, lam=STRENGTHS)
def test_ridge_optimality(z, eta, lam):
    with jax.enable_x64(True):
        x = _np(PROXES["ridge"][0](z, eta * lam))
    r = (z - x) / eta
    tol = SLACK * (np.abs(z) / eta + lam * np.abs(x))
    assert np.all(np.abs(r - lam * x) <= tol)


@pytest.mark.parametrize("diagonal", [False, True])
@PROPERTY
@given(z=points(), eta=STEP_SIZES, a=STRENGTHS, b=STRENGTHS, d=DENOMINATORS)
def test_elastic_net_optimality(diagonal, z, eta, a, b, d):
    # (d / eta) (z - x) lies in a d|x| + b x; d = 1 is the plain operator.
    if not diagonal:
        d = np.ones(SHAPE)
    with jax.enable_x64(True):
        if diagonal:
            x = _np(PROXES["diagonal_elastic_net"][0](z, eta * a, eta * b, d))
        else:
            x = _np(PROXES["elastic_net"][0](z, eta * a, eta * b))
    r = d * (z - x) / eta - b * x
    tol = SLACK * (d * np.abs(z) / eta + a + b * np.abs(x))
    _assert_in_l1_subgradient(r, x, a, tol)


@pytest.mark.parametrize("axis", [0, 1, None])
@PROPERTY
@given(z=points(), eta=STEP_SIZES, lam=STRENGTHS)
def test_group_l2_optimality(axis, z, eta, lam):
    # Per group: r_g = lam x_g / ||x_g|| where x_g != 0, ||r_g|| <= lam where 0.
    with jax.enable_x64(True):
        x = _np(GROUPS[axis](z, eta * lam))
    r = (z - x) / eta
    x_norm = np.linalg.norm(x, axis=axis, keepdims=True)
    z_norm = np.linalg.norm(z, axis=axis, keepdims=True)
    tol = SLACK * (z_norm / eta + lam)
    zero = x_norm == 0
    unit = x / np.where(zero, 1.0, x_norm)
    residual = np.linalg.norm(r - lam * unit, axis=axis, keepdims=True)
    assert np.all(residual[~zero] <= tol[~zero])
    r_norm = np.linalg.norm(r, axis=axis, keepdims=True)
    assert np.all(r_norm[zero] <= lam + tol[zero])


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
@PROPERTY
@given(data=st.data())
def test_projection_optimality(name, data):
    # P(z) lies in C and <z - P(z), y - P(z)> <= 0 for every y in C; the
    # points y = P(w) sweep C.
    fn, arguments = PROJECTIONS[name]
    z, w = data.draw(points(2))
    args = data.draw(arguments)
    with jax.enable_x64(True):
        x, y = _np(fn(z, *args)), _np(fn(w, *args))
    scale = np.sum(np.abs(z)) + np.sum(np.abs(w))
    if name == "project_nonnegative":
        assert np.all(x >= 0)
    elif name == "project_box":
        assert np.all((args[0] <= x) & (x <= args[1]))
    elif name == "project_linf_ball":
        assert np.all(np.abs(x) <= args[0])
    else:
        # The threshold that lands on the sphere is found with rounding.
        assert np.sum(np.abs(x)) <= args[0] + SLACK * np.sum(np.abs(z))
    assert np.sum((z - x) * (y - x)) <= SLACK * scale**2


# Moreau decomposition -------------------------------------------------------


@PROPERTY
@given(z=points(), t=STRENGTHS)
def test_moreau_l1_and_linf_ball(z, t):
    # The conjugate of t||.||_1 is the indicator of the L-infinity ball of
    # radius t, so z = prox_{t||.||_1}(z) + proj_{||.||_inf <= t}(z).
    with jax.enable_x64(True):
        shrunk = _np(PROXES["soft_threshold"][0](z, t))
        projected = _np(PROJECTIONS["project_linf_ball"][0](z, t))
    assert np.all(np.abs(shrunk + projected - z) <= SLACK * np.abs(z))


@pytest.mark.parametrize("axis", [0, 1, None])
@PROPERTY
@given(z=points(), t=STRENGTHS)
def test_moreau_group_l2_and_l2_balls(axis, z, t):
    # The conjugate of t||.||_2 (per group) is the indicator of the L2 ball of
    # radius t (per group), whose projection is z_g min(1, t / ||z_g||).
    with jax.enable_x64(True):
        shrunk = _np(GROUPS[axis](z, t))
    norm = np.linalg.norm(z, axis=axis, keepdims=True)
    projected = z * np.minimum(1.0, t / np.where(norm > 0, norm, 1.0))
    assert np.all(np.abs(shrunk + projected - z) <= SLACK * np.abs(z))


@PROPERTY
@given(z=points(), s=st.floats(1e-3, 1e3))
def test_moreau_ridge(z, s):
    # The conjugate of (s/2)||.||^2 is (1/(2s))||.||^2: z/(1+s) + z/(1+1/s) = z.
    ridge = PROXES["ridge"][0]
    with jax.enable_x64(True):
        total = _np(ridge(z, s)) + _np(ridge(z, 1 / s))
    assert np.all(np.abs(total - z) <= SLACK * np.abs(z))


# Idempotence ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
@PROPERTY
@given(data=st.data())
def test_projection_idempotent(name, data):
    fn, arguments = PROJECTIONS[name]
    z = data.draw(points())
    args = data.draw(arguments)
    with jax.enable_x64(True):
        once = fn(z, *args)
        twice = _np(fn(once, *args))
    once = _np(once)
    if name == "project_l1_ball":
        # A point on the sphere up to rounding may be projected once more by
        # a threshold of the size of that rounding.
        np.testing.assert_allclose(twice, once, rtol=0, atol=SLACK * np.sum(np.abs(z)))
    else:
        np.testing.assert_array_equal(twice, once)


# Finite values and gradients ------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
@PROPERTY
@given(data=st.data())
def test_finite_values_and_gradients(name, data):
    fn, arguments = ALL[name]
    z = data.draw(points())
    args = data.draw(arguments)
    with jax.enable_x64(True):
        value = _np(fn(z, *args))
        gradient = _np(GRADIENTS[name](z, *args))
        at_zero = _np(GRADIENTS[name](np.zeros(SHAPE), *args))
    assert np.all(np.isfinite(value))
    assert np.all(np.isfinite(gradient))
    assert np.all(np.isfinite(at_zero))
