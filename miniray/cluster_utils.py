"""``Cluster``: several real nodes on one machine, as Ray's ``cluster_utils``.

Each node is a real node daemon with its own shared-memory store, its own
workers and its own TCP listener on loopback; they join the head over
authenticated TCP exactly as nodes on separate hosts do.  For tests,
benchmarks and trying multi-node programs on one machine::

    from miniray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=2, resources={"B": 1})
    cluster.wait_for_nodes()
    miniray.init(address=cluster.address)
    ...
    miniray.shutdown(); cluster.shutdown()

TLS on the links: ``add_node(tls_cert=..., tls_key=..., tls_ca=...)`` (or in
``head_node_args``), else ``MINIRAY_TLS_CERT``/``MINIRAY_TLS_KEY``/
``MINIRAY_TLS_CA`` from the environment, as ``miniray start`` (see ``_tls``).
"""
from __future__ import annotations

import signal
import subprocess
import time

from . import _cluster_file as cf

__all__ = ["Cluster", "ClusterNode"]

DEFAULT_STORE = 128 * 2**20


class ClusterNode:
    """One node of a ``Cluster``: its process and addresses."""

    def __init__(self, proc, address, peer_address, node_id, is_head):
        self.process = proc
        self.address = address              # local (Unix) address drivers attach to
        self.peer_address = peer_address    # "ip:port" other nodes reach it at
        self.node_id = node_id
        self.is_head = is_head

    @property
    def unique_id(self) -> str:
        return self.node_id

    def alive(self) -> bool:
        return self.process.poll() is None

    def __repr__(self):
        return f"ClusterNode({'head, ' if self.is_head else ''}{self.peer_address}, pid={self.process.pid})"


class Cluster:
    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: dict | None = None, shutdown_at_exit: bool = True):
        self.token = cf.new_token_text().encode()
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list = []
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()
        if shutdown_at_exit:
            import atexit
            atexit.register(self.shutdown)

    @property
    def address(self) -> str:
        """The head's "ip:port" (``init(address=...)`` attaches to its node)."""
        if self.head_node is None:
            raise RuntimeError("the cluster has no head yet: Cluster(initialize_head=True) or "
                               "add_node() first")
        return self.head_node.peer_address

    def list_all_nodes(self) -> list:
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    def add_node(self, wait: bool = True, *, num_cpus: float = 1, num_gpus: float | None = None,
                 resources: dict | None = None, object_store_memory: int | None = None,
                 node_ip_address: str = "127.0.0.1", tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None,
                 **_ignored) -> ClusterNode:
        """Start a node: the head first, then nodes that join it.  Returns
        once the node serves (a joining node: once the head accepted it)."""
        from . import _runtime, _tls
        tls = _tls.settings(tls_cert, tls_key, tls_ca)
        if tls is not None:
            _tls.contexts(tls)              # a bad file fails here, with its name
        is_head = self.head_node is None
        if is_head:
            cluster = {"is_head": True, "peer_listen": f"{node_ip_address}:0",
                       "node_ip": node_ip_address}
        else:
            cluster = {"head_address": self.address, "peer_listen": f"{node_ip_address}:0",
                       "node_ip": node_ip_address}
        if tls is not None:
            cluster["tls"] = tls
        address, _, proc, _ = _runtime.start_node(
            int(num_cpus), resources, int(object_store_memory or DEFAULT_STORE),
            num_gpus=num_gpus, owner=False, cluster=cluster, token=self.token)
        node = ClusterNode(proc, address, cluster["peer_address"], cluster["node_id"], is_head)
        cf.started_here[node.peer_address] = (address, self.token)
        if is_head:
            self.head_node = node
        else:
            self.worker_nodes.append(node)
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = True) -> None:
        """Stop a node (SIGTERM, or SIGKILL with ``allow_graceful=False``:
        a crash, as far as the rest of the cluster can tell)."""
        if node in self.worker_nodes:
            self.worker_nodes.remove(node)
        elif node is self.head_node:
            self.head_node = None
        _stop(node.process, graceful=allow_graceful)
        cf.started_here.pop(node.peer_address, None)

    def wait_for_nodes(self, timeout: float = 30.0) -> None:
        """Wait until the head lists every live node of this cluster as alive."""
        from ._core import CoreClient
        from ._protocol import Q
        want = {n.node_id for n in self.list_all_nodes()}
        deadline = time.monotonic() + timeout
        client = CoreClient(self.head_node.address, self.token, "driver")
        try:
            while True:
                alive = {n["NodeID"] for n in client.query(Q.NODES) if n["Alive"]}
                if want <= alive:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nodes {sorted(want - alive)} did not join within "
                                       f"{timeout} s")
                time.sleep(0.05)
        finally:
            client.close()

    def connect(self, namespace: str | None = None):
        """``miniray.init`` attached to the head node."""
        import miniray
        return miniray.init(address=self.address, namespace=namespace)

    def shutdown(self) -> None:
        nodes = list(self.worker_nodes) + ([self.head_node] if self.head_node else [])
        self.worker_nodes = []
        self.head_node = None
        for node in nodes:
            _stop(node.process, graceful=True)
            cf.started_here.pop(node.peer_address, None)


def _stop(proc, graceful: bool) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
