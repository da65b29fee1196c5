"""Spilling: the node state's policy for a store that fills up.  No I/O.

The state decides, the server writes (``_store/spill_files``) and answers
with an event; a range is freed only once its bytes are on disk.

    sealed, in the arena ──SPILL──► being written ──SPILLED──► on disk (range freed)
      ▲ (least recently read,           │ SPILLED with an error:          │ a GET, task
      │  nobody reading it)             ▼ stays in the arena              │ or peer needs it
      └────RESTORED──── being read back ◄──RESTORE (once there is room)───┘

* **When**: an ALLOC that does not fit waits while objects are spilled to
  make room (``alloc_full``); above the high-water mark
  (``object_spilling_threshold`` of the store, default 0.8) sealed objects
  are spilled ahead of need.  A batch is at least ``min_batch`` bytes and
  goes to one file, written back to back by one thread: large sequential
  writes.  One batch is written at a time.
* **What**: sealed arena objects in least-recently-read order
  (``ObjectTable.resident``: GET replies and task arguments move an object
  to the end), skipping any a process is reading (``viewers``: zero-copy
  views handed out) or a request is about to read (``protect``).  An object
  read back keeps its copy on disk, so spilling it again writes nothing.
  Objects whose place a process knows (``placed``: it reads them without
  asking, ``_client_places``) are spilled only once it has forgotten it:
  when the others are not enough, the node sends it FORGET and waits for
  its FORGOT ops (``_ask_to_forget``); an ALLOC meanwhile waits too.
* **Reading back**: whatever reads an object that is on disk (a GET reply,
  a task's EXECUTE, a peer's SEND_DATA) waits in a ``Need``: its objects
  are protected, those on disk are read back as room allows
  (``RESTORE``/``RESTORED``), then it runs again.  An actor's calls stay in
  order: one that waits holds back the worker's later EXECUTEs.
* **No room**: with nothing spillable and nothing being written, an ALLOC
  fails at once with ``ObjectStoreFullError`` saying how much readers pin
  (the client retries for 2 s, as before); a read-back fails the same way
  once no task is running either (nothing will be released).  A spill the
  disk refuses fails every request waiting for room, saying why, and pauses
  spilling ahead of need until one succeeds; the objects stay in the arena.
* **Files**: deleted (``DELETE_SPILL``) when the last object with a copy in
  them is freed; the server removes its whole directory when it stops.
"""
from __future__ import annotations

from collections import deque

from . import _protocol as P
from . import _task_spec as S
from ._node_events import D, E
from ._object_table import READY, SPILLING, RESTORING, QUEUED
from ._store.allocator import align_up
from .exceptions import ObjectLostError, ObjectStoreFullError

M = P.M
ERROR = P.K.ERROR
MiB = 2**20
MIN_BATCH = 64 * MiB        # a spill writes at least this much (at most 1/8 of the store)
MAX_BATCH = 1024 * MiB      # and at most this much per file
DEFAULT_THRESHOLD = 0.8
FORGET_WAIT_S = 2.0         # how long room waits for processes to give up places


def _mib(n) -> str:
    return f"{n / MiB:.1f} MiB"


class Need:
    """A request that reads objects, some of them on disk: ``then()`` runs
    once all are back (``fail(exc)`` if they cannot come back); meanwhile
    none of them is spilled."""

    __slots__ = ("entries", "left", "then", "fail")

    def __init__(self, entries, then, fail):
        self.entries, self.then, self.fail = entries, then, fail
        self.left = 0


