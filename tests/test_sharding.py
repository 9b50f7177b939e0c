"""Sharded training: state laid out like the params, no gathers, one-device numbers.

This process keeps its single CPU device. The checks run in child processes
(``_sharding_worker.py``) with eight simulated CPU devices, and in two
processes of four devices joined through ``jax.distributed`` on 127.0.0.1;
all of them start at once and the tests read what they wrote.
"""

import json
import os
import socket
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _sharding_worker import exported_transforms
from jax.sharding import PartitionSpec as P

from examples import sharded_mlp
from proxjax._base import full_like_params, place_state_like_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_sharding_worker.py")
# A bound on the whole batch of child processes, so that a run that cannot
# join (a blocked port, a peer that died) fails instead of hanging.
DEADLINE_SECONDS = 300
# The sums over the batch (and over devices) run in another order once the
# batch is split, which moves a float32 param by a few ulps per step.
TOLERANCE = 1e-6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
        **extra,
    )
    return env


def _tail(path: str, lines: int = 40) -> str:
    with open(path) as f:
        return "".join(f.readlines()[-lines:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the eight-device worker and the two-process run side by side."""
    out = str(tmp_path_factory.mktemp("sharding"))
    port = _free_port()
    commands = {
        "single": ([WORKER, "single", out], _environment(8)),
        **{
            f"multi{i}": (
                [WORKER, "multi", out, str(port), str(i)],
                _environment(4, JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}"),
            )
            for i in (0, 1)
        },
    }
    processes, logs = {}, {}
    for name, (args, env) in commands.items():
        logs[name] = os.path.join(out, f"{name}.log")
        with open(logs[name], "w") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
    deadline = time.monotonic() + DEADLINE_SECONDS
    codes = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            codes[name] = f"killed after {DEADLINE_SECONDS} s"
    return out, codes, logs


def _result(runs, names, file):
    out, codes, logs = runs
    for name in names:
        if codes[name] != 0:
            pytest.fail(f"{name} worker ended with {codes[name]}:\n{_tail(logs[name])}")
    with open(os.path.join(out, file)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def single(runs):
    return _result(runs, ["single"], "single.json")


@pytest.fixture(scope="module")
def multi(runs):
    return _result(runs, ["multi0", "multi1"], "multi.json")


def _params(runs, name):
    with np.load(os.path.join(runs[0], f"{name}.npz")) as data:
        return [data[key] for key in sorted(data.files, key=lambda k: int(k[4:]))]


def _max_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def test_this_process_keeps_one_cpu_device():
    assert len(jax.devices("cpu")) == 1


@pytest.mark.parametrize("name", exported_transforms())
def test_state_is_sharded_like_params(single, name):
    record = single["transforms"][name]
    assert "error" not in record, record.get("error")
    for variant, checks in record.items():
        for layout in ("eager", "jit", "explicit_eager", "explicit_jit"):
            assert checks[layout] == [], (variant, layout)
        # The update keeps the layout: the next step sees the same shardings.
        assert checks["after_update"] == [], variant


@pytest.mark.parametrize("name", exported_transforms())
def test_compiled_update_has_no_all_gather(single, name):
    for variant, checks in single["transforms"][name].items():
        assert "all-gather" not in checks["collectives"], variant


def test_state_check_sees_state_built_from_shapes(single):
    # Zeros of a shape, as optax builds its moments, lose the layout under
    # jax.jit: the check must report every non-scalar leaf.
    assert len(single["control_shape_zeros_jit"]) == 4


@pytest.mark.parametrize(
    "run",
    [
        "example_chain/data_parallel",
        "example_chain/fsdp",
        "prox_decayed_rms/data_parallel",
        "prox_decayed_rms/fsdp",
    ],
)
def test_sharded_train_step_matches_one_device(single, run):
    entry = single["train_step"][run]
    assert entry["state_mismatches"] == []
    assert "all-gather" not in entry["update_collectives"]
    assert entry["max_difference"] <= TOLERANCE
    # The comparison means something: the steps moved the params far more
    # than the tolerance and the proximal step left exact zeros.
    assert entry["moved"] > 1000 * TOLERANCE
    assert entry["zero_fraction"] > 0


def test_sharded_example_matches_one_device(runs, single):
    one, fsdp = single["example"]["one_device"], single["example"]["fsdp"]
    assert (one["devices"], fsdp["devices"]) == (1, 8)
    assert _max_difference(_params(runs, "fsdp"), _params(runs, "one_device")) <= (
        TOLERANCE
    )
    # Params a few ulps apart may still split a near tie between two classes
    # differently: allow one of the 360 test images.
    assert fsdp["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1 / 360)


def test_fsdp_splits_the_params_over_the_devices(runs, single):
    expected = sum(
        p.nbytes if sharded_mlp.fsdp_spec(p.shape, 8) == P() else p.nbytes // 8
        for p in _params(runs, "one_device")
    )
    example = single["example"]
    assert example["fsdp"]["params_bytes_per_device"] == expected
    assert example["one_device"]["params_bytes_per_device"] == sum(
        p.nbytes for p in _params(runs, "one_device")
    )


def test_two_processes_match_one_process(runs, single, multi):
    assert (multi["processes"], multi["devices"], multi["local_devices"]) == (2, 8, 4)
    two = _params(runs, "two_processes")
    assert _max_difference(two, _params(runs, "one_device")) <= TOLERANCE
    assert _max_difference(two, _params(runs, "fsdp")) <= TOLERANCE
    assert multi["final_loss"] == pytest.approx(
        single["example"]["fsdp"]["final_loss"], abs=TOLERANCE
    )


def test_command_line_runs_on_one_device(capsys):
    results = sharded_mlp.main(
        ["--epochs", "1", "--batch-size", "128", "--fsdp", "--no-progress"]
    )
    assert results["devices"] == 1 and results["steps"] == 9
    assert "test_accuracy" in capsys.readouterr().out


def test_full_like_params_fills_exactly_whatever_the_params_hold():
    params = {"w": jnp.array([-1.0, jnp.inf, jnp.nan]), "b": jnp.ones(2, jnp.bfloat16)}
    zeros = full_like_params(params)
    assert zeros["b"].dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(zeros):
        np.testing.assert_array_equal(leaf, 0.0)
        assert not np.any(np.signbit(np.asarray(leaf, np.float32)))
    filled = full_like_params(params, 0.1, jnp.float32)
    np.testing.assert_array_equal(filled["b"], np.full(2, 0.1, np.float32))


def test_place_state_like_params_keeps_the_state():
    inner = optax.GradientTransformationExtraArgs(
        lambda params: (jax.tree.map(lambda p: 2 * p, params), jnp.zeros([])),
        optax.identity().update,
    )
    params = {"w": jnp.array([1.0, -3.0]), "b": jnp.array(0.5)}
    placed = place_state_like_params(inner)
    assert isinstance(placed, optax.GradientTransformationExtraArgs)
    expected = inner.init(params)
    for state in (placed.init(params), jax.jit(placed.init)(params)):
        chex.assert_trees_all_equal(state, expected, strict=True)
