"""Pruning hidden units of the digits MLP with the group lasso.

The model and the data are those of ``mlp_digits.py`` (Dense 64 relu, Dense 64
relu, Dense to the logits, on scikit-learn's digits). The pruning runs SGD
with momentum followed by `proxjax.prox_group_l2` on the two hidden kernels
with ``axis=0``: one group per hidden unit, its incoming weights (a column of
the kernel). A unit whose incoming column is exactly zero outputs the constant
``relu(bias)``, which folds into the next layer's bias; a unit whose outgoing
row is exactly zero contributes nothing. Either way it can be deleted:
:func:`prune` builds the smaller dense network, which computes the same logits.

The group lasso shrinks the units it keeps as well. So the last
``--finetune-epochs`` (30 of 100) train without the penalty, with fresh Adam
moments, while `proxjax.prox_from_projection` holds the removed units'
incoming weights at exactly zero (a projection onto a linear subspace: a
multiplication by a 0/1 mask). The dense model trains with Adam for all the
epochs, as ``mlp_digits.py --optimizer adam`` does.

``python examples/prune_digits.py`` trains the dense model and a grid of
group-lasso strengths on seeds 0, 1 and 2, picks the strength on the
validation set alone (the one that removes the most units while its mean
validation accuracy stays within ``--val-margin`` points of the dense
model's), and reports the test accuracy of both and the units removed.
``--group-l2 X`` trains one strength instead.
"""

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import proxjax

try:
    from examples import mlp_digits
except ImportError:  # run as a script: examples/ is on the path, not the root
    import mlp_digits

HIDDEN_LAYERS = ("hidden1", "hidden2")
GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
FINETUNE_EPOCHS = 30


@dataclasses.dataclass
class Config(mlp_digits.Config):
    """The options of ``mlp_digits.Config`` (Adam by default) and the pruning.

    ``learning_rate`` and ``schedule`` are Adam's, for the dense model and for
    the fine-tuning.

    Attributes:
      group_l2: the group-lasso strength on the hidden units' incoming
        weights; the threshold of a unit per step is ``prune_learning_rate``
        times ``group_l2`` times ``sqrt(fan_in)``. Zero trains the dense
        model.
      prune_learning_rate: the step size of the SGD that runs with the group
        lasso.
      prune_momentum: its momentum.
      finetune_epochs: the last epochs of ``epochs``, trained with Adam
        without the penalty while a projection holds the removed units'
        incoming weights at zero; they undo the shrinkage of the units that
        remain (as the relaxed lasso refits the selected variables).
    """

    optimizer: str = "adam"
    group_l2: float = 0.0
    prune_learning_rate: float = 0.05
    prune_momentum: float = 0.9
    finetune_epochs: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.group_l2, int | float) and self.group_l2 >= 0):
            raise ValueError(
                f"Config: group_l2 must be a non-negative number, "
                f"got {self.group_l2!r}."
            )
        if not 0 <= self.finetune_epochs < self.epochs:
            raise ValueError(
                f"Config: finetune_epochs must lie in [0, epochs), "
                f"got {self.finetune_epochs!r}."
            )


def _names(path: tuple[Any, ...]) -> list[Any]:
    return [getattr(key, "key", getattr(key, "name", None)) for key in path]


def hidden_kernel_strengths(params: Any, strength: float) -> Any:
    """A strength tree like ``params``: ``strength`` on the hidden kernels.

    Biases and the logits layer get ``None`` and are left alone.
    """

    def pick(path, _):
        names = _names(path)
        return strength if names[0] in HIDDEN_LAYERS and "kernel" in names else None

    return jax.tree_util.tree_map_with_path(pick, params)


