"""The node's object table: states, locations and lifetimes.  No I/O.

An entry lives while anything can reach its object:

* ``holders``  processes holding at least one ObjectRef to it (each counted
               once; a process says INCREF/DECREF when its local count
               crosses zero);
* ``pins``     everything else that needs the bytes: pending tasks that take
               it as an argument, objects that contain a ref to it, and
               zero-copy views handed to a process (GET/EXECUTE replies).

When both reach zero the entry is dropped, its arena range goes back to the
allocator and the refs it contained are unpinned (which may free more).

Spilling (``_node_spill`` decides, the server writes): a sealed arena
object nobody is reading (``viewers`` 0, not ``protect``-ed by a request
about to read it) may be written to a spill file (``disk``: file id and
offset) and its range freed; it stays READY.  ``resident`` lists the sealed
objects whose bytes are in the arena, least recently read first (``touch``:
GET replies and task arguments); ``io`` says a range is being written out
(SPILLING) or read back (RESTORING: the range is allocated, its bytes are
not there yet, and it is freed only once the read is over).

States: PENDING (a task will make it) -> CREATING (an arena range is being
written) -> READY.  Waiters (GET/WAIT requests, tasks waiting on arguments)
are told when an entry becomes READY.  The PENDING entry of a queued task's
one return is made only when something needs it (``Entries``); until then
the task stands for it.

In a cluster, the returns of a task submitted here point to its ``Lineage``
(how to make them again if their only copy is lost with a node; see
``_node_lineage``).  A record is counted like a lease: by its live return
entries and by the downstream records that need it, and when the count
reaches zero ``drop_lineage`` lets go of the arguments it kept.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

from ._protocol import K
from .exceptions import ObjectStoreFullError
from ._store.allocator import Allocator

__all__ = ["ObjectTable", "Entry", "Lineage", "PENDING", "CREATING", "READY"]

PENDING, CREATING, READY = 0, 1, 2
SPILLING, RESTORING, QUEUED = 1, 2, 3       # Entry.io: being written out / read back /
                                            # waiting for room to be read back
ACTOR_HANDLE = K.ACTOR_HANDLE   # an actor id doubles as an object id


class Lineage:
    """How to make a task's returns again: its spec and the retries it has
    left (a re-run spends one, as in Ray).  Kept by the node the task was
    submitted to, in a cluster (``_node_lineage``), while ``live`` > 0: one
    count per return entry pointing to it (``Entry.lineage``) and one per
    downstream record that needs it to rebuild an argument.

    Once its task is finished for good with returns still alive (``kept``),
    it holds on to its arguments: the records of those a re-run can make
    again (``parents``, a count on each: their values may go) and, from the
    moment one of its returns lives only on another node, a pin on those it
    cannot make again (``pins``: puts, large args, objects owned elsewhere;
    ``puts`` are their ids until then).  At zero it lets go of them all."""

    __slots__ = ("spec", "submitter", "retries_left", "live", "task", "kept", "parents",
                 "puts", "pins", "size", "dropped")

    def __init__(self, spec, submitter, retries_left, live):
        self.spec = spec
        self.submitter = submitter      # its Client: told if a re-run cannot be placed
        self.retries_left = retries_left
        self.live = live
        self.task = None                # the Task making its returns now, if any
        self.kept = False
        self.parents = ()
        self.puts = ()
        self.pins = None
        self.size = 0                   # bytes it counts for while kept (``_node_lineage``)
        self.dropped = None             # its task's name, once dropped to bound memory


# ``Entry.lineage`` of an actor method's returns: never rebuilt by re-running
# the method (an actor's state moved on); shared, counted by nobody.
ACTOR_RESULT = Lineage(None, None, 0, 0)


# Small inline values are often equal (None, True, 0: what trivial tasks
# return): one copy of each, and one payload tuple, serve every entry, so a
# million such results cost no bytes each, and a GET reply naming them all
# pickles the tuple once (the receiver decodes one object, not a million).
# Bounded: emptied when it holds SMALL_KEEP distinct values.
SMALL_PAYLOAD = 64
SMALL_KEEP = 4096
_small: dict = {}


def shared_small(kind, inline: bytes) -> bytes:
    """``inline``, or an equal bytes object already kept (see ``_small``)."""
    key = (kind, inline)
    p = _small.get(key)
    if p is None:
        if len(_small) >= SMALL_KEEP:
            _small.clear()
        p = _small[key] = key
    return p[1]


class EntryExtra:
    """The fields of an entry that only cluster and spilling use, kept
    apart (``Entry.x``) so that the common entry (a task's small result, a
    put) costs 13 slots instead of 23: a million held results save ~80 MB.
    Read and written through ``Entry``'s properties of the same names."""

    __slots__ = ("owner", "location", "pulling", "peer_waiters", "remote_leases", "lineage",
                 "copies", "viewers", "disk", "io", "protect", "placed")

    def __init__(self):
        # Cluster: the node counting its refs if not this one; where its
        # only copy is while not here; a pull under way; peer links waiting
        # for it; peer links we hold a lease on (DECREF on each when it goes).
        self.owner = None
        self.location = None
        self.pulling = False
        self.peer_waiters = None
        self.remote_leases = None
        # The task that made it, if submitted here in a cluster (a Lineage,
        # or ACTOR_RESULT): what rebuilds it if its only copy is lost.
        self.lineage = None
        # Nodes this node streamed a copy to, and this node, in the order
        # the next PULL is sent to (a broadcast spreads over them).
        self.copies = None
        # Spilling (see the module docstring): zero-copy views handed out
        # (also counted in pins); (file id, offset) of its copy on disk;
        # I/O under way; requests about to read it (never spilled then).
        self.viewers = 0
        self.disk = None
        self.io = 0
        self.protect = 0
        # Processes that know its place and read it without asking
        # (``lease_place``): its range is not freed by spilling until each
        # gives that up (FORGOT), drops its ref or exits.
        self.placed = 0


