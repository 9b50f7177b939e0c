"""The decayed-RMS step size against a NumPy transcription of its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxjax


def _numpy_decayed_rms(grads, decay_rate, accumulation, beta):
    s = np.zeros_like(grads[0])
    out = []
    for g in grads:
        s = s + g**2 if accumulation == "sum" else beta * s + (1 - beta) * g**2
        out.append(g / (1 + decay_rate * np.sqrt(s)))
    return out


@pytest.mark.parametrize("accumulation", ["sum", "ema"])
def test_matches_numpy_transcription(x64, accumulation):
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(3, 4)) for _ in range(20)]
    expected = _numpy_decayed_rms(grads, 0.7, accumulation, 0.8)
    opt = proxjax.scale_by_decayed_rms(0.7, accumulation=accumulation, beta=0.8)
    state = opt.init(jnp.zeros((3, 4)))
    update = jax.jit(opt.update)
    for g, e in zip(grads, expected, strict=True):
        u, state = update(jnp.asarray(g), state)
        np.testing.assert_allclose(u, e, rtol=1e-14, atol=0)


def test_chain_gives_the_decayed_learning_rate(x64):
    grads = [np.array([3.0, 0.5]), np.array([4.0, -0.5])]
    eta, c = 0.1, 2.0
    opt = optax.chain(
        proxjax.scale_by_decayed_rms(c), optax.scale_by_learning_rate(eta)
    )
    state = opt.init(jnp.zeros(2))
    s = np.zeros(2)
    for g in grads:
        s += g**2
        u, state = opt.update(jnp.asarray(g), state)
        np.testing.assert_allclose(u, -eta / (1 + c * np.sqrt(s)) * g, rtol=1e-15)


def test_zero_decay_rate_is_identity():
    opt = proxjax.scale_by_decayed_rms(0.0)
    g = jnp.array([1.5, -2.0])
    u, _ = opt.update(g, opt.init(g))
    np.testing.assert_array_equal(u, g)


def test_scheduled_decay_rate_reads_the_count():
    opt = proxjax.scale_by_decayed_rms(lambda count: count.astype(jnp.float32))
    g = jnp.array([3.0])
    state = opt.init(g)
    u0, state = opt.update(g, state)
    u1, state = opt.update(g, state)
    np.testing.assert_allclose(u0, [3.0])  # decay_rate 0 at step 0
    np.testing.assert_allclose(u1, [3.0 / (1 + np.sqrt(18.0))], rtol=1e-6)
    assert int(state.count) == 2


def test_constant_decay_rate_keeps_no_count():
    state = proxjax.scale_by_decayed_rms(1.0).init(jnp.ones(2))
    assert state.count is None
    assert len(jax.tree.leaves(state)) == 1


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("accumulation", ["sum", "ema"])
def test_keeps_dtypes(dtype, accumulation):
    params = jnp.ones(4, dtype)
    opt = proxjax.scale_by_decayed_rms(0.5, accumulation=accumulation)
    state = opt.init(params)
    for _ in range(2):
        u, new_state = opt.update(jnp.full(4, 0.5, dtype), state)
        assert u.dtype == dtype
        assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(
            lambda x: x.dtype, state
        )
        state = new_state


def test_accumulator_dtype():
    params = jnp.ones(4, jnp.bfloat16)
    opt = proxjax.scale_by_decayed_rms(accumulator_dtype=jnp.float32)
    state = opt.init(params)
    u, state = opt.update(jnp.ones(4, jnp.bfloat16), state)
    assert state.accumulator.dtype == jnp.float32
    assert u.dtype == jnp.bfloat16
