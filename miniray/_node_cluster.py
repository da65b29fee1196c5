"""The node's part in a cluster: membership, placement across nodes, and
objects that live on other nodes.  Part of the node's pure state.

    head node                         other nodes
    ─ keeps the node table ◄── HELLO(role node, register) ── joins at start
      (id, address, resources,        NODE_STATUS (every HEARTBEAT_S) ──►
       load, alive)         ── CLUSTER_VIEW (every HEARTBEAT_S) ──► all nodes
    ─ marks a node dead when its link closes or it is silent DEAD_AFTER_S

Every node schedules what it can run itself.  A task that cannot run here
(its resources are missing here, or busy here while another node has room,
or its strategy names another node) is FORWARDed to the chosen node over a
peer link; that node runs it like a local submit and sends RESULTS back.
The head is never a per-task hop: placement uses the view every node gets.

Objects: a node that FORWARDs a task or hands out an object names the
*owner* of every object id it mentions (the node whose table counts its
refs).  A node that needs an object it does not have sends PULL to the
owner, which answers OBJECT with the bytes (reading its arena through the
server: the state never touches memory) or serves it once its task is done;
the owner holds a lease for the puller (its link is one more client) until
the puller's copy is freed and it sends DECREF.  A forwarded task's small
results travel inside RESULTS; large ones stay where they were made until
someone pulls them (``Entry.location``).

Links: peer connections are clients like any other (role "node").  A node
connects to a peer when it first needs to talk to it (``Do.CONNECT`` with a
client id the state picks, negative so it never meets the server's).
"""
from __future__ import annotations

from . import _protocol as P
from . import _task_spec as S
from ._node_events import D
from ._node_transfer import ObjectTransfer
from ._object_table import READY
from .exceptions import RaySystemError

M = P.M
HEARTBEAT_S = 0.5       # status to the head, view to the nodes
DEAD_AFTER_S = 3.0      # silence after which the head declares a node dead (< 5 s)
# Arguments smaller than this together are cheaper to move than to chase.
LOCALITY_MIN_BYTES = 1 << 20


class NodeInfo:
    __slots__ = ("node_id", "address", "ip", "total", "available", "alive", "is_head",
                 "last_seen", "queued", "index")

    def __init__(self, node_id, address, ip, total, is_head, now, index=0):
        self.node_id = node_id
        self.address = address
        self.ip = ip
        self.total = dict(total)
        self.available = dict(total)
        self.alive = True
        self.is_head = is_head
        self.last_seen = now
        self.queued = 0
        # Numbered by the head as nodes register (the head is 0): the high
        # 16 bits of a job id made on this node (see ``output_route``).
        self.index = index

    def row(self) -> tuple:
        return (self.node_id, self.address, self.ip, self.total, self.available, self.alive,
                self.is_head, self.queued, self.index)


def _fits(shape, resources) -> bool:
    return all(resources.get(k, 0.0) + 1e-9 >= v for k, v in shape)


