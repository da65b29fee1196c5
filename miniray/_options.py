"""Validation of ``@remote(...)`` / ``.options(...)`` arguments.

Ray's option names are accepted; an unknown name is a ValueError that names
it and lists the valid ones.  Options Ray has but a single node cannot use
(placement, runtime_env...) are accepted and ignored, so Ray programs run.
"""
from __future__ import annotations

import difflib
import numbers

from ._scheduler import shape_of

__all__ = ["validate_task_options", "validate_actor_options", "task_shape", "actor_shape"]

_COMMON = {"num_cpus", "num_gpus", "resources", "memory", "accelerator_type", "name",
           "scheduling_strategy", "runtime_env", "placement_group",
           "placement_group_bundle_index", "placement_group_capture_child_tasks",
           "label_selector", "_metadata", "enable_task_events", "_labels",
           "object_store_memory"}
TASK_OPTIONS = _COMMON | {"num_returns", "max_retries", "retry_exceptions", "max_calls",
                          "_generator_backpressure_num_objects"}
ACTOR_OPTIONS = _COMMON | {"namespace", "lifetime", "get_if_exists", "max_restarts",
                           "max_task_retries", "max_concurrency", "max_pending_calls",
                           "concurrency_groups", "allow_out_of_order_execution"}
METHOD_OPTIONS = {"num_returns", "max_task_retries", "retry_exceptions", "name",
                  "concurrency_group", "enable_task_events", "_generator_backpressure_num_objects"}


def _check_names(opts, valid, what):
    for key in opts:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"invalid option '{key}' for {what}.{hint} Valid options: "
                             f"{', '.join(sorted(k for k in valid if not k.startswith('_')))}")


def _check_amount(name, value, *, allow_none=True):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if value > 1 and value != int(value):
        raise ValueError(f"{name} above 1 must be a whole number, got {value!r}")


def _check_common(opts):
    _check_amount("num_cpus", opts.get("num_cpus"))
    _check_amount("num_gpus", opts.get("num_gpus"))
    res = opts.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError(f"resources must be a dict of name -> amount, got {type(res).__name__}")
        for k, v in res.items():
            if not isinstance(k, str):
                raise TypeError(f"resource names must be strings, got {k!r}")
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus instead of resources={{'{k}': ...}}")
            _check_amount(f"resources['{k}']", v, allow_none=False)


def _check_num_returns(opts):
    n = opts.get("num_returns")
    if n is not None:
        if n in ("streaming", "dynamic"):
            raise ValueError(f"num_returns='{n}' (generators) is not supported by miniray yet; "
                             f"return a list instead")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_returns must be a non-negative int, got {n!r}")


def validate_task_options(opts: dict) -> dict:
    _check_names(opts, TASK_OPTIONS, "a remote function")
    _check_common(opts)
    _check_num_returns(opts)
    mr = opts.get("max_retries")
    if mr is not None and (isinstance(mr, bool) or not isinstance(mr, int) or mr < -1):
        raise ValueError(f"max_retries must be an int >= -1, got {mr!r}")
    re = opts.get("retry_exceptions")
    if re is not None and not isinstance(re, bool):
        if not isinstance(re, (list, tuple)) or not all(
                isinstance(c, type) and issubclass(c, BaseException) for c in re):
            raise TypeError("retry_exceptions must be a bool or a list of exception classes")
    return opts


def validate_actor_options(opts: dict) -> dict:
    _check_names(opts, ACTOR_OPTIONS, "an actor class")
    _check_common(opts)
    lifetime = opts.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {lifetime!r}")
    for key in ("max_restarts", "max_task_retries"):
        v = opts.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < -1):
            raise ValueError(f"{key} must be an int >= -1, got {v!r}")
    mc = opts.get("max_concurrency")
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, got {mc!r}")
    name = opts.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"actor name must be a non-empty string, got {name!r}")
    if opts.get("get_if_exists") and not name:
        raise ValueError("get_if_exists=True needs a name: .options(name=..., get_if_exists=True)")
    return opts


def validate_method_options(opts: dict) -> dict:
    _check_names(opts, METHOD_OPTIONS, "an actor method")
    _check_num_returns(opts)
    return opts


def _shape(opts, default_cpus):
    req = {}
    cpus = opts.get("num_cpus")
    req["CPU"] = default_cpus if cpus is None else cpus
    if opts.get("num_gpus"):
        req["GPU"] = opts["num_gpus"]
    if opts.get("memory"):
        req["memory"] = opts["memory"]
    for k, v in (opts.get("resources") or {}).items():
        req[k] = v
    return shape_of(req)


def task_shape(opts) -> tuple:
    return _shape(opts, 1)


def actor_shape(opts) -> tuple:
    # Ray: an actor needs 1 CPU to be placed by default but holds none while
    # it lives; one that asks for CPUs holds them.
    return _shape(opts, 0)
