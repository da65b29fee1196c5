"""What fills the object store, with Ray's names: ``list_objects``,
``get_objects``, ``object_store_stats`` and ``memory_summary`` (the text
``miniray memory`` prints).

Every node answers for its own store (``_store_report``); the node this
process is connected to asks the others over its peer links and returns
all the parts at once, so the answer covers the whole cluster.  A node that
does not answer within 5 s is left out and named (``list_objects`` raises
``RayStateApiException`` then, unless ``raise_on_missing_output=False``).

One row per reason an object is alive, as in Ray (``reference_type``):

    LOCAL_REFERENCE       a process holds an ObjectRef to it (``type``: DRIVER,
                          WORKER, or NODE for another node's lease on it)
    ACTOR_HANDLE          the same, for an actor's handle
    PINNED_IN_MEMORY      a zero-copy view of it (a numpy array from get) is alive
                          in that process
    USED_BY_PENDING_TASK  a task that takes it as an argument has not finished
                          (``pid``: the process that submitted the task)
    CAPTURED_IN_OBJECT    another object's value holds a ref to it
                          (``contained_in``)
    PINNED_BY_NODE        kept by the node itself: a detached actor, an actor's
                          constructor arguments kept for restarts, lineage
    UNKNOWN_STATUS        nothing above (e.g. only a get waits for it)

A view of an object this process already holds a ref to counts as that ref
(LOCAL_REFERENCE) until both are gone: the node sees one lease for the two.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings

from .. import _runtime
from .._call_site import ENV_VARS as CALL_SITE_ENV
from .._protocol import M, Q as Query

__all__ = ["RayStateApiException", "list_objects", "get_objects", "object_store_stats",
           "memory_summary"]


class RayStateApiException(Exception):
    """A state query failed, or nodes were missing from its answer."""


# -- asking the node -----------------------------------------------------------------------------

@contextlib.contextmanager
def _client(address):
    """This process's connection, or (no runtime here) a short one to the
    node at ``address`` (default: $RAY_ADDRESS, else this host's node from
    `miniray start`)."""
    rt = _runtime.current_or_none()
    if rt is not None:
        yield rt.client
        return
    from .._core import CoreClient
    address = address or os.environ.get("RAY_ADDRESS") or os.environ.get("MINIRAY_CLUSTER") \
        or "auto"
    addr, token = _runtime.token_for(address)
    client = CoreClient(addr, token, "driver")
    try:
        yield client
    finally:
        client.close()


def _ask(what, arg, address, timeout) -> dict:
    with _client(address) as client:
        reply = client.request(lambda rid: (M.QUERY, rid, what, arg), timeout)
    if reply is None:
        raise RayStateApiException(f"the node did not answer within {timeout} s")
    ok, payload = reply
    if not ok:
        raise RayStateApiException(f"the node could not answer: {payload}") from (
            payload if isinstance(payload, BaseException) else None)
    return payload


def _missing_text(missing) -> str:
    return "; ".join(f"node {node_id}: {why}" for node_id, why in missing)


# -- rows -----------------------------------------------------------------------------------------

def _process_text(role, pid, detail) -> str:
    if role == "node":
        return f"node {str(detail)[:12]}"
    text = role or "?"
    return f"{text}: task {detail}" if detail else text


def object_rows(part) -> list:
    """Ray-style rows (one per reason to live) of one node's report."""
    rows = []
    for o in part.get("objects", ()):
        base = {"object_id": o["object_id"], "object_size": o["size"],
                "task_status": o["task_status"], "attempt_number": 0,
                "call_site": o["call_site"] or "disabled",
                "ip": part["ip"], "node_id": part["node_id"], "where": o["where"],
                "state": o["state"]}
        out = []
        local = "ACTOR_HANDLE" if o["kind"] == "actor_handle" else "LOCAL_REFERENCE"
        for role, pid, detail in o["refs"]:
            out.append((local, role, pid, _process_text(role, pid, detail), {}))
        for role, pid, detail, n in o["views"]:
            views = f"{n} views" if n > 1 else "view"
            out.append(("PINNED_IN_MEMORY", role, pid,
                        f"{views} in {_process_text(role, pid, detail)}", {}))
        for name, state, tid, role, pid, detail in o["task_args"]:
            out.append(("USED_BY_PENDING_TASK", role, pid, f"arg of task {name} ({state})",
                        {"task_name": name, "task_id": tid}))
        for outer in o["contained_in"]:
            out.append(("CAPTURED_IN_OBJECT", None, None, f"in object {outer}",
                        {"contained_in": outer}))
        for why in o["kept"]:
            out.append(("PINNED_BY_NODE", "node", part.get("node_pid"), f"node: {why}", {}))
        if not out:
            out.append(("UNKNOWN_STATUS", None, None, "-", {}))
        for ref_type, role, pid, holder, more in out:
            row = dict(base, reference_type=ref_type, type=role.upper() if role else None,
                       pid=pid, holder=holder)
            row.update(more)
            rows.append(row)
    return rows


