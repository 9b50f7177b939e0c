"""Lasso: proxjax's FISTA against jaxopt and scikit-learn, to the same optimum.

The problem is scikit-learn's Lasso without an intercept, in float64,

    min_w (1 / 2n) ||y - X w||^2 + alpha ||w||_1,

with ``alpha = alpha_max / 20`` and ``alpha_max / 100``, where
``alpha_max = ||X^T y||_inf / n`` is the smallest alpha with ``w = 0``, on

- ``diabetes``: scikit-learn's diabetes data, 442 x 10, features
  standardised and the target centred;
- ``regression-500`` and ``regression-5000``: ``make_regression`` with 2000
  samples, 500 or 5000 features of which 50 are informative (a sparse true
  coefficient vector), noise 10;
- ``ar1-5000``: 100 x 5000 Gaussian features with AR(1) correlation
  ``rho = 0.6`` between neighbours, 50 non-zero true coefficients and noise
  at a signal-to-noise ratio of 3, generated with NumPy from a fixed seed.

The solvers:

- ``proxjax``: ``proxjax.minimize_l1_linear``, the FISTA below on working
  sets of features with a Newton step on the settled support, in one jitted
  call;
- ``proxjax FISTA``: FISTA with backtracking and gradient restart on all the
  features, ``chain(prox_linesearch(lambda eta: chain(sgd(eta),
  prox_l1(alpha, eta))), accelerate(restart="gradient"))``, run by
  ``proxjax.minimize`` in one jitted call, the solution read with
  ``proxjax.accelerated_iterate``;
- ``proxjax 1/L``: the same with the constant step ``1/L`` from
  ``proxjax.lipschitz_least_squares``, computed inside the timed call, in
  place of the line search;
- ``jaxopt LS``: jaxopt's ``ProximalGradient(fun, prox_lasso,
  acceleration=True)`` with its default backtracking line search;
- ``jaxopt 1/L``: the same with the step ``1/L`` from the same helper,
  computed inside the timed call, as ``proxjax 1/L`` gets it;
- ``sklearn``: scikit-learn's ``Lasso`` (coordinate descent with gap safe
  screening), given ``X`` in Fortran order, the layout it works in
  (otherwise each fit copies it).

The JAX solvers minimise the same function, ``0.5 * ||X w - y||^2 / n``,
from ``w = 0``. With ``--gram``, problems with ``n >= p`` are solved from
the Gram matrix instead (``proxjax`` itself is left as it is): the
whole-problem JAX solvers get ``0.5 w^T G w - b^T w`` with
``G = X^T X / n`` and ``b = X^T y / n`` computed inside the timed call, and
scikit-learn gets ``precompute=True``. (On this CPU the Gram matrix of the
2000 x 500 problem costs more than the whole solve without it.)

Protocol. ``f*`` is the smallest objective seen: scikit-learn's at
``tol=1e-10``, proxjax's at ``tol=1e-13``, and every solver's result below.
The target is ``f <= f* (1 + 1e-6)``. Each solver's own stopping tolerance
(proxjax: the relative change of the params in each FISTA run; jaxopt: the
norm of the gradient mapping; scikit-learn: its duality-gap test) is lowered
by factors of sqrt(10) from a loose start until its result reaches the
target; the time to solution is the median of runs at that tolerance (at
least ``--repeats``, and more for fast problems, until about a second of the
slowest solver is timed), made in three rounds: in each, every solver runs a
block of consecutive calls after one untimed call, the blocks in a new
random order. Only the solve is timed, up to its result being ready, not the
conversion of the result to NumPy. Compilation is timed apart (ahead of
time, ``lower().compile()``) and reported in the second table, with each
solver's tolerance and its relative gap ``f / f* - 1``. Iterations are
proxjax's and jaxopt's updates (for ``proxjax``, over all its working sets,
whose number follows) and scikit-learn's coordinate-descent epochs; the
support is the number of non-zero coefficients of the returned solutions
(several when they differ).

Run it from the repository root::

    python -m benchmarks.lasso                  # all problems, a few minutes
    python -m benchmarks.lasso --quick          # diabetes and regression-500
    python -m benchmarks.lasso --plot path.png  # also the regularisation path

Timings on a shared or busy machine are noisy; compare ratios measured in one
run, not figures across runs.
"""

