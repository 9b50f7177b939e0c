"""The cost of a step: memory traffic, work and compilations, not time.

Bytes and flops come from XLA's cost analysis of the compiled, donated step,
a deterministic figure; the hand-fused reference is the one the step
benchmark times, so the test and the benchmark compare against the same code.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax
from benchmarks.step import (
    DECAY_RATE,
    INITIAL_ACCUMULATOR_VALUE,
    L1,
    L2,
    LEARNING_RATE,
    hand_fused_adagrad,
    hand_fused_decayed_rms,
    mlp_tree,
    optax_step,
    standard_chain,
)


def _tree(kind: str) -> Any:
    """Small versions of the benchmark's trees (``"small"``: a tiny network)."""
    rng = np.random.default_rng(0)
    if kind == "array":
        return jnp.asarray(rng.standard_normal(2**16, np.float32))
    if kind in ("mlp", "small"):
        # 20 leaves like the benchmark's network, narrower: XLA:CPU's compile
        # time grows with the array sizes.
        widths = [32] * 10 + [10] if kind == "mlp" else [16, 8, 4]
        return jax.tree.map(jnp.asarray, mlp_tree(widths, rng))
    return [jnp.asarray(rng.standard_normal(1000, np.float32)) for _ in range(50)]


def _grads(params: Any) -> Any:
    return jax.tree.map(lambda p: 0.01 * p[::-1], params)


def _cost(step: Any, params: Any, state: Any) -> tuple[float, float]:
    """Bytes accessed and flops per parameter of the compiled, donated step."""
    compiled = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, state, _grads(params))
        .compile()
    )
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    return analysis["bytes accessed"] / n, analysis["flops"] / n


@functools.cache
def _hand_fused_bytes(kind: str, accumulation: str = "sum") -> float:
    params = _tree(kind)
    accumulator = jax.tree.map(jnp.zeros_like, params)
    step = hand_fused_decayed_rms(accumulation=accumulation)
    return _cost(step, params, accumulator)[0]


def _transform_cost(
    opt: optax.GradientTransformation, params: Any
) -> tuple[float, float]:
    return _cost(optax_step(opt), params, opt.init(params))


def _count_leaves(state: Any) -> int:
    """The integer leaves of a state: step counters."""
    return sum(
        jnp.issubdtype(jnp.result_type(leaf), jnp.integer)
        for leaf in jax.tree.leaves(state)
    )


@pytest.mark.parametrize(
    "kind, accumulation",
    [("array", "sum"), ("array", "ema"), ("mlp", "sum"), ("leaves", "sum")],
)
def test_standard_chain_moves_no_more_bytes_than_hand_fused(kind, accumulation):
    chain = standard_chain(accumulation=accumulation)
    chain_bytes, _ = _transform_cost(chain, _tree(kind))
    assert chain_bytes <= _hand_fused_bytes(kind, accumulation)


@pytest.mark.parametrize("kind", ["array", "mlp", "leaves"])
def test_prox_decayed_rms_moves_no_more_bytes_than_hand_fused(kind):
    opt = proxjax.prox_decayed_rms(LEARNING_RATE, DECAY_RATE, L1, L2)
    opt_bytes, _ = _transform_cost(opt, _tree(kind))
    assert opt_bytes <= _hand_fused_bytes(kind)


def test_copy_moves_eight_bytes_per_parameter():
    # The bandwidth floor of the benchmark: one read and one write of float32.
    params = _tree("array")
    nbytes, _ = _cost(lambda p, s, g: (p + 1, s), params, ())
    assert nbytes == pytest.approx(8.0, abs=1e-3)


def test_static_zero_strengths_add_no_work():
    # With static zero strengths the proximal link must trace nothing, so
    # the step costs what the scaling alone costs, flops included.
    params = _tree("array")
    with_prox = proxjax.prox_decayed_rms(LEARNING_RATE, DECAY_RATE, 0.0, 0.0)
    without = optax.chain(
        proxjax.scale_by_decayed_rms(DECAY_RATE),
        optax.scale_by_learning_rate(LEARNING_RATE),
    )
    assert _transform_cost(with_prox, params) == _transform_cost(without, params)