def _matches(row, filters) -> bool:
    for key, op, value in filters:
        have = row.get(key)
        if isinstance(have, str) or have is None or isinstance(value, str):
            same = str(have).lower() == str(value).lower()
        else:
            try:
                same = have == type(have)(value)
            except (TypeError, ValueError):
                same = False
        if op in ("=", "=="):
            ok = same
        elif op == "!=":
            ok = not same
        else:
            raise ValueError(f"unsupported filter predicate {op!r}: use '=' or '!='")
        if not ok:
            return False
    return True


def _check_filters(filters) -> list:
    if filters is None:
        return []
    out = []
    for f in filters:
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"a filter is (key, predicate, value), e.g. "
                             f"('reference_type', '=', 'LOCAL_REFERENCE'); got {f!r}")
        if f[1] not in ("=", "==", "!="):
            raise ValueError(f"unsupported filter predicate {f[1]!r}: use '=' or '!='")
        out.append(tuple(f))
    return out


# -- the API ------------------------------------------------------------------------------------------

def list_objects(address=None, filters=None, limit=100, timeout=30, detail=False,
                 raise_on_missing_output=True, _explain=False) -> list:
    """Objects in the cluster's stores, as dicts with Ray's ObjectState keys
    (object_id, object_size in bytes, task_status, attempt_number,
    reference_type, call_site, type, pid, ip) and miniray's own: node_id,
    where ("shared_memory", "inline", "spilled", "remote:<node>",
    "pending", "actor_handle"), state, holder (in words), and
    contained_in / task_name / task_id where they apply.  The largest
    objects first.  ``filters``: [(key, "=" | "!=", value)], strings
    compared case-insensitively."""
    filters = _check_filters(filters)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    arg = {"scope": "cluster", "limit": None if filters else limit}
    report = _ask(Query.LIST_OBJECTS, arg, address, timeout)
    rows, cut = [], False
    for part in report["nodes"]:
        rows.extend(object_rows(part))
        cut = cut or part.get("total", 0) > len(part.get("objects", ()))
    if filters:
        rows = [r for r in rows if _matches(r, filters)]
    if report["missing"]:
        text = f"nodes left out of list_objects: {_missing_text(report['missing'])}"
        if raise_on_missing_output:
            raise RayStateApiException(text)
        warnings.warn(text, RuntimeWarning, stacklevel=2)
    if limit is not None and (cut or len(rows) > limit):
        warnings.warn(f"list_objects shows {limit} rows; there are more (pass a larger "
                      f"limit=, or limit=None for all)", UserWarning, stacklevel=2)
        rows = rows[:limit]
    return rows


