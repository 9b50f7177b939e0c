"""The sharding checks of ``test_sharding.py``, run where there are devices.

The test process has one CPU device and keeps it; this script runs in a
child process started with ``XLA_FLAGS=--xla_force_host_platform_device_count``
and writes what it measured as JSON (and the trained params as ``.npz``) for
the tests to assert on::

    python tests/_sharding_worker.py single OUT
    python tests/_sharding_worker.py multi OUT PORT PROCESS_ID

``single`` (eight devices) checks the optimizer state's shardings, the
collectives of the compiled update and the sharded train step against one
device. ``multi`` is one of two processes (four devices each) joined through
``jax.distributed`` on 127.0.0.1 that train the sharded example together.
"""

import inspect
import json
import os
import sys
import time
from typing import Any

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import proxjax  # noqa: E402

COLLECTIVES = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)

# The params of the state checks: every leaf has its own shape, so each state
# leaf finds its param by shape, and its own sharding over a (4, 2) mesh.
PARAM_SPECS = {
    "kernel": ((16, 6), P("data", "model")),
    "embedding": ((5, 8), P(None, "data")),
    "bias": ((6,), P("model")),
    "small": ((3,), P()),
    "scale": ((), P()),
}


def _clip(z):
    return jnp.clip(z, -1.0, 1.0)


# Arguments given to every exported transform that has them, so that each
# builds a state and takes a proximal step.
ARGUMENTS: dict[str, Any] = {
    "learning_rate": 0.1,
    "l1": 0.01,
    "l2": 0.01,
    "projection": _clip,
    "per_leaf": True,
    "step": lambda eta: optax.chain(optax.sgd(eta), proxjax.prox_l1(0.01, eta)),
}
# Options that change the state, each tried in a variant of its own.
VARIANTS: dict[str, Any] = {
    "learning_rate": optax.linear_schedule(0.1, 0.01, 10),
    "decay_rate": optax.linear_schedule(1.0, 0.5, 10),
    "momentum": 0.9,
    "metric": "diagonal",
    "accumulation": "ema",
    "accumulator_dtype": jnp.bfloat16,
    "restart": "gradient",
}
# Variants a transform does not take: its learning rate is a float it adapts.
SKIPPED = {("prox_linesearch", "learning_rate")}


def exported_transforms() -> list[str]:
    """The names in ``proxjax.__all__`` of functions that build a transform."""
    names = []
    for name in proxjax.__all__:
        value = getattr(proxjax, name)
        if inspect.isfunction(value):
            returns = inspect.signature(value).return_annotation
            if isinstance(returns, type) and issubclass(
                returns, optax.GradientTransformation
            ):
                names.append(name)
    return sorted(names)


def transform_variants(name: str) -> dict[str, optax.GradientTransformation]:
    """The transform ``name`` built with :data:`ARGUMENTS`, and each variant.

    Raises:
      KeyError: if the transform requires an argument with no value here.
    """
    factory = getattr(proxjax, name)
    parameters = inspect.signature(factory).parameters
    base = {}
    for arg, parameter in parameters.items():
        if arg in ARGUMENTS:
            base[arg] = ARGUMENTS[arg]
        elif parameter.default is inspect.Parameter.empty:
            raise KeyError(f"{name} requires {arg!r}: give it a value in ARGUMENTS")
    variants = {"plain": factory(**base)}
    for arg, value in VARIANTS.items():
        if arg in parameters and (name, arg) not in SKIPPED:
            variants[arg] = factory(**{**base, arg: value})
    return variants


def sharded_params(mesh) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    return {
        name: jax.device_put(
            rng.normal(size=shape).astype(np.float32), NamedSharding(mesh, spec)
        )
        for name, (shape, spec) in PARAM_SPECS.items()
    }


def state_mismatches(state: Any, params: dict[str, jax.Array]) -> list[str]:
    """The state leaves not laid out like their params, described.

    A scalar leaf (a step count) must be on one device or replicated; any
    other leaf must have the sharding of the param with its shape.
    """
    by_shape = {p.shape: p for p in params.values()}
    problems = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = jax.tree_util.keystr(path)
        if leaf.ndim == 0:
            if not leaf.sharding.is_fully_replicated:
                problems.append(f"{where}: scalar sharded as {leaf.sharding}")
            continue
        param = by_shape.get(leaf.shape)
        if param is None:
            problems.append(f"{where}: shape {leaf.shape} matches no param")
        elif not leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim):
            problems.append(
                f"{where}: {leaf.sharding} where its param has {param.sharding}"
            )
    return problems


def collectives(compiled_text: str) -> list[str]:
    """The collective operations that a compiled module's text contains."""
    return [op for op in COLLECTIVES if op in compiled_text]


