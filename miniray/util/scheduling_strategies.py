"""Scheduling strategies, as Ray's ``ray.util.scheduling_strategies``
(defined in ``miniray._scheduling_strategy``, below the API modules)."""
from .._scheduling_strategy import NodeAffinitySchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy"]
