"""proxjax: proximal steps, decayed-RMS scaling and schedules for optax."""

from proxjax import operators
from proxjax._accelerate import AccelerateState, accelerate, accelerated_iterate
from proxjax._adaptive import DiagonalProximalState, prox_adagrad, prox_adam
from proxjax._base import ProximalState
from proxjax._ftrl import FtrlState, ftrl
from proxjax._metrics import sparsity
from proxjax._optimizers import prox_decayed_rms, prox_sgd
from proxjax._prox import prox_elastic_net, prox_l1, prox_l2
from proxjax._scaling import ScaleByDecayedRmsState, scale_by_decayed_rms
from proxjax._schedules import inverse_time_decay
from proxjax._solve import (
    MinimizeResult,
    ProxLinesearchState,
    lipschitz_least_squares,
    lipschitz_logistic,
    minimize,
    prox_linesearch,
)
from proxjax._structured import prox_from_projection, prox_group_l2, prox_nonnegative
from proxjax._working_set import L1LinearResult, minimize_l1_linear

__version__ = "0.1.0"

__all__ = [
    "AccelerateState",
    "DiagonalProximalState",
    "FtrlState",
    "L1LinearResult",
    "MinimizeResult",
    "ProxLinesearchState",
    "ProximalState",
    "ScaleByDecayedRmsState",
    "accelerate",
    "accelerated_iterate",
    "ftrl",
    "inverse_time_decay",
    "lipschitz_least_squares",
    "lipschitz_logistic",
    "minimize",
    "minimize_l1_linear",
    "operators",
    "prox_adagrad",
    "prox_adam",
    "prox_decayed_rms",
    "prox_elastic_net",
    "prox_from_projection",
    "prox_group_l2",
    "prox_l1",
    "prox_l2",
    "prox_linesearch",
    "prox_nonnegative",
    "prox_sgd",
    "scale_by_decayed_rms",
    "sparsity",
]
