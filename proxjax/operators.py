"""Proximal operators and projections as pure functions of an array."""

from proxjax._operators import elastic_net, ridge, soft_threshold
from proxjax._structured import (
    group_l2,
    project_box,
    project_l1_ball,
    project_linf_ball,
    project_nonnegative,
)

__all__ = [
    "elastic_net",
    "group_l2",
    "project_box",
    "project_l1_ball",
    "project_linf_ball",
    "project_nonnegative",
    "ridge",
    "soft_threshold",
]
