"""Validation of ``@remote(...)`` / ``.options(...)`` arguments.

Ray's option names are accepted; an unknown name is a ValueError that names
it and lists the valid ones.  Options Ray has and miniray does not implement
(placement groups, runtime_env...) are accepted so Ray programs run, with a
warning the first time each is used: never silently.

Resource amounts follow Ray's rules: any non-negative number with a
precision of 0.0001 at most; above 1, GPUs (a unit-instance resource: each
one is a device id) must be whole, while CPUs, memory and custom resources
may be fractional (``resources={"accel": 1.5}``).

The validators also normalize what travels to the node to builtins (an
IntEnum count becomes an int, a StrEnum name a str): the node decodes
messages with an unpickler that refuses every class, so a user's subclass of
int or str in a spec would make the whole message undecodable there.
"""
from __future__ import annotations

import difflib
import numbers

from ._scheduler import shape_of

__all__ = ["validate_task_options", "validate_actor_options", "validate_method_options",
           "task_shape", "actor_shape", "plain_str", "REMOTE_ARGS_ERROR", "RESOURCE_PRECISION"]

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


RESOURCE_PRECISION = 0.0001   # Ray's smallest unit of a resource

# Ray's text for @remote used with parentheses but no option, or with
# positional arguments.
REMOTE_ARGS_ERROR = (
    "The @ray.remote decorator must be applied either with no arguments and no "
    "parentheses, for example '@ray.remote', or it must be applied using some of "
    f"the arguments in the list {sorted(k for k in TASK_OPTIONS | ACTOR_OPTIONS if k[0] != '_')}, "
    "for example '@ray.remote(num_returns=2, resources={\"CustomResource\": 1})'.")


def _check_names(opts, valid, what):
    for key in opts:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"Invalid option keyword '{key}' for {what}.{hint} Valid ones "
                             f"are {sorted(k for k in valid if not k.startswith('_'))}.")


def _check_amount(name, value, *, allow_none=True, whole_above_one=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"The type of keyword '{name}' must be a number (int or float), "
                        f"but received type {type(value)}: {value!r}")
    if value < 0:
        raise ValueError(f"The quantity of resource {name} cannot be negative, got {value!r}")
    if value != 0 and value < RESOURCE_PRECISION:
        raise ValueError(f"The precision of the fractional quantity of resource {name} cannot "
                         f"go beyond {RESOURCE_PRECISION}, got {value!r}")
    if whole_above_one and value > 1 and value != int(value):
        raise ValueError(f"{name} above 1 must be a whole number, got {value!r}: each unit is "
                         f"one device. Ask for a fraction of one (e.g. 0.5) to share a "
                         f"device, or a whole number of them.")


def _check_common(opts):
    _check_amount("num_cpus", opts.get("num_cpus"))
    _check_amount("num_gpus", opts.get("num_gpus"), whole_above_one=True)
    _check_amount("memory", opts.get("memory"))
    res = opts.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError(f"resources must be a dict of name -> amount, got {type(res).__name__}")
        for k, v in res.items():
            if not isinstance(k, str):
                raise TypeError(f"resource names must be strings, got {k!r}")
            if k in ("CPU", "GPU"):
                raise ValueError(f"Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' "
                                 f"and 'GPU' in 'resources' keyword (got resources={{'{k}': "
                                 f"...}})")
            _check_amount(k, v, allow_none=False)


def plain_str(value, what, *, none_ok=False):
    """``value`` as an exact ``str`` (a subclass is copied to a plain str);
    a TypeError that names ``what`` if it is not a str at all."""
    if value is None and none_ok:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str{' or None' if none_ok else ''}, got "
                        f"{type(value).__name__}: {value!r}")
    return value if type(value) is str else str.__str__(value)


def _check_int(opts, key, low):
    """An int option >= ``low``, stored back as a plain int."""
    v = opts.get(key)
    if v is not None:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{key} must be an int >= {low}, got {v!r}")
        opts[key] = int(v)


