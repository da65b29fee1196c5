"""A process's connection to its node: the client half of the runtime.

Drivers and workers both talk to the node through one ``CoreClient``:

    caller threads ── send (one lock) ──────────────►  node
    a waiting thread ◄── REPLY / EXECUTE / CANCEL ───  node
                     └─ REPLY -> the waiting caller (by request id)
                     └─ EXECUTE etc. -> ``on_push`` (the worker's task queue)

Who reads: the thread that waits.  A caller waiting for its reply (or a
worker waiting for its next task) reads the socket itself when no other
thread is reading, and hands what it reads to the others (leader/follower:
one condition variable, one "reading" flag).  So a sync ``get`` sleeps in
``recv`` and the kernel wakes it directly: no thread hand-off on the round
trip.  The background ``miniray-io`` thread only flushes queued messages,
until something needs replies while nobody waits (futures, async and
threaded actors): then it becomes the permanent reader (``reader mode``).

Requests carry an id; fire-and-forget messages (SUBMIT, PUT_INLINE, SEAL,
REFS) need no reply: ids are made here, so a submit is one ``send``.

Reference counting: ``ObjectRef`` instances count per process here; the node
hears INCREF/DECREF only when a count crosses zero.  Those ops, and UNPINs
from collected zero-copy views, queue in a deque that rides along with the
next message (or is flushed by the io thread within 0.2 s), so dropping
refs costs no syscall.
"""
from __future__ import annotations

import itertools
import os
import select
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future

from . import _protocol as P
from . import _serialization as ser
from ._ids import set_ref_tracker
from ._store.arena import Arena
from ._transport import connect_client
from .exceptions import (NodeDiedError, ObjectStoreFullError, RayTaskError, GetTimeoutError)

M = P.M
_encode = P.encode
VALUE, ERROR = P.K.VALUE, P.K.ERROR
INCREF, DECREF, UNPIN = 1, 2, 3
_MAIN = threading.main_thread()
_SIGINT = {signal.SIGINT}
LATER_LIMIT = 256 * 1024      # flush queued submits beyond this many bytes
LATER_DELAY_MS = 2            # longest a queued submit waits for a flush
LATER_ACTIVE = 0.1            # seconds after a submit the reader keeps polling briefly


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


