"""proxjax: proximal steps, decayed-RMS scaling and schedules for optax."""

from proxjax import operators
from proxjax._adaptive import DiagonalProximalState, prox_adagrad, prox_adam
from proxjax._base import ProximalState
from proxjax._ftrl import FtrlState, ftrl
from proxjax._metrics import sparsity
from proxjax._optimizers import prox_decayed_rms, prox_sgd
from proxjax._prox import prox_elastic_net, prox_l1, prox_l2
from proxjax._scaling import ScaleByDecayedRmsState, scale_by_decayed_rms
from proxjax._schedules import inverse_time_decay

__version__ = "0.1.0"

__all__ = [
    "DiagonalProximalState",
    "FtrlState",
    "ProximalState",
    "ScaleByDecayedRmsState",
    "ftrl",
    "inverse_time_decay",
    "operators",
    "prox_adagrad",
    "prox_adam",
    "prox_decayed_rms",
    "prox_elastic_net",
    "prox_l1",
    "prox_l2",
    "prox_sgd",
    "scale_by_decayed_rms",
    "sparsity",
]
