"""Typed messages and their framing.  No sockets here.

A frame is a 4-byte little-endian length, then a pickle (protocol 5) of a
tuple whose first item is a :class:`Msg` tag (sent as a plain int: an enum
member would pickle by reference and cost a lookup on every load).  Several
frames go out in one ``send`` when a sender has them queued; a reader parses
every complete frame it has in one pass.  Pickle is only ever read *after*
the connection has authenticated (see ``_transport``).

Message fields, by tag (``oid`` = 16-byte object id, ``rid`` = request id):

client -> node
  HELLO         role ("driver" | "worker"), pid, worker_id | None, info dict | None
                                                  -> WELCOME (first frame after auth)
  SUBMIT        spec: TaskSpec tuple (see ``_task_spec``)
  PUT_INLINE    oid, kind, data: bytes, contained: list[oid]
  ALLOC         rid, oid, size                    -> REPLY (offset, reserved) | ObjectStoreFullError
  SEAL          oid, kind, hold, contained        (after writing an ALLOC'd range)
  ABORT_ALLOC   oid                               the writer gave up before SEAL: free the range
  GET           rid, oids                         -> REPLY [(kind, data | (offset, size))]
                (oids: a list, or from PACK_FROM ids on the ids packed in one bytes
                object, 16 bytes each: see ``IdRun``)
  WAIT          rid, oids, num_returns            -> REPLY sorted ready positions
  WAIT_NOW      wait_rid                          finish that WAIT now with what is ready
  DROP_REQ      rid                               the caller stopped waiting
  REFS          ops: list[(RefOp, oid)]           RefOp sent as plain ints (R.INCREF ...)
  REGISTER_FN   key, blob
  SERIALIZERS   blob                              custom serializer registry snapshot
  TASK_DONE     task_id, results: list[(oid, kind, data | (offset, size) | None, contained)],
                retryable: bool, note: str | None  (note: a failed constructor's error text,
                so the node never unpickles an error to describe a dead actor)
  CANCEL        oid, force, recursive             (recursive: the tasks it submitted too)
  QUERY         rid, what: Query, arg             -> REPLY (cluster/actor queries)
  ACTOR_CREATE  rid, spec, opts                    -> REPLY (aid, meta, created)
                (opts['meta'] is bytes made by the client: the node stores and returns it)
  ACTOR_CALL    spec
  ACTOR_KILL    actor_id, no_restart[, reason]
  SHUTDOWN
  REVOKED       task_ids                          (worker) the queued tasks a REVOKE took back:
                                                  it will not run them
  CALL_SITE     task_id, text                     (only with RAY_record_ref_creation_sites=1)
                where the put or submit that follows was made (file:line); kept as
                opaque text for LIST_OBJECTS (see ``_store_report``)
  DIRECT_CALL   spec, pid                         an actor call this process sent straight to
                                                  the actor's worker (pid): register it, do not
                                                  dispatch it (see ``_node_direct``)
  DIRECT_DONE   task_id, results, retryable, caller cid    (worker) a direct call finished;
                                                  as TASK_DONE, and it may come first
  DIRECT_CALL   spec, lease id                    a task this process sent straight to the
                                                  worker it leases (see ``_node_leases``)
  LEASE_RETURN  lease id                          the caller gives a worker lease back
  LEASE_READY   lease id, address | None          (worker) it serves direct calls there
  OUTPUT        job, stream (1 stdout | 2 stderr), text, cont, (name, pid, node_id, ip),
                task_id | None     a worker's print, as whole lines (or a partial line at
                a flush; ``cont``: its first line continues one already sent); the node
                routes it by job to that job's driver, here or over a peer link (a job
                id's high 16 bits are its node's index), else to its log

node -> client
  WELCOME       info dict (+ the arena fd by SCM_RIGHTS)
  REPLY         rid, ok: bool, payload
  EXECUTE       spec, fn_blob | None, deps: list[(kind, data | (offset, size))],
                args: bytes | (kind, (offset, size))
  CANCEL_TASK   task_id
  FORGET        oids                              stop reading these objects at the places this
                                                  process was told (answered by FORGOT ops;
                                                  the node wants to spill them: see ``_core``)
  REVOKE        task_ids                          (to a worker) give back the tasks sent to
                                                  run after its current one, if not started
                                                  (answered by REVOKED; see ``_node_tasks``)
  SERIALIZERS   blob
  EXIT          reason                            (to a worker: exit now)
  BAD_FRAME     text                              a frame from this client could not be
                                                  decoded or handled; nothing else was lost
  JOB           sys_path                          (to workers: a driver joined)
  WARNING       text                              print to the user (e.g. an infeasible task)
  OUTPUT        as above, to the job's driver     written to its sys.stdout / sys.stderr
  LEASE_GRANTED lease id, shape, pid, address, fn keys    (to a driver) a worker of its own for
                                                  tasks of that resource shape, until it
                                                  gives it back (see ``_node_leases``)
  LEASE_REVOKE  lease id                          give that lease back once its call is done
  LEASE_SERVE   lease id                          (to a worker) take direct calls; answered
                                                  by LEASE_READY

caller <-> actor or leased worker (direct channels; see ``_client_direct``, ``_direct_server``)
  HELLO         "caller", pid, node_id, cid       -> WELCOME {pid}, or {refused: why} (a
                                                  caller of another node: it stops trying)
  DIRECT_CALL   spec, pid                         run this call (inline args, no deps); the
                                                  same frame the caller queues for its node
  DIRECT_CALL   spec, lease id[, fn blob]         (to a leased worker) run this task; the
                                                  function comes with its first call
  DIRECT_RESULT [(task_id, results, retryable)]   calls' results (arena ones as data None: ask
                                                  the node; retryable: the node runs it again)

node <-> node (peer links; see ``_node_cluster``)
  HELLO         "node", pid, None, {node_id, register, address, ip, resources}
  PEER_WELCOME  {node_id, view}
  NODE_STATUS   available, queued                 (to the head, every heartbeat)
  CLUSTER_VIEW  [node rows]                       (from the head, every heartbeat)
  FORWARD       spec, {oid: owner}, fn_blob | None, serializers | None   run it here
  RESULTS       task_id, [(oid, kind, data | None, size, {contained oid: owner})]
  PULL          oid[, redirect ok, stale node]    -> OBJECT | OBJECT_META | PULL_FROM |
                                                  OBJECT_LOST (the sender holds a lease on
                                                  it until it says DECREF)
  PULL_FROM     oid, node id                      ask that node instead: it has (or is
                                                  getting) a copy (a broadcast spreads)
  OBJECT        oid, kind, data, {contained oid: owner}
  OBJECT_LOST   oid, why
  REFS          [(DECREF, oid)]                   a lease given back
  FORWARD_ACTOR spec, opts, {oid: owner}, fn_blob | None, serializers | None
  ACTOR_AT      (aid, node id | None, name, namespace, meta)   (to/from the head)
  WHERE_ACTOR   aid                               -> ACTOR_AT (asked of the head)
  QUERY / REPLY as for clients                    (a node passes get_actor to the head)
  OBJECT_META   oid, kind, size, {contained: owner}   a large object's answer to PULL
  SEND_DATA     oid                               the puller made room: stream it
  DATA          oid, size                         followed by ``size`` raw bytes (not a
                                                  pickle): read straight into the store
  DATA_DONE     oid                               (made by the receiving server) all in
  OUTPUT        as above                          toward the node whose driver runs the job
"""
from __future__ import annotations