def test_step_counter_only_with_a_schedule():
    params = _tree("small")
    constant = standard_chain()
    assert _count_leaves(constant.init(params)) == 0
    assert _count_leaves(proxjax.prox_decayed_rms(0.1, l1=0.1).init(params)) == 0
    assert _count_leaves(proxjax.scale_by_decayed_rms(0.5).init(params)) == 0

    schedule = proxjax.inverse_time_decay(0.1, 0.5)
    assert _count_leaves(proxjax.prox_l1(schedule).init(params)) == 1
    assert _count_leaves(proxjax.prox_l2(0.1, schedule).init(params)) == 1
    assert _count_leaves(proxjax.scale_by_decayed_rms(schedule).init(params)) == 1
    assert _count_leaves(standard_chain(learning_rate=schedule).init(params)) > 0


def _traced_step(opt: optax.GradientTransformation) -> tuple[Any, list[int]]:
    traces = [0]

    def step(params, state, grads):
        traces[0] += 1
        return optax_step(opt)(params, state, grads)

    return jax.jit(step, donate_argnums=(0, 1)), traces


@pytest.mark.parametrize(
    "make",
    [
        standard_chain,
        lambda: standard_chain(learning_rate=proxjax.inverse_time_decay(0.1, 0.5)),
        lambda: proxjax.prox_decayed_rms(LEARNING_RATE, DECAY_RATE, L1, L2),
    ],
    ids=["chain", "scheduled chain", "prox_decayed_rms"],
)
def test_no_recompilation_across_steps(make):
    opt = make()
    step, traces = _traced_step(opt)
    params = _tree("small")
    grads = _grads(params)
    state = opt.init(params)
    for _ in range(4):
        params, state = step(params, state, grads)
    assert traces == [1]


@pytest.mark.parametrize(
    "factory", [standard_chain, proxjax.prox_decayed_rms], ids=lambda f: f.__name__
)
def test_no_recompilation_when_a_hyperparameter_changes(factory):
    opt = optax.inject_hyperparams(factory)(
        learning_rate=LEARNING_RATE, decay_rate=DECAY_RATE, l1=L1, l2=L2
    )
    step, traces = _traced_step(opt)
    params = jnp.asarray(np.random.default_rng(0).standard_normal(64, np.float32))
    grads = _grads(params)
    state = opt.init(params)
    values = []
    for l1 in (0.0, 1e4, 0.0):
        hyperparams = dict(state.hyperparams)
        # The dtype inject_hyperparams stores, so only the value changes.
        hyperparams["l1"] = jnp.asarray(l1, hyperparams["l1"].dtype)
        state = state._replace(hyperparams=hyperparams)
        params, state = step(params, state, grads)
        values.append(np.count_nonzero(params))
    assert traces == [1]
    # The new strength was read: a large threshold zeroes every coordinate.
    assert values[0] == params.size and values[1] == 0


def _run(step: Any, params: Any, state: Any, steps: int = 5) -> Any:
    rng = np.random.default_rng(1)
    for _ in range(steps):
        grads = jax.tree.map(
            lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params
        )
        params, state = step(params, state, grads)
    return params


@pytest.mark.parametrize("accumulation", ["sum", "ema"])
def test_hand_fused_reference_is_the_chain_math(x64, accumulation):
    # The byte comparison above is fair only if both compute the same step.
    params = jnp.asarray(np.random.default_rng(0).standard_normal(256))
    # Strengths large enough that some coordinates land on exact zeros.
    lr, c, l1, l2 = 0.5, 0.5, 0.5, 0.25
    chain = standard_chain(lr, c, l1, l2, accumulation=accumulation)
    got = _run(optax_step(chain), params, chain.init(params))
    hand = hand_fused_decayed_rms(lr, c, l1, l2, accumulation=accumulation)
    want = _run(hand, params, jnp.zeros_like(params))
    assert 0 < np.count_nonzero(want) < want.size
    # The chain rounds through p + (prox(z) - p) and orders its products
    # differently: a few ulps of |p| <= 2 apart (2.2e-16 measured).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(got == 0, want == 0)


@pytest.mark.skipif(
    not hasattr(proxjax, "prox_adagrad"), reason="proxjax has no prox_adagrad"
)
def test_hand_fused_adagrad_reference_is_prox_adagrad(x64):
    params = jnp.asarray(np.random.default_rng(0).standard_normal(256))
    lr, l1, l2 = 0.5, 0.5, 0.25
    opt = proxjax.prox_adagrad(
        lr, l1, l2, initial_accumulator_value=INITIAL_ACCUMULATOR_VALUE
    )
    got = _run(optax_step(opt), params, opt.init(params))
    start = jnp.full_like(params, INITIAL_ACCUMULATOR_VALUE)
    want = _run(hand_fused_adagrad(lr, l1, l2), params, start)
    assert 0 < np.count_nonzero(want) < want.size
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(got == 0, want == 0)
