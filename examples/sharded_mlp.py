"""The digits MLP trained data-parallel or fully sharded over every device.

The model, the data and the optimizer are those of ``mlp_digits.py`` (the
classic Keras MLP, Adam's scaling and a proximal L1 step on the kernels). This
script spreads them over a one-axis `jax.sharding.Mesh` named ``"data"`` that
holds every device of every process:

* data parallel (the default): each global batch is split across the devices;
  the params and the optimizer state are replicated, and the compiler adds the
  all-reduce that averages the gradients;
* fully sharded (``--fsdp``): the params and the optimizer state are split too,
  each array along its largest axis that the device count divides (arrays
  that no axis fits stay replicated). The forward pass gathers each kernel as
  it needs it; the optimizer update works on each device's shard alone, with
  no communication, and the proximal step's zeros land in place.

The train step is one ``jax.jit`` with the params and the optimizer state
donated and their shardings pinned, so every step keeps the layout. The
numbers are those of a single device up to the order of floating-point sums.

One machine, several devices: run it as it is, on however many GPUs or TPU
cores the machine has. On a CPU, simulate eight devices with
``--cpu-devices 8`` (or ``XLA_FLAGS=--xla_force_host_platform_device_count=8``)::

    python examples/sharded_mlp.py --cpu-devices 8 --fsdp

Several hosts: start the script once per host, with the same flags, each with
the address of host 0 (any free port on it), the number of processes and its
own index::

    # on host 0
    python examples/sharded_mlp.py --fsdp --coordinator-address HOST0:1234 \\
        --num-processes 2 --process-id 0
    # on host 1
    python examples/sharded_mlp.py --fsdp --coordinator-address HOST0:1234 \\
        --num-processes 2 --process-id 1

The environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID`` may stand in for the flags. Under Slurm or Open MPI
(``srun`` or ``mpirun`` starting one process per host, or one per GPU) and on
a Cloud TPU VM slice, pass ``--distributed`` alone: JAX finds the addresses,
the count and the index itself. On a TPU slice, start it on every worker at
once, for example with ``gcloud compute tpus tpu-vm ssh NAME --worker=all
--command="python examples/sharded_mlp.py --distributed --fsdp"``. Every
process loads the digits (they are small) and builds each global batch with
`jax.make_array_from_callback`, which asks each process only for the rows its
own devices hold: a loader for a large dataset would read just those. On
CPUs, processes exchange data through gloo, JAX's default for CPU
collectives; two processes on one machine can stand in for two hosts, with
``--coordinator-address 127.0.0.1:1234`` and ``--cpu-devices 4`` each.

Run ``python examples/sharded_mlp.py --help`` for the options.
"""

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import proxjax

if __package__:
    from examples.mlp_digits import MLP, Config, load_digits_splits, make_optimizer
else:  # run as a script: its own folder is on the path
    from mlp_digits import MLP, Config, load_digits_splits, make_optimizer

AXIS = "data"


@dataclasses.dataclass
class ShardingConfig:
    """How to spread a run over devices and processes.

    Attributes:
      fsdp: shard the params and the optimizer state as well as the batch.
      distributed: call `jax.distributed.initialize`, letting JAX detect what
        the fields below leave unset (Slurm, Open MPI, Cloud TPU). Setting any
        of them implies it.
      coordinator_address: ``host:port`` of process 0.
      num_processes: the number of processes.
      process_id: this process's index, from 0.
      initialization_timeout: seconds to wait for every process to join.
    """

    fsdp: bool = False
    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300


def initialize_distributed(sharding: ShardingConfig) -> bool:
    """Joins the processes of a run on several hosts, if it is one.

    Flags left unset fall back to ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, then to JAX's own
    detection. It must run before any JAX computation.

    Returns:
      Whether `jax.distributed.initialize` was called.
    """
    address = sharding.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = sharding.num_processes
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    process_id = sharding.process_id
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    values = (address, num_processes, process_id)
    if not sharding.distributed and all(value is None for value in values):
        return False
    given = all(value is not None for value in values)
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=num_processes,
        process_id=process_id,
        # What the flags say wins over what a cluster's environment says.
        cluster_detection_method="deactivate" if given else None,
        initialization_timeout=sharding.initialization_timeout,
    )
    return True


def make_data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (all by default).

    The axis is of the automatic kind: the compiler places the collectives
    that the shardings of the inputs and outputs call for.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),),
        (AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=devices,
    )


def fsdp_spec(shape: Sequence[int], num_shards: int) -> P:
    """Splits the largest axis that ``num_shards`` divides; else replicates."""
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] >= num_shards and shape[axis] % num_shards == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = AXIS
            return P(*spec)
    return P()


