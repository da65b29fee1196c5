"""What a node answers to QUERY: resources, nodes, statistics, one
object's state, actor names (claims and lookups), and the store report
(``_store_report``).  Part of the node's pure state (``NodeState.queries``)."""
from __future__ import annotations

from . import _protocol as P

M = P.M


class NodeQueries:
    def __init__(self, st):
        self.st = st

    def on_query(self, client, msg) -> None:
        st = self.st
        _, rid, what, arg = msg
        if what == P.Q.LIST_OBJECTS or what == P.Q.STORE_STATS:
            return st.report.answer(client, rid, what, arg)     # maybe from every node
        if what == P.Q.CALLS_PENDING:
            st.send(client, (M.REPLY, rid, True, st.direct.calls_pending(client, arg)))
            return
        try:
            result = self.answer(what, arg)
        except Exception as exc:
            if what == P.Q.GET_ACTOR and st.cluster.ask_head(client, rid, what, arg):
                return          # maybe on another node: the head knows
            st.send(client, (M.REPLY, rid, False, exc))
            return
        st.send(client, (M.REPLY, rid, True, result))

    def answer(self, what, arg):
        st = self.st
        Q = P.Q
        cluster = st.cluster
        if what == Q.CLUSTER_RESOURCES:
            return cluster.total() if cluster.enabled else dict(st.resources.total)
        if what == Q.AVAILABLE_RESOURCES:
            return cluster.available() if cluster.enabled else st.available_now()
        if what == Q.NODES:
            if cluster.enabled:
                return cluster.nodes_rows()
            return [{"NodeID": st.node_id, "Alive": True, "NodeManagerAddress": "127.0.0.1",
                     "NodeManagerHostname": st.config.get("hostname", ""),
                     "Resources": dict(st.resources.total), "alive": True,
                     "ObjectStoreSocketName": st.config["address"],
                     "NodeManagerPort": 0, "MetricsExportPort": 0}]
        if what == Q.STATS:
            stats = st.table.stats()
            stats.update(workers=len(st.workers), idle=len(st.idle),
                         worker_pids=[w.pid for w in st.workers.values() if w.pid],
                         ready_tasks=len(st.ready), tasks=len(st.tasks.tasks),
                         actors=st.actors.count_alive(), **st.spill.stats())
            c = st.cluster
            if c.enabled:
                x = c.transfer
                stats.update(streams_out=x.streams_out, streams_in=x.streams_in,
                             bytes_out=x.bytes_out, bytes_in=x.bytes_in)
            return stats
        if what == Q.OBJECT_INFO:
            e = st.table.entries.get(arg)
            if e is None:
                return None
            return {"state": e.state, "holders": e.holders, "pins": e.pins, "size": e.size,
                    "inline": e.inline is not None, "spilled": e.spilled}
        if what == Q.CLAIM_ACTOR_NAME and cluster.enabled and cluster.is_head:
            name, namespace, aid, meta, node_id = arg
            return cluster.claim_name(aid, name, namespace, meta, node_id)
        if what == Q.GET_ACTOR and cluster.enabled and cluster.is_head:
            found = cluster.named_actor(*arg)
            if found is not None:
                return found
        return st.actors.query(what, arg)