def side_field(side_class, name, default):
    """A property kept in ``self.x``, an instance of ``side_class`` made on
    the first write of a value other than ``default`` (for fields most
    objects never set: a slot costs 8 bytes in every object)."""
    slot = side_class.__dict__[name]
    read, write = slot.__get__, slot.__set__

    def get(self):
        x = self.x
        return default if x is None else read(x)

    def put(self, value):
        x = self.x
        if x is None:
            if value is default or (value == default and type(value) is type(default)):
                return
            x = self.x = side_class()
        write(x, value)

    return property(get, put)


def _extra(name):
    """A property of ``Entry`` kept in its ``EntryExtra``."""
    return side_field(EntryExtra, name, _EXTRA_DEFAULTS[name])


_EXTRA_DEFAULTS = {"owner": None, "location": None, "pulling": False, "peer_waiters": None,
                   "remote_leases": None, "lineage": None, "copies": None, "viewers": 0,
                   "disk": None, "io": 0, "protect": 0, "placed": 0}


class Entry:
    __slots__ = ("oid", "state", "kind", "inline", "offset", "size", "holders",
                 "pins", "contained", "waiters", "task", "writer", "x")

    def __init__(self, oid):
        self.oid = oid
        self.state = PENDING
        self.kind = 0
        self.inline = None
        self.offset = -1
        self.size = 0
        self.holders = 0
        self.pins = 0
        self.contained = ()
        self.waiters = None
        self.task = None
        self.writer = None      # who is writing its range (CREATING)
        self.x = None           # an EntryExtra, once a cluster or spilling field is set

    owner = _extra("owner")
    location = _extra("location")
    pulling = _extra("pulling")
    peer_waiters = _extra("peer_waiters")
    remote_leases = _extra("remote_leases")
    lineage = _extra("lineage")
    copies = _extra("copies")
    viewers = _extra("viewers")
    disk = _extra("disk")
    io = _extra("io")
    protect = _extra("protect")
    placed = _extra("placed")

    @property
    def spilled(self) -> bool:
        """Its bytes are on disk only (spilled, not read back yet)."""
        x = self.x
        return x is not None and x.disk is not None and self.inline is None and (
            self.offset < 0 or x.io == RESTORING)

    def payload(self):
        """What a reader needs: (kind, bytes) or (kind, (offset, size))."""
        inline = self.inline
        if inline is not None:
            if len(inline) <= SMALL_PAYLOAD:
                p = _small.get((self.kind, inline))
                if p is not None:
                    return p
            return (self.kind, inline)
        return (self.kind, (self.offset, self.size))


