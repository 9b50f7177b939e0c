"""Tests of the Flax MLP example on scikit-learn's digits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import proxjax
from examples import mlp_digits

RESULT_KEYS = (
    "test_accuracy",
    "val_accuracy",
    "zero_fraction",
    "train_seconds",
    "compile_seconds",
    "steps_per_second",
    "device",
)


@pytest.fixture(scope="module")
def splits():
    return mlp_digits.load_digits_splits(0)


def _quiet(**kwargs):
    return mlp_digits.Config(progress=False, **kwargs)


def test_splits_follow_keras_validation_split(splits):
    # 1,797 images: 360 for the test (20 %, rounded up), and of the other
    # 1,437 the last 288 for validation, as int(1437 * 0.8) = 1149.
    assert {k: len(v) for k, v in splits.items()} == {
        "x_train": 1149,
        "y_train": 1149,
        "x_val": 288,
        "y_val": 288,
        "x_test": 360,
        "y_test": 360,
    }
    for name in ("x_train", "x_val", "x_test"):
        x = splits[name]
        assert x.dtype == np.float32 and x.shape[1] == 64
        assert x.min() == 0.0 and x.max() == 1.0
    for name in ("y_train", "y_val", "y_test"):
        assert splits[name].dtype == np.int32
    # Stratified: every digit has 35 to 37 of the 360 test images.
    counts = np.bincount(splits["y_test"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    order = mlp_digits.epoch_order(3, 7, 1149)
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(1149))
    np.testing.assert_array_equal(order, mlp_digits.epoch_order(3, 7, 1149))
    assert not np.array_equal(order, mlp_digits.epoch_order(3, 8, 1149))
    assert not np.array_equal(order, mlp_digits.epoch_order(4, 7, 1149))


def test_mlp_maps_images_to_class_logits():
    # The shapes of the runs below, so that they share compiled initializers.
    model = mlp_digits.MLP(64, 10, rngs=nnx.Rngs(0))
    assert model(jnp.ones((5, 64))).shape == (5, 10)
    assert model.hidden1.kernel.shape == (64, 64)
    assert model.hidden2.kernel.shape == (64, 64)
    assert model.logits.kernel.shape == (64, 10)


@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_prox_shrinks_kernels_and_leaves_biases(l2):
    # With zero gradients Adam's step is zero, so only the proximal step moves
    # the params: kernels are soft-thresholded by lr * l1 (then divided by
    # 1 + lr * l2), biases keep their values.
    config = mlp_digits.Config(
        learning_rate=0.25, schedule="constant", l1=0.5, l1_warmup=0.0, l2=l2
    )
    model = mlp_digits.MLP(64, 10, rngs=nnx.Rngs(0))
    _, params = nnx.split(model)
    params = jax.tree.map(lambda p: p + 0.5, params)
    optimizer = mlp_digits.make_optimizer(config)
    grads = jax.tree.map(jnp.zeros_like, params)
    # Jitted: compiling the step once is cheaper than running it op by op.
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    mask = mlp_digits.kernel_mask(params)
    for is_kernel, p, q in zip(
        jax.tree.leaves(mask),
        jax.tree.leaves(params),
        jax.tree.leaves(new),
        strict=True,
    ):
        if is_kernel:
            expected = jnp.sign(p) * jnp.maximum(jnp.abs(p) - 0.125, 0) / (1 + l2 / 4)
            np.testing.assert_allclose(q, expected, rtol=1e-6)
        else:
            np.testing.assert_array_equal(q, p)


@pytest.mark.parametrize("optimizer", mlp_digits.OPTIMIZERS)
def test_two_epochs_on_digits_give_sane_results(optimizer, splits):
    model, results = mlp_digits.train(_quiet(optimizer=optimizer, epochs=2), splits)
    for key in RESULT_KEYS:
        assert key in results
    for key in ("test_accuracy", "val_accuracy", "zero_fraction"):
        assert 0.0 <= results[key] <= 1.0
    # Ten classes: chance is 0.1; two epochs of either optimizer get far above.
    assert results["test_accuracy"] > 0.5
    assert results["train_seconds"] >= results["compile_seconds"] > 0
    assert results["steps_per_second"] > 0
    assert len(results["history"]["train_loss"]) == 2
    assert results["history"]["train_loss"][1] < results["history"]["train_loss"][0]
    json.dumps(results)
    zeros = mlp_digits.zero_fraction(nnx.state(model))
    assert zeros == results["zero_fraction"]
    if optimizer == "prox":
        assert zeros > 0
    else:
        assert zeros == 0


def test_resume_ends_with_the_same_params(tmp_path, splits):
    straight, _ = mlp_digits.train(_quiet(epochs=4), splits)
    directory = str(tmp_path)
    _, first = mlp_digits.train(
        _quiet(epochs=4, checkpoint_dir=directory, stop_after=2), splits
    )
    resumed, second = mlp_digits.train(
        _quiet(epochs=4, checkpoint_dir=directory, resume=True), splits
    )
    assert first["epochs"] == 2 and second["epochs"] == 4
    assert len(second["history"]["train_loss"]) == 4
    # Same compiled steps on the same inputs in the same order: bit for bit.
    for a, b in zip(
        jax.tree.leaves(nnx.state(straight)),
        jax.tree.leaves(nnx.state(resumed)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_checkpoint_of_other_options(tmp_path, splits):
    directory = str(tmp_path)
    mlp_digits.train(_quiet(epochs=1, checkpoint_dir=directory), splits)
    with pytest.raises(ValueError, match="load_checkpoint"):
        mlp_digits.train(
            _quiet(epochs=1, l1=0.5, checkpoint_dir=directory, resume=True), splits
        )


def test_diagonal_metric_shrinks_kernels_only(splits):
    config = _quiet(epochs=2, metric="diagonal", l1=0.004)
    model, results = mlp_digits.train(config, splits)
    state = nnx.state(model)
    assert results["test_accuracy"] > 0.5
    assert mlp_digits.zero_fraction(state) > 0
    for layer in ("hidden1", "hidden2", "logits"):
        assert float(proxjax.sparsity(state[layer]["bias"])) < 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "sgd"},
        {"schedule": "linear"},
        {"epochs": 0},
        {"learning_rate": 0.0},
        {"l1": -0.5},
        {"l1_warmup": 2.0},
        {"b1": 1.0},
        {"metric": "full"},
        {"resume": True},
    ],
)
def test_config_rejects_bad_options(kwargs):
    with pytest.raises(ValueError, match="Config"):
        mlp_digits.Config(**kwargs)


def test_command_line_writes_json_and_plot(tmp_path, capsys):
    json_path = tmp_path / "results.json"
    plot_path = tmp_path / "curves.png"
    argv = ["--epochs", "1", "--no-progress"]
    argv += ["--json", str(json_path), "--plot", str(plot_path)]
    results = mlp_digits.main(argv)
    with open(json_path) as f:
        written = json.load(f)
    for key in RESULT_KEYS:
        assert written[key] == results[key]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "Training on" in out and "test accuracy" in out
