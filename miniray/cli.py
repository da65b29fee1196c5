"""``miniray start | stop | status``: nodes that outlive their drivers.

    miniray start --head [--port 6379] [--node-ip-address IP] [resources] [tls]
    miniray start --address HEAD_IP:PORT [--node-ip-address IP] [resources] [tls]
        resources: [--num-cpus N] [--num-gpus N] [--resources JSON]
                   [--object-store-memory BYTES]
        spilling:  [--object-spilling-directory DIR] [--object-spilling-threshold F]
        tls:       [--tls-cert CERT --tls-key KEY [--tls-ca CA]]
    miniray status
    miniray memory [--stats-only] [--num-entries N]   (what fills the stores)
    miniray stop

``start`` runs this host's node in the background, owned by no driver, and
returns once it serves (for a joining node: once the head accepted it).  The
head generates the cluster token and keeps it in ``$MINIRAY_CLUSTER_DIR/token``
(mode 0600); other hosts pass the same text in ``MINIRAY_AUTH_TOKEN`` or the
file named by ``MINIRAY_AUTH_TOKEN_PATH``.  Nodes listen on loopback unless
``--node-ip-address`` names an interface; with ``--tls-cert/--tls-key`` (or
``MINIRAY_TLS_CERT/MINIRAY_TLS_KEY``, see ``_tls``) its TCP links run inside
TLS, and every node of the cluster must say the same.  Drivers on a host
attach to that host's node: ``miniray.init(address="auto")``.  Output of the
node and its workers goes to ``node.log`` in the cluster directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import _cluster_file as cf
from . import _tls

__all__ = ["main"]


def _cmd_start(args) -> int:
    from . import _runtime
    info = cf.read_cluster_info()
    if info is not None and _alive(info.get("pid")):
        print(f"a miniray node is already running on this host (pid {info['pid']}, address "
              f"{info.get('peer_address') or info['address']}); stop it first with "
              f"`miniray stop`", file=sys.stderr)
        return 1
    if args.head == bool(args.address):
        print("say either --head (start a cluster) or --address HEAD_IP:PORT (join one)",
              file=sys.stderr)
        return 2
    ip = args.node_ip_address or "127.0.0.1"
    try:
        tls = _tls.settings(args.tls_cert, args.tls_key, args.tls_ca)
        if tls is not None:
            _tls.contexts(tls)          # a bad file is reported here, not in node.log
    except ValueError as exc:
        print(f"TLS: {exc}", file=sys.stderr)
        return 2
    if args.head:
        text = os.environ.get("MINIRAY_AUTH_TOKEN") or cf.new_token_text()
        token_file = cf.write_token_file(text.strip())
        token = text.strip().encode()
        cluster = {"is_head": True, "peer_listen": f"{ip}:{args.port}", "node_ip": ip}
    else:
        try:
            token = cf.token_from_environment()
        except (OSError, ValueError) as exc:
            print(f"cannot read the cluster token: {exc}", file=sys.stderr)
            return 2
        if token is None:
            print("joining a cluster needs its token: set MINIRAY_AUTH_TOKEN to the text of "
                  "the head's token file, or MINIRAY_AUTH_TOKEN_PATH to a copy of it",
                  file=sys.stderr)
            return 2
        cluster = {"head_address": args.address, "peer_listen": f"{ip}:0", "node_ip": ip}
    if tls is not None:
        cluster["tls"] = tls
    try:
        spilling = _runtime.check_spilling(args.object_spilling_directory,
                                           args.object_spilling_threshold)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    resources = json.loads(args.resources) if args.resources else None
    cpus = args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1)
    store = args.object_store_memory or _runtime._default_store_size()
    log_path = os.path.join(cf.cluster_dir(), "node.log")
    log = open(log_path, "ab")
    log_start = log.tell()
    saved = os.dup(1), os.dup(2)
    try:
        # The node and its workers inherit these as stdout/stderr.
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        address, token, proc, session = _runtime.start_node(
            cpus, resources, int(store), num_gpus=args.num_gpus, owner=False,
            cluster=cluster, token=token, spilling=spilling)
    except Exception as exc:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        print(f"the node did not start: {exc}\n{_log_since(log_path, log_start)}"
              f"(see {log_path})", file=sys.stderr)
        return 1
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        log.close()
    cf.write_cluster_file({"address": address, "token": token.hex(), "pid": proc.pid,
                           "session": session, "started": time.time(), "log": log_path,
                           "peer_address": cluster.get("peer_address"),
                           "head_address": cluster.get("head_address") or
                           cluster.get("peer_address"),
                           "node_id": cluster.get("node_id"), "head": bool(args.head),
                           "tls": tls})
    where = cluster.get("peer_address")
    mode = " (TLS)" if tls is not None else ""
    if args.head:
        join_tls = (" --tls-cert <its cert> --tls-key <its key>"
                    + (" --tls-ca <the CA>" if tls["ca"] else "")) if tls is not None else ""
        print(f"started the head node (pid {proc.pid}) at {where}{mode}\n"
              f"join other hosts with:  MINIRAY_AUTH_TOKEN_PATH=<copy of {token_file}> "
              f"miniray start --address {where} --node-ip-address <their ip>{join_tls}\n"
              f"connect drivers on this host with miniray.init(address='auto'); stop with "
              f"`miniray stop`; log: {log_path}")
    else:
        print(f"started a node (pid {proc.pid}) at {where}{mode}, joined the cluster at "
              f"{args.address}; log: {log_path}")
    return 0


def _log_since(path, offset, limit=4000) -> str:
    """What the node wrote to its log during this start (its reason)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    text = text[-limit:]
    return "".join(f"  | {line}\n" for line in text.splitlines())


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
        print("no miniray node is running on this host")
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
    if info.get("head"):
        try:
            os.unlink(cf.token_path())
        except OSError:
            pass
    print(f"stopped the miniray node (pid {pid})")
    return 0


