"""What fills the object store: the node's answer to LIST_OBJECTS and
STORE_STATS queries, and the call sites it keeps for them.  No I/O.

    QUERY LIST_OBJECTS {scope, limit} ─► StoreReport.answer
        this node's part: its store's numbers and, per object, where it
        is and everything that keeps it alive:
            refs         processes holding an ObjectRef (``Client.held``)
            views        zero-copy views handed to a process (``Client.views``)
            task_args    pending or running tasks that take it as an argument
            contained_in objects whose value holds a ref to it
            kept         other pins (detached actor, actor restart args, lineage)
        scope "cluster" (the default): every other alive node is asked the
        same over its peer link (``scope: "node"``) and the parts come back
        in one REPLY, with the nodes that did not answer in time.
    QUERY STORE_STATS   ─► the same numbers without the objects.

The reverse maps (object -> holders) are built only while answering: the
tables keep counts on the hot path and nothing more.  A query walks every
client's ``held`` and ``views``, every task and every entry once.

Call sites (opt-in, ``RAY_record_ref_creation_sites=1`` in a client's
environment): the client sends ``CALL_SITE`` (the 14-byte task id of a
put or submit, text) before the message that makes the object, and only
then.  They are kept by task id (a put's id is one too) as opaque text,
and dropped lazily once no entry of theirs is left.
"""
from __future__ import annotations

from . import _protocol as P
from . import _task_spec as S
from ._node_events import D
from ._object_table import CREATING, PENDING, READY

M, K = P.M, P.K
GATHER_TIMEOUT_S = 5.0          # how long a cluster-wide report waits for a node
MAX_SITE_LEN = 1000
_STATES = {PENDING: "pending", CREATING: "creating", READY: "ready"}
# Task states (``_node_tasks``) as Ray names them in ObjectState.task_status.
_TASK_STATUS = {"waiting": "PENDING_ARGS_AVAIL", "ready": "PENDING_NODE_ASSIGNMENT",
                "infeasible": "PENDING_NODE_ASSIGNMENT", "remote": "SUBMITTED_TO_WORKER",
                "running": "RUNNING", "done": "FINISHED", "cancelled": "FAILED"}


class _Gather:
    """A cluster-wide report under way: the parts in, the nodes still out."""

    __slots__ = ("client", "rid", "parts", "waiting", "missing", "asked")

    def __init__(self, client, rid, mine):
        self.client, self.rid = client, rid
        self.parts = [mine]
        self.waiting = set()        # node ids asked, not answered yet
        self.missing = []           # (node id, why)
        self.asked = []             # our request ids (in ClusterState.asked)