def check_state(
    opt: optax.GradientTransformation, auto_mesh, explicit_mesh
) -> dict[str, Any]:
    """Lays out ``opt``'s state four ways and compiles one sharded update."""
    params = sharded_params(auto_mesh)
    eager = opt.init(params)
    jitted = jax.jit(opt.init)(params)

    def loss(params):
        return sum(0.5 * jnp.sum(p * p) for p in jax.tree.leaves(params))

    def step(grads, state, params):
        # A line search reads the loss; other transforms take no extra args.
        extra = {}
        if isinstance(opt, optax.GradientTransformationExtraArgs):
            extra = {"value": loss(params), "value_fn": loss}
        updates, state = opt.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    grads = jax.grad(loss)(params)
    compiled = jax.jit(step).lower(grads, jitted, params).compile()
    new_params, new_state = compiled(grads, jitted, params)
    record = {
        "eager": state_mismatches(eager, params),
        "jit": state_mismatches(jitted, params),
        "after_update": state_mismatches(new_state, params)
        + state_mismatches(new_params, params),
        "collectives": collectives(compiled.as_text()),
    }
    # A mesh of explicit axes (jax.make_mesh's default) carries the sharding
    # in the traced types.
    explicit_params = sharded_params(explicit_mesh)
    with jax.set_mesh(explicit_mesh):
        record["explicit_eager"] = state_mismatches(
            opt.init(explicit_params), explicit_params
        )
        record["explicit_jit"] = state_mismatches(
            jax.jit(opt.init)(explicit_params), explicit_params
        )
    return record


def check_transforms(report: dict[str, Any]) -> None:
    devices = np.array(jax.devices()[:8]).reshape(4, 2)
    auto_mesh = jax.sharding.Mesh(devices, ("data", "model"))
    explicit_mesh = jax.make_mesh(
        (4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Explicit,) * 2
    )
    transforms: dict[str, Any] = {}
    for name in exported_transforms():
        try:
            variants = transform_variants(name)
        except KeyError as error:
            transforms[name] = {"error": str(error)}
            continue
        transforms[name] = {
            label: check_state(opt, auto_mesh, explicit_mesh)
            for label, opt in variants.items()
        }
    report["transforms"] = transforms

    # Controls: zeros built from shapes alone, as optax builds its state, and
    # optax's Adam. The check must see the first fail under jit.
    shape_zeros = optax.GradientTransformation(
        lambda params: jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params),
        optax.identity().update,
    )
    params = sharded_params(auto_mesh)
    report["control_shape_zeros_jit"] = state_mismatches(
        jax.jit(shape_zeros.init)(params), params
    )
    with jax.numpy_dtype_promotion("standard"):
        adam_state = jax.jit(optax.adam(0.1).init)(params)
    report["optax_adam_jit"] = state_mismatches(adam_state, params)


def run_steps(step, params, opt_state, batches):
    for x, y, w in batches:
        params, opt_state, loss = step(params, opt_state, x, y, w)
        # As in the example: XLA:CPU's collectives can deadlock with several
        # multi-device steps queued.
        loss.block_until_ready()
    return jax.device_get(params)


