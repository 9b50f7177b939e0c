"""Group lasso, projections as last links, and per-leaf strengths."""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax
from proxjax import operators


def _step(opt, grads, params, state=None):
    state = opt.init(params) if state is None else state
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _run(opt, params, grads_list):
    state = opt.init(params)
    for grads in grads_list:
        params, state = _step(opt, grads, params, state)
    return params


def _random_tree(seed, **shapes):
    rng = np.random.default_rng(seed)
    return {
        name: jnp.asarray(rng.normal(size=shape), jnp.float32)
        for name, shape in shapes.items()
    }


# Group lasso ----------------------------------------------------------------


def _group_shrink(z, t, axis):
    """The group-lasso prox written as the textbook max(1 - t/||z_g||, 0) z_g."""
    norm = np.linalg.norm(z, axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        factor = np.maximum(1 - t / norm, 0.0)
    return np.where(norm > 0, factor, 0.0) * z


@pytest.mark.parametrize("axis", [0, 1, None, (0, 1), -1])
def test_group_l2_matches_the_textbook_formula(x64, axis):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4))
    z[:, 1] = 0.0
    z[2] *= 1e-3
    out = operators.group_l2(jnp.asarray(z), 0.8, axis=axis)
    np.testing.assert_allclose(out, _group_shrink(z, 0.8, axis), rtol=1e-14)


def test_group_l2_zeroes_groups_within_the_threshold_exactly():
    kernel = jnp.array([[3.0, 0.5, -0.5], [4.0, 0.0, 0.5]])  # norms 5, 0.5, 0.7
    out = operators.group_l2(kernel, 0.75, axis=0)
    np.testing.assert_array_equal(out[:, 1:], 0.0)
    assert not jnp.any(jnp.signbit(out[:, 1:]))
    np.testing.assert_allclose(out[:, 0], [2.55, 3.4], rtol=1e-6)  # 1 - 0.75 / 5


def test_group_l2_agrees_with_jaxopt(x64):
    with warnings.catch_warnings():
        # jaxopt warns on import that it is no longer maintained.
        warnings.simplefilter("ignore", DeprecationWarning)
        from jaxopt.prox import prox_group_lasso

    z = jnp.asarray(np.random.default_rng(1).normal(size=(3, 6)))
    with jax.numpy_dtype_promotion("standard"):
        expected = jax.vmap(lambda row: prox_group_lasso(row, 0.9, 2.0))(z)
    np.testing.assert_allclose(operators.group_l2(z, 1.8, axis=1), expected, rtol=1e-14)


def test_group_l2_gradient_is_finite_at_a_zero_group():
    z = jnp.array([[0.0, 1.0], [0.0, 2.0]])

    def total(z, t):
        return jnp.sum(operators.group_l2(z, t, axis=0))

    # A zero group maps to zero for t > 0: a locally constant output.
    grad = jax.grad(total)(z, 1.0)
    np.testing.assert_array_equal(grad[:, 0], [0.0, 0.0])
    assert jnp.all(jnp.isfinite(grad))
    # With a traced t = 0 the operator is the identity, gradient one.
    grad = jax.jit(jax.grad(total))(z, jnp.float32(0.0))
    np.testing.assert_array_equal(grad, jnp.ones((2, 2)))
    # And with respect to the threshold itself.
    assert jnp.isfinite(jax.grad(total, argnums=1)(jnp.zeros((2, 2)), 1.0))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_group_l2_keeps_dtypes(dtype):
    params = jnp.array([[3.0, 0.01], [4.0, 0.02]], dtype)
    opt = optax.chain(optax.sgd(0.1), proxjax.prox_group_l2(0.5, 0.1, axis=0))
    new, _ = _step(opt, jnp.zeros_like(params), params)
    assert new.dtype == dtype
    np.testing.assert_array_equal(new[:, 1], jnp.zeros(2, dtype))
    # 5 * (1 - 0.1 * 0.5 * sqrt(2) / 5), within the dtype's rounding.
    expected = np.array([3.0, 4.0]) * (1 - 0.05 * math.sqrt(2) / 5)
    np.testing.assert_allclose(
        new[:, 0].astype(np.float32), expected, rtol=float(jnp.finfo(dtype).eps)
    )