class ClusterState:
    def __init__(self, st, config: dict):
        self.st = st
        self.node_id = config["node_id"]
        self.is_head = bool(config.get("is_head"))
        self.head_address = config.get("head_address")
        self.ip = config.get("node_ip", "127.0.0.1")
        self.peer_address = None          # "ip:port" of our TCP listener (server fact)
        self.nodes: dict = {}             # node_id -> NodeInfo (the view)
        self.links: dict = {}             # node_id -> Client of the peer link
        self.head = None                  # Client of the link to the head
        self.next_cid = -1
        self.spread = 0
        self.forwarded: dict = {}         # tid -> node_id it runs on
        self.code_sent: dict = {}         # node_id -> function keys it has from us
        self.actor_nodes: dict = {}       # actor id -> node id, for actors elsewhere
        self.calls_waiting: dict = {}     # actor id -> tasks waiting to learn where it is
        # Actors created from here that live elsewhere: what restarts one on
        # another node if its node dies ([spec, opts, creator, restarts left]).
        self.created_here: dict = {}
        self.dead_actors: dict = {}       # actor id -> why calls to it fail (died with a node)
        self.directory: dict = {}         # (head) actor id -> (node id, name, namespace, meta)
        self.asked: dict = {}             # our request id -> (client, their request id)
        self.transfer = ObjectTransfer(self)   # objects that move between nodes
        self.next_rid = 1
        self.index = 0                    # this node's number (from the head; the head is 0)
        self.next_index = 1               # (head) the number the next node to register gets

    @property
    def enabled(self) -> bool:
        return self.is_head or self.head_address is not None

    # -- membership ------------------------------------------------------------------------
    def start(self, facts: dict) -> None:
        st = self.st
        self.peer_address = facts.get("peer_address")
        me = NodeInfo(self.node_id, self.peer_address, self.ip, st.resources.total,
                      self.is_head or not self.enabled, st.now)
        self.nodes[self.node_id] = me
        if self.head_address is None:
            st.out.append((D.READY,))
            if self.is_head:
                st.out.append((D.TIMER, HEARTBEAT_S, "heartbeat"))
            return
        self.head = self.connect(self.head_address)
        st.send(self.head, (M.HELLO, "node", st.facts["node_pid"], None,
                            {"node_id": self.node_id, "address": self.peer_address,
                             "ip": self.ip, "resources": dict(st.resources.total),
                             "register": True}))

    def connect(self, address):
        """A new peer link (the server connects and authenticates)."""
        st = self.st
        cid = self.next_cid
        self.next_cid -= 1
        client = st.new_client(cid)
        client.role = "node"
        st.out.append((D.CONNECT, cid, address))
        return client

    def link(self, node_id):
        """The link to ``node_id``, made on first use; None if it is dead."""
        c = self.links.get(node_id)
        if c is not None and not c.closed:
            return c
        info = self.nodes.get(node_id)
        if info is None or not info.alive or not info.address:
            return None
        c = self.links[node_id] = self.connect(info.address)
        c.peer = node_id
        self.st.send(c, (M.HELLO, "node", self.st.facts["node_pid"], None,
                         {"node_id": self.node_id, "register": False}))
        return c

    def on_node_hello(self, client, info: dict) -> None:
        """A node connected to us: the head registers it; any node keeps
        the link for talking back."""
        st = self.st
        peer = info.get("node_id")
        client.peer = peer
        if peer not in self.links or self.links[peer].closed:
            self.links[peer] = client
        if info.get("register"):
            if not self.is_head:
                st.send(client, (M.BAD_FRAME, "this node is not the head: join the head's "
                                              "address"))
                return
            self.nodes[peer] = NodeInfo(peer, info.get("address"), info.get("ip"),
                                        info.get("resources") or {}, False, st.now,
                                        self.next_index)
            self.next_index += 1
            st.out.append((D.LOG, f"node {peer} joined from {info.get('address')}"))
            self._broadcast_view()
        welcome = {"node_id": self.node_id, "view": self.view_rows()}
        if info.get("register") and peer in self.nodes:
            welcome["index"] = self.nodes[peer].index
        st.send(client, (M.PEER_WELCOME, welcome))

    def on_peer_welcome(self, client, msg) -> None:
        info = msg[1]
        client.peer = info["node_id"]
        if client is self.head:
            self.links[info["node_id"]] = client
            self.index = self.nodes[self.node_id].index = info.get("index", 0)
            self.apply_view(info["view"])
            st = self.st
            st.out.append((D.READY,))
            st.out.append((D.TIMER, HEARTBEAT_S, "heartbeat"))

    def view_rows(self) -> list:
        return [n.row() for n in self.nodes.values()]

    def apply_view(self, rows) -> None:
        for node_id, address, ip, total, available, alive, is_head, queued, index in rows:
            if node_id == self.node_id:
                continue
            n = self.nodes.get(node_id)
            if n is None:
                n = self.nodes[node_id] = NodeInfo(node_id, address, ip, total, is_head,
                                                   self.st.now, index)
            was_alive = n.alive
            n.available, n.alive, n.queued = available, alive, queued
            if was_alive and not alive:
                self.node_died(node_id, "the head declared it dead")
        self.st.tasks.retry_infeasible()

    def on_status(self, client, msg) -> None:
        n = self.nodes.get(getattr(client, "peer", None))
        if n is not None:
            n.available, n.queued = msg[1], msg[2]
            n.last_seen = self.st.now

    def on_view(self, client, msg) -> None:
        self.apply_view(msg[1])

    def heartbeat(self) -> None:
        """Timer: our status to the head; on the head, the view to all and
        the dead to be declared."""
        st = self.st
        st.out.append((D.TIMER, HEARTBEAT_S, "heartbeat"))
        me = self.nodes[self.node_id]
        me.available = st.available_now()
        me.queued = len(st.ready)
        if not self.is_head:
            if self.head is not None and not self.head.closed:
                st.send(self.head, (M.NODE_STATUS, me.available, me.queued))
            return
        me.last_seen = st.now
        for n in list(self.nodes.values()):
            if n.alive and not n.is_head and st.now - n.last_seen > DEAD_AFTER_S:
                self.declare_dead(n.node_id, f"no heartbeat for {DEAD_AFTER_S:g} s")
        self._broadcast_view()

    def _broadcast_view(self) -> None:
        rows = self.view_rows()
        for node_id, n in self.nodes.items():
            if n.alive and node_id != self.node_id:
                c = self.links.get(node_id)
                if c is not None and not c.closed:
                    self.st.send(c, (M.CLUSTER_VIEW, rows))

    def declare_dead(self, node_id, why) -> None:
        n = self.nodes.get(node_id)
        if n is None or not n.alive:
            return
        n.alive = False
        st = self.st
        st.out.append((D.LOG, f"node {node_id} is dead: {why}"))
        self.node_died(node_id, why)
        self._broadcast_view()

    def link_closed(self, client) -> None:
        peer = getattr(client, "peer", None)
        if client is self.head:
            st = self.st
            st.out.append((D.LOG, "the head node is gone: this node stops"))
            st.stop("the cluster's head node died")
            return
        self.transfer.link_closed(client, peer)
        if peer is not None and self.links.get(peer) is client:
            del self.links[peer]
            if self.is_head:
                self.declare_dead(peer, "its connection to the head closed")

    def node_died(self, node_id, why) -> None:
        """Objects only there are made again from their lineage, or lost;
        work forwarded there reruns or fails."""
        st = self.st
        # Nothing more is taken from it (a half-streamed copy would land in
        # a range this node may reuse): its links close, its leases go.
        for c in list(st.clients.values()):
            if c.role == "node" and c.peer == node_id and not c.closed:
                for oid in c.unsealed:
                    self.transfer.drop_incoming(oid)
                st.out.append((D.CLOSE, c.cid))
                st._client_gone(c)
        lost = [e for e in st.table.entries.values() if e.state != READY and (
            e.location == node_id or (e.owner == node_id and e.task is None))]
        if lost:
            st.tasks.lineage.lost(lost, f"its only copy was on node {node_id}, which died "
                                        f"({why})")
        if self.is_head:
            for aid, row in list(self.directory.items()):
                if row[0] == node_id:
                    del self.directory[aid]
        for aid, where in list(self.actor_nodes.items()):
            if where == node_id:
                del self.actor_nodes[aid]
                self._actor_lost(aid, node_id, why)
        for tid, where in list(self.forwarded.items()):
            if where == node_id:
                del self.forwarded[tid]
                t = st.tasks.tasks.get(tid)
                if t is not None:
                    st.tasks.remote_node_died(t, node_id, why)

    def _actor_lost(self, aid, node_id, why) -> None:
        """An actor created from here lived on a node that died: start it
        again where it fits (here or elsewhere) while it has restarts left
        (``max_restarts``), as a crash of its worker would; else calls to
        it fail naming the node."""
        rec = self.created_here.pop(aid, None)
        died = f"lived on node {node_id}, which died ({why})"
        if rec is None:
            self.dead_actors[aid] = died
            return
        spec, opts, creator, left = rec
        if left == 0 or (creator.closed and opts.get("lifetime") != "detached"):
            self.dead_actors[aid] = died + ", and it has no restarts left (max_restarts)" \
                if left == 0 else died + ", and its creator is gone"
            return
        st = self.st
        e = st.table.entries.get(aid)
        if e is not None:
            e.location = None          # its handles' lease there went with the node
        opts = dict(opts, max_restarts=left - 1 if left > 0 else left)
        try:
            st.actors.on_create(creator, (M.ACTOR_CREATE, None, spec, opts), claimed=True)
        except Exception as exc:       # no node can take it now
            self.dead_actors[aid] = died + f"; starting it again failed: {exc}"

    # -- placement ---------------------------------------------------------------------------
    def place(self, t) -> str | None:
        """Where a ready task runs: None for here, else a node id; raises
        nothing: "infeasible" when no node can ever run it."""
        st = self.st
        shape = t.shape
        extra = t.spec[S.EXTRA] or {}
        strategy = extra.get("strategy")
        here = self.nodes.get(self.node_id)
        if strategy is not None and strategy[0] == "NODE":
            target, soft = strategy[1], strategy[2]
            if target == self.node_id:
                return None
            n = self.nodes.get(target)
            if n is not None and n.alive and _fits(shape, n.total):
                return target
            if not soft:
                return "infeasible"
        alive = [n for n in self.nodes.values() if n.alive and _fits(shape, n.total)]
        if not alive:
            return "infeasible"
        if strategy is not None and strategy[0] == "SPREAD":
            self.spread += 1
            n = alive[self.spread % len(alive)]
            return None if n.node_id == self.node_id else n.node_id
        near = self._most_arg_bytes(t.spec[S.DEPS], alive, shape) if t.spec[S.DEPS] else None
        if near is not None:
            return near
        if here is not None and _fits(shape, st.resources.total) and (
                (st.resources.fits_now(shape) and not st.ready.count) or len(alive) == 1):
            return None
        # Busy or unable here: the node with the most room now, else here
        # (when it can ever run it), else the least loaded that can.
        room = [n for n in alive if n.node_id != self.node_id and _fits(shape, n.available)]
        if room:
            return max(room, key=lambda n: sum(n.available.get(k, 0) for k, _ in shape)).node_id
        if _fits(shape, st.resources.total):
            return None
        return min((n for n in alive if n.node_id != self.node_id),
                   key=lambda n: n.queued).node_id

    def _most_arg_bytes(self, deps, alive, shape) -> str | None:
        """The other node holding most of a task's argument bytes, when it
        holds more than this node and at least ``LOCALITY_MIN_BYTES`` and has
        room now: moving the task there is cheaper than moving its data
        here (Ray's locality-aware placement).  None: decide as usual."""
        entries = self.st.table.entries
        held: dict = {}
        for oid in deps:
            e = entries.get(oid)
            if e is None:
                continue
            if e.location is not None:
                held[e.location] = held.get(e.location, 0) + e.size
            elif e.state == READY and e.offset >= 0:
                held[self.node_id] = held.get(self.node_id, 0) + e.size
        if not held:
            return None
        best = max(held, key=held.get)
        if best == self.node_id or held[best] < LOCALITY_MIN_BYTES or \
                held[best] <= held.get(self.node_id, 0):
            return None
        n = self.nodes.get(best)
        if n is None or n not in alive or not _fits(shape, n.available):
            return None
        return best

    def place_shape(self, shape, extra) -> str | None:
        """Where an actor of ``shape`` goes (as ``place`` for a task)."""
        class _T:      # the fields ``place`` reads
            pass
        t = _T()
        t.shape = shape
        t.spec = (None,) * S.EXTRA + (extra,)
        return self.place(t)

    # -- actors on other nodes ---------------------------------------------------------------------
    def forward_actor(self, client, rid, spec, opts, node_id) -> None:
        """Create the actor on ``node_id``; here its handles are counted (the
        id's entry, leased to that node: DECREF there when they all go)."""
        st = self.st
        aid = spec[S.ACTOR_ID]
        c = self.link(node_id)
        if c is None:
            raise RaySystemError(f"node {node_id}, chosen for the actor, is gone; create it "
                                 f"again")
        table = st.table
        e = table.hold(client.held, aid)
        e.kind = P.K.ACTOR_HANDLE
        e.state = READY
        e.location = node_id
        self.actor_nodes[aid] = node_id
        self.created_here[aid] = [spec, opts, client, opts.get("max_restarts", 0)]
        self._count_against(node_id, spec[S.RESOURCES])
        st.send(c, (M.FORWARD_ACTOR, spec, opts) + self._shipment(spec, node_id))
        if rid is not None:
            st.send(client, (M.REPLY, rid, True, (aid, opts.get("meta"), True)))

    def on_forward_actor(self, client, msg) -> None:
        _, spec, opts, owners, blob, serializers = msg
        self._unpack_shipment(client, spec, owners, blob, serializers)
        self.st.actors.on_create(client, (M.ACTOR_CREATE, None, spec, opts))

    def _shipment(self, spec, node_id) -> tuple:
        """What travels with a spec to another node: the owner of every
        object id it names, the function's code the first time that node
        gets it, and the custom serializers."""
        st = self.st
        owners = {oid: self.owner_of(oid) for oid in st.tasks._pinned(spec)}
        key = spec[S.FN_KEY]
        sent = self.code_sent.setdefault(node_id, set())
        blob = None
        if key not in sent:
            blob = st.functions.get(key)
            sent.add(key)
        return owners, blob, st.serializers

    def _unpack_shipment(self, client, spec, owners, blob, serializers) -> None:
        st = self.st
        if blob is not None:
            st.functions[spec[S.FN_KEY]] = blob
        if serializers is not None and serializers != st.serializers:
            st.on_serializers(client, (M.SERIALIZERS, serializers))
        self.learn_owners(owners)

    def actor_created(self, aid, name, namespace, meta, node_id=True) -> None:
        """Tell the head where an actor lives (and its name), so handles
        and get_actor work from every node (``node_id=None``: it died)."""
        if not self.enabled:
            return
        row = (aid, self.node_id if node_id is True else node_id, name, namespace, meta)
        if self.is_head:
            self.on_actor_at(None, (M.ACTOR_AT, row))
        elif self.head is not None:
            self.st.send(self.head, (M.ACTOR_AT, row))

    def actor_gone(self, aid, creator=None) -> None:
        """An actor of this node died for good: the head forgets where it
        was, and so does the node that created it here (it would otherwise
        start it again should this node die)."""
        if self.enabled:
            self.actor_created(aid, None, None, None, node_id=None)
            if creator is not None and creator.role == "node" and not creator.closed \
                    and creator is not self.head:
                self.st.send(creator, (M.ACTOR_AT, (aid, None, None, None, None)))

    def on_actor_at(self, client, msg) -> None:
        aid, node_id, name, namespace, meta = msg[1]
        if self.is_head:
            if node_id is None:
                self.directory.pop(aid, None)
            else:
                self.directory[aid] = (node_id, name, namespace, meta)
        if node_id is not None and node_id != self.node_id:
            self.actor_nodes[aid] = node_id
        elif node_id is None:
            self.created_here.pop(aid, None)
            if self.actor_nodes.pop(aid, None) is not None or not self.is_head:
                self.dead_actors.setdefault(aid, None)      # calls fail, not ask again
        waiting = self.calls_waiting.pop(aid, ())
        for t in waiting:
            self.call_remote_actor(t)

    def call_remote_actor(self, t) -> None:
        st = self.st
        aid = t.spec[S.ACTOR_ID]
        node_id = self.actor_nodes.get(aid)
        if node_id is None:
            if aid in self.dead_actors:
                why = self.dead_actors[aid]
                st.tasks.fail(t, _dead_actor(aid, why) if why else _unknown_actor(aid))
                return
            if self.is_head:
                st.tasks.fail(t, _unknown_actor(aid))
                return
            first = aid not in self.calls_waiting
            self.calls_waiting.setdefault(aid, []).append(t)
            if first and self.head is not None:
                st.send(self.head, (M.WHERE_ACTOR, aid))
            return
        n = self.nodes.get(node_id)
        if n is None or not n.alive or not self.forward(t, node_id):
            from .exceptions import ActorDiedError
            st.tasks.fail(t, ActorDiedError(
                f"the actor {aid.hex()} lived on node {node_id}, which died; calls to it "
                f"cannot run", actor_id=aid))

    def on_where_actor(self, client, msg) -> None:
        aid = msg[1]
        row = self.directory.get(aid)
        if row is None:
            a = self.st.actors.actors.get(aid)
            row = (self.node_id, None, None, None) if a is not None else (None, None, None, None)
        self.st.send(client, (M.ACTOR_AT, (aid,) + tuple(row)))

    def ask_head(self, client, rid, what, arg) -> bool:
        """Pass a query this node cannot answer to the head; its REPLY goes
        back to ``client``.  False when this node is the head (or alone)."""
        if self.is_head or self.head is None:
            return False
        mine = self.next_rid
        self.next_rid += 1
        self.asked[mine] = (client, rid)
        self.st.send(self.head, (M.QUERY, mine, what, arg))
        return True

    def ask_head_then(self, what, arg, then) -> None:
        """A question for the head that this node acts on itself: the answer
        comes to ``then(ok, value)``."""
        mine = self.next_rid
        self.next_rid += 1
        self.asked[mine] = then
        self.st.send(self.head, (M.QUERY, mine, what, arg))

    def on_reply(self, client, msg) -> None:
        asked = self.asked.pop(msg[1], None)
        if callable(asked):
            asked(msg[2], msg[3])
        elif asked is not None and not asked[0].closed:
            self.st.send(asked[0], (M.REPLY, asked[1]) + tuple(msg[2:]))

    def claim_name(self, aid, name, namespace, meta, node_id):
        """Head: reserve ``name`` for the actor ``aid`` about to be created
        on ``node_id`` (names are unique cluster-wide); the (aid, meta) of
        the live actor that has it already, else None."""
        found = self.named_actor(name, namespace)
        if found is not None and found[0] != aid:
            return found
        self.directory[aid] = (node_id, name, namespace, meta)
        return None

    def named_actor(self, name, namespace):
        """(aid, meta) of a named actor anywhere in the cluster (head only)."""
        for aid, (node_id, n, ns, meta) in self.directory.items():
            if n == name and ns == namespace:
                info = self.nodes.get(node_id)
                if info is not None and info.alive:
                    return aid, meta
        return None

    # -- forwarding ------------------------------------------------------------------------------
    def forward(self, t, node_id) -> bool:
        c = self.link(node_id)
        if c is None:
            return False
        st = self.st
        shipment = self._shipment(t.spec, node_id)
        t.state = "remote"
        self.forwarded[t.tid] = node_id
        self._count_against(node_id, t.shape)
        st.send(c, (M.FORWARD, t.spec) + shipment)
        return True

    def _count_against(self, node_id, shape) -> None:
        """A task or actor sent to ``node_id`` uses its resources from now
        until its next status says so: a burst is spread, not piled on one
        node."""
        avail = self.nodes[node_id].available
        for k, v in shape:
            avail[k] = avail.get(k, 0.0) - v

    def owner_of(self, oid) -> str:
        e = self.st.table.entries.get(oid)
        owner = e.owner if e is not None else None
        return owner or self.node_id

    def on_forward(self, client, msg) -> None:
        """A peer's task: run it here as if submitted by the peer."""
        _, spec, owners, blob, serializers = msg
        st = self.st
        self._unpack_shipment(client, spec, owners, blob, serializers)
        if spec[S.ACTOR_ID] is not None:
            st.actors.on_call(client, (M.ACTOR_CALL, spec), origin=client)
            return
        t = st.tasks.create(spec, client)
        t.origin = client
        st.tasks.start(t)

    def task_finished_for_peer(self, t, results) -> None:
        """A forwarded task finished here: its results go to its origin.
        Small values travel inside RESULTS (and the copy here goes); large
        ones stay here, leased to the origin until it says DECREF."""
        st = self.st
        out = []
        entries = st.table.entries
        for oid in t.returns:
            e = entries.get(oid)
            if e is None:
                continue
            if e.inline is not None:
                out.append((oid, e.kind, e.inline, e.size, self.owner_map(e.contained)))
            else:
                out.append((oid, e.kind, None, e.size, self.owner_map(e.contained)))
        st.send(t.origin, (M.RESULTS, t.tid, out) + self._borrowed(t))
        for oid, kind, data, size, _ in out:
            if data is not None:
                st.table.unhold(t.origin.held, oid)

    def _borrowed(self, t) -> tuple:
        """Refs the forwarded task ``t`` was given that this node still
        holds once it is done (an actor kept them, a worker still has
        them): the origin keeps each alive for us, on the link RESULTS
        goes by, before it lets go of the task's own pins (one link keeps
        the order: no window in which nobody holds it).  DECREF on that
        link when our entry goes (``ObjectTransfer.freed``)."""
        borrowed = []
        entries = self.st.table.entries
        for oid in self.st.tasks._pinned(t.spec):
            e = entries.get(oid)
            if e is None or e.holders == 0 or e.owner in (None, self.node_id):
                continue
            leases = e.remote_leases
            if leases is None:
                leases = e.remote_leases = []
            if t.origin not in leases:
                leases.append(t.origin)
                borrowed.append(oid)
        return (borrowed,) if borrowed else ()

    def owner_map(self, contained) -> dict:
        return {oid: self.owner_of(oid) for oid in contained} if contained else {}

    def on_results(self, client, msg) -> None:
        _, tid, results = msg[:3]
        st = self.st
        table = st.table
        for oid in (msg[3] if len(msg) > 3 else ()):
            if oid in table.entries:        # the peer borrows it (see _borrowed)
                table.hold(client.held, oid)
        where = self.forwarded.pop(tid, None)
        t = st.tasks.tasks.get(tid)
        n = self.nodes.get(where)
        if t is not None and n is not None:
            # Its resources are free there again (the next status says so
            # too; until then placement should not see the node busy).
            avail, total = n.available, n.total
            for k, v in t.shape:
                avail[k] = min(avail.get(k, 0.0) + v, total.get(k, 0.0))
        table = st.table
        for oid, kind, data, size, owners in results:
            self.learn_owners(owners)
            e = table.get_or_create(oid)
            e.task = None
            if data is not None:
                if e.state != READY:
                    st.notify(e, table.seal(e, kind, data, tuple(owners)))
                table.release(e)
            elif e.state == READY:
                # A re-run made it again, and a copy is here already.
                st.send(client, (M.REFS, [(P.R.DECREF, oid)]))
                table.release(e)
            else:
                # Stays on the peer until someone here needs it.
                if e.location is not None and e.location != client.peer:
                    self.transfer.give_back(e.location, oid)
                e.location = client.peer
                e.size = size
                if e.waiters:
                    # Tasks waiting for it are placed now (maybe next to it);
                    # only other waiters (gets, actor calls) pull it here.
                    st.tasks.available_elsewhere(e)
                if e.waiters or e.peer_waiters:
                    self.transfer.pull(e)
                table.release(e)
        if t is not None:
            st.tasks.forget(t)

    def learn_owners(self, owners) -> None:
        table = self.st.table
        for oid, owner in owners.items():
            if owner != self.node_id:
                e = table.get_or_create(oid)
                if e.owner is None and e.state != READY:
                    e.owner = owner

    # -- task output ------------------------------------------------------------------------------
    def output_route(self, msg):
        """Send a task's OUTPUT toward the node whose driver runs its job.
        A job id is ``(index << 16) | counter`` of the node its driver joined
        (the head's jobs are 1, 2, ...).  None: the job is this node's (the
        caller hands it to the driver here).  True: sent there, over the link
        the running task came by when it came from that node (so the output
        arrives before the task's RESULTS), else over our link to it.  False:
        that node is dead or unknown."""
        index = msg[1] >> 16
        if index == self.index:
            return None
        owner = None
        for n in self.nodes.values():
            if n.index == index and n.node_id != self.node_id:
                owner = n
                break
        if owner is None or not owner.alive:
            return False
        t = self.st.tasks.tasks.get(msg[6]) if msg[6] is not None else None
        c = t.origin if t is not None else None
        if c is None or c.closed or c.peer != owner.node_id:
            c = self.link(owner.node_id)
            if c is None:
                return False
        self.st.send(c, msg)
        return True

    # -- queries ----------------------------------------------------------------------------------
    def nodes_rows(self) -> list:
        st = self.st
        me = self.nodes.get(self.node_id)
        if me is not None:
            me.available = st.available_now()
        out = []
        for n in (self.nodes.values() if self.nodes else ()):
            out.append({"NodeID": n.node_id, "Alive": n.alive, "alive": n.alive,
                        "NodeManagerAddress": n.ip, "NodeManagerHostname": n.ip,
                        "NodeManagerPort": 0, "ObjectStoreSocketName": n.address,
                        "Resources": dict(n.total) if n.alive else {},
                        "IsHead": n.is_head, "MetricsExportPort": 0})
        return out

    def total(self) -> dict:
        out: dict = {}
        for n in self.nodes.values():
            if n.alive:
                for k, v in n.total.items():
                    out[k] = out.get(k, 0.0) + v
        return out

    def available(self) -> dict:
        self.nodes[self.node_id].available = self.st.available_now()
        out: dict = {}
        for n in self.nodes.values():
            if n.alive:
                for k, v in n.available.items():
                    out[k] = out.get(k, 0.0) + v
        return out


def _dead_actor(aid, why):
    from .exceptions import ActorDiedError
    return ActorDiedError(f"the actor {aid.hex()} {why}", actor_id=aid)


def _unknown_actor(aid):
    from .exceptions import ActorDiedError
    return ActorDiedError(f"the actor {aid.hex()} is unknown to the cluster (it died and was "
                          f"forgotten, or its id is wrong)", actor_id=aid)


def unknown_node(node_id) -> RaySystemError:
    return RaySystemError(f"node {node_id} is not part of this cluster")
