"""The cost of one optimizer step: proxjax chains against hand-fused code.

Each candidate is a jitted update-and-apply ``step(params, state, grads) ->
(params, state)`` with the params and the state donated, as a training loop
runs it. The candidates are

- ``hand-fused``: the decayed-RMS step with the L1 and L2 proximal steps,
  written by hand as one function (:func:`hand_fused_decayed_rms`);
- ``chain``: the same math as proxjax's standard chain,
  ``chain(scale_by_decayed_rms, scale_by_learning_rate, prox_l1, prox_l2)``;
- ``prox_decayed_rms``: the ready-made optimizer, which applies both
  penalties in one link;
- ``prox_adagrad`` and its hand-fused twin, when proxjax has it;
- ``optax.rmsprop`` and ``optax.adamw``, for scale;
- ``copy x+1``: one read and one write of the params, the bandwidth floor.

For each parameter tree (one array of 1e6; a 20-leaf MLP-like tree of about
1e6; one array of 1e7; 1000 leaves of 1e3) the script reports

- the median time of a step over interleaved repeats: in each repeat every
  candidate runs the same number of steps back to back, in an order that
  rotates from repeat to repeat, so that drift and noise hit all alike;
- the ratio of that median to the hand-fused step of the same math, and
  the median over repeats of the ratio within each repeat (``paired``),
  which slow changes in the machine's load cancel from;
- bytes and flops per parameter from XLA's cost analysis of the compiled
  step (``jax.jit(step, donate_argnums=(0, 1)).lower(...).compile()
  .cost_analysis()``), a deterministic figure;
- the time to trace, lower and compile the step, per leaf of the tree;
- the achieved bandwidth (bytes from the cost analysis over the median
  time) and, on a GPU or with ``--peak-gbps``, its fraction of the device's
  peak.

It also checks that no candidate is traced more than once per tree across
all the steps it ran (no recompilation).

What XLA:CPU does with these steps: an RMS-family step with a proximal last
link must read the gradient, the params and the accumulator and write the
params and the accumulator, 20 bytes per float32 parameter. XLA:CPU (jax
0.10.2) compiles it to two loop fusions, one that writes the new accumulator
and one that reads it back to update the params, so it moves 28 bytes per
parameter. This holds for the hand-fused step, for proxjax's chain and for
``optax.rmsprop`` alike (``optax.adamw`` moves 40 bytes, against an ideal
28): the limit is XLA:CPU's fusion, which does not merge the two loops into
one multi-output loop, not the code. XLA's GPU compiler has a multi-output
fusion pass that can put both in one kernel; the GPU mode shows what it
reaches.

A chain of optax links performs a few more flops than the hand-fused step,
but no more memory traffic: each proximal link returns ``prox(z) - p``,
which the next link and ``optax.apply_updates`` add back to ``p``, and
floating-point arithmetic does not let XLA cancel the pair (cancelling it
would also lose the exact zeros, which come from ``p + (-p)``). That is a
subtraction and an addition per proximal link and parameter: 13 flops per
parameter for the standard chain, 11 for ``prox_decayed_rms`` with its
single link, 9 by hand, in a loop whose cost is the square root, the
division and the memory traffic.

Run it from the repository root::

    python -m benchmarks.step            # the full run, a few minutes on CPU
    python -m benchmarks.step --quick    # smaller trees and fewer repeats
    python -m benchmarks.step --peak-gbps 20   # bandwidth fraction on CPU

Timings on a shared or busy machine are noisy; compare ratios measured in one
run, not figures across runs.
"""

import argparse
import gc
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxjax

LEARNING_RATE = 1e-3
DECAY_RATE = 1.0
L1 = 1e-4
L2 = 1e-4
INITIAL_ACCUMULATOR_VALUE = 0.1

Step = Callable[[Any, Any, Any], tuple[Any, Any]]