import argparse
import functools
import math
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jaxopt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jaxopt.prox import prox_lasso  # noqa: E402
from sklearn.datasets import load_diabetes, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import Lasso, lasso_path  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import proxjax  # noqa: E402

TARGET_RTOL = 1e-6
MAXITER = 100_000
DIVISORS = (20, 100)
# At least this many seconds of the slowest solver are timed per problem.
REPEAT_BUDGET_S = 1.0
MAX_REPEATS = 300
# The timed repeats are split into this many blocks per solver.
ROUNDS = 3
SOLVERS = (
    "proxjax",
    "proxjax FISTA",
    "proxjax 1/L",
    "jaxopt LS",
    "jaxopt 1/L",
    "sklearn",
)
# Each solver's stopping tolerances, loosest first; the ladder stops at the
# first one whose result reaches the target.
LADDERS = {
    "proxjax": [10 ** (-k / 2) for k in range(4, 29)],
    "proxjax FISTA": [10 ** (-k / 2) for k in range(4, 29)],
    "proxjax 1/L": [10 ** (-k / 2) for k in range(4, 29)],
    "jaxopt LS": [10 ** (-k / 2) for k in range(-4, 25)],
    "jaxopt 1/L": [10 ** (-k / 2) for k in range(-4, 25)],
    "sklearn": [10 ** (-k / 2) for k in range(2, 29)],
}


class Problem(NamedTuple):
    name: str
    X: np.ndarray
    y: np.ndarray
    alpha: float
    divisor: int


class Run(NamedTuple):
    coef: np.ndarray
    iterations: int
    working_sets: int | None = None


def diabetes() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(X), y - y.mean()


def sparse_regression(p: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_regression(
        n_samples=2000, n_features=p, n_informative=50, noise=10.0, random_state=0
    )
    return X, y


def ar1_design(
    n: int = 100, p: int = 5000, rho: float = 0.6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, p))
    X = np.empty((n, p))
    X[:, 0] = noise[:, 0]
    for j in range(1, p):
        X[:, j] = rho * X[:, j - 1] + math.sqrt(1 - rho**2) * noise[:, j]
    coef = np.zeros(p)
    support = rng.choice(p, 50, replace=False)
    coef[support] = rng.standard_normal(50)
    signal = X @ coef
    sigma = np.linalg.norm(signal) / math.sqrt(n) / 3
    return X, signal + sigma * rng.standard_normal(n)


def make_problems(quick: bool) -> list[Problem]:
    designs = {"diabetes": diabetes, "regression-500": lambda: sparse_regression(500)}
    if not quick:
        designs["regression-5000"] = lambda: sparse_regression(5000)
        designs["ar1-5000"] = ar1_design
    problems = []
    for name, make in designs.items():
        X, y = make()
        alpha_max = np.abs(X.T @ y).max() / X.shape[0]
        for divisor in DIVISORS:
            problems.append(Problem(name, X, y, alpha_max / divisor, divisor))
    return problems


def objective(coef: np.ndarray, problem: Problem) -> float:
    residual = problem.y - problem.X @ coef
    return (
        0.5 * residual @ residual / len(residual) + problem.alpha * np.abs(coef).sum()
    )


