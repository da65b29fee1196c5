"""Direct actor calls, the caller's side: a call crosses no daemon.

    ActorMethod.remote ─► call_actor ─► DirectCalls.call ─ DIRECT_CALL ──► the actor's worker
                                              └─ DIRECT_CALL(spec, pid), batched ──► node
    get ─► await_results: waits on the channel ◄── DIRECT_RESULT ──── the actor's worker

Which calls: those of an actor that runs one call at a time (its meta says
``serial``) whose arguments travel inline with no top-level refs, sent by a
process of the actor's node.  Everything else goes through the node as
before.  The node still hears of every direct call (``_node_direct``), off
the critical path: refcounts, results for other processes, cancel, retries
and failures work as for any call.  A result that arrives here is kept as
this process keeps inline values it got (``known_values``), so the ``get``
that follows needs no daemon at all; a result written to the arena, or one
the node will run again (a retryable error), is read from the node.

Channels: one per actor, opened on first use (the worker's ``_direct_server``
authenticates both ways with the cluster token).  If the actor is not
serving yet (its constructor runs) calls go through the node and a new try
comes after a back-off.  If a channel breaks (the actor died or restarted),
the calls it had in flight are read from the node, which knows them and
retries or fails them as it does any call caught by a worker's death.

Order, per caller: a call goes direct only once the node says this process
has no call of that actor unfinished there (``Q.CALLS_PENDING``, asked when
a call went through the node since the last answer, at most every 20 ms per
actor); calls sent through the node after direct ones run after them
(``_direct_server``).

Results are read by the thread that waits for them (``SocketReader`` per
channel: leader/follower, so the kernel wakes the waiting thread), and by
the io thread when the process is quiet (results nobody waits for).
"""
from __future__ import annotations

import os
import socket
import threading
import time

from . import _protocol as P
from . import _serialization as ser
from . import _task_spec as S
from ._client_gate import gate as _gate
from ._client_reader import SocketReader
from ._direct_server import address_for
from ._transport import connect_peer
from .exceptions import GetTimeoutError

__all__ = ["DirectCalls", "ENV"]

_DONTWAIT = socket.MSG_DONTWAIT

M = P.M
ENV = "MINIRAY_DIRECT_CALLS"      # "0": every call goes through the node
FIRST_RETRY_S = 0.05              # after a failed connect: calls go through the node this long
LAST_RETRY_S = 1.0                # ... doubling up to this
ASK_EVERY_S = 0.02                # at most one CALLS_PENDING per actor in this time
FLUSH_BYTES = 64 * 1024           # queued calls beyond this go out at once
CLOSE_FLUSH_S = 5.0               # at shutdown, longest wait for an actor to take queued calls
CONNECT_TIMEOUT_S = 1.0
IDLE_CHECK_S = 0.001              # a channel unused this long is read before a call
LEASE_IDLE_S = 0.2                # a worker lease unused this long goes back to the node


class _Channel:
    __slots__ = ("aid", "sock", "reader", "pid", "lock", "closed", "buf", "used", "lease",
                 "registry")

    def __init__(self, aid, sock, pid, lease=None):
        self.aid = aid          # the actor id, or ("lease", lease id)
        self.lease = lease      # the _Lease it serves, for a leased worker
        self.sock = sock
        self.pid = pid
        self.lock = threading.Lock()
        self.reader = None
        self.closed = False
        self.buf = bytearray()      # calls not sent yet (``flush``)
        self.used = time.monotonic()    # when the last call went
        self.registry = 0       # the custom serializer registry version the worker got here


class _Lease:
    """A worker the node leased to this driver for tasks of one resource
    shape (``_node_leases``): one call at a time goes straight to it."""

    __slots__ = ("lid", "shape", "address", "pid", "fn_keys", "ch", "busy", "revoked",
                 "returned", "used")

    def __init__(self, lid, shape, pid, address, fn_keys):
        self.lid = lid
        self.shape = shape
        self.pid = pid
        self.address = address
        self.fn_keys = set(fn_keys)     # functions the worker has the code of
        self.ch = None
        self.busy = False       # a call is out (its result not here yet)
        self.revoked = False    # the node wants it back: returned once not busy
        self.returned = False
        self.used = time.monotonic()