@pytest.mark.parametrize(
    ("axis", "group_weight", "weight"),
    [
        (0, "sqrt_size", math.sqrt(3)),
        (1, "sqrt_size", math.sqrt(2)),
        (None, "sqrt_size", math.sqrt(6)),
        ((0, 1), "sqrt_size", math.sqrt(6)),
        (0, "one", 1.0),
    ],
)
def test_prox_group_l2_is_the_weighted_operator(x64, axis, group_weight, weight):
    rng = np.random.default_rng(2)
    params = jnp.asarray(rng.normal(size=(3, 2)))
    grads = jnp.asarray(rng.normal(size=(3, 2)))
    lr, lam = 0.25, 0.75
    opt = optax.chain(
        optax.sgd(lr),
        proxjax.prox_group_l2(lam, lr, axis=axis, group_weight=group_weight),
    )
    new, _ = _step(opt, grads, params)
    expected = _group_shrink(np.asarray(params - lr * grads), lr * lam * weight, axis)
    np.testing.assert_allclose(new, expected, rtol=1e-14, atol=1e-15)


def test_prox_group_l2_prunes_whole_columns_exactly():
    params = {
        "kernel": jnp.array([[1.0, 0.1, -2.0], [1.0, -0.1, 2.0]]),
        "bias": jnp.array([0.1, 0.2, 0.3]),
    }
    grads = jax.tree.map(jnp.zeros_like, params)
    opt = optax.chain(
        optax.sgd(1.0),
        proxjax.prox_group_l2({"kernel": 0.5, "bias": None}, axis=0),
    )
    new, _ = _step(opt, grads, params)
    # Columns of 2 entries: threshold 0.5 * sqrt(2) = 0.71; norms 1.41, 0.14, 2.8.
    np.testing.assert_array_equal(new["kernel"][:, 1], [0.0, 0.0])
    assert jnp.all(new["kernel"][:, [0, 2]] != 0)
    np.testing.assert_array_equal(new["bias"], params["bias"])


def test_prox_group_l2_follows_schedules():
    def lr(count):
        return jnp.where(count >= 1, 0.5, 1.0)

    def lam(count):
        return jnp.where(count >= 2, 4.0, 1.0)

    opt = optax.chain(
        optax.scale_by_learning_rate(lr),
        proxjax.prox_group_l2(lam, lr, group_weight="one"),
    )
    params = jnp.array([60.0, 80.0])  # norm 100
    state = opt.init(params)
    norms = []
    for _ in range(3):
        params, state = _step(opt, jnp.zeros(2), params, state)
        norms.append(float(jnp.linalg.norm(params)))
    # Thresholds eta_t * lam_t: 1 * 1, 0.5 * 1, 0.5 * 4.
    np.testing.assert_allclose(norms, [99.0, 98.5, 96.5], rtol=1e-6)


def test_prox_group_l2_per_group_strengths():
    params = jnp.array([[3.0, 3.0], [4.0, 4.0]])
    strengths = jnp.array([[0.0, 10.0]])  # one per column, the groups' shape
    opt = optax.chain(
        optax.sgd(1.0), proxjax.prox_group_l2(strengths, axis=0, group_weight="one")
    )
    new, _ = _step(opt, jnp.zeros((2, 2)), params)
    np.testing.assert_array_equal(new, [[3.0, 0.0], [4.0, 0.0]])