def least_squares(w: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
    residual = X @ w - y
    return 0.5 * jnp.vdot(residual, residual) / y.shape[0]


def gram_least_squares(w: jax.Array, G: jax.Array, b: jax.Array) -> jax.Array:
    # The least-squares loss less its constant ||y||^2 / 2n.
    return 0.5 * jnp.vdot(w, G @ w) - jnp.vdot(b, w)


def smooth_part(
    X: jax.Array, y: jax.Array, gram: bool, lipschitz: bool
) -> tuple[Callable[..., jax.Array], tuple[jax.Array, ...], jax.Array | None]:
    """The smooth loss, its data and its Lipschitz constant (when asked)."""
    n = X.shape[0]
    if not gram:
        L = proxjax.lipschitz_least_squares(X) if lipschitz else None
        return least_squares, (X, y), L
    G = (X.T @ X) / n
    b = (y @ X) / n
    # For a symmetric PSD G, ||G||_2^2 = lambda_max(G)^2, and the Lipschitz
    # constant of the Gram form is lambda_max(G).
    L = jnp.sqrt(proxjax.lipschitz_least_squares(G, n=1)) if lipschitz else None
    return gram_least_squares, (G, b), L


def residual_loss(predictions: jax.Array, y: jax.Array) -> jax.Array:
    residual = predictions - y
    return 0.5 * jnp.vdot(residual, residual) / y.shape[0]


@jax.jit
def working_set_solve(X, y, alpha, tol, w0):
    result = proxjax.minimize_l1_linear(
        residual_loss, X, alpha, y, params=w0, tol=tol, maxiter=MAXITER
    )
    return result.params, result.iterations, result.working_sets


@functools.partial(jax.jit, static_argnames=("gram", "line_search"))
def proxjax_solve(X, y, alpha, tol, w0, *, gram, line_search=True):
    fun, data, L = smooth_part(X, y, gram, lipschitz=not line_search)

    def proximal_gradient(learning_rate):
        return optax.chain(
            optax.sgd(learning_rate), proxjax.prox_l1(alpha, learning_rate)
        )

    if line_search:
        step = proxjax.prox_linesearch(proximal_gradient)
    else:
        step = proximal_gradient(1 / L)
    opt = optax.chain(step, proxjax.accelerate(restart="gradient"))
    result = proxjax.minimize(fun, w0, opt, *data, maxiter=MAXITER, tol=tol)
    return proxjax.accelerated_iterate(result.state), result.iterations


@functools.partial(jax.jit, static_argnames=("gram", "line_search"))
def jaxopt_solve(X, y, alpha, tol, w0, *, gram, line_search):
    fun, data, L = smooth_part(X, y, gram, lipschitz=not line_search)
    solver = jaxopt.ProximalGradient(
        fun=fun,
        prox=prox_lasso,
        acceleration=True,
        stepsize=0.0 if line_search else (lambda _: 1 / L),
        tol=tol,
        maxiter=MAXITER,
    )
    params, state = solver.run(w0, alpha, *data)
    return params, state.iter_num


class Solver:
    """One solver on one problem: compiled once, then run at any tolerance."""

    def __init__(self, name: str, problem: Problem, gram: bool):
        self.name = name
        self.problem = problem
        self.gram = gram and problem.X.shape[0] >= problem.X.shape[1]
        self.compile_s = 0.0
        if name == "sklearn":
            self.X = np.asfortranarray(problem.X)
            return
        X, y = jnp.asarray(problem.X), jnp.asarray(problem.y)
        w0 = jnp.zeros(X.shape[1])
        alpha = jnp.asarray(problem.alpha)
        if name == "proxjax":
            jitted = functools.partial(working_set_solve)
        elif name.startswith("proxjax"):
            jitted = functools.partial(
                proxjax_solve, gram=self.gram, line_search=name == "proxjax FISTA"
            )
        else:
            jitted = functools.partial(
                jaxopt_solve, gram=self.gram, line_search=name == "jaxopt LS"
            )
        start = time.perf_counter()
        compiled = jitted.func.lower(
            X, y, alpha, jnp.asarray(1.0), w0, **jitted.keywords
        ).compile()
        self.compile_s = time.perf_counter() - start
        self.args = (X, y, alpha)
        self.w0 = w0
        self.compiled = compiled

    def prepare(self, tol: float) -> Callable[[], Any]:
        """A call that solves at ``tol`` and returns once the result is ready."""
        if self.name == "sklearn":
            model = Lasso(
                alpha=self.problem.alpha,
                fit_intercept=False,
                precompute=self.gram,
                tol=tol,
                max_iter=MAXITER,
            )

            def fit():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    return model.fit(self.X, self.problem.y)

            return fit
        tol_array = jnp.asarray(tol)

        def solve():
            outputs = self.compiled(*self.args, tol_array, self.w0)
            return jax.block_until_ready(outputs)

        return solve

    def result(self, output: Any) -> Run:
        if self.name == "sklearn":
            return Run(output.coef_, int(output.n_iter_))
        coef, iterations, *working_sets = output
        return Run(np.asarray(coef), int(iterations), *map(int, working_sets))

    def __call__(self, tol: float) -> Run:
        return self.result(self.prepare(tol)())


def timed(solver: Solver, tol: float) -> tuple[float, Run]:
    """The seconds the solve takes, setup and conversions left out, and its run."""
    solve = solver.prepare(tol)
    start = time.perf_counter()
    output = solve()
    elapsed = time.perf_counter() - start
    return elapsed, solver.result(output)


class Outcome(NamedTuple):
    tol: float
    run: Run
    seconds: list[float]
    compile_s: float


def solve_problem(
    problem: Problem, repeats: int, gram: bool, progress: Any
) -> tuple[float, dict[str, Outcome]]:
    solvers = {name: Solver(name, problem, gram) for name in SOLVERS}
    reference = solvers["sklearn"](1e-10)
    best = min(
        objective(reference.coef, problem),
        objective(solvers["proxjax FISTA"](1e-13).coef, problem),
    )

    chosen: dict[str, tuple[float, Run]] = {}
    slowest = 0.0
    for name, solver in solvers.items():
        progress.set_postfix_str(f"{problem.name}/{problem.divisor} {name}")
        for tol in LADDERS[name]:
            elapsed, run = timed(solver, tol)
            f = objective(run.coef, problem)
            best = min(best, f)
            chosen[name] = (tol, run)
            if f <= best * (1 + TARGET_RTOL):
                break
        slowest = max(slowest, elapsed)

    # Sub-millisecond solves need many repeats for a stable median.
    repeats = max(repeats, min(MAX_REPEATS, math.ceil(REPEAT_BUDGET_S / slowest)))
    per_block = math.ceil(repeats / ROUNDS)
    seconds: dict[str, list[float]] = {name: [] for name in SOLVERS}
    progress.set_postfix_str(f"{problem.name}/{problem.divisor} timing")
    order = list(SOLVERS)
    shuffle = random.Random(0).shuffle
    for _ in range(ROUNDS):
        # Each solver runs in a block of consecutive calls after an untimed
        # one, the blocks in a new random order each round. On two cores,
        # calls interleaved one by one disturb each other: a solver's thread
        # pool (XLA's, OpenBLAS's) still spins after it returns, and
        # scikit-learn, run right after a JAX solver, took 5.6 ms or 25 ms
        # at random on the 2000 x 500 problem.
        shuffle(order)
        for name in order:
            tol, _ = chosen[name]
            timed(solvers[name], tol)
            for _ in range(per_block):
                elapsed, run = timed(solvers[name], tol)
                seconds[name].append(elapsed)
            best = min(best, objective(run.coef, problem))
    progress.update(1)
    outcomes = {
        name: Outcome(tol, run, seconds[name], solvers[name].compile_s)
        for name, (tol, run) in chosen.items()
    }
    return best, outcomes


def format_tables(results: list[tuple[Problem, float, dict[str, Outcome]]]) -> str:
    """The time-to-solution table, then the tolerances, gaps and compile times."""
    header = (
        "| problem | n x p | alpha | support | "
        + " | ".join(f"{name} ms (iters)" for name in SOLVERS)
        + " | proxjax / jaxopt LS | proxjax / jaxopt 1/L | proxjax / sklearn |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    details = [
        "| problem | alpha | repeats | "
        + " | ".join(f"{name} tol, gap" for name in SOLVERS)
        + " | "
        + " | ".join(f"{name} compile s" for name in SOLVERS[:5])
        + " |",
    ]
    details.append("|" + "---|" * (details[0].count("|") - 1))
    for problem, best, outcomes in results:
        n, p = problem.X.shape
        median = {k: statistics.median(o.seconds) for k, o in outcomes.items()}
        gap = {
            k: objective(o.run.coef, problem) / best - 1 for k, o in outcomes.items()
        }
        supports = {int(np.count_nonzero(o.run.coef)) for o in outcomes.values()}
        support = "/".join(str(s) for s in sorted(supports))
        cells = []
        for name in SOLVERS:
            missed = "" if gap[name] <= TARGET_RTOL else " (missed)"
            run = outcomes[name].run
            iterations = f"{run.iterations}"
            if run.working_sets is not None:
                iterations += f", {run.working_sets} sets"
            cells.append(f"{1e3 * median[name]:.3g} ({iterations}){missed}")
        ratios = [
            f"{median['proxjax'] / median[name]:.2f}"
            for name in ("jaxopt LS", "jaxopt 1/L", "sklearn")
        ]
        lines.append(
            f"| {problem.name} | {n} x {p} | max/{problem.divisor} | {support} | "
            + " | ".join(cells + ratios)
            + " |"
        )
        gaps = [f"{outcomes[k].tol:.0e}, {gap[k]:.1e}" for k in SOLVERS]
        # Later problems on the same design hit the compilation cache.
        compiles = [
            f"{outcomes[k].compile_s:.2f}" if problem.divisor == DIVISORS[0] else "-"
            for k in SOLVERS[:5]
        ]
        repeats = len(outcomes["proxjax"].seconds)
        details.append(
            f"| {problem.name} | max/{problem.divisor} | {repeats} | "
            + " | ".join(gaps + compiles)
            + " |"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(details)


def plot_path(path: str) -> float:
    """Plots proxjax's regularisation path on diabetes against lasso_path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, y = diabetes()
    n = X.shape[0]
    alpha_max = np.abs(X.T @ y).max() / n
    alphas = np.geomspace(alpha_max, alpha_max / 1000, 50)
    _, sklearn_coefs, _ = lasso_path(X, y, alphas=alphas, tol=1e-12, max_iter=MAXITER)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    w = jnp.zeros(X.shape[1])
    coefs = []
    for alpha in alphas:  # warm starts, as lasso_path does
        w, *_ = working_set_solve(Xj, yj, jnp.asarray(alpha), jnp.asarray(1e-12), w)
        coefs.append(np.asarray(w))
    coefs = np.stack(coefs, axis=1)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    names = load_diabetes().feature_names
    for j in range(X.shape[1]):
        color = f"C{j}"
        axes.plot(alphas, sklearn_coefs[j], color=color, lw=1.5, label=names[j])
        axes.plot(alphas, coefs[j], "o", color=color, ms=3, mfc="none")
    axes.legend(fontsize="small", ncol=2, loc="lower left")
    axes.set_xscale("log")
    axes.invert_xaxis()
    axes.set_xlabel("alpha")
    axes.set_ylabel("coefficient")
    axes.set_title("Lasso path on diabetes: lines scikit-learn, circles proxjax")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return float(np.abs(coefs - sklearn_coefs).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small designs")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats")
    parser.add_argument(
        "--gram", action="store_true", help="solve n >= p problems from X^T X / n"
    )
    parser.add_argument("--plot", default=None, help="write the path plot here")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)

    import sklearn
    from tqdm import tqdm

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, jaxopt "
        f"{version('jaxopt')}, scikit-learn {sklearn.__version__}, proxjax "
        f"{proxjax.__version__}; backend {jax.default_backend()}, "
        f"{os.cpu_count()} CPUs; float64; target f <= f* (1 + {TARGET_RTOL:g}); "
        f"median of at least {repeats} repeats (more, up to {MAX_REPEATS}, to "
        f"time {REPEAT_BUDGET_S:g} s of the slowest solver) in {ROUNDS} rounds "
        "of blocks; "
        f"gram={args.gram}\n"
    )
    problems = make_problems(args.quick)
    results = []
    with tqdm(total=len(problems), desc="problems", leave=False) as progress:
        for problem in problems:
            best, outcomes = solve_problem(problem, repeats, args.gram, progress)
            results.append((problem, best, outcomes))
    print(format_tables(results))
    if args.plot:
        gap = plot_path(args.plot)
        print(f"\nPath plot written to {args.plot}; largest coefficient gap {gap:.1e}")


if __name__ == "__main__":
    main()