def _cmd_status(args) -> int:
    info = cf.read_cluster_info()
    if info is None or not _alive(info.get("pid")):
        print("no miniray node is running on this host")
        return 1
    from ._core import CoreClient
    from ._protocol import Q as Query
    client = CoreClient(info["address"], bytes.fromhex(info["token"]), "driver")
    try:
        nodes = client.query(Query.NODES)
        avail = client.query(Query.AVAILABLE_RESOURCES)
        total = client.query(Query.CLUSTER_RESOURCES)
        stats = client.query(Query.STATS)
        actors = client.query(Query.LIST_NAMED_ACTORS)
    finally:
        client.close()
    print(f"this host's node: pid {info['pid']} at {info.get('peer_address') or info['address']}"
          f"{' (TLS)' if info.get('tls') else ''}")
    print(f"cluster: {sum(1 for n in nodes if n['Alive'])} node(s) alive of {len(nodes)}")
    for n in nodes:
        state = "alive" if n["Alive"] else "DEAD"
        res = ", ".join(f"{k}: {v:g}" for k, v in sorted(n["Resources"].items())
                        if not k.startswith("node:"))
        head = " (head)" if n.get("IsHead") else ""
        print(f"  {n['NodeID'][:12]} {n['ObjectStoreSocketName'] or n['NodeManagerAddress']}"
              f"{head} {state}  {res}")
    for k in sorted(total):
        if not k.startswith("node:"):
            print(f"  {k}: {avail.get(k, 0):g} free of {total[k]:g}")
    print(f"  this node: workers: {stats['workers']} ({stats['idle']} idle), actors: "
          f"{stats['actors']}, objects: {stats['objects']}, store: "
          f"{stats['arena_used'] / 2**20:.1f} MiB used of {stats['arena_capacity'] / 2**20:.0f} MiB")
    if actors:
        print("  named actors: " + ", ".join(a["name"] for a in actors))
    return 0


def _cmd_memory(args) -> int:
    """`miniray memory`: every node's objects, as ``miniray.util.state`` sees them."""
    info = cf.read_cluster_info()
    if info is None or not _alive(info.get("pid")):
        print("no miniray node is running on this host")
        return 1
    from ._core import CoreClient
    from ._protocol import Q as Query
    from .util.state import format_report
    what = Query.STORE_STATS if args.stats_only else Query.LIST_OBJECTS
    client = CoreClient(info["address"], bytes.fromhex(info["token"]), "driver")
    try:
        report = client.query(what, {"scope": "cluster", "limit": 10000})
    finally:
        client.close()
    print(format_report(report, stats_only=args.stats_only, num_entries=args.num_entries))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="miniray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start a node in the background")
    start.add_argument("--head", action="store_true", help="start the head node")
    start.add_argument("--address", help="join the cluster whose head is at HEAD_IP:PORT")
    start.add_argument("--port", type=int, default=6379, help="the head's port (default 6379)")
    start.add_argument("--node-ip-address", help="the interface to listen on (default loopback)")
    start.add_argument("--num-cpus", type=int)
    start.add_argument("--num-gpus", type=int)
    start.add_argument("--resources", help='JSON, e.g. \'{"accel": 2}\'')
    start.add_argument("--object-store-memory", type=float)
    start.add_argument("--object-spilling-directory",
                       help="where objects are spilled when the store fills up (default: the "
                            "temp dir)")
    start.add_argument("--object-spilling-threshold", type=float,
                       help="spill once the store is this full, a fraction in (0, 1] "
                            "(default 0.8)")
    start.add_argument("--tls-cert", help="TLS on this node's TCP links: its certificate (PEM; "
                                          "default $MINIRAY_TLS_CERT)")
    start.add_argument("--tls-key", help="the certificate's private key (default "
                                         "$MINIRAY_TLS_KEY)")
    start.add_argument("--tls-ca", help="CA that signed every node's certificate (default "
                                        "$MINIRAY_TLS_CA; without one the certificate itself "
                                        "is the only one trusted)")
    sub.add_parser("stop", help="stop the node started by `miniray start`")
    sub.add_parser("status", help="show the running node's resources and load")
    memory = sub.add_parser("memory", help="show each object in the stores and what keeps "
                                           "it alive, per node (like `ray memory`)")
    memory.add_argument("--stats-only", action="store_true",
                        help="only the summary line of each node")
    memory.add_argument("--num-entries", "--n", type=int, help="rows shown per node")
    args = parser.parse_args(argv)
    if args.cmd == "memory":
        return _cmd_memory(args)
    return {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