def test_prox_group_l2_works_under_inject_hyperparams():
    traces = []

    def make(l2, learning_rate):
        traces.append(None)
        return optax.chain(
            optax.sgd(learning_rate),
            proxjax.prox_group_l2(l2, learning_rate, axis=0, group_weight="one"),
        )

    opt = optax.inject_hyperparams(make)(l2=1.0, learning_rate=1.0)
    params = jnp.array([[3.0], [4.0]])
    state = opt.init(params)
    update = jax.jit(opt.update)
    updates, state = update(jnp.zeros((2, 1)), state, params)
    np.testing.assert_allclose(params + updates, [[2.4], [3.2]], rtol=1e-6)
    state.hyperparams["l2"] = jnp.full_like(state.hyperparams["l2"], 2.5)
    updates, state = update(jnp.zeros((2, 1)), state, params)
    np.testing.assert_allclose(params + updates, [[1.5], [2.0]], rtol=1e-6)
    assert update._cache_size() == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"l2": -1.0}, "l2"),
        ({"l2": math.nan}, "l2"),
        ({"l2": {"w": -1.0}}, "l2"),
        ({"l2": 1.0, "learning_rate": 0.0}, "learning_rate"),
        ({"l2": 1.0, "axis": 0.5}, "axis"),
        ({"l2": 1.0, "axis": (0, 0)}, "axis"),
        ({"l2": 1.0, "axis": ()}, "axis"),
        ({"l2": 1.0, "group_weight": "size"}, "group_weight"),
    ],
)
def test_prox_group_l2_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"prox_group_l2: {match}"):
        proxjax.prox_group_l2(**kwargs)


def test_prox_group_l2_checks_the_axis_against_penalized_leaves():
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"prox_group_l2: axis=1 .*\['bias'\]"):
        proxjax.prox_group_l2(1.0, axis=1).init(params)
    # A bias left alone needs no such axis.
    proxjax.prox_group_l2({"kernel": 1.0, "bias": None}, axis=1).init(params)
    with pytest.raises(ValueError, match="needs the current params"):
        proxjax.prox_group_l2(1.0).update(params, optax.EmptyState())


# Projections ----------------------------------------------------------------


def test_project_l1_ball_agrees_with_optax(x64):
    rng = np.random.default_rng(3)
    # optax divides by the radius, so radius 0 is left out (it gives NaN there).
    for radius in (0.5, 2.0, 100.0):
        z = jnp.asarray(rng.normal(size=(4, 5)))
        with jax.numpy_dtype_promotion("standard"):
            expected = optax.projections.projection_l1_ball(z, radius)
        np.testing.assert_allclose(
            operators.project_l1_ball(z, radius), expected, rtol=0, atol=1e-13
        )
    np.testing.assert_array_equal(operators.project_l1_ball(z, 0.0), jnp.zeros_like(z))


def test_prox_nonnegative_is_keep_params_nonnegative():
    params = {"a": jnp.array([0.5, 0.1, 0.0, 2.0]), "b": jnp.array([[1.0, -0.0]])}
    grads = {"a": jnp.array([1.0, 0.5, 1.0, -1.0]), "b": jnp.array([[3.0, -1.0]])}
    ours = optax.chain(optax.sgd(0.5), proxjax.prox_nonnegative())
    theirs = optax.chain(optax.sgd(0.5), optax.keep_params_nonnegative())
    a, _ = _step(ours, grads, params)
    b, _ = _step(theirs, grads, params)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert all(jnp.all(x >= 0) for x in jax.tree.leaves(a))


def test_nonnegative_l1_by_composition():
    # chain(prox_l1, prox_nonnegative) is the prox of lam|x| + [x >= 0]:
    # max(z - t, 0).
    rng = np.random.default_rng(4)
    params = jnp.asarray(rng.normal(size=20), jnp.float32)
    grads = jnp.asarray(rng.normal(size=20), jnp.float32)
    lr, lam = 0.5, 0.4
    opt = optax.chain(
        optax.sgd(lr), proxjax.prox_l1(lam, lr), proxjax.prox_nonnegative()
    )
    new, _ = _step(opt, grads, params)
    expected = np.maximum(np.asarray(params) - lr * np.asarray(grads) - lr * lam, 0)
    np.testing.assert_allclose(new, expected, rtol=1e-6, atol=1e-7)
    assert jnp.any(new == 0) and jnp.all(new >= 0)