class StoreReport:
    def __init__(self, st):
        self.st = st
        self.sites: dict = {}       # task id (14 bytes) -> call site text
        self.sites_seen = False     # some client records call sites
        self.gathers: dict = {}     # timer name -> _Gather
        self.next_gather = 1

    # -- call sites ------------------------------------------------------------------------
    def on_call_site(self, client, msg) -> None:
        _, key, text = msg
        if type(key) is not bytes or type(text) is not str:
            raise ValueError("malformed CALL_SITE message")
        sites = self.sites
        st = self.st
        if len(sites) > 2 * (len(st.table.entries) + len(st.tasks.tasks)) + 1024:
            self._prune_sites()
        self.sites_seen = True
        sites[key[:14]] = text[:MAX_SITE_LEN]

    def _prune_sites(self) -> None:
        alive = {oid[:14] for oid in self.st.table.entries}
        alive.update(self.st.tasks.tasks)      # queued tasks whose return has no entry yet
        self.sites = {k: v for k, v in self.sites.items() if k in alive}

    # -- answering ---------------------------------------------------------------------------
    def answer(self, client, rid, what, arg) -> None:
        """REPLY to a LIST_OBJECTS / STORE_STATS query: this node's part
        (``scope: "node"``), or every node's (the default)."""
        st = self.st
        arg = arg if type(arg) is dict else {}
        mine = self.part(what == P.Q.LIST_OBJECTS, arg)
        if arg.get("scope") == "node":
            st.send(client, (M.REPLY, rid, True, mine))
            return
        g = _Gather(client, rid, mine)
        cluster = st.cluster
        if cluster.enabled:
            ask = dict(arg, scope="node")
            for node_id, info in list(cluster.nodes.items()):
                if node_id == st.node_id or not info.alive:
                    continue
                link = cluster.link(node_id)
                if link is None:
                    g.missing.append((node_id, "no link to it"))
                    continue
                mine_rid = cluster.next_rid
                cluster.next_rid += 1
                cluster.asked[mine_rid] = self._collector(g, node_id)
                g.asked.append(mine_rid)
                g.waiting.add(node_id)
                st.send(link, (M.QUERY, mine_rid, what, ask))
        if not g.waiting:
            self._finish(g)
            return
        name = f"store-report:{self.next_gather}"
        self.next_gather += 1
        self.gathers[name] = g
        st.out.append((D.TIMER, GATHER_TIMEOUT_S, name))

    def _collector(self, g, node_id):
        def collect(ok, payload):
            if node_id not in g.waiting:
                return
            g.waiting.discard(node_id)
            if ok and type(payload) is dict:
                g.parts.append(payload)
            else:
                g.missing.append((node_id, f"it failed to answer: {payload}"))
            if not g.waiting:
                self._finish(g)
        return collect

    def expire(self, name) -> None:
        """TIMER ``name``: nodes that have not answered by now are left out."""
        g = self.gathers.pop(name, None)
        if g is None or not g.waiting:
            return
        asked = self.st.cluster.asked
        for mine_rid in g.asked:
            asked.pop(mine_rid, None)
        for node_id in sorted(g.waiting):
            g.missing.append((node_id, f"no answer within {GATHER_TIMEOUT_S:g} s"))
        g.waiting.clear()
        self._finish(g)

    def _finish(self, g) -> None:
        for name, other in list(self.gathers.items()):
            if other is g:
                del self.gathers[name]
        self.st.send(g.client, (M.REPLY, g.rid, True,
                                {"nodes": g.parts, "missing": g.missing}))

    # -- this node's part ---------------------------------------------------------------------
    def stats(self) -> dict:
        st = self.st
        table = st.table
        a = table.alloc
        spilled = getattr(table, "spilled_bytes", None)
        num_spilled = 0
        counted = 0
        for e in table.entries.values():
            if getattr(e, "spilled", None):
                num_spilled += 1
                counted += e.size
        if type(spilled) not in (int, float):
            spilled = counted
        num_objects = sum(1 for e in table.entries.values()
                          if e.state == READY and e.kind != K.ACTOR_HANDLE and e.location is None)
        return {"node_id": st.node_id, "ip": st.config.get("node_ip", "127.0.0.1"),
                "used": a.used, "spilled": int(spilled), "free": a.capacity - a.used,
                "capacity": a.capacity, "num_objects": num_objects,
                "num_spilled": num_spilled, "inline_bytes": table.inline_bytes}

    def part(self, with_objects, arg) -> dict:
        st = self.st
        out = self.stats()
        out["node_pid"] = st.facts.get("node_pid")
        out["call_sites"] = self.sites_seen
        if with_objects:
            limit = arg.get("limit")
            objects = self.objects()
            out["total"] = len(objects)
            if type(limit) is int and 0 <= limit < len(objects):
                objects = objects[:limit]
            out["objects"] = objects
        return out

    def objects(self) -> list:
        """One dict per entry of the table, the largest first."""
        st = self.st
        entries = st.table.entries
        entries.make_all()          # queued tasks' returns are listed too
        refs, views = {}, {}
        for c in st.clients.values():
            who = _process(c)
            for oid in c.held:
                refs.setdefault(oid, []).append(who)
            for oid, n in c.views.items():
                views.setdefault(oid, []).append(who + (n,))
        args = {}
        pinned = st.tasks._pinned
        for t in list(st.tasks.tasks.values()):
            sub = t.submitter
            row = (t.spec[S.NAME], t.state, t.tid.hex()) + (
                _process(sub) if sub is not None else (None, None, None))
            for oid in pinned(t.spec):
                args.setdefault(oid, []).append(row)
        contained_in, kept = {}, {}
        seen = set()            # lineage records (shared by a task's returns): once each
        for e in entries.values():
            for c in e.contained:
                contained_in.setdefault(c, []).append(e.oid.hex())
            stack = [getattr(e, "lineage", None)]
            while stack:        # its record, and the upstream records it keeps
                rec = stack.pop()
                if rec is None or id(rec) in seen:
                    continue
                seen.add(id(rec))
                for oid in getattr(rec, "pins", None) or ():
                    kept.setdefault(oid, []).append("lineage")
                stack.extend(getattr(rec, "parents", None) or ())
        for a in list(st.actors.actors.values()):
            if getattr(a, "detached", False):
                kept.setdefault(a.aid, []).append("detached actor")
            for oid in getattr(a, "arg_pins", None) or ():
                kept.setdefault(oid, []).append("actor restart argument")
        sites = self.sites
        out = []
        for oid, e in entries.items():
            o_views = views.get(oid, [])
            o_args = args.get(oid, [])
            o_in = contained_in.get(oid, [])
            o_kept = kept.get(oid, [])
            other = e.pins - len(o_args) - len(o_in) - len(o_kept) - sum(v[3] for v in o_views)
            if other > 0:
                o_kept = o_kept + ["node"] * other
            out.append({
                "object_id": oid.hex(), "size": _size(e), "where": _where(e),
                "state": _STATES.get(e.state, str(e.state)), "kind": _kind(e),
                "task_status": _task_status(e), "call_site": sites.get(oid[:14]),
                "refs": refs.get(oid, []), "views": o_views, "task_args": o_args,
                "contained_in": o_in, "kept": o_kept, "holders": e.holders, "pins": e.pins})
        out.sort(key=lambda o: -o["size"])
        return out


def _process(c) -> tuple:
    """(role, pid, detail) of a client: the task its worker runs, or the
    node at the other end of a peer link."""
    if c.role == "node":
        return ("node", None, c.peer)
    w = c.worker
    detail = None
    if w is not None and w.task is not None:
        detail = w.task.spec[S.NAME]
    return (c.role, c.pid, detail)


def _size(e) -> int:
    if e.inline is not None:
        return len(e.inline)
    return e.size


def _where(e) -> str:
    if e.kind == K.ACTOR_HANDLE:
        return "actor_handle"
    if e.location is not None:
        return f"remote:{e.location}"
    if getattr(e, "spilled", None):
        return "spilled"
    if e.inline is not None:
        return "inline"
    if e.offset >= 0:
        return "shared_memory"
    return "pending"


def _kind(e) -> str:
    if e.kind == K.ACTOR_HANDLE:
        return "actor_handle"
    if e.state == READY and e.kind == K.ERROR:
        return "error"
    return "value"


def _task_status(e) -> str:
    if e.state == READY:
        return "FAILED" if e.kind == K.ERROR else "FINISHED"
    t = e.task
    if t is None:
        return "FINISHED" if e.location is not None else "NIL"   # made on another node
    if t.state == "running" and t.worker is not None and t.worker.blocked:
        return "RUNNING_IN_RAY_GET"
    return _TASK_STATUS.get(t.state, "NIL")