class DirectCalls:
    def __init__(self, client, token: bytes):
        self.client = client
        self.token = token
        self.enabled = os.environ.get(ENV, "1") != "0"
        self.channels: dict = {}      # actor id -> _Channel
        self.retry_at: dict = {}      # actor id -> (monotonic time, back-off): a connect failed
        self.routed: dict = {}        # actor id -> time asked last: calls went through the node
        self.pending: dict = {}       # result oid -> _Channel of its call
        self.unsent: set = set()      # channels with calls queued (``flush``)
        self._lock = threading.Lock()
        self.leases: dict = {}        # resource shape -> _Lease
        self.by_lid: dict = {}        # lease id -> _Lease
        self.lease_lock = threading.Lock()
        self.to_close: list = []      # channels of leases given back (closed by the io thread)

    # -- calling -------------------------------------------------------------------------
    def call(self, spec, n: int) -> bool:
        """Send the call straight to its actor if it may go; False: send it
        through the node instead (nothing was sent)."""
        aid = spec[S.ACTOR_ID]
        ch = self.channels.get(aid)
        now = time.monotonic()
        if ch is not None and now - ch.used > IDLE_CHECK_S:
            # Quiet for a while: read what came (an actor that died since
            # closed it, and this call then goes to the node, which queues
            # it for the restarted actor instead of failing it as lost).
            ch.reader.poll_now()
            if ch.closed:
                ch = None
        if ch is None:
            ch = self._open(aid)
            if ch is None:
                return False
        ch.used = now
        if aid in self.routed and not self._routed_done(aid):
            return False
        tid = spec[S.TASK_ID]
        oids = [tid + i.to_bytes(2, "little") for i in range(n)]
        # Queued, like a submit: it leaves when a get waits for it, with the
        # next message to the node, or when the io thread flushes (within
        # 2 ms: the registration below wakes it), so a burst of calls goes
        # out in a few writes.
        # One frame for both: the worker runs the spec, the node registers it.
        frame = P.encode((M.DIRECT_CALL, spec, ch.pid))
        with _gate:
            ok, broke = self._enqueue(ch, frame, oids)
            if broke:
                for oid in oids:
                    self.pending.pop(oid, None)
                self._lost(ch, None, force=True)
            if not ok or broke:
                return False
            self.client.send_later_frame(frame)
        return True

    def call_task(self, spec, n: int, blob) -> bool:
        """Send the task to the worker leased for its shape, if this
        process holds one that is free; False: send it through the node
        (nothing was sent).  ``blob``: its function's code (the first call
        of a function on a lease carries it)."""
        lease = self.leases.get(spec[S.RESOURCES])
        if lease is None:
            return False
        # All of it in the gate: a Ctrl-C must not leave the lease taken.
        with _gate:
            lock = self.lease_lock
            with lock:
                if lease.busy:
                    # More than one task of this shape at a time: a burst,
                    # which the node spreads over all its workers better.
                    # The lease goes back once its call is done (the io
                    # thread reads that result soon: ``return_idle``).
                    lease.revoked = True
                    self.client.arm_io()
                if lease.busy or lease.returned or lease.revoked:
                    return False
                lease.busy = True
            ch = lease.ch
            now = time.monotonic()
            if ch is None:
                ch = self._open_lease(lease)
                if ch is None:
                    return False
            elif now - ch.used > IDLE_CHECK_S:
                ch.reader.poll_now()        # its worker may have died since (then: ``_lost``)
            lease.used = ch.used = now
            tid = spec[S.TASK_ID]
            pending = self.pending
            oids = [tid + i.to_bytes(2, "little") for i in range(n)]
            key = spec[S.FN_KEY]
            node_frame = frame = P.encode((M.DIRECT_CALL, spec, lease.lid))
            if key not in lease.fn_keys:
                frame = P.encode((M.DIRECT_CALL, spec, lease.lid, blob))
            # Under the lease's lock: its result (read by another thread)
            # may give the lease back, which must reach the node after
            # this registration.
            with lock:
                ok, broke = self._enqueue(ch, frame, oids)
                if ok and not broke:
                    lease.fn_keys.add(key)
                    self.client.send_later_frame(node_frame)
                else:
                    lease.busy = False
            if broke:
                for oid in oids:
                    pending.pop(oid, None)
                self._lost(ch, None, force=True)
        return ok and not broke

    def _open_lease(self, lease):
        try:
            sock, info, frames = self._connect(lease.address)
        except Exception:
            info = None
        if info is None or info.get("refused"):
            if info is not None:
                sock.close()
            with _gate, self.lease_lock:
                back = not lease.returned
                lease.returned = True
                lease.busy = False
            if back:
                self._give_back(lease)
            return None
        with self._lock:
            ch = lease.ch = self._channel(("lease", lease.lid), sock, info["pid"], frames, lease)
        return ch

    def on_lease(self, msg) -> None:
        """(the node's reader) LEASE_GRANTED or LEASE_REVOKE."""
        if msg[0] == M.LEASE_GRANTED:
            lid, shape, pid, address, fn_keys = msg[1:6]
            shape = tuple(tuple(r) for r in shape)
            lease = _Lease(lid, shape, pid, address, fn_keys)
            if not self.enabled or shape in self.leases or self.client._closing:
                lease.returned = True
                self._give_back(lease)
                return
            self.by_lid[lid] = lease
            self.leases[shape] = lease
            return
        lease = self.by_lid.get(msg[1])
        if lease is None:
            return
        with _gate, self.lease_lock:
            lease.revoked = True
            if lease.busy or lease.returned:
                return
            lease.returned = True
        self._give_back(lease)

    def _give_back(self, lease, close=True) -> None:
        """LEASE_RETURN (``lease.returned`` set by the caller): no call goes
        to it from now on."""
        if self.leases.get(lease.shape) is lease:
            del self.leases[lease.shape]
        self.by_lid.pop(lease.lid, None)
        try:
            self.client.send_later((M.LEASE_RETURN, lease.lid))
        except Exception:
            pass        # the node is gone: so is the lease
        if close and lease.ch is not None:
            self.to_close.append(lease.ch)
            self.client.arm_io()

    def return_idle(self) -> None:
        """(io thread, when quiet) Give back leases unused for a while, and
        close the channels of those given back."""
        now = time.monotonic()
        for lease in list(self.leases.values()):
            if lease.revoked and lease.busy and lease.ch is not None:
                lease.ch.reader.poll_now()      # its result gives it back
                continue
            if now - lease.used < LEASE_IDLE_S:
                continue
            with _gate, self.lease_lock:
                if lease.busy or lease.returned:
                    continue
                lease.returned = True
            self._give_back(lease)
        to_close = self.to_close
        while to_close:
            ch = to_close.pop()
            if ch.buf:
                self._flush_channel(ch)
            self._lost(ch, None)

    def _enqueue(self, ch, frame, oids=()) -> tuple:
        """Queue a call's ``frame`` on ``ch`` (the caller is in the gate),
        after the serializer registry if it changed since the last call
        there; (queued, broke): the channel was closed, or broke when a
        full queue was written out (its calls are then the node's)."""
        with ch.lock:
            if ch.closed:
                return False, False
            pending = self.pending
            for oid in oids:
                pending[oid] = ch       # before the send: the answer may be read at once
            if ch.registry != self.client._serializers_sent:
                ch.buf += self._registry_frame(ch)
            ch.buf += frame
            self.unsent.add(ch)
            if len(ch.buf) >= FLUSH_BYTES and not self._write(ch, False):
                return True, True
        return True, False

    def _registry_frame(self, ch) -> bytes:
        """The custom serializer registry, ahead of a call on ``ch`` (the
        node forwards it to the worker too, but on another connection: a
        direct call could overtake it)."""
        ch.registry = self.client._serializers_sent
        return P.encode((M.SERIALIZERS, ser.registry_snapshot()))

    def went_through_node(self, aid) -> None:
        """A call of ``aid`` goes through the node: the next direct one
        waits until the node has finished it, and the direct ones queued
        here go first (into the worker's socket: it runs them before calls
        that come through the node)."""
        self.routed.setdefault(aid, 0.0)
        ch = self.channels.get(aid)
        if ch is not None and ch.buf:
            self._flush_channel(ch)

    def _routed_done(self, aid) -> bool:
        now = time.monotonic()
        if now - self.routed.get(aid, 0.0) < ASK_EVERY_S:
            return False
        self.routed[aid] = now
        if self.client.query(P.Q.CALLS_PENDING, aid):
            return False
        self.routed.pop(aid, None)
        return True

    def _write(self, ch, block: bool) -> bool:
        """Send ``ch``'s queued calls (the caller holds ``ch.lock``, in the
        gate: never half a frame on the stream); ``block=False``: what the
        socket takes now (the worker reads while it runs a long call too,
        see ``_direct_server``), so ``.remote()`` never waits for an actor.
        False if the channel broke (its calls are then the node's: ``_lost``)."""
        buf = ch.buf
        try:
            if block:
                ch.sock.sendall(buf)
                n = len(buf)
            else:
                try:
                    n = ch.sock.send(buf, _DONTWAIT)
                except BlockingIOError:
                    n = 0
        except OSError:
            ch.closed = True
            return False
        del buf[:n]
        if not buf:
            self.unsent.discard(ch)
        return True

    def _flush_channel(self, ch, block=True) -> None:
        with _gate:
            with ch.lock:
                broke = ch.buf and not ch.closed and not self._write(ch, block)
            if broke:
                self._lost(ch, None, force=True)

    def flush(self) -> None:
        """Send every channel's queued calls, as far as the sockets take
        them now."""
        for ch in list(self.unsent):
            self._flush_channel(ch, False)

    # -- channels ------------------------------------------------------------------------
    def _open(self, aid):
        now = time.monotonic()
        retry = self.retry_at.get(aid)
        if retry is not None and now < retry[0]:
            return None
        with self._lock:
            ch = self.channels.get(aid)
            if ch is not None:
                return ch
            try:
                sock, info, frames = self._connect(address_for(aid))
            except Exception:
                # Not serving (yet): its constructor runs, it restarts, or it
                # lives on another node.
                delay = min(LAST_RETRY_S, retry[1] * 2) if retry is not None else FIRST_RETRY_S
                self.retry_at[aid] = (time.monotonic() + delay, delay)
                return None
            if info.get("refused"):
                # The actor lives on another node of this host: its calls go
                # through the nodes for good.
                sock.close()
                self.retry_at[aid] = (float("inf"), LAST_RETRY_S)
                return None
            self.retry_at.pop(aid, None)
            return self._channel(aid, sock, info["pid"], frames)

    def _connect(self, address):
        client = self.client
        hello = (M.HELLO, "caller", os.getpid(), client.node_id, client.cid)
        return connect_peer(address, self.token, hello, timeout=CONNECT_TIMEOUT_S)

    def _channel(self, key, sock, pid, frames, lease=None):
        ch = _Channel(key, sock, pid, lease)
        ch.reader = SocketReader(sock, frames, lambda msg: self._on_result(msg, ch),
                                 lambda exc: self._lost(ch, exc))
        self.channels[key] = ch
        return ch

    def _on_result(self, msg, ch) -> None:
        """DIRECT_RESULT: keep the inline results this process holds refs to
        (a get takes them there), and stop waiting for them."""
        if msg[0] != M.DIRECT_RESULT:
            return
        lease = ch.lease
        if lease is not None:
            # Its one call is done: the next may go (or it goes back).
            with _gate, self.lease_lock:
                lease.busy = False
                back = lease.revoked and not lease.returned
                if back:
                    lease.returned = True
            if back:
                self._give_back(lease)
        client = self.client
        pop = self.pending.pop
        keep = []
        for _tid, results, retryable in msg[1]:
            for r in results:
                # Only results still waited for here: after a cancel the
                # node's answer is the one that counts (``forget_call``).
                if pop(r[0], None) is not None and not retryable and type(r[2]) is bytes:
                    keep.append(r)
        if keep:
            with client._refs_lock:
                refs = client.local_refs
                known = client.known_values
                for oid, kind, data, _contained in keep:
                    if oid in refs:
                        known[oid] = (kind, data)

    def _lost(self, ch, exc, force=False) -> None:
        """The channel broke (the actor died, restarted or was killed): its
        calls in flight are read from the node, which has them."""
        with ch.lock:
            if ch.closed and not force:
                return
            ch.closed = True
            ch.buf.clear()
        self.unsent.discard(ch)
        if self.channels.get(ch.aid) is ch:
            del self.channels[ch.aid]
        lease = ch.lease
        if lease is not None:
            # Its worker died (the node retries or fails the call it had).
            with _gate, self.lease_lock:
                back = not lease.returned
                lease.returned = True
            if back:
                self._give_back(lease, close=False)
        else:
            self.retry_at[ch.aid] = (time.monotonic() + FIRST_RETRY_S, FIRST_RETRY_S)
            self.routed[ch.aid] = 0.0
        pending = self.pending
        for oid in [oid for oid, c in list(pending.items()) if c is ch]:
            pending.pop(oid, None)
        ch.reader.close()
        try:
            ch.sock.close()
        except OSError:
            pass

    # -- results -------------------------------------------------------------------------
    def await_results(self, oids, timeout) -> None:
        """Wait for the results of direct calls among ``oids`` (then in
        ``known_values``, or to be read from the node)."""
        pending = self.pending
        deadline = None if timeout is None else time.monotonic() + timeout
        for oid in oids:
            ch = pending.get(oid)
            if ch is None:
                continue
            if ch.buf:
                self._flush_channel(ch)
            if not ch.reader.wait_until(lambda: oid not in pending, deadline):
                if oid in pending and not ch.closed:
                    raise GetTimeoutError(
                        f"get timed out after {timeout} s waiting for {len(oids)} object(s); "
                        f"the tasks making them are still pending or running")

    def forget_call(self, oid) -> None:
        """Read the outcome of the call making ``oid`` from the node (it was
        cancelled: the node decides it, even if its result came already)."""
        # The call's returns are ``tid`` + 0, 1, ...: each is forgotten here
        # (a walk that stops at the first index this process has nothing
        # for, instead of a scan of every result it keeps).
        tid = oid[:-2]
        pending = self.pending
        client = self.client
        known = client.known_values
        with client._refs_lock:
            pending.pop(oid, None)
            known.pop(oid, None)
            for i in range(0x10000):
                other = tid + i.to_bytes(2, "little")
                if other == oid:
                    continue
                kept = known.pop(other, None)
                if pending.pop(other, None) is None and kept is None:
                    break

    def send_queued(self, oids) -> None:
        """Send the queued calls that make ``oids`` (blocking: the worker
        reads while busy)."""
        pending = self.pending
        for ch in {pending.get(oid) for oid in oids} - {None}:
            if ch.buf:
                self._flush_channel(ch)

    def poll(self) -> None:
        """(io thread, when quiet) read results nobody waits for."""
        for ch in list(self.channels.values()):
            ch.reader.poll_now()

    def close(self) -> None:
        """Send what is queued (the node has registered those calls: they
        must reach their actor; its worker reads while busy), then close."""
        for ch in list(self.unsent):
            try:
                ch.sock.settimeout(CLOSE_FLUSH_S)
            except OSError:
                continue
            self._flush_channel(ch)
        for ch in list(self.channels.values()):
            with ch.lock:
                ch.closed = True
            ch.reader.close()
            try:
                ch.sock.close()
            except OSError:
                pass
        self.channels.clear()
        self.pending.clear()
