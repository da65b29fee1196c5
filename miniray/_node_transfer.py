"""Objects moving between nodes: pulls, the streams that carry them,
and broadcasts.  Part of the node's pure state (``ClusterState.transfer``).

    puller                                  node that has it
    PULL oid ───────────────────────────►   small: OBJECT (bytes inside)
                                            large: OBJECT_META (size)
    room made in the store (or the pull
    waits: at most MAX_INCOMING_BYTES
    stream in at once)
    SEND_DATA ──────────────────────────►   DATA + the raw bytes, from its
    bytes land straight in the range        arena (server: SEND_ARENA)
    (server: EXPECT_RAW, then DATA_DONE)

The node serving an object holds a lease for the puller (its link's
``held``) until the puller's copy is freed there and it sends DECREF.

Broadcast: the serving node remembers the nodes it streamed a copy to
(``Entry.copies``) and sends later pullers, in turn, to them (PULL_FROM);
a node whose copy is still arriving serves it once complete.  A redirected
pull that fails goes back to the node that redirected it (which then
forgets that copy).
"""
from __future__ import annotations

from collections import deque

from . import _protocol as P
from ._node_events import D
from ._object_table import READY
from .exceptions import ObjectStoreFullError

M = P.M
# Bytes of objects streaming into a node at once (a larger object still goes,
# alone): pulls beyond it wait, so many at once cannot fill the store.
MAX_INCOMING_BYTES = 512 << 20


