"""A process's connection to its node: the client half of the runtime.

Drivers and workers both talk to the node through one ``CoreClient``:

    caller threads ── send (one lock) ───────────────────────────►  node
       submits and ref ops queue, ride with the next send,
       or are flushed by the miniray-io thread
    SocketReader.read ◄── REPLY / EXECUTE / CANCEL_TASK / ... ────  node
       └─ _handle: REPLY       -> the waiting caller's slot (by request id)
                   SERIALIZERS -> the serializer registry
                   BAD_FRAME   -> stderr ("miniray: ...")
                   OUTPUT      -> a task's prints, to sys.stdout/err (``_task_output``)
                   FORGET      -> arena places given up (``_client_places``)
                   the rest    -> ``on_push`` (the worker's task queue)

Objects (put, get, wait, the arena) are the ``ObjectsClient`` half, in
``_client_objects``.

Who reads: one ``SocketReader`` (``_client_reader``) owns the receiving
side, with one recv + parse + dispatch method.  The thread that waits (for
its reply, or a worker for its next task) calls it itself when no other
thread is reading, and the others follow (leader/follower).  So a sync
``get`` sleeps in ``recv`` and the kernel wakes it directly: no thread
hand-off on the round trip.  The background ``miniray-io`` thread flushes
queued messages, until something needs replies while nobody waits
(futures, async and threaded actors): then it leads the reads for good.

Interrupts: KeyboardInterrupt in a driver and a task cancel in a worker
pass one gate (``_client_gate.deferred_interrupts``): on the main thread
everything here that changes shared state (sending a frame, taking queued
messages, a read and its dispatch, ref counts, decoding with its pins and
imports, a write into the arena) runs inside it, and an interrupt lands
only where the client waits.

Requests carry an id; fire-and-forget messages (SUBMIT, PUT_INLINE, SEAL,
REFS) need no reply: ids are made here, so a submit is one ``send``.

Reference counting: ``ObjectRef`` instances count per process here; the node
hears INCREF/DECREF only when a count crosses zero.  Those ops, and UNPINs
from collected zero-copy views, queue in a deque that rides along with the
next message (or is flushed by the io thread within 0.2 s), so dropping
refs costs no syscall.  A dropped ref only appends its id to ``_drops`` (one
C call: ``ObjectRef.__del__`` runs anywhere, even inside this module); the
counts go down when queued ops are taken for sending.
"""
from __future__ import annotations

import itertools
import os
import select
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future

from . import _call_site, _client_gate
from . import _protocol as P
from . import _serialization as ser
from ._client_gate import gate as _gate
from ._client_objects import ObjectsClient, as_raisable
from ._client_direct import DirectCalls
from ._client_places import Places
from ._client_reader import SocketReader
from ._ids import set_ref_tracker
from ._store.arena import Arena
from ._task_output import show as show_output
from ._transport import connect_client
from .exceptions import NodeDiedError

M = P.M
_encode = P.encode
VALUE, ERROR = P.K.VALUE, P.K.ERROR
INCREF, DECREF, UNPIN = P.R.INCREF, P.R.DECREF, P.R.UNPIN
LATER_LIMIT = 256 * 1024      # flush queued submits beyond this many bytes
LATER_DELAY_MS = 2            # longest a queued submit waits for a flush
LATER_ACTIVE = 0.1            # seconds after a submit the io thread keeps polling briefly


class _Reply:
    """A one-shot slot filled by whichever thread reads the reply."""

    __slots__ = ("done", "ok", "payload")

    def __init__(self):
        self.done = False
        self.ok = None
        self.payload = None

    def __call__(self, ok, payload):
        self.ok = ok
        self.payload = payload
        self.done = True