# Peak memory bandwidth in GB/s by device kind, from the vendors' data sheets.
# The first entry whose words all occur in the lower-cased device kind wins,
# so the more specific names come first.
PEAK_GBPS = (
    (("gh200",), 4000.0),
    (("h200",), 4800.0),
    (("h100", "pcie"), 2000.0),
    (("h100", "nvl"), 3900.0),
    (("h100",), 3350.0),
    (("a100", "pcie", "80gb"), 1935.0),
    (("a100", "80gb"), 2039.0),
    (("a100",), 1555.0),
    (("l40",), 864.0),
    (("l4",), 300.0),
    (("a10",), 600.0),
    (("v100",), 900.0),
    (("t4",), 320.0),
    (("rtx", "4090"), 1008.0),
)


def peak_gbps(device_kind: str) -> float | None:
    """The peak memory bandwidth of a device kind in GB/s, if known."""
    kind = device_kind.lower()
    for words, gbps in PEAK_GBPS:
        if all(word in kind for word in words):
            return gbps
    return None


def _map_leaves(leaf_step: Callable[..., tuple[Any, Any]], *trees: Any) -> Any:
    """Applies a per-leaf ``(params, state)`` step and splits the results."""
    leaves, treedef = jax.tree.flatten(trees[0])
    others = [treedef.flatten_up_to(t) for t in trees[1:]]
    pairs = [leaf_step(*args) for args in zip(leaves, *others, strict=True)]
    return (
        treedef.unflatten([p for p, _ in pairs]),
        treedef.unflatten([s for _, s in pairs]),
    )


def hand_fused_decayed_rms(
    learning_rate: float = LEARNING_RATE,
    decay_rate: float = DECAY_RATE,
    l1: float = L1,
    l2: float = L2,
    *,
    accumulation: str = "sum",
    beta: float = 0.9,
) -> Step:
    r"""The decayed-RMS step with L1 and L2 proximal steps, as one function.

    The reference that proxjax's standard chain is measured against:

    .. math::
        S = S + g^2, \qquad z = p - \frac{\eta g}{1 + c \sqrt{S}}, \qquad
        p^+ = \frac{z - \operatorname{clip}(z, -\eta a, \eta a)}{1 + \eta b}

    (``"ema"`` accumulates ``S = beta * S + (1 - beta) * g^2``). The state is
    the tree of accumulators, zeros at the start.

    Args:
      learning_rate: ``eta``.
      decay_rate: ``c``.
      l1: ``a``.
      l2: ``b``.
      accumulation: ``"sum"`` or ``"ema"``.
      beta: the moving-average decay for ``"ema"``.

    Returns:
      ``step(params, accumulator, grads) -> (params, accumulator)``.
    """
    threshold = learning_rate * l1
    shrink = 1 + learning_rate * l2

    def leaf_step(p, s, g):
        if accumulation == "sum":
            s = s + g * g
        else:
            s = beta * s + (1 - beta) * (g * g)
        z = p - learning_rate * g / (1 + decay_rate * jnp.sqrt(s))
        return (z - jnp.clip(z, -threshold, threshold)) / shrink, s

    def step(params, accumulator, grads):
        return _map_leaves(leaf_step, params, accumulator, grads)

    return step


def hand_fused_adagrad(
    learning_rate: float = LEARNING_RATE,
    l1: float = L1,
    l2: float = L2,
) -> Step:
    r"""Proximal AdaGrad as one function, as TensorFlow's kernel computes it.

    .. math::
        S = S + g^2, \qquad \eta_S = \frac{\eta}{\sqrt{S}}, \qquad
        z = p - \eta_S g, \qquad
        p^+ = \frac{z - \operatorname{clip}(z, -\eta_S a, \eta_S a)}{1 + \eta_S b}

    The state is the tree of accumulators, starting at
    ``INITIAL_ACCUMULATOR_VALUE``.

    Args:
      learning_rate: ``eta``.
      l1: the L1 strength.
      l2: the L2 strength.

    Returns:
      ``step(params, accumulator, grads) -> (params, accumulator)``.
    """

    def leaf_step(p, s, g):
        s = s + g * g
        step_size = learning_rate / jnp.sqrt(s)
        z = p - step_size * g
        threshold = step_size * l1
        return (z - jnp.clip(z, -threshold, threshold)) / (1 + step_size * l2), s

    def step(params, accumulator, grads):
        return _map_leaves(leaf_step, params, accumulator, grads)

    return step


