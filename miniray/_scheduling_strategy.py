"""Scheduling strategies (public as ``miniray.util.scheduling_strategies``).

``@remote(scheduling_strategy=...)`` / ``.options(scheduling_strategy=...)``
takes ``"DEFAULT"`` (run where the resources are, preferring the submitting
node while it has room), ``"SPREAD"`` (round-robin over the nodes that can
run it), or ``NodeAffinitySchedulingStrategy(node_id, soft)`` (that node; if
it is dead or cannot run it, anywhere when ``soft``, else the task waits).
"""
from __future__ import annotations

__all__ = ["NodeAffinitySchedulingStrategy", "strategy_wire"]


class NodeAffinitySchedulingStrategy:
    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False):
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(f"NodeAffinitySchedulingStrategy needs a node id (a hex string from "
                            f"ray.nodes() or get_runtime_context().get_node_id()), got "
                            f"{node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self):
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


def strategy_wire(strategy):
    """The plain form the node reads (spec EXTRA "strategy"), or None for
    the default; raises for anything else, naming what is accepted."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return ("SPREAD",)
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return ("NODE", strategy.node_id, strategy.soft)
    raise ValueError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a "
                     f"NodeAffinitySchedulingStrategy, got {strategy!r} (placement groups are "
                     f"not supported)")