def make_optimizer(
    config: Config, params: Any, steps_per_epoch: int
) -> optax.GradientTransformation:
    """The optimizer of the first phase.

    The dense model (``group_l2 == 0``) uses Adam as ``mlp_digits`` builds it.
    Otherwise, proximal SGD with momentum and the group lasso:

    .. code-block:: python

        optax.chain(
            optax.sgd(lr, momentum=0.9),
            proxjax.prox_group_l2(strengths, lr, axis=0),
        )

    where ``strengths`` is ``config.group_l2`` on the hidden kernels and
    ``None`` elsewhere. With a plain gradient step this is the proximal
    gradient method of the penalised loss, whose fixed points keep a unit
    exactly when the gradient of the loss with respect to its weights is
    large enough to outweigh the penalty. After Adam's per-coordinate scaling
    the same threshold selects units by how consistent their gradient signs
    are instead, and on this model it removed fewer units at the same
    validation accuracy.
    """
    if config.group_l2 == 0:
        return mlp_digits.make_optimizer(
            dataclasses.replace(config, optimizer="adam"), steps_per_epoch
        )
    strengths = hidden_kernel_strengths(params, config.group_l2)
    learning_rate = config.prune_learning_rate
    return optax.chain(
        optax.sgd(learning_rate, momentum=config.prune_momentum),
        proxjax.prox_group_l2(strengths, learning_rate, axis=0),
    )


def pruned_units_mask(params: Any) -> Any:
    """A tree like ``params``: 0 on the hidden kernels' zero columns, else 1."""

    def mask(path, p):
        names = _names(path)
        if names[0] in HIDDEN_LAYERS and "kernel" in names:
            return jnp.where(jnp.all(p == 0, axis=0, keepdims=True), 0.0, 1.0)
        return jnp.ones_like(p)

    return jax.tree_util.tree_map_with_path(mask, params)