def standard_chain(
    learning_rate: Any = LEARNING_RATE,
    decay_rate: Any = DECAY_RATE,
    l1: Any = L1,
    l2: Any = L2,
    *,
    accumulation: str = "sum",
) -> optax.GradientTransformation:
    """proxjax's standard chain: decayed RMS, learning rate, L1, then L2."""
    return optax.chain(
        proxjax.scale_by_decayed_rms(decay_rate, accumulation=accumulation),
        optax.scale_by_learning_rate(learning_rate),
        proxjax.prox_l1(l1, learning_rate),
        proxjax.prox_l2(l2, learning_rate),
    )


def optax_step(opt: optax.GradientTransformation) -> Step:
    """The update-and-apply step of an optax transformation."""

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def copy_step(params, state, grads):
    """``p + 1``: one read and one write of the params."""
    del grads
    return jax.tree.map(lambda p: p + 1, params), state


def bytes_and_flops(compiled: Any) -> tuple[float, float]:
    """Bytes accessed and flops from a compiled step's cost analysis."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # one entry per device in old jax
        analysis = analysis[0]
    return float(analysis["bytes accessed"]), float(analysis["flops"])


class Candidate(NamedTuple):
    """One step to time.

    Attributes:
      name: the row label.
      init: ``init(params) -> state``.
      step: ``step(params, state, grads) -> (params, state)``.
      reference: the name of the hand-fused candidate to divide by.
    """

    name: str
    init: Callable[[Any], Any]
    step: Step
    reference: str


def candidates() -> list[Candidate]:
    """Fresh candidates (new functions, so nothing is cached from another tree)."""
    rms = "hand-fused"
    chain = standard_chain()
    fused = proxjax.prox_decayed_rms(LEARNING_RATE, DECAY_RATE, L1, L2)
    rmsprop = optax.rmsprop(LEARNING_RATE)
    adamw = optax.adamw(LEARNING_RATE, weight_decay=L2)
    zeros = lambda params: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    out = [
        Candidate(rms, zeros, hand_fused_decayed_rms(), rms),
        Candidate("chain", chain.init, optax_step(chain), rms),
        Candidate("prox_decayed_rms", fused.init, optax_step(fused), rms),
    ]
    if hasattr(proxjax, "prox_adagrad"):
        adagrad = proxjax.prox_adagrad(LEARNING_RATE, l1=L1, l2=L2)
        ref = "hand-fused adagrad"
        out += [
            Candidate(
                ref,
                lambda params: jax.tree.map(
                    lambda p: jnp.full_like(p, INITIAL_ACCUMULATOR_VALUE), params
                ),
                hand_fused_adagrad(),
                ref,
            ),
            Candidate("prox_adagrad", adagrad.init, optax_step(adagrad), ref),
        ]
    out += [
        Candidate("optax.rmsprop", rmsprop.init, optax_step(rmsprop), rms),
        Candidate("optax.adamw", adamw.init, optax_step(adamw), rms),
        Candidate("copy x+1", lambda params: (), copy_step, rms),
    ]
    return out


def mlp_tree(widths: list[int], rng: np.random.Generator) -> dict[str, Any]:
    """Kernels and biases of a dense network with the given layer widths."""
    tree = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        tree[f"layer{i}"] = {
            "kernel": rng.standard_normal((fan_in, fan_out), np.float32),
            "bias": rng.standard_normal((fan_out,), np.float32),
        }
    return tree


# 10 dense layers, 20 leaves: 1.15e6 parameters (quick: 7.2e4).
MLP_WIDTHS = [784, 512, 512, 384, 256, 256, 256, 128, 128, 64, 10]
MLP_WIDTHS_QUICK = [196, 128, 128, 96, 64, 64, 64, 32, 32, 16, 10]


def _size(n: int) -> str:
    """``1e6`` for a million."""
    return f"{n:.0e}".replace("e+0", "e").replace("e+", "e")


def make_trees(quick: bool, gpu: bool, seed: int = 0) -> dict[str, Any]:
    """The parameter trees, as NumPy arrays, by label."""
    rng = np.random.default_rng(seed)
    n = 10 ** (5 if quick else 6)
    leaves = 100 if quick else 1000
    trees = {
        f"1 x {_size(n)}": rng.standard_normal(n, np.float32),
        "20-leaf MLP": mlp_tree(MLP_WIDTHS_QUICK if quick else MLP_WIDTHS, rng),
        f"1 x {_size(10 * n)}": rng.standard_normal(10 * n, np.float32),
        f"{leaves} x 1e3": [
            rng.standard_normal(1000, np.float32) for _ in range(leaves)
        ],
    }
    if gpu and not quick:
        # Small steps on a GPU measure the launch, not the memory.
        trees[f"1 x {_size(10**8)}"] = rng.standard_normal(10**8, np.float32)
    return trees


class Row(NamedTuple):
    """One line of the table.

    Times are in seconds; ``spread`` is the interquartile range of the samples
    over their median; ``paired_ratio`` is the median over repeats of the
    ratio of this candidate's sample to its reference's in the same repeat.
    """

    tree: str
    name: str
    median_s: float
    spread: float
    ratio: float
    paired_ratio: float
    bytes_per_param: float
    flops_per_param: float
    compile_ms_per_leaf: float
    gbps: float


def _spread(samples: list[float]) -> float:
    """The interquartile range over the median: how noisy the samples were."""
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


def _block(tree: Any) -> None:
    jax.block_until_ready(tree)


def time_tree(
    label: str,
    tree: Any,
    repeats: int,
    target_s: float,
    progress: Any,
    only: list[str] | None = None,
) -> list[Row]:
    """Compiles, checks and times the candidates on one tree.

    ``only`` names the candidates to run (their references always run).
    """
    host_params = tree
    n_params = sum(np.size(leaf) for leaf in jax.tree.leaves(host_params))
    n_leaves = len(jax.tree.leaves(host_params))
    grads = jax.tree.map(
        lambda p: jnp.asarray(np.float32(1e-2) * p[::-1].copy()), host_params
    )
    traces: dict[str, int] = {}
    runs = {}
    chosen = candidates()
    if only is not None:
        keep = {c.reference for c in chosen if c.name in only} | set(only)
        chosen = [c for c in chosen if c.name in keep]
    for cand in chosen:
        params = jax.tree.map(jnp.asarray, host_params)
        state = cand.init(params)

        def counted(params, state, grads, cand=cand):
            traces[cand.name] = traces.get(cand.name, 0) + 1
            return cand.step(params, state, grads)

        jitted = jax.jit(counted, donate_argnums=(0, 1))
        start = time.perf_counter()
        compiled = jitted.lower(params, state, grads).compile()
        compile_s = time.perf_counter() - start
        nbytes, flops = bytes_and_flops(compiled)
        for _ in range(3):  # warm-up: the first calls may still allocate
            params, state = jitted(params, state, grads)
        _block((params, state))
        runs[cand.name] = [jitted, params, state, compile_s, nbytes, flops, cand]

    # One calibration measurement of the reference sets the steps per sample.
    name0 = next(iter(runs))
    jitted, params, state = runs[name0][:3]
    start = time.perf_counter()
    params, state = jitted(params, state, grads)
    _block((params, state))
    one = max(time.perf_counter() - start, 1e-7)
    runs[name0][1:3] = [params, state]
    inner = max(1, min(10_000, math.ceil(target_s / one)))

    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                run = runs[name]
                jitted, params, state = run[:3]
                start = time.perf_counter()
                for _ in range(inner):
                    params, state = jitted(params, state, grads)
                _block((params, state))
                samples[name].append((time.perf_counter() - start) / inner)
                run[1:3] = [params, state]
            progress.update(1)
    finally:
        if gc_was_enabled:
            gc.enable()

    retraced = {name: k for name, k in traces.items() if k != 1}
    if retraced:
        raise RuntimeError(f"{label}: traced more than once: {retraced}")

    medians = {name: statistics.median(samples[name]) for name in names}
    rows = []
    for name in names:
        _, _, _, compile_s, nbytes, flops, cand = runs[name]
        rows.append(
            Row(
                tree=label,
                name=name,
                median_s=medians[name],
                spread=_spread(samples[name]),
                ratio=medians[name] / medians[cand.reference],
                paired_ratio=statistics.median(
                    a / b
                    for a, b in zip(samples[name], samples[cand.reference], strict=True)
                ),
                bytes_per_param=nbytes / n_params,
                flops_per_param=flops / n_params,
                compile_ms_per_leaf=1e3 * compile_s / n_leaves,
                gbps=nbytes / medians[name] / 1e9,
            )
        )
    return rows


def format_table(rows: list[Row], peak: float | None) -> str:
    """A Markdown table of the rows."""
    header = [
        "tree",
        "step",
        "median (us)",
        "IQR",
        "vs hand-fused",
        "paired",
        "B/param",
        "flops/param",
        "compile (ms/leaf)",
        "GB/s",
    ]
    if peak:
        header.append("of peak")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        cells = [
            row.tree,
            row.name,
            f"{1e6 * row.median_s:.1f}",
            f"{row.spread:.0%}",
            f"{row.ratio:.3f}",
            f"{row.paired_ratio:.3f}",
            f"{row.bytes_per_param:.2f}",
            f"{row.flops_per_param:.2f}",
            f"{row.compile_ms_per_leaf:.3f}",
            f"{row.gbps:.1f}",
        ]
        if peak:
            cells.append(f"{row.gbps / peak:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller trees, fewer repeats"
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="GPU mode (automatic on a GPU backend): bandwidth against the peak",
    )
    parser.add_argument(
        "--peak-gbps",
        type=float,
        default=None,
        help="the device's peak memory bandwidth in GB/s, overriding the table",
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--sample-ms",
        type=float,
        default=None,
        help="target length of one timed sample (steps run back to back)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated steps to run, e.g. 'chain,copy x+1' (the "
        "hand-fused references always run)",
    )
    parser.add_argument(
        "--trees",
        default=None,
        help="comma-separated tree labels to run, e.g. '1 x 1e6'",
    )
    args = parser.parse_args(argv)

    from tqdm import tqdm

    device = jax.devices()[0]
    on_gpu = jax.default_backend() == "gpu"
    gpu = args.gpu or on_gpu
    peak = args.peak_gbps or (peak_gbps(device.device_kind) if gpu else None)
    repeats = args.repeats or (5 if args.quick else 21)
    target_s = (args.sample_ms or (5.0 if args.quick else 20.0)) / 1e3
    trees = make_trees(args.quick, on_gpu)
    if args.trees:
        trees = {k: trees[k] for k in args.trees.split(",")}
    only = args.only.split(",") if args.only else None

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, proxjax "
        f"{proxjax.__version__}; backend {jax.default_backend()}, devices "
        f"{jax.devices()}, kind {device.device_kind!r}, {os.cpu_count()} CPUs"
    )
    if gpu:
        known = f"{peak:g} GB/s" if peak else "unknown (pass --peak-gbps)"
        print(f"GPU mode: peak bandwidth {known}")
    print(
        f"{repeats} interleaved repeats per tree, samples of about "
        f"{1e3 * target_s:g} ms\n"
    )

    # The first compilation in a process pays for setting up the compiler.
    jax.jit(copy_step).lower(jnp.zeros(8), (), None).compile()
    rows = []
    with tqdm(total=repeats * len(trees), desc="repeats", leave=False) as progress:
        for label, tree in trees.items():
            progress.set_postfix_str(label)
            rows += time_tree(label, tree, repeats, target_s, progress, only)
    print(format_table(rows, peak))
    print("\nEvery candidate traced once per tree: no recompilation across steps.")


if __name__ == "__main__":
    main()