class ObjectTransfer:
    def __init__(self, cluster):
        self.cluster = cluster
        self.st = cluster.st
        self.incoming: dict = {}          # oid -> (kind, contained, size, link) while its bytes stream in
        self.incoming_bytes = 0           # their sizes: at most MAX_INCOMING_BYTES (but one always goes)
        self.metas_waiting: deque = deque()   # OBJECT_META messages waiting for room
        self.redirected: dict = {}        # oid -> (node pulled from, link of the node that sent us)
        # Counters for STATS: objects streamed from / into this node's store.
        self.streams_out = self.streams_in = self.bytes_out = self.bytes_in = 0

    def link_closed(self, client, peer) -> None:
        """A peer link closed: redirected pulls to it go back, and streams
        from it end (their entries may be pulled again)."""
        again = {oid for oid, item in list(self.redirected.items())
                 if item[0] == peer and self._pull_again(oid, peer)}
        stopped = [o for o, item in self.incoming.items() if item[3] is client]
        for oid in stopped:
            self.drop_incoming(oid)
        # (and pulls from it whose OBJECT_META waits for room: ``_node_spill``)
        stopped += [what[1] for c, what, _ in self.st.spill.waiting
                    if c is client and what[0] == M.OBJECT_META]
        for oid in stopped:
            if oid in again:
                continue                # asked for again already (``_pull_again``)
            e = self.st.table.entries.get(oid)
            if e is not None and e.state != READY:
                e.pulling = False       # a later ensure pulls it again

    def ensure(self, e) -> None:
        """``e`` is wanted here (a get, a wait, a task's argument): pull it
        if it lives on another node."""
        if e.state == READY or e.pulling:
            return
        if e.location is not None or (e.owner is not None and e.owner != self.cluster.node_id
                                      and e.task is None):
            self.pull(e)

    def pull(self, e) -> None:
        if e.pulling:
            return
        source = e.location or e.owner
        c = self.cluster.link(source)
        st = self.st
        if c is None:
            st.tasks.lineage.recover(e, f"it was on node {source}, which is dead or unknown")
            return
        e.pulling = True
        st.send(c, (M.PULL, e.oid))

    def on_pull(self, client, msg) -> None:
        """A peer wants an object: serve it now, or once it is made here,
        or send it to a node that pulled a copy from here before."""
        oid = msg[1]
        st = self.st
        e = st.table.entries.get(oid)
        if e is None:
            st.send(client, (M.OBJECT_LOST, oid, f"node {self.cluster.node_id} does not have it (it "
                                                 f"was freed, or never made there)"))
            return
        may_redirect = len(msg) < 3 or msg[2]
        if e.copies is not None:
            if len(msg) > 3 and msg[3] in e.copies:
                e.copies.remove(msg[3])         # that copy is gone
            if may_redirect and self._redirect(client, e):
                return
        if may_redirect and e.state != READY and e.location is not None and \
                self._send_to(client, e, e.location):
            return      # its only copy is on a third node: pulled from there, not through here
        st.table.hold(client.held, oid)        # the puller's lease, until its DECREF
        if e.state == READY:
            self.serve(client, e)
        else:
            if e.peer_waiters is None:
                e.peer_waiters = []
            e.peer_waiters.append(client)
            self.ensure(e)

    def _redirect(self, client, e) -> bool:
        """Broadcast: pulls of one object take turns among this node and
        the nodes it streamed a copy to (done or still arriving: such a
        node serves once its copy is complete), so later nodes pull from
        earlier ones, not all from the writer.  True if ``client`` was sent
        to another node."""
        copies = e.copies
        while copies:
            node_id = copies.pop(0)
            n = self.cluster.nodes.get(node_id)
            if node_id == self.cluster.node_id or (n is not None and n.alive):
                copies.append(node_id)
                return self._send_to(client, e, node_id)
        return False

    def _send_to(self, client, e, node_id) -> bool:
        """Tell ``client`` to pull ``e`` from ``node_id`` (alive, and neither
        this node nor the puller); False if it cannot be."""
        n = self.cluster.nodes.get(node_id)
        if n is None or not n.alive or node_id in (self.cluster.node_id, client.peer):
            return False
        self.st.send(client, (M.PULL_FROM, e.oid, node_id))
        return True

    def on_pull_from(self, client, msg) -> None:
        """The node we asked sends us to a node with a copy: ask that one
        (it may not redirect again); if it cannot serve, ask again here."""
        _, oid, node_id = msg
        e = self.st.table.entries.get(oid)
        if e is None or e.state == READY:
            return
        c = self.cluster.link(node_id)
        if c is None:
            self.st.send(client, (M.PULL, oid, False, node_id))
            return
        self.redirected[oid] = (node_id, client)
        self.st.send(c, (M.PULL, oid, False))

    def _pull_again(self, oid, node_id) -> bool:
        """A redirected pull failed at ``node_id``: back to the node that
        sent us there.  False if it was not a redirected pull."""
        item = self.redirected.get(oid)
        if item is None or item[0] != node_id:
            return False
        del self.redirected[oid]
        source = item[1]
        e = self.st.table.entries.get(oid)
        if source.closed or e is None or e.state == READY:
            return False
        e.pulling = True
        self.st.send(source, (M.PULL, oid, False, node_id))
        return True

    def sealed(self, e) -> None:
        """An object peers asked for is ready here (made, pulled, or failed):
        serve each of them."""
        waiting, e.peer_waiters = e.peer_waiters, None
        for c in waiting:
            if not c.closed:
                self.serve(c, e)

    def serve(self, client, e) -> None:
        """Small objects travel in one message; large ones are announced
        (OBJECT_META), the puller makes room and asks (SEND_DATA), and the
        bytes stream from our arena into its arena (DATA)."""
        st = self.st
        owners = self.cluster.owner_map(e.contained)
        if e.inline is not None:
            st.send(client, (M.OBJECT, e.oid, e.kind, e.inline, owners))
        else:
            st.send(client, (M.OBJECT_META, e.oid, e.kind, e.size, owners))

    def on_send_data(self, client, msg) -> None:
        oid = msg[1]
        st = self.st
        e = st.table.entries.get(oid)
        if e is None or e.state != READY or e.inline is not None:
            st.send(client, (M.OBJECT_LOST, oid, f"node {self.cluster.node_id} no longer has it"))
            return
        if e.spilled and st.spill.send_first(client, e, msg):
            return          # on disk: read back first, then this runs again (_node_spill)
        self.streams_out += 1
        self.bytes_out += e.size
        e.protect += 1              # its range is read until SENT: never spilled meanwhile
        # The puller will have a copy: later pullers may be sent there.
        if e.copies is None:
            e.copies = [self.cluster.node_id]
        if client.peer not in e.copies:
            e.copies.insert(0, client.peer)         # its turn comes next
        st.out.append((D.SEND_ARENA, client.cid, (M.DATA, oid, e.size), e.offset, e.size))

    def on_sent(self, ev) -> None:
        """The server no longer reads these ranges for a peer."""
        table = self.st.table
        for oid in ev[1]:
            e = table.entries.get(oid)
            if e is not None and e.protect > 0:
                e.protect -= 1
                if not e.protect:
                    table.hint = True

    def on_object_meta(self, client, msg) -> None:
        _, oid, kind, size, owners = msg
        if self.incoming and self.incoming_bytes + size > MAX_INCOMING_BYTES:
            # Bounded bytes in flight: the sender waits for our SEND_DATA.
            self.metas_waiting.append((client, msg))
            return
        st = self.st
        table = st.table
        if oid in self.incoming:
            # Already streaming in from elsewhere (a pull asked twice): this
            # node's lease goes back, and no bytes are asked for.
            st.send(client, (M.REFS, [(P.R.DECREF, oid)]))
            return
        e = self._wanted(client, oid, owners)
        if e is None:
            return
        try:
            table.allocate(oid, size, client)
        except ObjectStoreFullError:
            # Like a put: wait while objects are spilled to make room
            # (``_node_spill`` calls this again, or ``meta_failed``).
            st.spill.alloc_full(client, msg)
            return
        except Exception as exc:
            self.meta_failed(client, msg, exc)
            return
        client.unsealed.add(oid)
        self.incoming[oid] = (kind, tuple(owners), size, client)
        self.incoming_bytes += size
        st.out.append((D.EXPECT_RAW, client.cid, oid, e.offset, size))
        st.send(client, (M.SEND_DATA, oid))

    def meta_failed(self, client, msg, exc) -> None:
        """No room here for a pulled object: its waiters get the error
        (the lease its owner took for us goes back)."""
        oid = msg[1]
        self.st.send(client, (M.REFS, [(P.R.DECREF, oid)]))
        e = self.st.table.entries.get(oid)
        if e is not None and e.state != READY:
            self.st.tasks.object_lost(e, type(exc)(f"could not bring object {oid.hex()} to "
                                                   f"node {self.cluster.node_id}: {exc}"))

    def on_data_done(self, client, msg) -> None:
        _, oid, wanted = msg
        kind, contained, _, _ = self.drop_incoming(oid)
        client.unsealed.discard(oid)
        e = self.st.table.entries.get(oid)
        if kind is not None and e is not None and wanted and e.writer is client:
            self._arrived(client, e, kind, None, contained)

    def drop_incoming(self, oid) -> tuple:
        """A stream into this node ended (done, or its link closed): its
        bytes leave the budget, and OBJECT_METAs that waited may go."""
        item = self.incoming.pop(oid, None)
        if item is None:
            return (None, (), 0, None)
        self.incoming_bytes -= item[2]
        waiting = self.metas_waiting
        while waiting:
            client, msg = waiting[0]
            if not client.closed and self.incoming and \
                    self.incoming_bytes + msg[3] > MAX_INCOMING_BYTES:
                break
            waiting.popleft()
            if not client.closed:
                self.on_object_meta(client, msg)
        return item

    def on_object(self, client, msg) -> None:
        """A small object's bytes (a large one comes as OBJECT_META, DATA)."""
        _, oid, kind, data, owners = msg
        e = self._wanted(client, oid, owners)
        if e is not None:
            self._arrived(client, e, kind, data, tuple(owners))

    def _wanted(self, client, oid, owners):
        """The entry a pulled object fills, or None (nobody wants it any
        more: the lease the owner took for us goes back)."""
        self.cluster.learn_owners(owners)
        e = self.st.table.entries.get(oid)
        if e is None or e.state == READY:
            self.st.send(client, (M.REFS, [(P.R.DECREF, oid)]))
            return None
        return e

    def _arrived(self, client, e, kind, inline, contained) -> None:
        """A pulled copy is complete here: sealed, readable zero-copy, and
        leased from ``client``'s node until it is freed here."""
        self.redirected.pop(e.oid, None)
        if inline is None:
            self.streams_in += 1
            self.bytes_in += e.size
        e.pulling = False
        e.location = None
        if e.remote_leases is None:
            e.remote_leases = []
        e.remote_leases.append(client)
        table = self.st.table
        self.st.notify(e, table.seal(e, kind, inline, contained))
        table.release(e)

    def on_object_lost(self, client, msg) -> None:
        _, oid, why = msg
        if self._pull_again(oid, client.peer):
            return
        e = self.st.table.entries.get(oid)
        if e is not None and e.state != READY:
            e.pulling = False
            self.st.tasks.lineage.recover(
                e, f"it could not be fetched from node {client.peer} ({why})")

    def give_back(self, node_id, oid) -> None:
        c = self.cluster.links.get(node_id)
        if c is not None and not c.closed:
            self.st.send(c, (M.REFS, [(P.R.DECREF, oid)]))

    def freed(self, e) -> None:
        """An entry that held leases on other nodes is gone: give them back,
        each on the link it was taken on (the lease is that link's)."""
        links = set(e.remote_leases or ())
        if e.location is not None:
            c = self.cluster.links.get(e.location)
            if c is not None:
                links.add(c)
        for c in links:
            if not c.closed:
                self.st.send(c, (M.REFS, self._keep_contained(e, c) + [(P.R.DECREF, e.oid)]))

    def _keep_contained(self, e, link) -> list:
        """A pulled object goes, but a ref it held was taken out and is
        still held here: lease that ref on the same link, ahead of the
        DECREF that lets the object (and what it kept alive there) go."""
        ops = []
        if not e.contained:
            return ops
        entries = self.st.table.entries
        me = self.cluster.node_id
        for oid in e.contained:
            ce = entries.get(oid)
            if ce is None or ce.owner in (None, me) or (ce.holders == 0 and ce.pins <= 1):
                continue
            leases = ce.remote_leases
            if leases is None:
                leases = ce.remote_leases = []
            if link not in leases:
                leases.append(link)
                ops.append((P.R.INCREF, oid))
        return ops
