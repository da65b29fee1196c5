"""Where this process's arena objects live, as far as the node promised.

A process that was told where an object lives in the arena (it wrote it
itself, or a GET reply said so while it held a ref) may read it there again
without asking the node: ``get`` of it costs no round trip.  The node keeps
that promise as a lease (``ObjectTable.lease_place``): it does not free the
range by spilling until the process gives the place up.  The place can go
three ways:

* the process drops its last ref: ``drop``, then the DECREF that follows
  ends the lease at the node;
* the node wants to spill the object and sends FORGET: ``forget`` drops
  the places and queues a FORGOT op each;
* the process exits: the node ends its leases.

Ordering is what makes it safe.  Ref ops reach the node in the order they
are queued (``CoreClient._ops``).  ``take`` looks a place up and queues a
PIN (the node counts the view as it counts one handed out by a GET) in one
step under the lock; ``forget`` drops places and queues FORGOTs in one step
under the same lock.  So a view made from a place is PINned ahead of the
FORGOT, and no view is made from it after: the node frees the range only
once it has seen the FORGOT, and never under a view it has not counted.

A GET reply's places are learned only if nothing ended a lease since the
GET was sent (``epoch``: a DECREF queued, a FORGET handled): the node
leased them while this process held the refs, but a DECREF the node saw
after it (a ref dropped and made again meanwhile), or a FORGET it sent
right after the reply and that was handled before the reply was read,
ended that lease.  The check and the writes are one step under the lock
that ``forget`` takes.  A put's place is added before its SEAL leaves (the
node leases it at the SEAL and may ask it back at once).
"""
from __future__ import annotations

import threading

from . import _protocol as P

PIN, FORGOT = P.R.PIN, P.R.FORGOT


class Places:
    __slots__ = ("_lock", "_places", "_ops", "epoch")

    def __init__(self, ops):
        self._lock = threading.Lock()
        self._places: dict = {}     # oid -> (kind, (offset, size))
        self._ops = ops             # the client's queue of ref ops
        self.epoch = 0              # DECREFs queued + FORGETs handled so far (``learn``)

    def __bool__(self) -> bool:
        return bool(self._places)

    def __contains__(self, oid) -> bool:
        return oid in self._places

    def add(self, oid, payload) -> None:
        """This process wrote ``oid`` and holds it (SEAL with hold)."""
        self._places[oid] = payload

    def learn(self, oids, payloads, refs, since) -> None:
        """A GET reply's arena payloads, for the ids this process still
        holds, unless a lease may have ended since the GET left (``since``)."""
        with self._lock:
            if since != self.epoch:
                return
            places = self._places
            for oid, payload in zip(oids, payloads):
                if payload is not None and type(payload[1]) is not bytes and oid in refs:
                    places[oid] = payload

    def take(self, oid):
        """The payload to read ``oid`` from, with its view PINned, or None
        (not known, or forgotten meanwhile: ask the node)."""
        with self._lock:
            payload = self._places.get(oid)
            if payload is not None:
                self._ops.append((PIN, oid))
            return payload

    def forget(self, oids) -> None:
        """FORGET from the node: it wants to spill these."""
        with self._lock:
            self.epoch += 1
            pop = self._places.pop
            append = self._ops.append
            for oid in oids:
                pop(oid, None)
                append((FORGOT, oid))

    def drop(self, *oids) -> None:
        """The last refs to ``oids`` are gone (their DECREFs are queued, not
        sent yet), or a put failed.  One call for a batch: this runs for
        every ref a program drops."""
        with self._lock:
            self.epoch += 1
            pop = self._places.pop
            for oid in oids:
                pop(oid, None)