import enum
import io
import operator
import pickle
import struct
from collections import deque

__all__ = ["Msg", "RefOp", "Kind", "Query", "M", "R", "K", "Q", "encode", "FrameReader", "HEADER",
           "decode_untrusted"]

HEADER = struct.Struct("<I")
_pack_len = HEADER.pack
_dumps = pickle.dumps
_loads = pickle.loads
MAX_FRAME = 1 << 31


class Msg(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    SUBMIT = 3
    PUT_INLINE = 4
    ALLOC = 5
    SEAL = 6
    GET = 7
    WAIT = 8
    WAIT_NOW = 9
    DROP_REQ = 10
    REFS = 11
    REGISTER_FN = 12
    SERIALIZERS = 13
    TASK_DONE = 14
    CANCEL = 15
    QUERY = 16
    ACTOR_CREATE = 17
    ACTOR_CALL = 18
    ACTOR_KILL = 19
    SHUTDOWN = 21
    ABORT_ALLOC = 20
    REPLY = 22
    EXECUTE = 23
    CANCEL_TASK = 24
    EXIT = 25
    JOB = 28
    BAD_FRAME = 29
    PEER_WELCOME = 30
    NODE_STATUS = 31
    CLUSTER_VIEW = 32
    FORWARD = 33
    RESULTS = 34
    PULL = 35
    OBJECT = 36
    OBJECT_LOST = 37
    WARNING = 38
    FORWARD_ACTOR = 39
    ACTOR_AT = 40
    WHERE_ACTOR = 41
    OBJECT_META = 42
    SEND_DATA = 43
    DATA = 44
    DATA_DONE = 45
    OUTPUT = 46
    PULL_FROM = 48
    REVOKE = 49
    REVOKED = 50
    FORGET = 51
    DIRECT_CALL = 52
    DIRECT_DONE = 53
    DIRECT_RESULT = 54
    LEASE_GRANTED = 55
    LEASE_REVOKE = 56
    LEASE_RETURN = 57
    LEASE_SERVE = 58
    LEASE_READY = 59
    CALL_SITE = 60


class RefOp(enum.IntEnum):
    INCREF = 1   # this process now holds a ref to the object
    DECREF = 2   # this process holds no ref any more
    UNPIN = 3    # a zero-copy view handed out by GET/EXECUTE is gone
    PIN = 4      # a zero-copy view made from a known place (``_core``): UNPIN ends it
    FORGOT = 5   # this process no longer reads the object at its known place (FORGET)


class Kind(enum.IntEnum):
    VALUE = 0        # serialized value
    ERROR = 1        # serialized exception to raise on get
    ACTOR_HANDLE = 2  # reserved


class Query(enum.IntEnum):
    CLUSTER_RESOURCES = 1
    AVAILABLE_RESOURCES = 2
    NODES = 3
    GET_ACTOR = 4
    LIST_NAMED_ACTORS = 5
    STATS = 6
    OBJECT_INFO = 7
    CLAIM_ACTOR_NAME = 8    # node -> head: (name, namespace, aid, meta, node_id)
    CALLS_PENDING = 9       # aid: has the asker calls to that actor not finished?
    LIST_OBJECTS = 20       # {scope: "cluster" | "node", limit}: what fills the store
    STORE_STATS = 21        # {scope}: used, spilled, free, capacity per node


def _as_ints(enum_cls):
    """The members as plain ints, for the wire: an IntEnum member pickles by
    reference and costs a global lookup on every load.  ``Msg(tag)`` turns a
    received int back into its member for messages and debugging."""
    return type(f"{enum_cls.__name__}Ints", (), {m.name: int(m) for m in enum_cls})


M = _as_ints(Msg)
R = _as_ints(RefOp)
K = _as_ints(Kind)
Q = _as_ints(Query)


PACK_FROM = 32       # a GET/WAIT of this many ids packs them (``pack_ids``)
_first = operator.itemgetter(0)
_unpack_ids = struct.Struct("16s").iter_unpack


def pack_ids(oids):
    """The ``oids`` field of a GET or WAIT: many ids travel packed in one
    bytes object (no per-id pickle opcodes, no pickler memo entry each)."""
    return b"".join(oids) if len(oids) >= PACK_FROM else oids


def ids_of(field):
    """The ids of a GET's or WAIT's ``oids`` field, packed or not."""
    return IdRun(field) if type(field) is bytes else field


class IdRun:
    """Object ids packed 16 bytes each in one bytes object, as a read-only
    sequence of bytes: how the node keeps the ids of a GET or WAIT while it
    waits (16 bytes an id instead of a bytes object and a list slot, ~72:
    a get of a million refs)."""

    __slots__ = ("blob",)

    def __init__(self, blob):
        if type(blob) is not bytes or len(blob) % 16:
            raise ValueError("packed object ids must be 16 bytes each")
        self.blob = blob

    def __len__(self):
        return len(self.blob) >> 4

    def __iter__(self):
        return map(_first, _unpack_ids(self.blob))

    def __getitem__(self, i):
        n = len(self.blob) >> 4
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("id index out of range")
        return self.blob[i << 4:(i + 1) << 4]


def encode(msg: tuple) -> bytes:
    """One frame: length prefix + pickled tuple."""
    body = _dumps(msg, 5)
    return _pack_len(len(body)) + body


class _Foreign:
    """Stands in for every class named in a frame a daemon decodes: the
    daemon never imports a user's module nor runs a constructor from the
    wire.  Accepts whatever pickle hands it and keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _DaemonUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == __name__ and name in _OWN_ENUMS:
            return _OWN_ENUMS[name]     # the protocol's own tags: plain ints
        self.foreign.append(f"{module}.{name}")
        return _Foreign


_OWN_ENUMS = {c.__name__: c for c in (Msg, RefOp, Kind, Query)}
_PICKLE_START = b"\x80\x05"      # PROTO 5 (what ``encode`` always writes)


def decode_untrusted(data):
    """Decode a frame in a daemon: plain data only (tuples, lists, dicts,
    str, bytes, numbers).  Returns the message; a frame that names any class
    becomes ``(M.BAD_FRAME, why, salvaged)``, where ``salvaged`` is the
    message with stand-ins for those classes (its tag and request id still
    say which request to fail), and one that cannot be decoded at all
    becomes ``(M.BAD_FRAME, why, None)``."""
    # Every frame ``encode`` makes starts with PROTO 5 (and a FRAME opcode
    # whose length fits the frame, if any).  Garbage rarely does: checking it first
    # keeps random bytes away from the unpickler, where a stray PUT opcode
    # with a huge memo index can allocate gigabytes and stall the daemon.
    # (A token holder can still craft one: the token is the trust boundary.)
    if data[:2] != _PICKLE_START or (data[2:3] == b"\x95" and (
            len(data) < 11 or int.from_bytes(data[3:11], "little") > len(data) - 11)):
        return (M.BAD_FRAME, f"undecodable frame of {len(data)} bytes (it does not start "
                             f"as a miniray message does)", None)
    u = _DaemonUnpickler(io.BytesIO(data))
    u.foreign = []
    try:
        msg = u.load()
    except Exception as exc:
        return (M.BAD_FRAME, f"undecodable frame of {len(data)} bytes "
                             f"({type(exc).__name__}: {exc})", None)
    if u.foreign:
        names = ", ".join(sorted(set(u.foreign)))
        return (M.BAD_FRAME, f"the message names Python classes ({names}); daemons never "
                             f"unpickle user objects: user-defined values must travel as "
                             f"bytes made by the sender", msg)
    if type(msg) is not tuple or not msg or type(msg[0]) is not int:
        return (M.BAD_FRAME, f"a frame that is not a tagged message ({type(msg).__name__})",
                None)
    return msg


RECV_SIZE = 256 * 1024


class FrameReader:
    """Accumulates received bytes and yields complete messages.

    ``recv_from(sock)`` reads into a scratch buffer allocated once:
    ``sock.recv(n)`` allocates n bytes per call, and above malloc's mmap
    threshold that is an mmap + munmap (and page faults) per message.
    """

    __slots__ = ("_buf", "_scratch", "_view", "ready", "_loads", "raw_tag")

    def __init__(self, loads=None, raw_tag=None):
        """``loads``: how a frame's body becomes a message (``pickle.loads``
        in drivers and workers; ``decode_untrusted`` in daemons).
        ``raw_tag``: parsing stops after a message with this tag (its raw
        payload follows in the stream, for the reader to take; see
        ``take_buffered``)."""
        self._loads = loads or _loads
        self.raw_tag = raw_tag
        self._buf = bytearray()
        self._scratch = bytearray(RECV_SIZE)
        self._view = memoryview(self._scratch)
        self.ready = deque()      # parsed by push(), not yet handled

    def recv_from(self, sock, flags=0) -> int:
        """Read once from ``sock`` into the scratch buffer; the byte count
        (0 at end of stream).  Then ``feed_scratch(n)`` parses them."""
        return sock.recv_into(self._scratch, RECV_SIZE, flags)

    def feed_scratch(self, n: int) -> list:
        return self.feed(self._view[:n])

    def push_scratch(self, n: int) -> None:
        """Parse the ``n`` bytes just received into ``ready`` (for readers
        that an exception, such as KeyboardInterrupt, may interrupt: see
        ``_parse`` and ``dispatch``)."""
        self._buf += self._view[:n]
        self._parse()

    def dispatch(self, handle) -> None:
        """Hand every ready message to ``handle``, oldest first."""
        ready = self.ready
        while ready:
            handle(ready[0])
            ready.popleft()

    def feed(self, data) -> list:
        """Add received bytes; return the messages now complete."""
        self._buf += data
        self._parse()
        msgs = list(self.ready)
        self.ready.clear()
        return msgs

    def _parse(self) -> None:
        """Move every complete frame of ``_buf`` to ``ready``.  A frame is
        consumed only after its message is queued, so an exception anywhere
        in here can repeat a message but never lose one."""
        buf = self._buf
        pos = 0
        end_all = len(buf)
        mv = memoryview(buf)
        loads = self._loads
        try:
            while end_all - pos >= 4:
                (length,) = HEADER.unpack_from(buf, pos)
                if length > MAX_FRAME:
                    raise ValueError(f"frame of {length} bytes is too large: the peer is not "
                                     f"speaking miniray")
                end = pos + 4 + length
                if end > end_all:
                    break
                msg = loads(mv[pos + 4:end])
                self.ready.append(msg)
                pos = end
                if self.raw_tag is not None and msg[0] == self.raw_tag:
                    break       # raw bytes follow: not frames
        finally:
            mv.release()
            if pos:
                del buf[:pos]

    def pending_bytes(self) -> int:
        return len(self._buf)

    def take_buffered(self, n: int) -> bytes:
        """Up to ``n`` bytes already received past the last parsed frame (the
        start of a raw payload)."""
        data = bytes(self._buf[:n])
        del self._buf[:len(data)]
        return data