class CoreClient(ObjectsClient):
    def __init__(self, address: str, token: bytes, role: str, *, worker_id=None, info=None,
                 on_push=None):
        sock, welcome, fds, early, frames = connect_client(
            address, token, (M.HELLO, role, os.getpid(), worker_id, info))
        if not fds:
            sock.close()
            if not address.startswith("unix:"):
                raise ConnectionError(
                    f"{address} is a node's TCP address, which only other nodes use: a driver "
                    f"attaches to the node of its own host (its store is shared memory), with "
                    f"init(address='auto') or the cluster's HEAD:PORT on a host that runs a node")
            raise NodeDiedError("the node did not pass its object store to this process")
        self.sock = sock
        self.welcome = welcome
        self.role = role
        self.address = address
        self.node_id = welcome["node_id"]
        self.cid = welcome.get("cid")
        self.token = token
        self.job_id = welcome["job_id"]
        self.inline_threshold = welcome["inline_threshold"]
        self.arena = Arena(fds[0], welcome["arena_size"])
        for extra in fds[1:]:
            os.close(extra)
        self._send_lock = threading.Lock()
        self._later = bytearray()     # frames from send_later, not yet sent
        self._soon = deque()          # frames from send_nowait that found the lock taken
        # FORGETs from the node, handled by the io thread only: a read may run
        # in a signal handler (a worker's poke) on a thread that holds the
        # places' lock (``_client_places``).
        self._forgets = deque()
        self._last_later = 0.0
        self._io_napping = True       # the io thread sleeps in a long poll: wake it
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._refs_lock = threading.RLock()
        self._pending: dict = {}
        self._dropped: dict = {}
        self._rid = itertools.count(1)
        self.local_refs: dict = {}
        # What this process knows about objects it holds refs to: inline
        # values (immutable, so a get needs no round trip) and readiness (so
        # a wait on ready refs needs none; an object whose value is kept is
        # ready, and joins ``known_ready`` only once it is waited on: a get
        # of a million small results does not pay a set entry each).
        # Dropped with the last ref.
        self.known_values: dict = {}
        self.known_ready: set = set()
        self._ops: deque = deque()      # ref ops for the node: (RefOp, oid)
        # Arena objects this process may read without asking (``_client_places``).
        self.places = Places(self._ops)
        # ObjectRefs (and views) gone, not counted down yet: ``remove`` is
        # this deque's append, one C call, so ``ObjectRef.__del__`` runs no
        # Python code of ours that an interrupt could cut in half.
        self._drops: deque = deque()
        self.remove = self._drops.append
        self.on_push = on_push
        self.on_quiet = None        # what the io thread also does on its ticks (a worker's)
        self.direct = DirectCalls(self, token)      # actor calls that skip the node
        self.record_sites = _call_site.enabled()    # RAY_record_ref_creation_sites
        self.broken: BaseException | None = None
        self.registered_fns: set = set()
        self._serializers_sent = 0
        if welcome.get("serializers"):
            ser.apply_registry_snapshot(welcome["serializers"])
            self._serializers_sent = ser.registry_version()
        self._closing = False
        self._reader = SocketReader(sock, frames, self._handle, self._mark_broken)
        # A driver's Ctrl-C goes through the gate; a worker installs the gate
        # itself, with its cancel as what a SIGINT does.
        self._owns_gate = role == "driver" and _client_gate.install()
        self._resend_sigint = False       # the gate asked for a SIGINT again
        _gate.rearm = self._rearm_sigint
        for msg in early:
            self._handle(msg)
        self._io = threading.Thread(target=self._io_loop, name="miniray-io", daemon=True)
        self._io.start()
        set_ref_tracker(self)

    # -- sending -----------------------------------------------------------------------
    def send(self, msg) -> None:
        """Send now, with everything queued before it.  Taking the queue
        and writing it are one step inside the gate: an interrupt between
        the two would lose the queued submits and ref ops, one inside
        ``sendall`` would leave half a frame on the stream."""
        frame = _encode(msg)
        if self.direct.unsent:
            self.direct.flush()     # calls the node may be asked about next
        with _gate:
            with self._send_lock:
                if self.broken is not None:
                    raise type(self.broken)(str(self.broken))
                if self._later or self._ops or self._drops or self._soon:
                    frame = self._take_pending() + frame
                err = self._write(frame)
            if err is not None:
                # Outside the lock: marking broken runs callbacks that may send.
                raise self._mark_broken(err) from None

    def _write(self, data):
        """``sendall`` (caller holds ``_send_lock``); returns the OSError or None."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            return exc
        return None

    def send_later(self, msg) -> None:
        """Queue a message that needs no prompt answer (a task submission).

        It leaves with the next ``send`` (a ``get`` right after a submit costs
        one syscall for both), when the queue grows past LATER_LIMIT, or when
        the io thread wakes for it: a burst of submits reaches the node as a
        few large writes instead of one wake-up per task.
        """
        self.send_later_frame(_encode(msg))

    def send_later_frame(self, frame) -> None:
        """``send_later`` of a message encoded already."""
        err = None
        with _gate:
            with self._send_lock:
                if self.broken is not None:
                    raise type(self.broken)(str(self.broken))
                later = self._later
                later += frame
                if len(later) >= LATER_LIMIT:
                    err = self._write(self._take_pending())
                    if err is None:
                        return
            if err is not None:
                raise self._mark_broken(err) from None
            self.arm_io()

    def arm_io(self) -> None:
        """Have the io thread tick every LATER_DELAY_MS for a while (it
        flushes what waits, and runs ``on_quiet``)."""
        self._last_later = time.monotonic()
        if self._io_napping:
            # The io thread sleeps in a long poll: wake it once; it then
            # polls briefly while submits keep coming, so a busy submitter
            # pays no wake-up per message.
            self._io_napping = False
            os.eventfd_write(self._wake, 1)

    def send_nowait(self, msg) -> None:
        """Send ``msg`` now if no thread is sending, else queue it for the
        io thread (woken at once); it goes before anything sent later.
        Never waits for the send lock, so code that may run while this very
        thread holds it (a finalizer, a signal handler) can call it: a
        worker's prints (``_task_output``)."""
        frame = _encode(msg)
        err = None
        with _gate:
            if not self._send_lock.acquire(False):
                self._soon.append(frame)
                os.eventfd_write(self._wake, 1)
                return
            try:
                if self.broken is not None:
                    raise type(self.broken)(str(self.broken))
                if self._later or self._ops or self._drops or self._soon:
                    frame = self._take_pending() + frame
                err = self._write(frame)
            finally:
                self._send_lock.release()
            if err is not None:
                raise self._mark_broken(err) from None

    def _take_soon(self) -> bytes:
        soon = self._soon
        pop = soon.popleft
        parts = []
        while soon:
            parts.append(pop())
        return b"".join(parts)

    def _take_pending(self) -> bytes:
        """Queued submits, then queued ref ops.  Releases go after the
        submits queued before them: a submit pins its args before the
        node can see this process drop them."""
        data = bytes(self._later)
        self._later.clear()
        if self._soon:
            data = self._take_soon() + data
        if self._drops:
            self._count_drops()
        if self._ops:
            data += self._drain_ops()
        return data

    def flush_later(self, wait=True) -> None:
        """Write what is queued (``wait=False``: unless another thread is
        sending right now, which takes it along anyway)."""
        err = None
        if self.direct.unsent:
            self.direct.flush()
        with _gate:
            if not self._send_lock.acquire(wait):
                return
            try:
                if (self._later or self._ops or self._drops or self._soon) and \
                        self.broken is None:
                    err = self._write(self._take_pending())
            finally:
                self._send_lock.release()
            if err is not None:
                self._mark_broken(err)

    def flush_refs(self) -> None:
        if (self._ops or self._later or self._drops or self._soon) and self.broken is None:
            self.flush_later(wait=False)

    def _drain_ops(self) -> bytes:
        ops = self._ops
        batch = []
        pop = ops.popleft
        while ops:
            batch.append(pop())
        return _encode((M.REFS, batch))

    def check_serializers(self) -> None:
        """Ship custom serializer registrations before data that may use them."""
        version = ser.registry_version()
        if version != self._serializers_sent:
            with _gate:
                self.send((M.SERIALIZERS, ser.registry_snapshot()))
                self._serializers_sent = version

    def request(self, build, timeout=None):
        """Send ``build(rid)`` and wait for the REPLY; returns (ok, payload).

        On timeout returns None after telling the node to drop the request.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with _gate:
            rid = next(self._rid)
            slot = _Reply()
            self._pending[rid] = slot
            msg = build(rid)
            try:
                self.send(msg)
                got = self._reader.wait_until(slot_done(slot), deadline)
            except BaseException:
                if not self._abandon(rid, msg):
                    self._release_reply(msg, slot)
                raise
            if got or not self._abandon(rid, msg):
                # Answered (perhaps just as the wait timed out: take the reply,
                # it may hold pins only its receiver can release).
                self._reader.wait_until(slot_done(slot))
                return slot.ok, slot.payload
            return None

    def _abandon(self, rid, msg) -> bool:
        """Stop waiting for ``rid``; False if its reply was already handed
        to the caller's slot.  Otherwise the node answers DROP_REQ with one
        (late or empty) REPLY, and ``_dropped`` says what that reply pins."""
        with _gate:
            if msg[0] == M.GET:
                self._dropped[rid] = P.ids_of(msg[2])
            if self._pending.pop(rid, None) is None:
                self._dropped.pop(rid, None)
                return False
            try:
                self.send((M.DROP_REQ, rid))
            except BaseException:
                pass
            return True

    def _release_reply(self, msg, slot) -> None:
        """A GET reply nobody will decode: release the views it pinned."""
        if msg[0] != M.GET:
            return
        try:
            self._reader.wait_until(slot_done(slot), time.monotonic() + 1.0)
        except BaseException:     # a second interrupt: the first one is on its way
            pass
        if slot.done and slot.ok:
            self.release_payloads(zip(P.ids_of(msg[2]), slot.payload))

    def release_payloads(self, pairs) -> None:
        """Release the arena views of ``(oid, (kind, data))`` payloads that
        a reply handed out but nobody decoded."""
        for oid, payload in pairs:
            if payload is not None and type(payload[1]) is not bytes:
                self._unpin(oid)

    # -- the ref tracker (called from ObjectRef) -------------------------------------------
    # In the gate: a count changed without its INCREF/DECREF queued would
    # free an object still held, or keep one forever.  ``remove`` (see
    # __init__) only queues the id: the count goes down in _count_drops.
    def add(self, oid) -> None:
        with _gate, self._refs_lock:
            c = self.local_refs.get(oid)
            if c is None:
                self.local_refs[oid] = 1
                self._ops.append((INCREF, oid))
            else:
                self.local_refs[oid] = c + 1

    def add_owned(self, oid) -> None:
        refs = self.local_refs
        if oid not in refs:
            # A fresh id (a put, a task's return): one store, atomic, and no
            # other thread can count this id yet.  (A submit loop makes a
            # million of these.)
            refs[oid] = 1
            return
        with _gate, self._refs_lock:
            refs[oid] = refs.get(oid, 0) + 1

    def _count_drops(self) -> None:
        """Count down the refs dropped since last time, queueing DECREF for
        those gone (called as queued ops are taken, so a DECREF leaves with
        the next message as if it had been queued at once)."""
        drops = self._drops
        pop = drops.popleft
        gone = []
        with _gate, self._refs_lock:
            refs = self.local_refs
            while drops:
                oid = pop()
                c = refs.get(oid)
                if c is None:
                    continue
                if c == 1:
                    del refs[oid]
                    gone.append(oid)
                    self._ops.append((DECREF, oid))
                    self.known_values.pop(oid, None)
                    self.known_ready.discard(oid)
                else:
                    refs[oid] = c - 1
            if gone:
                # Their places go before the DECREFs leave (they are only
                # queued here): the node ends those leases at the DECREF.
                self.places.drop(*gone)

    def _unpin(self, oid) -> None:
        self._ops.append((UNPIN, oid))

    def as_future(self, ref) -> Future:
        """A Future for ``ref``'s value, filled by the io thread.  Cancelling
        it (``fut.cancel()``, or cancelling ``await ref``) drops the request
        at the node."""
        self.use_reader_thread()
        fut = Future()
        oid = ref.id
        rid = next(self._rid)
        msg = (M.GET, rid, [oid])

        def resolve(ok, payload):
            try:
                if not fut.set_running_or_notify_cancel():    # cancelled meanwhile
                    if ok:
                        self.release_payloads(zip(msg[2], payload))
                    return
                if not ok:
                    fut.set_exception(payload)
                    return
                kind, data = payload[0]
                value = self.decode(oid, kind, data)
                if kind == ERROR:
                    fut.set_exception(as_raisable(value))
                else:
                    fut.set_result(value)
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)

        with _gate:
            self._pending[rid] = resolve
            try:
                self.send(msg)
            except Exception as exc:
                self._pending.pop(rid, None)
                fut.set_exception(exc)
                return fut
        fut.add_done_callback(lambda f: f.cancelled() and self._abandon(rid, msg))
        return fut

    def _wait_remote(self, oids, num_returns, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        with _gate:
            rid = next(self._rid)
            slot = _Reply()
            self._pending[rid] = slot
            self.send((M.WAIT, rid, P.pack_ids(oids), num_returns))
            done = slot_done(slot)
            wait_until = self._reader.wait_until
            try:
                if not wait_until(done, deadline):
                    self.send((M.WAIT_NOW, rid))
                    wait_until(done)
            except BaseException:
                self._abandon(rid, (M.WAIT,))
                raise
            if not slot.ok:
                raise slot.payload
            return slot.payload

    def query(self, what, arg=None):
        ok, payload = self.request(lambda rid: (M.QUERY, rid, what, arg))
        if not ok:
            raise payload
        return payload

    def register_function(self, key, blob) -> None:
        if key not in self.registered_fns:
            self.send((M.REGISTER_FN, key, blob))
            self.registered_fns.add(key)

    # -- reading (see _client_reader) ----------------------------------------------------------
    def wait_until(self, ready, timeout=None, interruptible=True, extra=None) -> bool:
        """Wait until ``ready()`` is true, reading the socket in this thread
        when no other thread does; False on timeout (see
        ``SocketReader.wait_until``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._reader.wait_until(ready, deadline, interruptible, extra)

    def poll_now(self) -> None:
        """Read what has arrived, if nobody reads: safe in a signal handler."""
        self._reader.poll_now()

    def use_reader_thread(self) -> None:
        """From now on the io thread reads for everyone (needed when replies
        must arrive while no caller waits: futures, async/threaded actors)."""
        if not self._reader.permanent:
            self._reader.permanent = True
            os.eventfd_write(self._wake, 1)

    def _io_loop(self) -> None:
        """Flush queued messages; lead the reads for good once asked to."""
        reader = self._reader
        wake = self._wake
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        monotonic = time.monotonic
        leading = False
        forgets = self._forgets
        try:
            while not self._closing:
                if reader.permanent and not leading:
                    # Take over from a thread that leads a read right now (it
                    # steps back once its read is done), flushing meanwhile.
                    if not reader.take_lead(LATER_DELAY_MS / 1000):
                        self.flush_later()
                        continue
                    leading = True
                    poller.register(self.sock, select.POLLIN)
                # Nap (long poll) unless submits came recently; set the flag
                # before looking at the queue so send_later cannot miss it.
                self._io_napping = True
                long_nap = not (self._later or self.direct.unsent or
                                monotonic() - self._last_later < LATER_ACTIVE)
                if not long_nap:
                    self._io_napping = False
                    events = poller.poll(LATER_DELAY_MS)
                else:
                    events = poller.poll(200)
                if not events:
                    if (long_nap or self.direct.leases) and not leading:
                        # Idle 200 ms: read what arrived if nobody reads (a
                        # process busy outside miniray still answers FORGET
                        # and shows its tasks' prints).  With a worker lease,
                        # on every tick: a driver busy calling its leased
                        # worker never reads the node, which may revoke it.
                        reader.poll_now()
                    if long_nap and self.direct.channels:
                        self.direct.poll()      # results of direct calls nobody waits for
                    if self.direct.leases or self.direct.to_close:
                        self.direct.return_idle()   # worker leases unused for a while
                    if self.on_quiet is not None:
                        self.on_quiet()
                    if forgets:
                        self._answer_forgets()
                    if self._ops or self._later or self._drops or self._soon or \
                            self.direct.unsent:
                        self.flush_later()
                    continue
                for fd, _ in events:
                    if fd == wake:
                        os.eventfd_read(wake)
                        if self._resend_sigint:
                            self._resend_sigint = False
                            _client_gate.resend_sigint()
                        if forgets:
                            self._answer_forgets()
                        self.flush_later()
                    elif leading:
                        if not reader.read():
                            return           # the connection is gone (marked broken)
                        reader.wake_followers()
        except OSError as exc:
            if leading and not self._closing:
                self._mark_broken(exc)
        except BaseException as exc:  # a bug here must not vanish silently
            import traceback
            traceback.print_exc()
            self._mark_broken(exc)
        finally:
            if leading:
                reader.step_back()
            if self._closing:
                # Waiters of a reader-mode client must not outlive it.
                self._mark_broken(None)

    def _answer_forgets(self) -> None:
        """(io thread) Give up the places the node asked for: FORGOT ops,
        sent by the flush that follows."""
        forgets = self._forgets
        while forgets:
            self.places.forget(forgets.popleft())

    def _rearm_sigint(self) -> None:
        """The gate's ``rearm``: a SIGINT struck inside a finalizer; the io
        thread sends it again (see ``_client_gate``).  Signal-safe."""
        self._resend_sigint = True
        os.eventfd_write(self._wake, 1)

    def _handle(self, msg) -> None:
        """Dispatch one message from the node (called by the reader)."""
        tag = msg[0]
        if tag == M.REPLY:
            cb = self._pending.pop(msg[1], None)
            if cb is not None:
                cb(msg[2], msg[3])
            else:
                oids = self._dropped.pop(msg[1], None)
                if oids and msg[2]:
                    self.release_payloads(zip(oids, msg[3]))
        elif tag == M.SERIALIZERS:
            try:
                ser.apply_registry_snapshot(msg[1])
                self._serializers_sent = ser.registry_version()
            except Exception as exc:    # raising here would stall every later read
                _say(f"could not apply the custom serializers registered in another "
                     f"process ({type(exc).__name__}: {exc}); values using them will "
                     f"fail to decode here")
        elif tag == M.OUTPUT:
            show_output(msg, self.node_id)     # a task's prints, before its result
        elif tag == M.FORGET:
            self._forgets.append(msg[1])        # the io thread answers (FORGOT ops)
            os.eventfd_write(self._wake, 1)
        elif tag == M.LEASE_GRANTED or tag == M.LEASE_REVOKE:
            self.direct.on_lease(msg)           # a worker of our own for tasks
        elif tag == M.BAD_FRAME or tag == M.WARNING:
            # BAD_FRAME: the node could not decode or handle a frame we sent
            # (a bug on one side); it dropped that frame only, so carry on,
            # loudly.  WARNING: something the user should know (a task no
            # node can run yet).
            _say(msg[1])
        elif self.on_push is not None:
            self.on_push(msg)

    def _mark_broken(self, exc):
        if self.broken is None:
            if self._closing:
                self.broken = NodeDiedError("miniray was shut down in this process")
            else:
                self.broken = NodeDiedError(
                    "the connection to the miniray node was lost: the node daemon died or was "
                    "killed. Everything it held is gone; call miniray.shutdown() and "
                    "miniray.init() to start again." + (f" ({exc})" if exc else ""))
        pending = self._pending
        self._pending = {}
        for cb in pending.values():
            try:
                cb(False, self.broken)
            except Exception:
                pass
        if self.on_push is not None and not self._closing:
            self.on_push((M.EXIT, "node connection lost"))
        self._reader.close()
        return self.broken

    def close(self) -> None:
        self._closing = True
        set_ref_tracker(None)
        if _gate.rearm == self._rearm_sigint:
            _gate.rearm = None
        if self._owns_gate:
            _client_gate.uninstall()
        self.flush_later()
        self.direct.close()
        try:
            self.sock.shutdown(2)
        except OSError:
            pass
        os.eventfd_write(self._wake, 1)
        self._io.join(timeout=2)
        self.sock.close()
        os.close(self._wake)
        self.arena.close()


def _say(text) -> None:
    try:
        sys.stderr.write(f"miniray: {text}\n")
        sys.stderr.flush()
    except Exception:
        pass


def slot_done(slot):
    return lambda: slot.done
