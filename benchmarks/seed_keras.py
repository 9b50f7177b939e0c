"""The classic Keras MLP against the Flax + proxjax example, side by side.

Keras 3 on the JAX backend trains Dense 64 relu, Dense 64 relu, Dense softmax
with Adam (learning rate 0.001), categorical cross-entropy, batches of 32,
``validation_split=0.2`` and ``verbose=0`` on scikit-learn's digits. The
example (``examples/mlp_digits.py``) trains the same model on the same split,
dense (``--optimizer adam``) and sparse (the ``prox`` defaults). The three
take turns, ``--repeats`` times, after one untimed warm-up round that pays
the process's one-time costs (imports, backend start-up). Each timed run
builds a new model, so each pays its own compilation, for Keras as for the
example. Repeat ``r`` seeds all three with ``r``.

The table gives the mean test accuracy, the mean fraction of kernel entries
exactly zero and the median training wall time (Keras: ``fit``; the example:
its ``train_seconds``, compilation included), and how many times shorter the
example's time is than Keras'.

Run: ``python benchmarks/seed_keras.py`` (``--quick`` for a fast check).
"""

import argparse
import os
import statistics
import sys
import time

# Keras reads its backend when it is first imported.
if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != "jax":
    raise RuntimeError("seed_keras: keras was imported before its backend was set.")
os.environ["KERAS_BACKEND"] = "jax"

import numpy as np  # noqa: E402

if not __package__:
    # Run as a script: the examples live at the repository's root.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from examples import mlp_digits  # noqa: E402


def keras_run(splits, *, epochs: int, batch_size: int, seed: int) -> dict:
    """Trains the classic Keras MLP as the Keras recipe does.

    The training and validation rows are passed together, in order, so that
    ``validation_split=0.2`` holds out the same rows as the example does.
    """
    import keras

    keras.utils.set_random_seed(seed)
    x = np.concatenate([splits["x_train"], splits["x_val"]])
    y = keras.utils.to_categorical(
        np.concatenate([splits["y_train"], splits["y_val"]]), 10
    )
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.001),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x, y, epochs=epochs, batch_size=batch_size, validation_split=0.2, verbose=0
    )
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(
        splits["x_test"], keras.utils.to_categorical(splits["y_test"], 10), verbose=0
    )
    kernels = [layer.kernel.numpy() for layer in model.layers]
    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    return {
        "test_accuracy": float(accuracy),
        "zero_fraction": zeros,
        "seconds": seconds,
    }


def example_run(splits, *, optimizer: str, epochs: int, batch_size: int, seed: int):
    """Trains the example with ``optimizer`` and its defaults."""
    config = mlp_digits.Config(
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        progress=False,
    )
    _, results = mlp_digits.train(config, splits)
    return {
        "test_accuracy": results["test_accuracy"],
        "zero_fraction": results["zero_fraction"],
        "seconds": results["train_seconds"],
        "compile_seconds": results["compile_seconds"],
    }


def main(argv=None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--quick", action="store_true", help="one repeat of 10 epochs, to check"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = 1, 10

    splits = mlp_digits.load_digits_splits(0)
    runs = {
        "keras (adam)": lambda **kw: keras_run(splits, **kw),
        "example, adam": lambda **kw: example_run(splits, optimizer="adam", **kw),
        "example, prox": lambda **kw: example_run(splits, optimizer="prox", **kw),
    }
    print(
        f"device: {mlp_digits.describe_device()}, epochs: {args.epochs}, "
        f"repeats: {args.repeats}"
    )
    for run in runs.values():
        run(epochs=1, batch_size=args.batch_size, seed=0)
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            results[name].append(
                run(epochs=args.epochs, batch_size=args.batch_size, seed=repeat)
            )

    keras_seconds = statistics.median(r["seconds"] for r in results["keras (adam)"])
    header = (
        f"{'run':<15} {'test acc':>9} {'zeros':>7} {'median s':>9} "
        f"{'compile s':>10} {'Keras / this':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        compile_seconds = (
            f"{statistics.median(r['compile_seconds'] for r in rows):.2f}"
            if "compile_seconds" in rows[0]
            else "-"
        )
        accuracy = statistics.mean(r["test_accuracy"] for r in rows)
        zeros = statistics.mean(r["zero_fraction"] for r in rows)
        print(
            f"{name:<15} {accuracy:>9.4f} {zeros:>7.1%} {seconds:>9.2f} "
            f"{compile_seconds:>10} {keras_seconds / seconds:>12.1f}x"
        )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