class Entries(dict):
    """oid -> Entry, and the return entries of queued tasks not made yet.

    A long queue (a million tasks submitted in a loop) would hold an entry
    per return that nobody has asked about: the entry of a task's one
    return is made when something needs it (``deferred``), and until then
    the task stands for it (state PENDING, held by its submitter, its
    GET/WAIT waiters kept on the task: ``ObjectTable.wait_deferred``).
    Looking the id up (``get``, ``[]``) makes the entry, exactly as it
    would have been; ``in`` answers without making it; iterating and
    ``len`` see made entries only (``deferred`` counts the others).
    ``Task.deferred``: None (made, or never deferred), True (deferred, no
    waiter), a waiter, or a list of waiters."""

    __slots__ = ("tasks", "deferred")

    def __init__(self):
        super().__init__()
        self.tasks: dict = {}       # tid -> Task (``TaskManager.tasks``)
        self.deferred = 0           # returns whose entry is not made yet

    def deferred_task(self, oid):
        """The queued task whose return ``oid`` is, if its entry is not made yet."""
        if self.deferred and type(oid) is bytes and len(oid) == 16 and oid[14:] == b"\0\0":
            t = self.tasks.get(oid[:14])
            if t is not None and t.deferred is not None:
                return t
        return None

    def defer(self, t) -> None:
        """``t``'s one return gets its entry when first needed."""
        t.deferred = True
        self.deferred += 1

    def make(self, t) -> Entry:
        """The entry of ``t``'s deferred return, as it would have been made at
        submit: held by the submitter (unless it is gone), its waiters on it."""
        waiters = t.deferred
        t.deferred = None
        self.deferred -= 1
        oid = t.tid + b"\0\0"
        e = self[oid] = Entry(oid)
        e.task = t
        sub = t.submitter
        if sub is not None and not sub.closed:
            sub.held.add(oid)
            e.holders = 1
        if waiters is not True:
            e.waiters = waiters if type(waiters) is list else [waiters]
        return e

    def make_all(self) -> None:
        if self.deferred:
            for t in list(self.tasks.values()):
                if t.deferred is not None:
                    self.make(t)

    def __contains__(self, oid) -> bool:
        return dict.__contains__(self, oid) or self.deferred_task(oid) is not None

    def get(self, oid, default=None):
        e = _dict_get(self, oid)
        if e is None:
            t = self.deferred_task(oid)
            return default if t is None else self.make(t)
        return e

    def __missing__(self, oid):
        t = self.deferred_task(oid)
        if t is None:
            raise KeyError(oid)
        return self.make(t)


_dict_get = dict.get


