"""The object half of the client (``CoreClient``): put, get and wait.

Values travel inline (small: bytes in the message) or through the arena
(large: the writer ALLOCs a range, writes, SEALs; readers map zero-copy
views).  What a process knows about objects it holds refs to saves round
trips: inline values (immutable, ``known_values``), readiness
(``known_ready``) and arena places the node leased to it
(``_client_places``).  A mixin of ``_core.CoreClient``, which owns the
socket, the ref counts and the reading; this module only uses them.
"""
from __future__ import annotations

import time

from . import _protocol as P
from . import _serialization as ser
from ._client_gate import gate as _gate
from .exceptions import GetTimeoutError, ObjectStoreFullError, RayTaskError

M = P.M
VALUE, ERROR = P.K.VALUE, P.K.ERROR
_ABSENT = object()     # not among the fetched payloads


class ObjectsClient:
    def decode(self, oid, kind, data, known=False):
        """Rebuild a value from a payload.  A view of an arena object is
        pinned by the node (it came in a reply: released with UNPIN), or,
        with ``known``, by this process's own ref to it: the view counts as
        one more local ref, so the node hears DECREF only when refs and views
        are all gone.  Callers on the main thread hold the gate: the pin and
        the lazy ``import numpy`` must not be cut short."""
        if type(data) is bytes:
            return ser.loads_from(data, aligned=True)
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
        with _gate:
            if size <= self.inline_threshold:
                data = ser.to_bytes(sobj)
                self.send_later((M.PUT_INLINE, oid, kind, data, contained))
                if hold:
                    self.known_values[oid] = (kind, data)     # ready, and its value
                return data
            offset = self.write_arena(oid, sobj, size)
            if hold:
                # Its place, leased by the node at the SEAL, is known before
                # the SEAL leaves: a FORGET may follow it at once.
                self.places.add(oid, (kind, (offset, size)))
            try:
                self.send((M.SEAL, oid, kind, hold, contained))
            except BaseException:
                if hold:
                    self.places.drop(oid)
                raise
            if hold:
                self.known_ready.add(oid)
            return None

    def write_arena(self, oid, sobj, size) -> int:
        """Allocate a range for ``oid`` and write ``sobj`` into it; returns
        the range's offset.  Not sealed yet: the caller sends SEAL (or the
        worker TASK_DONE).  If the ALLOC round trip is interrupted or the
        write fails, the range goes back at once (ABORT_ALLOC) instead of
        staying reserved until this process disconnects."""
        # The copy runs in the gate too: cut short, it could leave copy
        # threads writing into a range already given back.
        with _gate:
            try:
                offset, fresh_from = self.allocate(oid, size)
                view = self.arena.writable(offset, size)
                try:
                    # All pages reserved already: plain contiguous shares copy faster.
                    prepare = self.arena.reserver(offset, fresh_from) if fresh_from < size else None
                    ser.write_to(sobj, view, prepare)
                finally:
                    view.release()
            except BaseException:
                self.abort_alloc(oid)
                raise
            return offset

    def abort_alloc(self, oid) -> None:
        """Give back the range ALLOC'd for ``oid`` (unknown ids are ignored
        by the node, so this is safe whatever the ALLOC's outcome)."""
        try:
            self.send((M.ABORT_ALLOC, oid))
        except Exception:      # the connection is gone, and the range with it
            pass

    def allocate(self, oid, size) -> tuple:
        """(offset, fresh_from): a new range for ``oid``, and from where in
        it pages may still need reserving."""
        delay = 0.01
        deadline = time.monotonic() + 2.0
        while True:
            ok, payload = self.request(lambda rid: (M.ALLOC, rid, oid, size))
            if ok:
                return payload
            # Frees may be on their way (refs dropped a moment ago in this or
            # another process): give them a moment before giving up.
            if time.monotonic() > deadline:
                raise ObjectStoreFullError(str(payload))
            _gate.interruptible(time.sleep, delay)
            delay = min(delay * 2, 0.2)

    def get_payloads(self, oids, timeout=None) -> list:
        packed = P.pack_ids(oids)
        reply = self.request(lambda rid: (M.GET, rid, packed), timeout)
        if reply is None:
            raise GetTimeoutError(
                f"get timed out after {timeout} s waiting for {len(oids)} object(s); "
                f"the tasks making them are still pending or running")
        ok, payload = reply
        if not ok:
            raise payload
        return payload

    def get_values(self, oids, timeout=None) -> list:
        """Values of ``oids``.  In the gate from the reply to the last
        decode: a reply's pins are released or handed to values, whatever
        interrupts (it waits, so interrupts land, only inside ``request``)."""
        if self.direct.pending:
            self.direct.await_results(oids, timeout)      # calls sent straight to actors
        known = self.known_values
        places = self.places
        with _gate:
            # The reply has a payload per id asked for, in order: they are
            # taken as ``oids`` is walked again (``missing[pos]``).  A
            # repeated id is asked for as often as it is repeated (each
            # payload of an arena object carries its own pin).  Objects
            # whose place is known are read there (``_client_places``).
            if places:
                missing = [oid for oid in oids if oid not in known and oid not in places]
            else:
                missing = [oid for oid in oids if oid not in known]
            payloads = ()
            if missing:
                since = places.epoch
                payloads = self.get_payloads(missing, timeout)
                self._learn(missing, payloads)
                places.learn(missing, payloads, self.local_refs, since)
            values = []
            error = None
            pos = 0
            left = len(missing)
            try:
                for oid in oids:
                    if pos < left and oid is missing[pos]:
                        payload = payloads[pos]
                        pos += 1
                    else:
                        payload = _ABSENT
                    if payload is None:
                        continue        # not ready: the node answered early, one failed
                    if payload is not _ABSENT:
                        kind, data = payload
                        value = self.decode(oid, kind, data)          # pinned by the node
                    elif oid in known:
                        kind, data = known[oid]
                        value = self.decode(oid, kind, data, known=True)  # pinned by our ref
                    else:
                        # Its place (PINned), or, forgotten meanwhile, the node's answer.
                        payload = places.take(oid) or self.get_payloads([oid], timeout)[0]
                        if payload is None:
                            continue
                        kind, data = payload
                        value = self.decode(oid, kind, data)          # released by UNPIN
                    if kind == ERROR and error is None:
                        error = value
                    values.append(value)
            finally:
                if pos < left:          # not decoded: release
                    self.release_payloads(zip(missing[pos:], payloads[pos:]))
            if error is not None:
                raise as_raisable(error)
            return values

    def _learn(self, oids, payloads) -> None:
        refs = self.local_refs
        known = self.known_values
        ready = self.known_ready
        for oid, payload in zip(oids, payloads):
            if payload is not None and oid in refs:
                if type(payload[1]) is bytes:
                    known[oid] = payload
                else:
                    ready.add(oid)      # (its place: ``places.learn``)

    def wait(self, oids, num_returns, timeout, unique=None, check=None):
        """``unique``: ``set(oids)``, if the caller has it (a faster test);
        ``check()`` runs unless all are known ready here (the caller's full
        check of its input: ids this process knows are ready need none)."""
        # Ready here: those whose inline value is kept (``known_values``) and
        # those known ready (``known_ready``: arena objects, and objects
        # waited on).
        ready = self.known_ready
        known = self.known_values
        if ready >= unique if unique is not None else ready.issuperset(oids):
            return range(len(oids))
        if known.keys() >= unique if unique is not None else all(map(known.__contains__, oids)):
            ready.update(oids)      # waited on: the next wait takes the fastest test above
            return range(len(oids))
        if check is not None:
            check()
        if self.direct.pending:
            # The node answers for direct calls: those still queued here must
            # reach their actor first.
            self.direct.send_queued(oids)
        local = [i for i, oid in enumerate(oids) if oid in known or oid in ready]
        if len(local) >= num_returns:
            return local
        positions = self._wait_remote(oids, num_returns, timeout)
        refs = self.local_refs
        for i in positions:
            if oids[i] in refs:
                ready.add(oids[i])
        return positions


def as_raisable(err):
    """The exception to raise for a stored error value."""
    if isinstance(err, RayTaskError):
        return err.as_instanceof_cause()
    if isinstance(err, BaseException):
        return err
    return RayTaskError("<unknown>", repr(err))