@pytest.mark.parametrize(
    ("projection", "per_leaf"),
    [
        (optax.projections.projection_non_negative, False),
        (lambda tree: optax.projections.projection_linf_ball(tree, 0.3), False),
        # optax's box takes bounds as a tree like the params or, per leaf,
        # as scalars.
        (
            functools.partial(optax.projections.projection_box, lower=-0.5, upper=0.25),
            True,
        ),
        (functools.partial(optax.projections.projection_hypercube, scale=0.5), True),
        (functools.partial(operators.project_box, lower=-0.5, upper=0.25), True),
    ],
    ids=["non_negative", "linf_ball", "box", "hypercube", "proxjax_box"],
)
def test_prox_from_projection_lands_on_the_projection(projection, per_leaf):
    params = _random_tree(5, w=(3, 4), b=(4,))
    grads = _random_tree(6, w=(3, 4), b=(4,))
    link = proxjax.prox_from_projection(projection, per_leaf=per_leaf)
    opt = optax.chain(optax.sgd(0.1), link)
    new, state = _step(opt, grads, params)
    z = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    expected = jax.tree.map(projection, z) if per_leaf else projection(z)
    # p + (P(z) - p) is P(z) up to one rounding of that sum.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        new,
        expected,
    )
    assert state[1] == optax.EmptyState()