def max_difference(a: Any, b: Any) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def check_train_step(report: dict[str, Any]) -> None:
    """The sharded train step of the example against the same step on one device."""
    from flax import nnx

    from examples import sharded_mlp as ex

    config = ex.Config(learning_rate=0.01, l1=0.3, batch_size=32, epochs=1)
    splits = ex.load_digits_splits(config.split_seed)
    n_train, in_features = splits["x_train"].shape
    model = ex.MLP(in_features, 10, hidden=config.hidden, rngs=nnx.Rngs(config.seed))
    graphdef, initial = nnx.split(model)
    initial = jax.device_get(initial)
    rows = ex.epoch_batches(n_train, config.batch_size, config.seed, 0)[:6]
    host_batches = [(splits["x_train"][r], splits["y_train"][r], w) for r, w in rows]
    optimizers = {
        "example_chain": ex.make_optimizer(config, -(-n_train // config.batch_size)),
        "prox_decayed_rms": proxjax.prox_decayed_rms(
            0.05, l1=0.01, momentum=0.9, accumulation="ema"
        ),
    }
    mesh = ex.make_data_mesh(jax.devices()[:8])
    results: dict[str, Any] = {}
    for opt_name, optimizer in optimizers.items():
        train_step = ex.make_train_step(graphdef, optimizer)
        one = jax.devices()[0]
        params = jax.device_put(initial, one)
        single = run_steps(
            jax.jit(train_step),
            params,
            optimizer.init(params),
            [jax.device_put(b, one) for b in host_batches],
        )
        moved = max_difference(single, initial)
        zeros = float(proxjax.sparsity(single))
        for fsdp in (False, True):
            sharding = ex.param_shardings(initial, mesh, fsdp)
            params = jax.tree.map(ex.to_global, initial, sharding)
            opt_state = ex.place_on_mesh(optimizer.init(params), mesh)
            state_sharding = jax.tree.map(lambda leaf: leaf.sharding, opt_state)
            step = ex.jit_sharded(train_step, mesh, sharding, state_sharding)
            batch = NamedSharding(mesh, P("data"))
            global_batches = [
                tuple(ex.to_global(a, batch) for a in b) for b in host_batches
            ]
            layout = "fsdp" if fsdp else "data_parallel"

            def update(grads, state, params, optimizer=optimizer):
                updates, state = optimizer.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            compiled = jax.jit(update).lower(params, opt_state, params).compile()
            entry = {
                "update_collectives": collectives(compiled.as_text()),
                "state_mismatches": state_mismatches_by_path(opt_state, params),
                "max_difference": max_difference(
                    run_steps(step, params, opt_state, global_batches), single
                ),
                "moved": moved,
                "zero_fraction": zeros,
            }
            results[f"{opt_name}/{layout}"] = entry
    report["train_step"] = results


def state_mismatches_by_path(state: Any, params: Any) -> list[str]:
    """As :func:`state_mismatches` for the model's params (shapes may repeat)."""
    shardings = {}
    for leaf in jax.tree.leaves(params):
        shardings.setdefault(leaf.shape, []).append(leaf.sharding)
    problems = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if leaf.ndim == 0:
            if not leaf.sharding.is_fully_replicated:
                problems.append(jax.tree_util.keystr(path))
        elif not any(
            leaf.sharding.is_equivalent_to(s, leaf.ndim)
            for s in shardings.get(leaf.shape, [])
        ):
            problems.append(jax.tree_util.keystr(path))
    return problems


def example_config():
    from examples import sharded_mlp as ex

    return ex.Config(
        learning_rate=0.01, l1=0.3, batch_size=128, epochs=1, progress=False
    )


def train_example(out: str, name: str, mesh, fsdp: bool) -> dict[str, Any]:
    """Trains the example for an epoch; saves its params from process 0."""
    from jax.experimental import multihost_utils

    from examples import sharded_mlp as ex

    params, results = ex.train_sharded(
        example_config(), ex.ShardingConfig(fsdp=fsdp), mesh=mesh
    )
    leaves = jax.tree.leaves(multihost_utils.process_allgather(params, tiled=True))
    if jax.process_index() == 0:
        np.savez(os.path.join(out, f"{name}.npz"), *leaves)
    return results


def single(out: str) -> None:
    from examples import sharded_mlp as ex

    timings = {}
    report: dict[str, Any] = {"devices": jax.device_count()}
    start = time.perf_counter()
    check_transforms(report)
    timings["transforms"] = time.perf_counter() - start
    start = time.perf_counter()
    check_train_step(report)
    timings["train_step"] = time.perf_counter() - start
    start = time.perf_counter()
    report["example"] = {
        "one_device": train_example(
            out, "one_device", ex.make_data_mesh(jax.devices()[:1]), fsdp=False
        ),
        "fsdp": train_example(out, "fsdp", ex.make_data_mesh(), fsdp=True),
    }
    timings["example"] = time.perf_counter() - start
    report["seconds"] = timings
    with open(os.path.join(out, "single.json"), "w") as f:
        json.dump(report, f, indent=1)


def _gloo_on_loopback() -> None:
    # Gloo binds to the address the machine's hostname resolves to, which need
    # not be a loopback one; both processes live here, so keep it on
    # 127.0.0.1. Without this private hook the default is kept.
    from jax._src import xla_bridge

    make = getattr(xla_bridge._jax, "make_gloo_tcp_collectives", None)
    if make is not None:
        xla_bridge._jax.make_gloo_tcp_collectives = lambda distributed_client: make(
            distributed_client=distributed_client, hostname="127.0.0.1"
        )


def multi(out: str, port: int, process_id: int) -> None:
    from examples import sharded_mlp as ex

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _gloo_on_loopback()
    ex.initialize_distributed(
        ex.ShardingConfig(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=process_id,
            initialization_timeout=30,
        )
    )
    results = train_example(out, "two_processes", ex.make_data_mesh(), fsdp=True)
    if process_id == 0:
        results["local_devices"] = jax.local_device_count()
        with open(os.path.join(out, "multi.json"), "w") as f:
            json.dump(results, f, indent=1)
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "single":
        single(out)
    elif mode == "multi":
        multi(out, int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