class SpillManager:
    def __init__(self, st, config):
        self.st = st
        self.table = table = st.table
        cap = table.alloc.capacity
        threshold = config.get("object_spilling_threshold")
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self.high_mark = int(cap * self.threshold)
        self.min_batch = max(1, min(MIN_BATCH, cap // 8))
        self.next_file = 1
        self.files: dict = {}       # file id -> objects with their copy in it
        self.batch = None           # (file id, [(entry, file offset)]): being written
        self.waiting = deque()      # room wanted: (client, ALLOC msg, size), (None, entry, size)
        self.restoring: dict = {}   # oid -> (entry, offset): being read back into that range
        self.needs: dict = {}       # oid -> [Need] waiting for it to come back
        self.deferred: dict = {}    # worker -> deque of its tasks whose EXECUTE waits
        self.failed = None          # why the last spill failed (no spilling ahead meanwhile)
        self.stalled = False        # room wanted, nothing to spill, tasks running
        self.asked_at = None        # when processes were last asked to FORGET places
        self.counts = {"spilled_total": 0, "spilled_bytes_total": 0, "restored_total": 0,
                       "restored_bytes_total": 0, "spill_failures": 0}
        table.on_freed_disk = self._disk_copy_freed
        st._events.update({E.SPILLED: self.on_spilled, E.RESTORED: self.on_restored})

    # -- hooks of the state ------------------------------------------------------------------
    def turn(self) -> bool:
        """End of a loop turn: serve and make room if something changed
        (True if it did anything)."""
        table = self.table
        if self.st.stopping:
            return False
        if table.hint:
            if not (self.waiting or (self.batch is None and self.failed is None
                                     and table.alloc.used > self.high_mark)):
                return False
        elif not self.stalled or self._work_running():
            return False
        self.pump()
        return True

    def settle(self) -> None:
        """After the turn's scheduling pass: spill and read back while that
        makes tasks runnable, and schedule them (a dispatch may find an
        argument on disk, reading back may free a worker)."""
        st = self.st
        for _ in range(8):
            if not self.turn():
                return
            if st.schedule_needed and not st.stopping:
                st.schedule_needed = False
                st.tasks.schedule()

    def alloc_full(self, client, msg) -> bool:
        """An ALLOC (or a peer's OBJECT_META: a pulled object's range) that
        does not fit: it waits for room (``pump`` retries it), unless
        spilling all that can be spilled would not make enough (refused
        now; False)."""
        size = msg[3]
        a = self.table.alloc
        if align_up(max(size, 1)) > a.capacity - a.used + self._reclaimable():
            self._refuse(client, msg, ObjectStoreFullError(self.full_text(size)))
            return False
        self.waiting.append((client, msg, size))
        self.table.hint = True
        return True

    def _refuse(self, client, msg, exc) -> None:
        """A request for room that cannot be met fails (a pull: its object
        is lost here, saying why)."""
        if msg[0] == M.OBJECT_META:
            self.st.cluster.transfer.meta_failed(client, msg, exc)
        else:
            self.st.send(client, (M.REPLY, msg[1], False, exc))

    def _reclaimable(self) -> int:
        """Bytes of the arena spilling could free (being written out included)."""
        return sum(e.size for e in self.table.resident.values()
                   if not (e.viewers or e.protect or e.io == RESTORING))

    def abort_alloc(self, client, oid) -> None:
        """The client gave up an ALLOC (interrupted) that may still wait here."""
        if self.waiting:
            self.waiting = deque(i for i in self.waiting
                                 if i[0] is not client or i[1][2] != oid)

    def get_first(self, w) -> bool:
        """A GET about to be answered: True if some of its objects must be
        read back first (it is answered, or failed, later)."""
        entries = self.table.entries
        es = [entries.get(oid) for oid in w.oids]
        if None in es:
            return False
        st = self.st
        return self.need(es, lambda: None if w.done else st.finish_get(w),
                         lambda exc: self._fail_get(w, exc))

    def send_first(self, client, e, msg) -> bool:
        """A peer asked for ``e``'s bytes (SEND_DATA): read back first if on disk."""
        st = self.st
        return self.need([e], lambda: st.cluster.transfer.on_send_data(client, msg),
                         lambda exc: st.send(client, (M.OBJECT_LOST, e.oid, str(exc))))

    def defer_dispatch(self, t, w) -> bool:
        """``t`` goes to ``w``: True if its EXECUTE must wait (an argument is
        on disk, or an earlier EXECUTE to ``w`` waits).  The task counts as
        running meanwhile (a worker death or cancel finds it as usual)."""
        q = self.deferred.get(w)
        if q is None:
            entries = self.table.entries
            if not any(self._away(entries.get(oid)) for oid in self._args(t)):
                return False
            q = self.deferred[w] = deque()
        t.state = "running"
        t.worker = w
        if t.actor is None:
            w.task = t
            w.state = "busy"
        q.append(t)
        if len(q) == 1:
            self._pump_worker(w)
        return True

    def stats(self) -> dict:
        on_disk = [e.size for e in self.table.entries.values() if e.spilled]
        out = {"spilled_objects": len(on_disk), "spilled_bytes": sum(on_disk),
               "spill_files": len(self.files)}
        out.update(self.counts)
        return out

    # -- needs: reading objects that are on disk ----------------------------------------------
    @staticmethod
    def _away(e) -> bool:
        return e is not None and e.state == READY and e.spilled

    def need(self, entries, then, fail) -> bool:
        """``then()`` once none of ``entries`` is on disk; False if none is now."""
        away = [e for e in entries if self._away(e)]
        if not away:
            return False
        uniq = list({id(e): e for e in entries if e is not None}.values())
        n = Need(uniq, then, fail)
        for e in uniq:
            e.protect += 1
        for e in {id(e): e for e in away}.values():
            n.left += 1
            self.needs.setdefault(e.oid, []).append(n)
            if not e.io:
                e.io = QUEUED
                self.waiting.append((None, e, e.size))
                self.table.hint = True
        return True

    def _unprotect(self, n) -> None:
        for e in n.entries:
            e.protect -= 1
            if not e.protect:
                self.table.hint = True

    def _back(self, oid) -> None:
        """``oid`` came back (or failed to, or was freed): its needs move on."""
        for n in self.needs.pop(oid, ()):
            n.left -= 1
            if n.left == 0:
                self._unprotect(n)
                n.then()

    def _fail_need(self, n, exc) -> None:
        if n.left <= 0:
            return
        n.left = 0
        self._unprotect(n)
        for e in n.entries:
            lst = self.needs.get(e.oid)
            if lst and n in lst:
                lst.remove(n)
                if not lst:
                    del self.needs[e.oid]
        n.fail(exc)

    def _fail_get(self, w, exc) -> None:
        if w.done:
            return
        st = self.st
        st._end_waiting(w)
        st._drop_from_entries(w)
        st.send(w.client, (M.REPLY, w.rid, False, exc))

    # -- deferred EXECUTEs ---------------------------------------------------------------------
    @staticmethod
    def _args(t) -> list:
        spec = t.spec
        oids = list(spec[S.DEPS])
        if spec[S.ARGS_OID] is not None:
            oids.append(spec[S.ARGS_OID])
        return oids

    def _pump_worker(self, w) -> None:
        """Send the EXECUTEs queued for ``w`` whose arguments are all in the
        arena, in order; the first that is not waits for them."""
        q = self.deferred.pop(w, None)
        st = self.st
        tasks = st.tasks
        entries = self.table.entries
        while q:
            t = q[0]
            if w.state == "dead" or w.client is None:
                return              # its death failed or re-queued its tasks
            if t.worker is not w or t.state != "running":
                q.popleft()         # retried elsewhere, cancelled, finished
                continue
            es = [entries.get(oid) for oid in self._args(t)]
            self.deferred[w] = q
            if self.need(es, lambda: self._pump_worker(w),
                         lambda exc, t=t: self._fail_task(w, t, exc)):
                return
            del self.deferred[w]
            q.popleft()
            lost = next((e.inline for e in es if e is not None and e.kind == ERROR), None)
            if lost is not None:    # could not be read back: the task fails with that
                if t.actor is None:
                    tasks._release_worker(w, t)
                tasks.seal_all(t, lost)
                if t.actor is not None:
                    st.actors.call_done(t)
                tasks.forget(t)
                continue
            tasks.dispatch(t, w)

    def _fail_task(self, w, t, exc) -> None:
        """``t``'s arguments cannot come back: it fails; ``w``'s next go on."""
        q = self.deferred.get(w)
        if q and q[0] is t:
            q.popleft()
        if t.worker is w and t.state == "running":
            if t.actor is None:
                self.st.tasks._release_worker(w, t)
            self.st.tasks.fail(t, exc)
        self._pump_worker(w)

    def _work_running(self) -> bool:
        """A task or actor call is running: it may release views when done."""
        deferred = self.deferred
        return any((w.task is not None or (w.actor is not None and w.actor.inflight))
                   and w not in deferred and w.state != "dead"
                   for w in self.st.workers.values())

    # -- making room ---------------------------------------------------------------------------
    def pump(self) -> None:
        """Serve the requests for room that fit now; spill to make room for
        the others and to stay below the high-water mark; fail what cannot
        be helped."""
        table = self.table
        alloc = table.alloc
        entries = table.entries
        self.stalled = False
        while True:
            table.hint = False
            blocked = deque()
            waiting = self.waiting
            while waiting:
                item = waiting.popleft()
                client, what, size = item
                if client is None:          # an entry to read back
                    e = what
                    if entries.get(e.oid) is not e or not self.needs.get(e.oid):
                        if e.io == QUEUED:
                            e.io = 0
                        self._back(e.oid)   # freed meanwhile, or nobody waits any more
                        continue
                    off = alloc.allocate(size)
                    if off is None:
                        blocked.append(item)
                        continue
                    self._read_back(e, off)
                elif client.closed:
                    continue
                elif alloc.largest_hole() >= align_up(max(size, 1)):
                    self._retry_alloc(client, what)
                else:
                    blocked.append(item)
            self.waiting = blocked + waiting      # requests added meanwhile go last
            if self.batch is not None:
                return                  # its SPILLED pumps again
            want = 0
            if self.failed is None:
                want = alloc.used - self.high_mark
            if blocked:
                sizes = sum(align_up(max(s, 1)) for _, _, s in blocked)
                want = max(want, sizes - (alloc.capacity - alloc.used), blocked[0][2])
            if want <= 0:
                return
            freed, batch = self._choose(max(want, self.min_batch))
            if batch:
                self._write(batch)
            if freed:
                continue                # ranges came free at once: serve again
            if not batch and blocked and not self._forgetting():
                self._no_room()         # (else a FORGOT frees a place and pumps again)
            return

    def _choose(self, want) -> tuple:
        """Least recently read spillable objects worth ``want`` bytes: those
        with a good copy on disk are freed now, the others are to write."""
        table = self.table
        spillable = table.spillable
        again, batch, got, writing, placed = [], [], 0, 0, []
        for e in table.resident.values():
            if not spillable(e):
                if e.placed and not (e.viewers or e.protect or e.io):
                    placed.append(e)
                continue
            if e.disk is not None:
                again.append(e)
            else:
                batch.append(e)
                writing += e.size
            got += e.size
            if got >= want or writing >= MAX_BATCH:
                break
        for e in again:
            table.free_range(e)
        if got < want and placed:
            self._ask_to_forget(placed, want - got)
        return again, batch

    def _ask_to_forget(self, placed, want) -> None:
        """Ask the processes that know where these objects live (and read
        them there without asking: ``lease_place``) to forget it, least
        recently read first, about ``want`` bytes' worth; each FORGOT makes
        them spillable."""
        st = self.st
        holders = [c for c in st.clients.values() if c.places]
        asks = {}
        got = 0
        for e in placed:
            oid = e.oid
            for c in holders:
                if oid in c.places and oid not in c.forgetting:
                    asks.setdefault(c, []).append(oid)
            got += e.size
            if got >= want:
                break
        for c, oids in asks.items():
            c.forgetting.update(oids)
            st.send(c, (M.FORGET, oids))
            if c.worker is not None:
                st.poke(c.worker)       # busy in a task: read it now
        if asks:
            self.asked_at = st.now
            st.out.append((D.TIMER, FORGET_WAIT_S, "forget"))

    def _forgetting(self) -> bool:
        """A process was asked to FORGET places, has not answered yet, and
        may still (a process answers within ~0.2 s, even busy outside
        miniray: its io thread reads; one that does not within
        FORGET_WAIT_S is not waited for: what needs room fails)."""
        return self.asked_at is not None and self.st.now - self.asked_at < FORGET_WAIT_S \
            and any(c.forgetting for c in self.st.clients.values())

    def forget_timeout(self) -> None:
        """The "forget" timer: room still wanted gets its answer now."""
        if self.waiting and self.batch is None and not self.st.stopping:
            self.pump()

    def _write(self, batch) -> None:
        fid = self.next_file
        self.next_file += 1
        items, pos = [], 0
        for e in batch:
            e.io = SPILLING
            items.append((e, pos))
            pos += e.size
        self.batch = (fid, items)
        self.files[fid] = 0
        self.st.out.append((D.SPILL, fid, [(e.oid, e.offset, e.size) for e in batch]))

    def _retry_alloc(self, client, msg) -> None:
        st = self.st
        if msg[0] == M.OBJECT_META:
            st.cluster.transfer.on_object_meta(client, msg)
            return
        try:
            st.on_alloc(client, msg)
        except Exception as exc:
            st._request_failed(client, msg, exc)

    def _no_room(self) -> None:
        """Nothing can be spilled and nothing is being written: ALLOCs fail
        now (their clients retry a while); reads back fail once no task
        runs either (none will release views), else wait for releases."""
        running = self._work_running()
        keep = deque()
        waiting, self.waiting = self.waiting, deque()
        for client, what, size in waiting:
            if client is None:
                if running:
                    keep.append((client, what, size))
                    continue
                exc = ObjectStoreFullError(self.full_text(size, f"object {what.oid.hex()} back "
                                                                "from disk"))
                what.io = 0
                for n in list(self.needs.get(what.oid, ())):
                    self._fail_need(n, exc)
            elif not client.closed:
                self._refuse(client, what, ObjectStoreFullError(self.full_text(size)))
        self.waiting = keep + self.waiting
        self.stalled = bool(keep)

    def full_text(self, size, what="an object") -> str:
        table = self.table
        a = table.alloc
        if size > a.capacity:
            return (f"the object store cannot hold {what} of {_mib(size)}: it is larger than "
                    f"the whole store ({_mib(a.capacity)}). Start with a larger "
                    f"object_store_memory, or pass smaller objects.")
        read = sum(e.size for e in table.resident.values() if e.viewers or e.protect)
        placed = sum(e.size for e in table.resident.values()
                     if e.placed and not (e.viewers or e.protect))
        busy = max(0, a.used - sum(e.size for e in table.resident.values()))
        return (f"the object store cannot hold {what} of {_mib(size)}: {_mib(read)} of its "
                f"{_mib(a.capacity)} are pinned by readers (zero-copy views from get that are "
                f"still alive, arguments of running tasks, objects a get is reading) and "
                f"{_mib(busy)} are being written or read back"
                + (f", {_mib(placed)} are read in place by processes that did not give them up "
                   f"(a process stuck without reading its connection)" if placed else "")
                + f", so nothing is left to spill to "
                f"disk (largest free range {_mib(a.largest_hole())}). Drop numpy arrays and "
                f"views you no longer need, get fewer objects at once, or start with a larger "
                f"object_store_memory.")

    # -- the server's answers ------------------------------------------------------------------
    def on_spilled(self, ev) -> None:
        _, fid, error = ev
        if self.batch is None or self.batch[0] != fid:
            return
        items = self.batch[1]
        self.batch = None
        table = self.table
        table.hint = True
        entries = table.entries
        if error is not None:
            for e, _ in items:
                e.io = 0
            del self.files[fid]         # the server removed what it wrote
            self.counts["spill_failures"] += 1
            if error != self.failed:        # once, not at every retry of a waiting put
                self.st.out.append((D.LOG, f"spilling {len(items)} objects to disk failed: "
                                           f"{error}"))
            self.failed = error
            self._fail_waiting(f"spilling objects to disk failed: {error}")
            return
        self.failed = None
        n = 0
        counts = self.counts
        for e, pos in items:
            if entries.get(e.oid) is not e:
                continue                # freed while written
            e.io = 0
            e.disk = (fid, pos)
            n += 1
            counts["spilled_total"] += 1
            counts["spilled_bytes_total"] += e.size
            if table.spillable(e):      # else read meanwhile: it stays, spilled again for free
                table.free_range(e)
        self.files[fid] = n
        if not n:
            self._delete(fid)

    def _fail_waiting(self, why) -> None:
        """A spill failed: every request waiting for room fails, saying why."""
        waiting, self.waiting = self.waiting, deque()
        for client, what, size in waiting:
            if client is None:
                what.io = 0
                exc = ObjectStoreFullError(f"the object store cannot hold object "
                                           f"{what.oid.hex()} ({_mib(size)}) back from disk: {why}")
                for n in list(self.needs.get(what.oid, ())):
                    self._fail_need(n, exc)
            elif not client.closed:
                self._refuse(client, what, ObjectStoreFullError(
                    f"the object store cannot hold an object of {_mib(size)}: it is full and "
                    f"{why}. Free space there, set object_spilling_directory to a disk with "
                    f"room, or start with a larger object_store_memory."))

    def _read_back(self, e, off) -> None:
        table = self.table
        e.offset = off
        e.io = RESTORING
        table.high_water = max(table.high_water, off + e.size)
        self.restoring[e.oid] = (e, off)
        fid, pos = e.disk
        self.st.out.append((D.RESTORE, e.oid, fid, pos, e.size, off))

    def on_restored(self, ev) -> None:
        _, oid, error = ev
        item = self.restoring.pop(oid, None)
        if item is None:
            return
        e, off = item
        table = self.table
        table.hint = True
        if table.entries.get(oid) is not e:
            table.alloc.free(off)       # freed while read back: the range waited for the read
            self._back(oid)
            return
        e.io = 0
        if error is None:
            table.resident[oid] = e
            self.counts["restored_total"] += 1
            self.counts["restored_bytes_total"] += e.size
        else:
            # The copy cannot be read: the object is lost, and says why.
            table.alloc.free(off)
            e.offset = -1
            self.st.out.append((D.LOG, f"could not read object {oid.hex()} back from disk: "
                                       f"{error}"))
            e.kind = ERROR
            e.inline = self.st.error_payload(ObjectLostError(
                f"object {oid.hex()} was spilled to disk and could not be read back: {error}"))
            table.inline_bytes += len(e.inline)
            self._disk_copy_freed(e)
        self._back(oid)

    # -- files ---------------------------------------------------------------------------------
    def _disk_copy_freed(self, e) -> None:
        fid = e.disk[0]
        e.disk = None
        n = self.files.get(fid)
        if n is not None:
            if n <= 1:
                del self.files[fid]
                self._delete(fid)
            else:
                self.files[fid] = n - 1
        if e.io == QUEUED:
            self.table.hint = True      # ``pump`` tells whoever waited for it

    def _delete(self, fid) -> None:
        self.files.pop(fid, None)
        self.st.out.append((D.DELETE_SPILL, fid))