def get_objects(id, address=None, timeout=30, _explain=False) -> list:
    """The rows of ``list_objects`` for one object id (hex): one per reason
    it is alive, on every node that has it."""
    if not isinstance(id, str):
        id = getattr(id, "hex", lambda: str(id))()
    return list_objects(address, filters=[("object_id", "=", id)], limit=None,
                        timeout=timeout, raise_on_missing_output=False)


def object_store_stats(address=None, timeout=30) -> dict:
    """{node_id: {used, spilled, free, capacity, num_objects, ...}} in bytes:
    shared memory in use, spilled to disk (0 until spilling exists), free,
    the store's size, and the objects stored there (``inline_bytes``:
    small objects kept in the node's own memory; ``ip``)."""
    report = _ask(Query.STORE_STATS, {"scope": "cluster"}, address, timeout)
    if report["missing"]:
        warnings.warn(f"nodes left out of object_store_stats: "
                      f"{_missing_text(report['missing'])}", RuntimeWarning, stacklevel=2)
    return {p["node_id"]: {k: v for k, v in p.items() if k not in ("node_id", "call_sites")}
            for p in report["nodes"]}


# -- the text of `miniray memory` ------------------------------------------------------------------

def _human(n) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


_COLUMNS = ("OBJECT ID", "SIZE", "WHERE", "REFERENCE TYPE", "PID", "HELD BY", "CALL SITE")


def summary_line(part) -> str:
    count = part["num_objects"]
    return (f"used {_human(part['used'])} ({count} object{'' if count == 1 else 's'}"
            f"{', ' + _human(part['inline_bytes']) + ' inline' if part.get('inline_bytes') else ''}"
            f"), spilled {_human(part['spilled'])}, free {_human(part['free'])} of "
            f"{_human(part['capacity'])}")


def format_report(report, *, stats_only=False, num_entries=None) -> str:
    """The text of ``miniray memory`` for a LIST_OBJECTS (or, with
    ``stats_only``, STORE_STATS) answer: per node a summary line, then its
    objects' rows."""
    lines = [f"======== Object references status: {time.strftime('%Y-%m-%d %H:%M:%S')} ========"]
    parts = report["nodes"]
    if not stats_only:
        on = any(p.get("call_sites") for p in parts)
        lines.append("Grouping by node, largest objects first. Call sites: " + (
            "recorded" if on else f"disabled (set {CALL_SITE_ENV[0]}=1 in the environment of "
                                  f"the drivers, and of `miniray start`, to record them)"))
    for part in parts:
        where = f"node {part['node_id'][:12]} ({part['ip']})"
        lines += ["", f"--- Summary for {where} ---", summary_line(part)]
        if stats_only:
            continue
        rows = object_rows(part)
        shown = rows if num_entries is None else rows[:num_entries]
        lines += ["", f"--- Object references for {where} ---"]
        table = [_COLUMNS] + [
            (r["object_id"], "?" if r["where"] == "pending" else _human(r["object_size"]),
             r["where"], r["reference_type"], "-" if r["pid"] is None else str(r["pid"]),
             r["holder"], r["call_site"]) for r in shown]
        widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS) - 1)]
        for row in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        left = part.get("total", 0) - len(part.get("objects", ()))
        if len(shown) < len(rows) or left > 0:
            lines.append(f"({len(rows) - len(shown)} more rows, {max(left, 0)} more objects "
                         f"not shown)")
    if report["missing"]:
        lines += ["", f"not shown, no answer from: {_missing_text(report['missing'])}"]
    return "\n".join(lines)


def memory_summary(address=None, stats_only=False, num_entries=None, limit=10000,
                   timeout=30) -> str:
    """What ``miniray memory`` prints, as a string (like Ray's
    ``memory_summary``)."""
    what = Query.STORE_STATS if stats_only else Query.LIST_OBJECTS
    report = _ask(what, {"scope": "cluster", "limit": limit}, address, timeout)
    return format_report(report, stats_only=stats_only, num_entries=num_entries)