def make_finetune_optimizer(
    config: Config, params: Any, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Adam, then the projection that keeps the pruned units at zero.

    The set of params whose removed units' incoming weights are zero is a
    linear subspace; its projection multiplies by a 0/1 mask, a last link
    built with `proxjax.prox_from_projection`.
    """
    adam = mlp_digits.make_optimizer(
        dataclasses.replace(
            config, optimizer="adam", epochs=config.finetune_epochs, finetune_epochs=0
        ),
        steps_per_epoch,
    )
    mask = pruned_units_mask(params)

    def keep_pruned(tree):
        return jax.tree.map(lambda p, m: p * m.astype(p.dtype), tree, mask)

    return optax.chain(adam, proxjax.prox_from_projection(keep_pruned))


def _layers(params: Any) -> dict[str, dict[str, np.ndarray]]:
    layers: dict[str, dict[str, np.ndarray]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = _names(path)
        layers.setdefault(names[0], {})[names[1]] = np.asarray(leaf)
    return layers


def removable_units(params: Any) -> dict[str, np.ndarray]:
    """Per hidden layer, which units can be deleted.

    A unit is removable when its incoming kernel column is exactly zero (it
    outputs a constant) or its outgoing kernel row is exactly zero (nothing
    reads it).
    """
    layers = _layers(params)
    order = [*HIDDEN_LAYERS, "logits"]
    out = {}
    for name, next_name in zip(order, order[1:], strict=False):
        incoming = np.all(layers[name]["kernel"] == 0, axis=0)
        outgoing = np.all(layers[next_name]["kernel"] == 0, axis=1)
        out[name] = incoming | outgoing
    return out


def prune(params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The smaller dense network: ``[(kernel, bias)]`` for the three layers.

    Removed units are dropped; the constant output ``relu(bias)`` of a unit
    with a zero incoming column is folded into the next layer's bias (a unit
    removed for its zero outgoing row adds zero there).
    """
    layers = _layers(params)
    removed = removable_units(params)
    kernels = [layers[n]["kernel"] for n in (*HIDDEN_LAYERS, "logits")]
    biases = [layers[n]["bias"].copy() for n in (*HIDDEN_LAYERS, "logits")]
    keep_in = np.ones(kernels[0].shape[0], bool)
    for i, name in enumerate(HIDDEN_LAYERS):
        gone = removed[name]
        # Folding before slicing: the constant reaches every unit of the next
        # layer, including the ones that are removed in turn.
        biases[i + 1] = (
            biases[i + 1] + np.maximum(biases[i][gone], 0) @ kernels[i + 1][gone]
        )
        kernels[i] = kernels[i][keep_in][:, ~gone]
        biases[i] = biases[i][~gone]
        keep_in = ~gone
    kernels[-1] = kernels[-1][keep_in]
    return list(zip(kernels, biases, strict=True))


def pruned_logits(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray):
    """The logits of the pruned network (NumPy, float32)."""
    h = x
    for i, (kernel, bias) in enumerate(layers):
        h = h @ kernel + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def train_and_evaluate(
    config: Config, splits: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Trains the MLP with ``config.group_l2`` and measures what it pruned.

    Returns:
      A JSON-ready dict: ``val_accuracy``, ``test_accuracy``, ``units`` (the
      hidden units, both layers), ``units_removed``, ``layer_units_removed``,
      ``pruned_test_accuracy`` (of the smaller network :func:`prune` builds),
      ``max_logit_difference`` (between it and the trained model on the test
      set), ``params`` and ``pruned_params`` (counts), ``train_seconds``
      and ``config``.
    """
    if splits is None:
        splits = mlp_digits.load_digits_splits(config.split_seed)
    n_train, in_features = splits["x_train"].shape
    steps_per_epoch = -(-n_train // config.batch_size)
    model = mlp_digits.MLP(
        in_features, 10, hidden=config.hidden, rngs=nnx.Rngs(config.seed)
    )
    graphdef, params = nnx.split(model)
    data = jax.device_put(dict(splits))
    t0 = time.perf_counter()
    # TODO: mlp_digits.train builds its optimizer from its own Config; with an
    # optimizer argument (and a starting params) this loop would be two calls.
    prune_epochs = config.epochs - config.finetune_epochs
    phases = [(make_optimizer, range(prune_epochs))]
    if config.finetune_epochs:
        phases.append((make_finetune_optimizer, range(prune_epochs, config.epochs)))
    for make, epochs in phases:
        optimizer = make(config, params, steps_per_epoch)
        opt_state = optimizer.init(params)
        train_epoch = mlp_digits.make_train_epoch(
            graphdef, optimizer, n_train, config.batch_size
        )
        for epoch in epochs:
            order = mlp_digits.epoch_order(config.seed, epoch, n_train)
            params, opt_state, _ = train_epoch(params, opt_state, data, order)
    jax.block_until_ready(params)
    train_seconds = time.perf_counter() - t0

    evaluate = mlp_digits.make_evaluate(graphdef)
    _, val_accuracy = evaluate(params, data["x_val"], data["y_val"])
    _, test_accuracy = evaluate(params, data["x_test"], data["y_test"])
    removed = removable_units(params)
    layers = prune(params)
    full_logits = np.asarray(nnx.merge(graphdef, params)(data["x_test"]))
    small_logits = pruned_logits(layers, splits["x_test"])
    pruned_accuracy = np.mean(np.argmax(small_logits, -1) == splits["y_test"])
    units = sum(mask.size for mask in removed.values())
    return {
        "group_l2": config.group_l2,
        "seed": config.seed,
        "val_accuracy": float(val_accuracy),
        "test_accuracy": float(test_accuracy),
        "units": units,
        "units_removed": int(sum(mask.sum() for mask in removed.values())),
        "layer_units_removed": {k: int(v.sum()) for k, v in removed.items()},
        "pruned_test_accuracy": float(pruned_accuracy),
        "max_logit_difference": float(np.max(np.abs(full_logits - small_logits))),
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "pruned_params": int(sum(k.size + b.size for k, b in layers)),
        "train_seconds": train_seconds,
        "config": dataclasses.asdict(config),
    }


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([run[key] for run in runs]))


def select(
    dense: list[dict[str, Any]],
    candidates: dict[float, list[dict[str, Any]]],
    val_margin: float,
) -> float | None:
    """The strength that removes the most units on average, among those whose
    mean validation accuracy is within ``val_margin`` (a fraction) of the
    dense model's; ``None`` if none is. Test figures are never read here."""
    floor = _mean(dense, "val_accuracy") - val_margin
    eligible = [
        strength
        for strength, runs in candidates.items()
        if _mean(runs, "val_accuracy") >= floor
    ]
    if not eligible:
        return None
    return max(eligible, key=lambda s: (_mean(candidates[s], "units_removed"), -s))


def sweep(
    base: Config,
    strengths: Sequence[float],
    seeds: Sequence[int],
    val_margin: float,
) -> dict[str, Any]:
    """Trains the dense model and every strength on every seed, then selects.

    Each seed sets both the initialization and the test split.
    """
    runs = [(s, seed) for seed in seeds for s in (0.0, *strengths)]
    if base.progress:
        from tqdm.auto import tqdm

        runs = tqdm(runs, desc="runs")
    results: dict[float, list[dict[str, Any]]] = {}
    splits = {}
    for strength, seed in runs:
        if seed not in splits:
            splits[seed] = mlp_digits.load_digits_splits(seed)
        # The dense model is the plain Adam run, with no fine-tuning phase.
        finetune = base.finetune_epochs if strength else 0
        config = dataclasses.replace(
            base,
            group_l2=strength,
            finetune_epochs=finetune,
            seed=seed,
            split_seed=seed,
            progress=False,
        )
        results.setdefault(strength, []).append(
            train_and_evaluate(config, splits[seed])
        )
    dense = results.pop(0.0)
    chosen = select(dense, results, val_margin)
    return {"dense": dense, "group_lasso": results, "chosen": chosen}


def _row(label: str, runs: list[dict[str, Any]]) -> str:
    removed = _mean(runs, "units_removed")
    units = runs[0]["units"]
    return (
        f"{label:>12}  {100 * _mean(runs, 'val_accuracy'):6.2f}  "
        f"{100 * _mean(runs, 'test_accuracy'):6.2f}  "
        f"{removed:6.1f}/{units} ({100 * removed / units:4.1f} %)  "
        f"{100 * _mean(runs, 'pruned_test_accuracy'):6.2f}"
    )


def format_report(report: dict[str, Any]) -> str:
    """The sweep as a table of means over the seeds."""
    seeds = [run["seed"] for run in report["dense"]]
    lines = [
        f"Means over seeds {seeds} (accuracies in %).",
        f"{'group_l2':>12}  {'val':>6}  {'test':>6}  {'units removed':>20}  "
        f"{'pruned test':>6}",
        _row("dense", report["dense"]),
    ]
    for strength, runs in sorted(report["group_lasso"].items()):
        mark = "  <- chosen on validation" if strength == report["chosen"] else ""
        lines.append(_row(f"{strength:g}", runs) + mark)
    chosen = report["chosen"]
    if chosen is None:
        lines.append("No strength kept the validation accuracy within the margin.")
    else:
        runs = report["group_lasso"][chosen]
        pruned = _mean(runs, "test_accuracy")
        dense = _mean(report["dense"], "test_accuracy")
        share = _mean(runs, "units_removed") / runs[0]["units"]
        lines.append(
            f"group_l2 = {chosen:g}: {100 * share:.1f} % of the hidden units "
            f"removed, test accuracy {100 * pruned:.2f} % against "
            f"{100 * dense:.2f} % dense ({100 * (pruned - dense):+.2f} points)."
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--group-l2",
        type=float,
        default=None,
        help="train this one strength (and the dense model) instead of the grid",
    )
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=FINETUNE_EPOCHS,
        help="the last epochs train without the penalty, pruned units held at zero",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="Adam's (dense, fine-tuning)"
    )
    parser.add_argument(
        "--prune-learning-rate",
        type=float,
        default=Config.prune_learning_rate,
        help="the step size of the SGD with the group lasso",
    )
    parser.add_argument(
        "--val-margin",
        type=float,
        default=1.0,
        help="largest drop in mean validation accuracy allowed, in points",
    )
    parser.add_argument("--json", default=None, help="write the runs here")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    base = Config(
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        learning_rate=args.learning_rate,
        prune_learning_rate=args.prune_learning_rate,
        progress=not args.no_progress,
    )
    strengths = [args.group_l2] if args.group_l2 is not None else args.grid
    print(f"Training on {mlp_digits.describe_device()}.")
    report = sweep(base, strengths, args.seeds, args.val_margin / 100)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "group_lasso": list(report["group_lasso"].items())}, f)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