class CoreClient:
    def __init__(self, address: str, token: bytes, role: str, *, worker_id=None, info=None,
                 on_push=None):
        sock, welcome, fds, early, reader = connect_client(
            address, token, (M.HELLO, role, os.getpid(), worker_id, info))
        if not fds:
            sock.close()
            raise NodeDiedError("the node did not pass its object store to this process")
        self.sock = sock
        self.welcome = welcome
        self.role = role
        self.address = address
        self.node_id = welcome["node_id"]
        self.job_id = welcome["job_id"]
        self.inline_threshold = welcome["inline_threshold"]
        self.arena = Arena(fds[0], welcome["arena_size"])
        for extra in fds[1:]:
            os.close(extra)
        self._send_lock = threading.Lock()
        self._later = bytearray()     # frames from send_later, not yet sent
        self._last_later = 0.0
        self._reader_napping = True
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._refs_lock = threading.RLock()
        self._pending: dict = {}
        self._dropped: dict = {}
        self._rid = itertools.count(1)
        self.local_refs: dict = {}
        # What this process knows about objects it holds refs to: inline
        # values (immutable, so a get needs no round trip) and readiness
        # (so a wait on ready refs needs none).  Dropped with the last ref.
        self.known_values: dict = {}
        self.known_ready: set = set()
        self._ops: deque = deque()
        self.on_push = on_push
        self.broken: BaseException | None = None
        self.registered_fns: set = set()
        self._serializers_sent = 0
        if welcome.get("serializers"):
            ser.apply_registry_snapshot(welcome["serializers"])
            self._serializers_sent = ser.registry_version()
        self._closing = False
        self._frames = reader
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._cond = threading.Condition(threading.Lock())
        self._reading = False          # a thread is reading the socket (under _cond)
        self._reader_mode = False      # the io thread reads for everyone
        self._io_thread_id = None      # ident of the thread inside _read_some
        self.deferred_interrupt = None  # set by a signal handler during _read_some
        self.critical = 0               # > 0: the main thread decodes; its interrupts wait
        # Drivers keep Python's KeyboardInterrupt; workers install a handler
        # that defers during reads, so only drivers hold SIGINT back there.
        self._guard_sigint = role == "driver"
        for msg in early:
            self._handle(msg)
        self._io = threading.Thread(target=self._io_loop, name="miniray-io", daemon=True)
        self._io.start()
        set_ref_tracker(self)

    # -- sending -----------------------------------------------------------------------
    def send(self, msg) -> None:
        """Send now, with everything queued before it."""
        frame = _encode(msg)
        with self._send_lock:
            if self.broken is not None:
                raise type(self.broken)(str(self.broken))
            if self._later or self._ops:
                frame = self._take_pending() + frame
            err = self._write(frame)
        if err is not None:
            # Outside the lock: marking broken runs callbacks that may send.
            raise self._mark_broken(err) from None

    def _write(self, data):
        """``sendall`` (caller holds ``_send_lock``); returns the OSError or
        None.  SIGINT is held back on the main thread meanwhile: a
        KeyboardInterrupt inside ``sendall`` would leave half a frame on the
        stream and the node would drop the connection."""
        main = threading.current_thread() is _MAIN
        if main:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            return exc
        finally:
            if main:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return None

    def send_later(self, msg) -> None:
        """Queue a message that needs no prompt answer (a task submission).

        It leaves with the next ``send`` (a ``get`` right after a submit costs
        one syscall for both), when the queue grows past LATER_LIMIT, or when
        the io thread wakes for it: a burst of submits reaches the node as a
        few large writes instead of one wake-up per task.
        """
        frame = _encode(msg)
        err = None
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
        self._last_later = time.monotonic()
        if self._reader_napping:
            # The io thread sleeps in a long poll: wake it once; it then
            # polls briefly while submits keep coming, so a busy submitter
            # pays no wake-up per message.
            self._reader_napping = False
            os.eventfd_write(self._wake, 1)

    def _take_pending(self) -> bytes:
        """Queued submits, then queued ref ops.  Releases go after the
        submits queued before them: a submit pins its args before the
        node can see this process drop them."""
        data = bytes(self._later)
        self._later.clear()
        if self._ops:
            data += self._drain_ops()
        return data

    def flush_later(self) -> None:
        err = None
        with self._send_lock:
            if (self._later or self._ops) and self.broken is None:
                err = self._write(self._take_pending())
        if err is not None:
            self._mark_broken(err)

    def _drain_ops(self) -> bytes:
        ops = self._ops
        batch = []
        pop = ops.popleft
        while ops:
            batch.append(pop())
        return _encode((M.REFS, batch))

    def flush_refs(self) -> None:
        if not (self._ops or self._later) or self.broken is not None:
            return
        if self._send_lock.acquire(blocking=False):
            err = None
            try:
                if self._ops or self._later:
                    err = self._write(self._take_pending())
            finally:
                self._send_lock.release()
            if err is not None:
                self._mark_broken(err)

    def check_serializers(self) -> None:
        """Ship custom serializer registrations before data that may use them."""
        version = ser.registry_version()
        if version != self._serializers_sent:
            self._serializers_sent = version
            self.send((M.SERIALIZERS, ser.registry_snapshot()))

    def request(self, build, timeout=None):
        """Send ``build(rid)`` and wait for the REPLY; returns (ok, payload).

        On timeout returns None after telling the node to drop the request.
        """
        rid = next(self._rid)
        slot = _Reply()
        self._pending[rid] = slot
        msg = build(rid)
        try:
            self.send(msg)
            got = self.wait_until(slot_done(slot), timeout)
        except BaseException:
            if not self._abandon(rid, msg):
                self._release_reply(msg, slot)
            raise
        if got or not self._abandon(rid, msg):
            # Answered (perhaps just as the wait timed out: take the reply,
            # it may hold pins only its receiver can release).
            self.wait_until(slot_done(slot))
            return slot.ok, slot.payload
        return None

    def _abandon(self, rid, msg) -> bool:
        """Stop waiting for ``rid``; False if its reply was already handed
        to the caller's slot.  Otherwise the node answers DROP_REQ with one
        (late or empty) REPLY, and ``_dropped`` says what that reply pins."""
        if msg[0] == M.GET:
            self._dropped[rid] = msg[2]
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
            self.wait_until(slot_done(slot), 1.0)
        except BaseException:
            pass
        if slot.done and slot.ok:
            for oid, (kind, data) in zip(msg[2], slot.payload):
                if type(data) is not bytes:
                    self._unpin(oid)

    # -- the ref tracker (called from ObjectRef) -------------------------------------------
    def add(self, oid) -> None:
        with self._refs_lock:
            c = self.local_refs.get(oid)
            if c is None:
                self.local_refs[oid] = 1
                self._ops.append((INCREF, oid))
            else:
                self.local_refs[oid] = c + 1

    def add_owned(self, oid) -> None:
        with self._refs_lock:
            self.local_refs[oid] = self.local_refs.get(oid, 0) + 1

    def remove(self, oid) -> None:
        with self._refs_lock:
            c = self.local_refs.get(oid)
            if c is None:
                return
            if c == 1:
                del self.local_refs[oid]
                self._ops.append((DECREF, oid))
                self.known_values.pop(oid, None)
                self.known_ready.discard(oid)
            else:
                self.local_refs[oid] = c - 1

    def _unpin(self, oid) -> None:
        self._ops.append((UNPIN, oid))

    def as_future(self, ref) -> Future:
        self.use_reader_thread()
        fut = Future()
        oids = [ref.id]

        def resolve(ok, payload):
            try:
                if not ok:
                    fut.set_exception(payload)
                    return
                kind, data = payload[0]
                value = self.decode(ref.id, kind, data)
                if kind == ERROR:
                    fut.set_exception(as_raisable(value))
                else:
                    fut.set_result(value)
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)

        rid = next(self._rid)
        self._pending[rid] = resolve
        try:
            self.send((M.GET, rid, oids))
        except BaseException as exc:
            self._pending.pop(rid, None)
            fut.set_exception(exc)
        return fut

    # -- objects -------------------------------------------------------------------------------
    def decode(self, oid, kind, data, known=False):
        """Rebuild a value from a payload.  A view of an arena object is
        pinned by the node (it came in a reply: released with UNPIN), or,
        with ``known``, by this process's own ref to it: the view counts as
        one more local ref, so the node hears DECREF only when refs and views
        are all gone."""
        if type(data) is bytes:
            return ser.loads_from(data)
        offset, size = data
        if known:
            self.add_owned(oid)
            release = self.remove
        else:
            release = self._unpin
        view = self.arena.pinned_view(offset, size, release, oid)
        try:
            return ser.loads_from(view)
        finally:
            view.release()

    def store(self, oid, sobj, kind=VALUE, hold=True):
        """Put a serialized object under ``oid``.  Returns the inline bytes
        when it went inline, else None."""
        size = ser.encoded_size(sobj)
        contained = sobj.contained_refs
        if size <= self.inline_threshold:
            data = ser.to_bytes(sobj)
            self.send_later((M.PUT_INLINE, oid, kind, data, contained))
            if hold:
                self.known_values[oid] = (kind, data)
                self.known_ready.add(oid)
            return data
        offset = self.write_arena(oid, sobj, size)
        self.send((M.SEAL, oid, kind, hold, contained))
        if hold:
            self.known_ready.add(oid)
            self.known_values[oid] = (kind, (offset, size))
        return None

    def write_arena(self, oid, sobj, size) -> int:
        """Allocate a range for ``oid`` and write ``sobj`` into it (not
        sealed yet); returns the range's offset."""
        offset, fresh_from = self.allocate(oid, size)
        view = self.arena.writable(offset, size)
        try:
            # All pages reserved already: plain contiguous shares copy faster.
            prepare = self.arena.reserver(offset, fresh_from) if fresh_from < size else None
            ser.write_to(sobj, view, prepare)
        finally:
            view.release()
        return offset

    def allocate(self, oid, size) -> tuple:
        """(offset, fresh_from): a new range for ``oid``, and from where in
        it pages may still need reserving."""
        delay = 0.01
        deadline = time.monotonic() + 2.0
        while True:
            reply = self.request(lambda rid: (M.ALLOC, rid, oid, size))
            ok, payload = reply
            if ok:
                return payload
            # Frees may be on their way (refs dropped a moment ago in this or
            # another process): give them a moment before giving up.
            if time.monotonic() > deadline:
                raise ObjectStoreFullError(str(payload))
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def get_payloads(self, oids, timeout=None) -> list:
        reply = self.request(lambda rid: (M.GET, rid, oids), timeout)
        if reply is None:
            raise GetTimeoutError(
                f"get timed out after {timeout} s waiting for {len(oids)} object(s); "
                f"the tasks making them are still pending or running")
        ok, payload = reply
        if not ok:
            raise payload
        return payload

    def get_values(self, oids, timeout=None) -> list:
        known = self.known_values
        fetched = {}
        missing = [oid for oid in oids if oid not in known]
        if missing:
            if len(missing) > 1:
                missing = list(dict.fromkeys(missing))
            payloads = self.get_payloads(missing, timeout)
            fetched = dict(zip(missing, payloads))
            self._learn(missing, payloads)
        values = []
        error = None
        # Decoding may import numpy and creates the pins: a cancel landing in
        # the middle would leak a pin or leave a module half imported, so the
        # worker's SIGINT handler defers while ``critical``.
        main = threading.current_thread() is _MAIN
        if main:
            self.critical += 1
        try:
            for oid in oids:
                payload = fetched.pop(oid, None)
                if payload is not None:
                    kind, data = payload
                    value = self.decode(oid, kind, data)          # pinned by the node
                else:
                    kind, data = known[oid]
                    value = self.decode(oid, kind, data, known=True)  # pinned by our ref
                if kind == ERROR and error is None:
                    error = value
                values.append(value)
        finally:
            if main:
                self.critical -= 1
            for oid, (kind, data) in fetched.items():    # not decoded: release
                if type(data) is not bytes:
                    self._unpin(oid)
        if main and self.deferred_interrupt is not None and not self.critical:
            self._raise_deferred()
        if error is not None:
            raise as_raisable(error)
        return values

    def _learn(self, oids, payloads) -> None:
        refs = self.local_refs
        known = self.known_values
        ready = self.known_ready
        for oid, payload in zip(oids, payloads):
            if oid in refs:
                ready.add(oid)
                known[oid] = payload

    def wait(self, oids, num_returns, timeout):
        ready = self.known_ready
        if ready.issuperset(oids):
            return range(len(oids))
        local = [i for i, oid in enumerate(oids) if oid in ready]
        if len(local) >= num_returns:
            return local
        positions = self._wait_remote(oids, num_returns, timeout)
        refs = self.local_refs
        for i in positions:
            if oids[i] in refs:
                ready.add(oids[i])
        return positions

    def _wait_remote(self, oids, num_returns, timeout):
        rid = next(self._rid)
        slot = _Reply()
        self._pending[rid] = slot
        self.send((M.WAIT, rid, oids, num_returns))
        done = slot_done(slot)
        try:
            if not self.wait_until(done, timeout):
                self.send((M.WAIT_NOW, rid))
                self.wait_until(done)
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

    # -- reading ---------------------------------------------------------------------------
    def wait_until(self, ready, timeout=None) -> bool:
        """Wait until ``ready()`` is true, reading the socket in this thread
        when no other thread is; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._cond
        while True:
            leading = False
            try:
                with cond:
                    while True:
                        if ready():
                            return True
                        if not self._reading and not self._reader_mode:
                            # In this order, an interrupt between the two
                            # lines cannot leave the flag set with no reader.
                            leading = True
                            self._reading = True
                            break
                        if deadline is None:
                            cond.wait()
                        else:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                return False
                            cond.wait(left)
                if not self._read_some(deadline):
                    return ready()
            finally:
                if leading:
                    with cond:
                        self._reading = False
                        cond.notify_all()
            if self.deferred_interrupt is not None and not self.critical and \
                    threading.current_thread() is _MAIN:
                self._raise_deferred()

    def _read_some(self, deadline) -> bool:
        """One recv + dispatch; False on timeout or a dead socket.

        On a driver's main thread, where KeyboardInterrupt can strike
        between any two bytecodes, it waits for data with SIGINT open, then
        receives and hands out with SIGINT held back: an interrupt can cut
        the wait short but never drop bytes already received (replies other
        threads wait for).  A worker's SIGINT handler defers instead (see
        reading_in)."""
        if self.broken is not None:
            return False
        sock = self.sock
        self._io_thread_id = threading.get_ident()
        guard = self._guard_sigint and threading.current_thread() is _MAIN
        try:
            frames = self._frames
            if frames.ready:
                # Left by an interrupted reader: hand them out first.
                frames.dispatch(self._handle)
                return True
            if deadline is not None or guard:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                # poll, not select: select fails for descriptors >= 1024.
                if not self._poller.poll(-1 if left is None else left * 1000):
                    return False
            if guard:
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
            try:
                try:
                    n = frames.recv_from(sock)
                except OSError as exc:
                    self._mark_broken(exc)
                    return False
                if not n:
                    self._mark_broken(None)
                    return False
                frames.push_scratch(n)
                frames.dispatch(self._handle)
            finally:
                if guard:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
            return True
        finally:
            self._io_thread_id = None

    def _raise_deferred(self) -> None:
        interrupt, self.deferred_interrupt = self.deferred_interrupt, None
        try:
            raise interrupt
        finally:
            del interrupt     # no frame <-> traceback cycle keeping args alive

    def reading_in(self, thread_id) -> bool:
        """Is ``thread_id`` inside a socket read right now?  (A signal handler
        on that thread must then defer its exception: see deferred_interrupt.)"""
        return self._io_thread_id == thread_id

    def poll_now(self) -> None:
        """Read whatever has arrived, if no other thread is reading.  Safe in
        a signal handler: it never blocks (a worker busy in a task is poked
        with SIGUSR1 so that it sees a CANCEL_TASK)."""
        cond = self._cond
        if not cond.acquire(blocking=False):
            return
        try:
            if self._reading:
                return
            self._reading = True
        finally:
            cond.release()
        try:
            while True:      # drain: a cancel may sit behind queued calls
                try:
                    n = self._frames.recv_from(self.sock, socket.MSG_DONTWAIT)
                except OSError:
                    n = 0
                if not n:
                    break
                self._frames.push_scratch(n)
            self._frames.dispatch(self._handle)
        finally:
            with cond:
                self._reading = False
                cond.notify_all()

    def use_reader_thread(self) -> None:
        """From now on the io thread reads for everyone (needed when replies
        must arrive while no caller waits: futures, async/threaded actors)."""
        if not self._reader_mode:
            self._reader_mode = True
            os.eventfd_write(self._wake, 1)

    def _io_loop(self) -> None:
        """Flush queued messages; read for everyone once in reader mode."""
        wake = self._wake
        sock_fd = self.sock.fileno()
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        monotonic = time.monotonic
        reading = False
        try:
            while not self._closing:
                if self._reader_mode and not reading:
                    # Take over from a thread that leads a read right now
                    # (it steps back once its read is done), flushing what
                    # queues up meanwhile.
                    with self._cond:
                        if self._reading:
                            self._cond.wait(LATER_DELAY_MS / 1000)
                        else:
                            self._reading = True
                            reading = True
                    if not reading:
                        self.flush_later()
                        continue
                    poller.register(sock_fd, select.POLLIN)
                # Nap (long poll) unless submits came recently; set the flag
                # before looking at the queue so send_later cannot miss it.
                self._reader_napping = True
                if self._later or monotonic() - self._last_later < LATER_ACTIVE:
                    self._reader_napping = False
                    events = poller.poll(LATER_DELAY_MS)
                else:
                    events = poller.poll(200)
                if not events:
                    if self._ops or self._later:
                        self.flush_later()
                    continue
                for fd, _ in events:
                    if fd == wake:
                        os.eventfd_read(wake)
                        self.flush_later()
                    elif reading:
                        n = self._frames.recv_from(self.sock)
                        if not n:
                            self._mark_broken(None)
                            return
                        self._frames.push_scratch(n)
                        self._frames.dispatch(self._handle)
                        with self._cond:
                            self._cond.notify_all()
        except OSError as exc:
            if reading and not self._closing:
                self._mark_broken(exc)
        except BaseException as exc:  # a bug here must not vanish silently
            import traceback
            traceback.print_exc()
            self._mark_broken(exc)
        finally:
            if reading:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()
            if self._closing:
                # Waiters of a reader-mode client must not outlive it.
                self._mark_broken(None)

    def _handle(self, msg) -> None:
        if msg[0] == M.REPLY:
            cb = self._pending.pop(msg[1], None)
            if cb is not None:
                cb(msg[2], msg[3])
            else:
                oids = self._dropped.pop(msg[1], None)
                if oids and msg[2]:
                    for oid, (kind, data) in zip(oids, msg[3]):
                        if type(data) is not bytes:
                            self._unpin(oid)
            return
        if msg[0] == M.SERIALIZERS:
            ser.apply_registry_snapshot(msg[1])
            self._serializers_sent = ser.registry_version()
            return
        if self.on_push is not None:
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
        with self._cond:
            self._cond.notify_all()
        return self.broken

    def close(self) -> None:
        self._closing = True
        set_ref_tracker(None)
        self.flush_later()
        try:
            self.sock.shutdown(2)
        except OSError:
            pass
        os.eventfd_write(self._wake, 1)
        self._io.join(timeout=2)
        self.sock.close()
        os.close(self._wake)
        self.arena.close()


def slot_done(slot):
    return lambda: slot.done


def as_raisable(err):
    """The exception to raise for a stored error value."""
    if isinstance(err, RayTaskError):
        return err.as_instanceof_cause()
    if isinstance(err, BaseException):
        return err
    return RayTaskError("<unknown>", repr(err))