def test_prox_from_projection_tree_or_per_leaf():
    params = {"u": jnp.array([3.0, 1.0]), "v": jnp.array([-1.0, 0.0])}
    zeros = jax.tree.map(jnp.zeros_like, params)
    # One ball for the whole tree, as optax's projections see a tree ...
    with jax.numpy_dtype_promotion("standard"):
        ball = functools.partial(optax.projections.projection_l1_ball, scale=2.0)
        whole, _ = _step(proxjax.prox_from_projection(ball), zeros, params)
    # |.| sorted: 3, 1, 1, 0; the threshold that leaves an L1 norm of 2 is 1.
    np.testing.assert_allclose(whole["u"], [2.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(whole["v"], [0.0, 0.0], atol=1e-6)
    # ... or one ball per leaf, with an operator of one array.
    ball = functools.partial(operators.project_l1_ball, radius=2.0)
    per_leaf, _ = _step(
        proxjax.prox_from_projection(ball, per_leaf=True), zeros, params
    )
    np.testing.assert_array_equal(per_leaf["u"], [2.0, 0.0])
    np.testing.assert_array_equal(per_leaf["v"], [-1.0, 0.0])


def test_prox_from_projection_under_masked():
    params = {"w": jnp.array([-1.0, 2.0]), "b": jnp.array([-1.0, 2.0])}
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt = optax.masked(
        proxjax.prox_from_projection(optax.projections.projection_non_negative),
        {"w": True, "b": False},
    )
    new, _ = _step(opt, zeros, params)
    np.testing.assert_array_equal(new["w"], [0.0, 2.0])
    np.testing.assert_array_equal(new["b"], params["b"])


def test_prox_from_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="prox_from_projection: projection"):
        proxjax.prox_from_projection(1.0)
    opt = proxjax.prox_nonnegative()
    with pytest.raises(ValueError, match="prox_nonnegative needs the current params"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
    with pytest.raises(ValueError, match="prox_nonnegative: every params leaf"):
        opt.init(jnp.ones(2, jnp.int32))


# Per-leaf strengths ---------------------------------------------------------

SHAPES = {"w": (4, 3), "b": (3,), "v": (3, 2)}
LR = 0.1


def _masked_pair(make):
    """The per-leaf tree {w: 0.5, b: None, v: 0.25} written with optax.masked."""
    return optax.chain(
        optax.masked(make(0.5), {"w": True, "b": False, "v": False}),
        optax.masked(make(0.25), {"w": False, "b": False, "v": True}),
    )


def _per_leaf_cases():
    tree = {"w": 0.5, "b": None, "v": 0.25}
    sgd = optax.sgd(LR)
    return {
        "prox_l1": (
            optax.chain(sgd, proxjax.prox_l1(tree, LR)),
            optax.chain(sgd, _masked_pair(lambda s: proxjax.prox_l1(s, LR))),
        ),
        "prox_l2": (
            optax.chain(sgd, proxjax.prox_l2(tree, LR)),
            optax.chain(sgd, _masked_pair(lambda s: proxjax.prox_l2(s, LR))),
        ),
        "prox_elastic_net": (
            optax.chain(sgd, proxjax.prox_elastic_net(tree, tree, LR)),
            optax.chain(
                sgd, _masked_pair(lambda s: proxjax.prox_elastic_net(s, s, LR))
            ),
        ),
        "prox_sgd": (
            proxjax.prox_sgd(LR, l1=tree, momentum=0.9),
            optax.chain(
                optax.trace(decay=0.9),
                optax.scale_by_learning_rate(LR),
                _masked_pair(lambda s: proxjax.prox_elastic_net(s, 0.0, LR)),
            ),
        ),
        "prox_decayed_rms": (
            proxjax.prox_decayed_rms(LR, l1=tree, l2=tree),
            optax.chain(
                proxjax.scale_by_decayed_rms(1.0),
                optax.scale_by_learning_rate(LR),
                _masked_pair(lambda s: proxjax.prox_elastic_net(s, s, LR)),
            ),
        ),
        "prox_group_l2": (
            optax.chain(sgd, proxjax.prox_group_l2(tree, LR, axis=0)),
            optax.chain(
                sgd, _masked_pair(lambda s: proxjax.prox_group_l2(s, LR, axis=0))
            ),
        ),
    }


PER_LEAF = _per_leaf_cases()


@pytest.mark.parametrize("name", sorted(PER_LEAF))
def test_per_leaf_strengths_match_masked(name):
    per_leaf, masked = PER_LEAF[name]
    params = _random_tree(7, **SHAPES)
    grads = [_random_tree(8 + i, **SHAPES) for i in range(3)]
    a = _run(per_leaf, params, grads)
    b = _run(masked, params, grads)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _none_leaf_cases():
    tree = {"w": 0.5, "b": None, "v": 0.25}
    cases = {name: (opt, optax.sgd(LR)) for name, (opt, _) in PER_LEAF.items()}
    cases["prox_sgd"] = (cases["prox_sgd"][0], proxjax.prox_sgd(LR, momentum=0.9))
    cases["prox_decayed_rms"] = (
        cases["prox_decayed_rms"][0],
        proxjax.prox_decayed_rms(LR),
    )
    # Optimizers whose proximal step reads their own state: no chain to mask.
    cases["prox_adagrad"] = (
        proxjax.prox_adagrad(LR, l1=tree, l2=tree),
        proxjax.prox_adagrad(LR),
    )
    cases["prox_adam_diagonal"] = (
        proxjax.prox_adam(LR, l1=tree, l2=tree, metric="diagonal"),
        proxjax.prox_adam(LR, metric="diagonal"),
    )
    cases["ftrl"] = (proxjax.ftrl(LR, l1=tree, l2=tree), proxjax.ftrl(LR))
    return cases


NONE_LEAF = _none_leaf_cases()


@pytest.mark.parametrize("name", sorted(NONE_LEAF))
def test_none_leaves_are_left_exactly_alone(name):
    # A None leaf follows the optimizer without the penalty, bit for bit.
    per_leaf, unpenalized = NONE_LEAF[name]
    params = _random_tree(7, **SHAPES)
    grads = [_random_tree(8 + i, **SHAPES) for i in range(3)]
    a = _run(per_leaf, params, grads)
    b = _run(unpenalized, params, grads)
    np.testing.assert_array_equal(a["b"], b["b"])
    assert not np.array_equal(a["w"], b["w"])  # while the others are penalized


def test_schedules_inside_strength_trees():
    def l1(count):
        return jnp.where(count >= 1, 2.0, 0.5)

    opt = optax.chain(
        optax.sgd(0.5),
        proxjax.prox_l1({"w": l1, "u": 1.0, "b": None}, 0.5),
    )
    params = {"w": jnp.array([10.0]), "u": jnp.array([10.0]), "b": jnp.array([10.0])}
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    assert isinstance(state[1], proxjax.ProximalState)
    history = []
    for _ in range(2):
        params, state = _step(opt, zeros, params, state)
        history.append(jax.tree.map(lambda x: x.tolist(), params))
    # Thresholds 0.5 * l1_t on w (0.25 then 1), 0.5 on u, none on b.
    assert history == [
        {"w": [9.75], "u": [9.5], "b": [10.0]},
        {"w": [8.75], "u": [9.0], "b": [10.0]},
    ]


def test_per_leaf_strengths_over_a_flax_nnx_state():
    # NNX Variables are callable pytree nodes: containers, not schedules.
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    _, params = nnx.split(model)
    strengths = jax.tree_util.tree_map_with_path(
        lambda path, _: 100.0 if "kernel" in jax.tree_util.keystr(path) else None,
        params,
    )
    opt = optax.chain(optax.sgd(1.0), proxjax.prox_group_l2(strengths, axis=0))
    state = opt.init(params)
    assert jax.tree.leaves(state) == []  # no schedule, so no count
    new, _ = _step(opt, jax.tree.map(jnp.zeros_like, params), params, state)
    np.testing.assert_array_equal(new["kernel"].get_value(), jnp.zeros((3, 2)))
    np.testing.assert_array_equal(new["bias"].get_value(), params["bias"].get_value())


# The pruning example ---------------------------------------------------------


def test_prune_folds_constant_units_into_the_next_bias():
    from examples import prune_digits

    rng = np.random.default_rng(9)
    layers = {
        name: {
            "kernel": rng.normal(size=shape).astype(np.float32),
            "bias": rng.normal(size=shape[1]).astype(np.float32),
        }
        for name, shape in (
            ("hidden1", (6, 5)),
            ("hidden2", (5, 4)),
            ("logits", (4, 3)),
        )
    }
    layers["hidden1"]["kernel"][:, [0, 3]] = 0.0  # constant units
    layers["hidden2"]["kernel"][2] = 0.0  # hidden1 unit 2 is never read
    layers["hidden2"]["kernel"][:, 1] = 0.0
    layers["logits"]["kernel"][3] = 0.0
    removed = prune_digits.removable_units(layers)
    np.testing.assert_array_equal(removed["hidden1"], [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(removed["hidden2"], [0, 1, 0, 1])
    small = prune_digits.prune(layers)
    assert [k.shape for k, _ in small] == [(6, 2), (2, 2), (2, 3)]
    x = rng.normal(size=(10, 6)).astype(np.float32)
    full = prune_digits.pruned_logits(
        [(layers[n]["kernel"], layers[n]["bias"]) for n in layers], x
    )
    np.testing.assert_allclose(prune_digits.pruned_logits(small, x), full, rtol=1e-5)


def test_prune_digits_runs_a_few_epochs(capsys):
    from examples import prune_digits

    argv = ["--epochs", "3", "--finetune-epochs", "1", "--group-l2", "0.05"]
    report = prune_digits.main([*argv, "--seeds", "0", "--no-progress"])
    (dense,) = report["dense"]
    (pruned,) = report["group_lasso"][0.05]
    assert dense["units_removed"] == 0 and dense["units"] == 128
    assert pruned["units_removed"] > 0
    assert dense["test_accuracy"] > 0.5  # chance is 0.1
    for run in (dense, pruned):
        # The smaller network computes the same logits, up to float32 sums.
        assert run["max_logit_difference"] < 1e-4
        assert run["pruned_params"] <= run["params"]
    assert "units removed" in capsys.readouterr().out
