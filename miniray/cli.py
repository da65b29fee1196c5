"""``miniray start | stop | status``: a node that outlives its drivers.

    miniray start --head [--num-cpus N] [--resources JSON] [--object-store-memory BYTES]
    miniray status
    miniray stop

``start`` runs a node daemon in the background, owned by no driver, and
writes its address and token to the cluster file (see ``_cluster_file``);
drivers join it with ``miniray.init(address="auto")``.  Detached actors live
on it until ``miniray.kill`` or ``miniray stop``.  Its output (and that of
its workers) goes to ``node.log`` in the cluster directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import _cluster_file as cf

__all__ = ["main"]


def _cmd_start(args) -> int:
    from . import _runtime
    info = cf.read_cluster_info()
    if info is not None and _alive(info.get("pid")):
        print(f"a miniray node is already running (pid {info['pid']}, address "
              f"{info['address']}); stop it first with `miniray stop`", file=sys.stderr)
        return 1
    if not args.head:
        print("only a head node can be started on this version: use `miniray start --head`",
              file=sys.stderr)
        return 2
    resources = json.loads(args.resources) if args.resources else None
    cpus = args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1)
    store = args.object_store_memory or _runtime._default_store_size()
    log_path = os.path.join(cf.cluster_dir(), "node.log")
    log = open(log_path, "ab")
    saved = os.dup(1), os.dup(2)
    try:
        # The node and its workers inherit these as stdout/stderr.
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        address, token, proc, session = _runtime.start_node(
            cpus, resources, store, owner=False)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        log.close()
    cf.write_cluster_file({"address": address, "token": token.hex(), "pid": proc.pid,
                           "session": session, "started": time.time(), "log": log_path})
    print(f"started a miniray node (pid {proc.pid}) at {address}\n"
          f"connect with miniray.init(address='auto'); stop with `miniray stop`; "
          f"log: {log_path}")
    return 0


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmd_stop(args) -> int:
    info = cf.read_cluster_info()
    if info is None or not _alive(info.get("pid")):
        cf.remove_cluster_file()
        print("no miniray node is running")
        return 0
    import signal
    pid = info["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    cf.remove_cluster_file()
    print(f"stopped the miniray node (pid {pid})")
    return 0


def _cmd_status(args) -> int:
    info = cf.read_cluster_info()
    if info is None or not _alive(info.get("pid")):
        print("no miniray node is running")
        return 1
    from ._core import CoreClient
    from ._protocol import Q as Query
    client = CoreClient(info["address"], bytes.fromhex(info["token"]), "driver")
    try:
        total = client.query(Query.CLUSTER_RESOURCES)
        avail = client.query(Query.AVAILABLE_RESOURCES)
        stats = client.query(Query.STATS)
        actors = client.query(Query.LIST_NAMED_ACTORS)
    finally:
        client.close()
    print(f"node pid {info['pid']} at {info['address']}")
    for k in sorted(total):
        print(f"  {k}: {avail.get(k, 0):g} free of {total[k]:g}")
    print(f"  workers: {stats['workers']} ({stats['idle']} idle), actors: {stats['actors']}, "
          f"objects: {stats['objects']}, store: {stats['arena_used'] / 2**20:.1f} MiB used of "
          f"{stats['arena_capacity'] / 2**20:.0f} MiB")
    if actors:
        print("  named actors: " + ", ".join(a["name"] for a in actors))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="miniray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start a node in the background")
    start.add_argument("--head", action="store_true", help="start the head node")
    start.add_argument("--num-cpus", type=int)
    start.add_argument("--resources", help='JSON, e.g. \'{"accel": 2}\'')
    start.add_argument("--object-store-memory", type=int)
    sub.add_parser("stop", help="stop the node started by `miniray start`")
    sub.add_parser("status", help="show the running node's resources and load")
    args = parser.parse_args(argv)
    return {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