def param_shardings(params: Any, mesh: Mesh, fsdp: bool) -> Any:
    """A tree of `NamedSharding` like ``params``: split for FSDP, else copies."""
    size = mesh.shape[AXIS]
    return jax.tree.map(
        lambda p: NamedSharding(mesh, fsdp_spec(p.shape, size) if fsdp else P()),
        params,
    )


def to_global(value: Any, sharding: NamedSharding) -> jax.Array:
    """A global array laid out by ``sharding`` from a value every process has.

    Each process supplies only the pieces its own devices hold.
    """
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_on_mesh(tree: Any, mesh: Mesh) -> Any:
    """Leaves not yet on ``mesh`` (such as step counts) replicated over it."""
    replicated = NamedSharding(mesh, P())

    def place(leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return leaf
        return to_global(jax.device_get(leaf), replicated)

    return jax.tree.map(place, tree)


def weighted_cross_entropy(graphdef, params, x, y, weights):
    """The mean cross-entropy over the examples of nonzero weight."""
    logits = nnx.merge(graphdef, params)(x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(losses * weights) / jnp.sum(weights)


def make_train_step(graphdef, optimizer: optax.GradientTransformation) -> Callable:
    """``train_step(params, opt_state, x, y, weights)``, not yet jitted.

    Returns:
      A function returning ``(params, opt_state, loss)``: one gradient step on
      the batch, whose padding rows have weight zero.
    """

    def train_step(params, opt_state, x, y, weights):
        loss, grads = jax.value_and_grad(weighted_cross_entropy, argnums=1)(
            graphdef, params, x, y, weights
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def jit_sharded(
    train_step: Callable, mesh: Mesh, params_sharding: Any, state_sharding: Any
) -> Callable:
    """``train_step`` jitted with the batch split over ``"data"``.

    The params and the optimizer state keep their shardings from step to step
    and are donated, so their buffers are reused in place.
    """
    batch = NamedSharding(mesh, P(AXIS))
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(params_sharding, state_sharding, batch, batch, batch),
        out_shardings=(params_sharding, state_sharding, replicated),
        donate_argnums=(0, 1),
    )


def epoch_batches(
    n_train: int, batch_size: int, seed: int, epoch: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows and weights of each batch of an epoch, as every process has them.

    The order depends on the seed and the epoch only. The last batch is padded
    with rows of weight zero, so every batch has the same shape.
    """
    order = np.random.default_rng((seed, epoch)).permutation(n_train)
    steps = -(-n_train // batch_size)
    padded = np.zeros(steps * batch_size, np.int64)
    padded[:n_train] = order
    weights = (np.arange(steps * batch_size) < n_train).astype(np.float32)
    return [
        (padded[i : i + batch_size], weights[i : i + batch_size])
        for i in range(0, steps * batch_size, batch_size)
    ]


def bytes_per_device(tree: Any) -> int:
    """The bytes of ``tree`` held by this process's first device."""
    device = jax.local_devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            if shard.device == device:
                total += shard.data.nbytes
    return total


def train_sharded(
    config: Config,
    sharding: ShardingConfig,
    *,
    splits: dict[str, np.ndarray] | None = None,
    mesh: Mesh | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Trains the digits MLP over ``mesh`` and measures it.

    Args:
      config: the model and optimizer options of ``mlp_digits.py`` (its
        checkpoint, plot and resume options are not used here).
      sharding: data parallel or FSDP; the distributed fields are not read
        here (see :func:`initialize_distributed`).
      splits: the data, as ``load_digits_splits`` returns it.
      mesh: the mesh; :func:`make_data_mesh` over every device by default.

    Returns:
      ``(params, results)``: the trained params (global arrays) and a
      JSON-ready dict with ``test_accuracy``, ``zero_fraction``,
      ``final_loss``, ``steps``, ``steps_per_second``, ``compile_seconds``,
      ``train_seconds``, ``devices``, ``processes``, ``fsdp`` and the bytes of
      params and optimizer state on one device.

    Raises:
      ValueError: if ``config.batch_size`` is not a multiple of the mesh size.
    """
    mesh = make_data_mesh() if mesh is None else mesh
    size = mesh.shape[AXIS]
    if config.batch_size % size:
        raise ValueError(
            f"train_sharded: batch_size must be a multiple of the {size} devices "
            f"of the mesh, got {config.batch_size!r}."
        )
    if splits is None:
        splits = load_digits_splits(config.split_seed)
    n_train, in_features = splits["x_train"].shape
    steps_per_epoch = -(-n_train // config.batch_size)

    model = MLP(in_features, 10, hidden=config.hidden, rngs=nnx.Rngs(config.seed))
    graphdef, params = nnx.split(model)
    params_sharding = param_shardings(params, mesh, sharding.fsdp)
    params = jax.tree.map(to_global, jax.device_get(params), params_sharding)
    optimizer = make_optimizer(config, steps_per_epoch)
    # Eager init builds optax's own state (Adam's moments) from the sharded
    # params, so it is sharded like them; proxjax's state would be under
    # jax.jit(optimizer.init) too, optax's would land on one device.
    opt_state = place_on_mesh(optimizer.init(params), mesh)
    state_sharding = jax.tree.map(lambda leaf: leaf.sharding, opt_state)
    step = jit_sharded(
        make_train_step(graphdef, optimizer), mesh, params_sharding, state_sharding
    )

    batch = NamedSharding(mesh, P(AXIS))
    x_train, y_train = splits["x_train"], splits["y_train"]

    def global_batch(rows, weights):
        return (
            to_global(x_train[rows], batch),
            to_global(y_train[rows], batch),
            to_global(weights, batch),
        )

    t0 = time.perf_counter()
    first = global_batch(*epoch_batches(n_train, config.batch_size, config.seed, 0)[0])
    compiled = step.lower(params, opt_state, *first).compile()
    compile_seconds = time.perf_counter() - t0
    epochs: Any = range(config.epochs)
    show = config.progress and jax.process_index() == 0
    if show:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="fsdp" if sharding.fsdp else "data parallel")
    # XLA:CPU runs the devices it simulates in one process, and its collectives
    # can deadlock when several steps are queued at once (seen with jax
    # 0.10.2), so on CPUs each step is awaited before the next is sent.
    wait_each_step = size > 1 and mesh.devices.flat[0].platform == "cpu"
    loss = jnp.zeros([])
    for epoch in epochs:
        for rows, weights in epoch_batches(
            n_train, config.batch_size, config.seed, epoch
        ):
            params, opt_state, loss = compiled(
                params, opt_state, *global_batch(rows, weights)
            )
            if wait_each_step:
                loss.block_until_ready()
        if show:
            epochs.set_postfix(loss=f"{float(loss):.4f}")
    jax.block_until_ready(params)
    train_seconds = time.perf_counter() - t0
    if show:
        epochs.close()

    replicated = NamedSharding(mesh, P())

    @jax.jit
    def evaluate(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
        kernels = [
            leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if any(getattr(key, "key", None) == "kernel" for key in path)
        ]
        return accuracy, proxjax.sparsity(kernels)

    accuracy, zeros = evaluate(
        params,
        to_global(splits["x_test"], replicated),
        to_global(splits["y_test"], replicated),
    )
    steps = config.epochs * steps_per_epoch
    run_seconds = train_seconds - compile_seconds
    results = {
        "test_accuracy": float(accuracy),
        "zero_fraction": float(zeros),
        "final_loss": float(loss),
        "steps": steps,
        "steps_per_second": steps / run_seconds if steps else 0.0,
        "compile_seconds": compile_seconds,
        "train_seconds": train_seconds,
        "devices": size,
        "processes": jax.process_count(),
        "platform": jax.devices()[0].platform,
        "fsdp": sharding.fsdp,
        "params_bytes_per_device": bytes_per_device(params),
        "opt_state_bytes_per_device": bytes_per_device(opt_state),
    }
    return params, results


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = Config()
    parser.add_argument("--optimizer", default=defaults.optimizer)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--schedule", default=None)
    parser.add_argument("--l1", type=float, default=defaults.l1)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--split-seed", type=int, default=defaults.split_seed)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--fsdp", action="store_true", help="shard params and state")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-host run, detecting what the flags below leave unset",
    )
    parser.add_argument("--coordinator-address", default=None, help="host:port")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument(
        "--initialization-timeout",
        type=int,
        default=300,
        help="seconds to wait for every process to join",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="simulate this many devices on the CPU",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    sharding = ShardingConfig(
        fsdp=args.fsdp,
        distributed=args.distributed,
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=args.initialization_timeout,
    )
    initialize_distributed(sharding)
    config = Config(
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        l1=args.l1,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        split_seed=args.split_seed,
        hidden=args.hidden,
        progress=not args.no_progress,
    )
    _, results = train_sharded(config, sharding)
    if jax.process_index() == 0:
        width = max(map(len, results))
        for name, value in results.items():
            shown = f"{value:.4f}" if isinstance(value, float) else value
            print(f"{name:<{width}}  {shown}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
