"""Proximal operators and projections as pure functions of an array."""

from proxjax._operators import elastic_net, ridge, soft_threshold

__all__ = ["elastic_net", "ridge", "soft_threshold"]