def _check_num_returns(opts):
    n = opts.get("num_returns")
    if n is not None:
        if n in ("streaming", "dynamic"):
            raise ValueError(f"num_returns='{n}' (generators) is not supported by miniray yet; "
                             f"return a list instead")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_returns must be a non-negative int, got {n!r}")
        opts["num_returns"] = int(n)


def _check_retry_exceptions(opts):
    re = opts.get("retry_exceptions")
    if re is not None and not isinstance(re, bool):
        if not isinstance(re, (list, tuple)) or not all(
                isinstance(c, type) and issubclass(c, BaseException) for c in re):
            raise TypeError("retry_exceptions must be a bool or a list of exception classes, "
                            f"got {re!r}")


# Accepted, not implemented: what the user is told (once per option name).
IGNORED = {
    "runtime_env": "runtime environments are not implemented: the task runs in the "
                   "driver's environment",
    "placement_group": "placement groups are not implemented: the task is placed by its "
                       "resources alone",
    "placement_group_bundle_index": "placement groups are not implemented",
    "placement_group_capture_child_tasks": "placement groups are not implemented",
    "accelerator_type": "accelerator types are not tracked: use resources={...} to steer "
                        "placement",
    "label_selector": "node labels are not implemented",
    "_labels": "node labels are not implemented",
    "max_pending_calls": "the number of pending actor calls is not bounded",
    "allow_out_of_order_execution": "calls run in Ray's default order",
    "object_store_memory": "a per-task or per-actor store quota is not enforced",
    "_generator_backpressure_num_objects": "generators are not implemented",
}
_warned: set = set()


def _warn_ignored(opts) -> None:
    for key in opts.keys() & IGNORED.keys():
        if opts[key] is not None and key not in _warned:
            _warned.add(key)
            import warnings
            warnings.warn(f"miniray ignores the option {key}={opts[key]!r}: {IGNORED[key]}.",
                          RuntimeWarning, stacklevel=4)


def validate_task_options(opts: dict) -> dict:
    _check_names(opts, TASK_OPTIONS, "remote functions")
    _warn_ignored(opts)
    _check_common(opts)
    _check_num_returns(opts)
    _check_int(opts, "max_retries", -1)
    _check_retry_exceptions(opts)
    return opts


def validate_actor_options(opts: dict) -> dict:
    _check_names(opts, ACTOR_OPTIONS, "actors")
    _warn_ignored(opts)
    _check_common(opts)
    lifetime = opts.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached', got {lifetime!r}")
    if lifetime is not None:
        opts["lifetime"] = plain_str(lifetime, "lifetime")
    _check_int(opts, "max_restarts", -1)
    _check_int(opts, "max_task_retries", -1)
    _check_int(opts, "max_concurrency", 1)
    if "name" in opts:
        name = opts["name"] = plain_str(opts["name"], "the actor name (name=)", none_ok=True)
        if name == "":
            raise ValueError("the actor name (name=) must be a non-empty string, got ''")
    if "namespace" in opts:
        opts["namespace"] = plain_str(opts["namespace"], "namespace", none_ok=True)
    if "get_if_exists" in opts:
        opts["get_if_exists"] = bool(opts["get_if_exists"])
        if opts["get_if_exists"] and not opts.get("name"):
            raise ValueError("get_if_exists=True needs a name: "
                             ".options(name=..., get_if_exists=True)")
    return opts


def validate_method_options(opts: dict) -> dict:
    _check_names(opts, METHOD_OPTIONS, "actor methods")
    _check_num_returns(opts)
    _check_int(opts, "max_task_retries", -1)
    _check_retry_exceptions(opts)
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
        req[plain_str(k, "a resource name")] = v
    return shape_of(req)


def task_shape(opts) -> tuple:
    return _shape(opts, 1)


def actor_shape(opts) -> tuple:
    # Ray: an actor needs 1 CPU to be placed by default but holds none while
    # it lives; one that asks for CPUs holds them.
    return _shape(opts, 0)