class ObjectTable:
    def __init__(self, capacity: int):
        self.entries = Entries()
        # The entry of ``oid`` if made, never making a deferred one (``Entries``).
        self.peek = partial(_dict_get, self.entries)
        self.alloc = Allocator(capacity)
        self.inline_bytes = 0
        self.high_water = 0      # end of the highest range ever handed out
        self.on_unreachable = None   # callback(entry) for actor handles (see release)
        self.on_freed_remote = None  # callback(entry) for entries leased on other nodes
        self.on_freed_disk = None    # callback(entry) for entries with a copy on disk
        self.on_lineage_gone = None  # callback(record) for a kept lineage record let go
        self.resident = OrderedDict()   # oid -> sealed entry in the arena, least recent first
        # Something may have become spillable or room was made (a seal, a
        # last view gone, a range freed): the spill policy looks again.
        self.hint = False

    # -- creation -----------------------------------------------------------
    def get_or_create(self, oid) -> Entry:
        e = self.entries.get(oid)
        if e is None:
            e = self.entries[oid] = Entry(oid)
        return e

    def allocate(self, oid, size, writer=None) -> Entry:
        """Reserve an arena range for ``oid``; raises ObjectStoreFullError."""
        offset = self.alloc.allocate(size)
        if offset is None:
            raise ObjectStoreFullError(self.full_message(size))
        self.high_water = max(self.high_water, offset + size)
        e = self.get_or_create(oid)
        if e.offset >= 0 and e.state != READY:
            # A retried task writes its result again: drop the old range.
            self.alloc.free(e.offset)
        e.offset, e.size, e.state = offset, size, CREATING
        e.writer = writer
        return e

    def full_message(self, size) -> str:
        a = self.alloc
        live = sum(1 for e in self.entries.values() if e.offset >= 0)
        return (f"the object store cannot hold an object of {size / 2**20:.1f} MiB: "
                f"{a.used / 2**20:.1f} MiB of {a.capacity / 2**20:.1f} MiB are in use by {live} "
                f"objects that are still referenced (largest free range "
                f"{a.largest_hole() / 2**20:.1f} MiB). Drop ObjectRefs and numpy views you no "
                f"longer need (del ref), pass smaller objects, or start with a larger "
                f"object_store_memory.")

    def seal(self, e: Entry, kind, inline, contained) -> list:
        """Mark READY; returns the waiters to notify."""
        e.kind = kind
        if inline is not None:
            if len(inline) <= SMALL_PAYLOAD:
                inline = shared_small(kind, inline)
            e.inline = inline
            self.inline_bytes += len(inline)
        e.state = READY
        e.writer = None
        if inline is None and e.offset >= 0:
            self.resident[e.oid] = e
            self.hint = True
        if contained:
            e.contained = contained
            entries = self.entries
            for c in contained:
                ce = entries.get(c)
                if ce is None:
                    ce = entries[c] = Entry(c)
                ce.pins += 1
        waiters = e.waiters
        e.waiters = None
        return waiters or ()

    # -- leases: who keeps an entry alive ------------------------------------
    # Every lease goes through these methods, so each count has one place
    # that raises it and one that lowers it (and frees the entry at zero).
    def hold(self, held: set, oid) -> Entry:
        """A process (its ``held`` set) takes a ref; once per process."""
        e = self.entries.get(oid)
        if e is None:
            e = self.entries[oid] = Entry(oid)
        if oid not in held:
            held.add(oid)
            e.holders += 1
        return e

    def unhold(self, held: set, oid) -> None:
        """A process dropped its last ref (DECREF)."""
        if oid not in held and self.entries.deferred:
            t = self.entries.deferred_task(oid)
            if t is not None and t.submitter is not None and t.submitter.held is held:
                self.entries.make(t)        # its submitter's implicit hold, now counted
        if oid in held:
            held.discard(oid)
            e = self.entries.get(oid)
            if e is not None:
                e.holders -= 1
                self.release(e)

    # -- GET/WAIT waiters ----------------------------------------------------------
    def wait_deferred(self, oid, waiter) -> bool:
        """If ``oid`` is a queued task's return whose entry is not made yet,
        ``waiter`` waits on the task instead (no entry is made): True."""
        t = self.entries.deferred_task(oid)
        if t is None:
            return False
        d = t.deferred
        if d is True:
            t.deferred = waiter
        elif type(d) is list:
            d.append(waiter)
        else:
            t.deferred = [d, waiter]
        return True

    def unwait(self, oid, waiter) -> None:
        """``waiter`` stops waiting for ``oid`` (on its entry, or on the task
        whose return it is)."""
        e = self.peek(oid)
        if e is not None:
            if e.waiters:
                try:
                    e.waiters.remove(waiter)
                except ValueError:
                    pass
            return
        t = self.entries.deferred_task(oid)
        if t is not None:
            d = t.deferred
            if d is waiter:
                t.deferred = True
            elif type(d) is list and waiter in d:
                d.remove(waiter)
                t.deferred = d if len(d) > 1 else d[0] if d else True

    def pin(self, oid) -> Entry:
        """Something other than a process needs the object: a pending task's
        argument, a detached actor, a restartable actor's constructor args."""
        e = self.entries.get(oid)
        if e is None:
            e = self.entries[oid] = Entry(oid)
        e.pins += 1
        return e

    def unpin(self, oid) -> None:
        e = self.entries.get(oid)
        if e is not None:
            e.pins -= 1
            self.release(e)

    def pin_view(self, views: dict, e: Entry) -> None:
        """A zero-copy view of ``e`` was handed to a process (its ``views``);
        it is the most recently used object now."""
        e.pins += 1
        e.viewers += 1
        views[e.oid] = views.get(e.oid, 0) + 1
        if e.oid in self.resident:
            self.resident.move_to_end(e.oid)

    def unpin_view(self, views: dict, oid) -> None:
        n = views.get(oid, 0)
        if n:
            if n == 1:
                del views[oid]
            else:
                views[oid] = n - 1
            e = self.entries.get(oid)
            if e is not None:
                e.viewers -= 1
                if not e.viewers:
                    self.hint = True
            self.unpin(oid)

    def lease_place(self, places: set, e: Entry) -> None:
        """The process whose set is ``places`` was told where ``e`` lives in
        the arena and may read it there without asking (making a view sends
        PIN): ``e``'s range is not freed by spilling until the process gives
        the place up (FORGOT), drops its ref or exits."""
        oid = e.oid
        if oid not in places:
            places.add(oid)
            e.placed += 1

    def unlease_place(self, places: set, oid) -> None:
        if oid in places:
            places.discard(oid)
            e = self.entries.get(oid)
            if e is not None and e.placed > 0:
                e.placed -= 1
                if not e.placed:
                    self.hint = True

    def release_process(self, writer, held: set, views: dict, unsealed: set,
                        places: set = ()) -> None:
        """A process is gone: everything it held, viewed or was writing."""
        for oid in list(places):
            self.unlease_place(places, oid)
        for oid in unsealed:
            self.drop_unsealed(oid, writer)
        unsealed.clear()
        entries = self.entries
        for oid, n in views.items():
            e = entries.get(oid)
            if e is not None:
                e.pins -= n
                e.viewers -= n
                self.hint = True
                self.release(e)
        views.clear()
        for oid in held:
            e = entries.get(oid)
            if e is not None:
                e.holders -= 1
                self.release(e)
        held.clear()

    def release(self, e: Entry) -> None:
        """Free ``e`` if nothing can reach it any more, and whatever only it
        kept alive (the refs it contained).  ``on_unreachable`` hears of each
        actor-handle entry whose last lease went (the actor then ends)."""
        if e.holders > 0 or e.pins > 0 or e.waiters:
            return
        if e.state != READY and (e.task is not None or e.state == CREATING):
            return          # being made: its maker seals it
        stack = [e]
        entries = self.entries
        peek = self.peek
        while stack:
            e = stack.pop()
            if peek(e.oid) is not e:
                continue
            if e.kind == ACTOR_HANDLE and self.on_unreachable is not None:
                self.on_unreachable(e)
                if e.holders > 0 or e.pins > 0:
                    continue
            del entries[e.oid]
            x = e.x         # cluster and spilling fields (None: all at their defaults)
            if x is not None and (x.location is not None or x.remote_leases) \
                    and self.on_freed_remote:
                self.on_freed_remote(e)
            if e.inline is not None:
                self.inline_bytes -= len(e.inline)
                e.inline = None
            if e.offset >= 0:
                if x is None or x.io != RESTORING:      # else freed when the read is over
                    self.alloc.free(e.offset)
                    self.hint = True
                e.offset = -1
                self.resident.pop(e.oid, None)
            if x is not None and x.disk is not None and self.on_freed_disk is not None:
                self.on_freed_disk(e)
            for c in e.contained:
                ce = entries.get(c)
                if ce is not None:
                    ce.pins -= 1
                    if ce.pins <= 0 and ce.holders <= 0 and ce.state == READY and not ce.waiters:
                        stack.append(ce)
            e.contained = ()
            if x is not None and x.lineage is not None:
                rec, x.lineage = x.lineage, None
                self.drop_lineage(rec)

    def drop_lineage(self, rec: Lineage) -> None:
        """One reference to ``rec`` went (a return entry freed, a downstream
        record dropped); at zero it lets go of its arguments."""
        stack = [rec]
        while stack:
            r = stack.pop()
            if r is ACTOR_RESULT:
                continue
            r.live -= 1
            if r.live > 0:
                continue
            stack.extend(self.let_go(r))

    def let_go(self, r: Lineage) -> tuple:
        """``r`` needs its arguments no more: unpin them; the records it
        counted on (to drop one reference each)."""
        pins, parents = r.pins, r.parents
        r.pins, r.parents, r.puts = None, (), ()
        if pins:
            for oid in pins:
                self.unpin(oid)
        if r.size and self.on_lineage_gone is not None:
            self.on_lineage_gone(r)
        return parents

    def drop_unsealed(self, oid, writer=None) -> None:
        """The writer died or gave up before sealing: return the range
        (only ``writer``'s own, when given: a retry may write it again)."""
        e = self.entries.get(oid)
        if e is not None and e.state == CREATING and (writer is None or e.writer is writer):
            self.alloc.free(e.offset)
            self.hint = True
            e.offset, e.size, e.state = -1, 0, PENDING
            e.writer = None
            if e.holders <= 0 and e.pins <= 0 and e.task is None and not e.waiters:
                del self.entries[oid]
                if e.lineage is not None:
                    rec, e.lineage = e.lineage, None
                    self.drop_lineage(rec)

    # -- spilling (the policy is ``_node_spill``) -------------------------------
    @staticmethod
    def spillable(e: Entry) -> bool:
        """Sealed, in the arena, and nobody reads it or is about to (or may,
        knowing its place)."""
        return not (e.viewers or e.protect or e.io or e.placed) and e.offset >= 0 \
            and e.inline is None

    def free_range(self, e: Entry) -> None:
        """``e``'s bytes are safe on disk: its range goes back (it stays READY)."""
        self.alloc.free(e.offset)
        e.offset = -1
        self.resident.pop(e.oid, None)
        self.hint = True

    def stats(self) -> dict:
        a = self.alloc
        return {"objects": len(self.entries) + self.entries.deferred, "arena_used": a.used,
                "arena_capacity": a.capacity, "arena_objects": a.num_allocated(),
                "inline_bytes": self.inline_bytes}
