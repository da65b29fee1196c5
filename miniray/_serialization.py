"""How values travel: serialization tiers, the contiguous layout, the
custom-serializer registry.

Data flow::

    obj --serialize()--> SerializedObject(meta, buffers, contained_refs)
                              |  meta: one pickle protocol-5 stream
                              |  buffers: out-of-band views on numpy/Arrow data (no copy)
                              |  contained_refs: ids of every ObjectRef met inside obj
                              v
          to_bytes() (inline, small)  /  write_to(dest) (a shared-memory range)
                              |  [header][meta][pad][buf 0][pad][buf 1]...  (buffers 64-aligned)
                              v
    read_from(src) -> (meta view, buffer views)  --deserialize()-->  obj
                     (slices of src, no copy)        numpy/Arrow come back as views on src
                                                     (loads_from(aligned=True): 64-byte
                                                     aligned in memory, copied if not)

Tiers (one pickler does them all; the first that applies wins):

* custom: a class registered with :func:`register_serializer` or
  :func:`register_custom_serializer` (exact type match).  The deserializer
  travels inside the payload, so a reader with no registration still decodes.
* fast: primitives, str/bytes, list/dict/tuple/set (the C pickler, no Python
  call), numpy arrays and Arrow arrays/tables/record batches (their data goes
  out-of-band), ObjectRefs, and functions/classes importable by reference.
* dict: an instance of an importable class is rebuilt from class + __dict__
  (pickle's default; the class goes by reference).
* reduce: anything with its own __reduce__/__reduce_ex__/__getstate__.
* cloudpickle: functions, lambdas, closures and classes that are not
  importable (``__main__``, nested in a function) travel by value.

Nothing here touches the global tables of pickle, copyreg or cloudpickle:
every customisation lives in :class:`_Pickler.reducer_override` and in this
module's own registry.  numpy and pyarrow are imported only when one of their
objects is met (``import miniray`` stays light).

Hot path: ``serialize`` reuses one pickler per thread (memo, output buffer and
ref list cleared after each call; a busy flag makes reentrant calls, e.g. from
a custom serializer, use a fresh pickler).  Top-level atoms skip the pickler.
"""
from __future__ import annotations

import concurrent.futures
import io
import os
import pickle
import struct
import threading


from ._ids import ObjectRef
from .exceptions import SerializationError

__all__ = [
    "SerializedObject", "serialize", "deserialize", "encoded_size", "write_to",
    "to_bytes", "read_from", "loads_from", "dumps", "register_serializer",
    "deregister_serializer", "register_custom_serializer", "registry_snapshot",
    "apply_registry_snapshot", "registry_version", "inspect_serializability",
    "tier_of", "shutdown_copy_pool",
]

PROTOCOL = 5

# ---------------------------------------------------------------------------
# Layout
#
#   offset 0: magic u8, version u8, flags u16, nbuf u32, meta_len u64   (16 B)
#   offset 16: nbuf x (offset u64, length u64), offsets relative to start
#   then meta; then each buffer at a 64-byte-aligned offset.
# ---------------------------------------------------------------------------
MAGIC = 0xB5
VERSION = 1
ALIGN = 64  # cache line; also what AVX-512 loads and Arrow prefer
_HDR = struct.Struct("<BBHIQ")
_HDR_SIZE = _HDR.size  # 16
_HDR_pack = _HDR.pack
_HDR_unpack_from = _HDR.unpack_from
# A copy this large is split across threads: below it, thread hand-off costs
# more than the copy (8 MiB is ~0.4 ms at 20 GB/s).
PARALLEL_COPY_MIN = 8 << 20
# Per-thread output buffers larger than this are dropped after use, so one big
# in-band pickle does not pin its memory for the thread's lifetime.
_KEEP_OUTPUT_MAX = 1 << 20

_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})


class SerializedObject:
    """A serialized value: a pickle stream plus out-of-band buffers.

    ``buffers`` are 1-D contiguous ``'B'`` memoryviews on the original
    objects' memory (numpy/Arrow data is not copied until ``write_to``).
    ``contained_refs`` lists the ids of the ObjectRefs inside the value, in
    pickling order (one entry per distinct ObjectRef instance).
    """

    __slots__ = ("meta", "buffers", "contained_refs")

    def __init__(self, meta, buffers, contained_refs):
        self.meta = meta
        self.buffers = buffers
        self.contained_refs = contained_refs

    def __repr__(self):
        return (f"SerializedObject(meta={len(self.meta)} B, buffers="
                f"{[len(b) for b in self.buffers]}, refs={len(self.contained_refs)})")


# ---------------------------------------------------------------------------
# Custom-serializer registry (ours alone; never copyreg/cloudpickle globals)
# ---------------------------------------------------------------------------
_CUSTOM, _USE_PICKLE, _USE_DICT = "custom", "pickle", "dict"
_KINDS = {k: k for k in (_CUSTOM, _USE_PICKLE, _USE_DICT)}  # canonical (identical) strings


class _Entry:
    __slots__ = ("kind", "serializer", "deserializer", "name")

    def __init__(self, kind, serializer, deserializer, name):
        self.kind = kind
        self.serializer = serializer
        self.deserializer = deserializer
        self.name = name


_registry: dict = {}            # class -> _Entry; read lock-free by picklers
_registry_lock = threading.Lock()
_registry_version = 0
_from_snapshot: set = set()     # classes last installed by apply_registry_snapshot

# reducer_override is never called for these (the C pickler saves them
# itself), so a registration could never take effect.
_UNREGISTRABLE = _ATOMS | {list, tuple, dict, set, frozenset, bytearray, type,
                           pickle.PickleBuffer}


def _type_name(cls) -> str:
    mod = getattr(cls, "__module__", None)
    qual = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", repr(cls))
    return qual if mod in (None, "builtins") else f"{mod}.{qual}"


def _set(cls, entry) -> None:
    global _registry_version
    if not isinstance(cls, type):
        raise TypeError(f"a serializer is registered for a class, got {cls!r}")
    if cls in _UNREGISTRABLE:
        raise ValueError(
            f"cannot register a serializer for {cls.__name__}: the pickler handles "
            f"built-in {cls.__name__} objects natively and never consults the registry")
    with _registry_lock:
        _registry[cls] = entry
        _from_snapshot.discard(cls)
        _registry_version += 1


def register_serializer(cls, *, serializer, deserializer) -> None:
    """Use ``serializer(obj)`` / ``deserializer(value)`` for instances of
    exactly ``cls`` (subclasses are not matched).  ``serializer`` returns any
    serializable value; ``deserializer`` travels by value inside each payload,
    so readers need no registration.  Takes precedence over every tier."""
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("register_serializer needs callable serializer= and deserializer=, "
                        "e.g. register_serializer(Cls, serializer=lambda o: o.state, "
                        "deserializer=Cls.from_state)")
    _set(cls, _Entry(_CUSTOM, serializer, deserializer, _type_name(cls)))


def deregister_serializer(cls) -> None:
    """Forget the registration for ``cls`` (no error if there is none)."""
    global _registry_version
    with _registry_lock:
        if _registry.pop(cls, None) is not None:
            _registry_version += 1
        _from_snapshot.discard(cls)


def register_custom_serializer(cls, serializer=None, deserializer=None, use_pickle=False,
                               use_dict=False, local=None, job_id=None, class_id=None) -> None:
    """Classic Ray API.  Exactly one of: ``serializer`` and ``deserializer``
    together; ``use_pickle=True`` (the object's own pickle protocol, bypassing
    the other tiers); ``use_dict=True`` (rebuilt from class + ``__dict__``
    without calling ``__init__`` or ``__setstate__``).  ``local``, ``job_id``
    and ``class_id`` are accepted for compatibility and ignored: classes
    travel by reference or by value, so no id is needed."""
    del local, job_id, class_id
    has_pair = serializer is not None or deserializer is not None
    chosen = int(has_pair) + int(bool(use_pickle)) + int(bool(use_dict))
    if chosen != 1 or (has_pair and (serializer is None or deserializer is None)):
        raise ValueError(
            "register_custom_serializer needs exactly one of: serializer= and deserializer= "
            "(both), use_pickle=True, or use_dict=True; got "
            f"serializer={serializer!r}, deserializer={deserializer!r}, "
            f"use_pickle={use_pickle!r}, use_dict={use_dict!r}")
    if has_pair:
        register_serializer(cls, serializer=serializer, deserializer=deserializer)
    elif use_pickle:
        _set(cls, _Entry(_USE_PICKLE, None, None, _type_name(cls)))
    else:
        _set(cls, _Entry(_USE_DICT, None, None, _type_name(cls)))


def registry_version() -> int:
    """Increments on every registry change; cheap to poll before each send."""
    return _registry_version


def registry_snapshot() -> bytes:
    """All current registrations, cloudpickled, for shipping to workers."""
    with _registry_lock:
        items = [(cls, e.kind, e.serializer, e.deserializer) for cls, e in _registry.items()]
    import cloudpickle
    return cloudpickle.dumps(items, protocol=PROTOCOL)


def apply_registry_snapshot(blob: bytes) -> None:
    """Install the registrations in ``blob`` (idempotent).  Entries replace
    those for the same class; a class installed by the previous snapshot but
    absent from this one is removed (so deregistrations propagate), while
    registrations made locally in this process are kept."""
    global _registry_version
    items = pickle.loads(blob)
    with _registry_lock:
        new = set()
        for cls, kind, ser, deser in items:
            _registry[cls] = _Entry(_KINDS[kind], ser, deser, _type_name(cls))
            new.add(cls)
        for cls in _from_snapshot - new:
            _registry.pop(cls, None)
        _from_snapshot.clear()
        _from_snapshot.update(new)
        _registry_version += 1


def _custom_load(deserializer, value, type_name):
    try:
        return deserializer(value)
    except Exception as exc:
        raise SerializationError(
            f"The custom deserializer {getattr(deserializer, '__qualname__', deserializer)!r} "
            f"registered for {type_name} failed: {type(exc).__name__}: {exc}") from exc


def _new_instance(cls):
    return cls.__new__(cls)


def _set_dict_state(obj, state):
    obj.__dict__.update(state)
    return obj


def _custom_reduce(entry, obj):
    kind = entry.kind
    if kind is _CUSTOM:
        return (_custom_load, (entry.deserializer, entry.serializer(obj), entry.name))
    if kind is _USE_DICT:
        try:
            state = obj.__dict__
        except AttributeError:
            raise TypeError(f"{entry.name} is registered with use_dict=True but its "
                            f"instances have no __dict__") from None
        return (_new_instance, (type(obj),), state, None, None, _set_dict_state)
    return obj.__reduce_ex__(PROTOCOL)  # use_pickle


# ---------------------------------------------------------------------------
# numpy / Arrow special cases (modules imported lazily, when met)
# ---------------------------------------------------------------------------
_ARROW_KINDS = None  # (Table, RecordBatch, Array, ChunkedArray) once pyarrow is seen
# Arrow's own pickling is out-of-band with protocol 5 but ships whole parent
# buffers for a slice; above this waste, go through IPC, which truncates.
_ARROW_SLICE_SLACK = 64 << 10


def _numpy_reduce(obj):
    import numpy as np
    if type(obj) is np.ndarray and not obj.dtype.hasobject and \
            not (obj.flags.c_contiguous or obj.flags.f_contiguous):
        # numpy pickles non-contiguous arrays in-band (a copy inside meta,
        # then another into the layout); one copy to contiguous is cheaper.
        return np.ascontiguousarray(obj).__reduce_ex__(PROTOCOL)
    return NotImplemented


def _arrow_reduce(obj):
    global _ARROW_KINDS
    if _ARROW_KINDS is None:
        import pyarrow as pa
        _ARROW_KINDS = (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)
    for kind, cls in enumerate(_ARROW_KINDS):
        if isinstance(obj, cls):
            break
    else:
        return NotImplemented
    try:
        sliced = obj.get_total_buffer_size() > obj.nbytes + _ARROW_SLICE_SLACK
    except Exception:  # old pyarrow, exotic types: Arrow's own reduce is fine
        return NotImplemented
    if not sliced:
        return NotImplemented
    import pyarrow as pa
    if kind == 2:
        obj = pa.RecordBatch.from_arrays([obj], names=["_"])
    elif kind == 3:
        obj = pa.Table.from_arrays([obj], names=["_"])
    if any(isinstance(f.type, pa.BaseExtensionType) for f in obj.schema):
        return NotImplemented  # IPC would need the type registered on the reader
    sink = pa.BufferOutputStream()
    try:
        with pa.ipc.new_stream(sink, obj.schema) as writer:
            if kind in (1, 2):
                writer.write_batch(obj)
            else:
                writer.write_table(obj)
    except pa.ArrowException:  # e.g. chunks with different dictionaries
        return NotImplemented
    return (_arrow_from_ipc, (pickle.PickleBuffer(sink.getvalue()), kind))


def _arrow_from_ipc(buf, kind):
    """Rebuild from an Arrow IPC stream; the data stays views on ``buf``."""
    import pyarrow as pa
    reader = pa.ipc.open_stream(pa.py_buffer(buf))
    if kind == 0:
        return reader.read_all()
    if kind == 1:
        return reader.read_next_batch()
    if kind == 2:
        return reader.read_next_batch().column(0)
    return reader.read_all().column(0)


# ---------------------------------------------------------------------------
# The pickler
# ---------------------------------------------------------------------------
_Pickler = None       # made on first use (``_pickler_class``)


def _pickler_class():
    """The pickler class, made on first use: importing cloudpickle costs
    ~3 MiB of RSS, which a node (it pickles only its own errors) and a
    worker that has run nothing yet need not pay."""
    global _Pickler
    if _Pickler is not None:
        return _Pickler
    import cloudpickle
    _cp_reducer_override = cloudpickle.Pickler.reducer_override

    class _Pickler(cloudpickle.Pickler):
        """cloudpickle's pickler (dynamic functions/classes by value, importable
        ones by reference) plus our registry, ObjectRef tracking and the
        numpy/Arrow out-of-band rules.  Never used by two threads at once."""

        def __init__(self, file):
            self._bufs = []
            self._refs = []
            self.busy = False
            super().__init__(file, protocol=PROTOCOL, buffer_callback=self._bufs.append)

        def reducer_override(self, obj):
            t = type(obj)
            entry = _registry.get(t)
            if entry is not None:
                return _custom_reduce(entry, obj)
            if t is ObjectRef:
                oid = obj._id
                self._refs.append(oid)
                return (ObjectRef, (oid,))
            mod = getattr(t, "__module__", None)
            if mod == "numpy":
                r = _numpy_reduce(obj)
                if r is not NotImplemented:
                    return r
            elif mod == "pyarrow.lib":
                r = _arrow_reduce(obj)
                if r is not NotImplemented:
                    return r
            return _cp_reducer_override(self, obj)

        def reset(self):
            self.clear_memo()
            self.globals_ref.clear()
            self._bufs.clear()
            self._refs.clear()

    globals()["_Pickler"] = _Pickler
    return _Pickler


class _NullFile:
    """Output sink for diagnostic pickling: keeps nothing."""
    __slots__ = ()

    def write(self, data):
        return len(data)


_local = threading.local()


def _fresh_pickler():
    out = io.BytesIO()
    p = _pickler_class()(out)
    p.out = out
    return p


def serialize(obj, *, where: str = "value") -> SerializedObject:
    """Serialize ``obj``; raise SerializationError naming the offending part.

    ``where`` names the value in error messages, e.g. ``"arg 'model'"``.
    """
    if type(obj) in _ATOMS:
        return SerializedObject(pickle.dumps(obj, PROTOCOL), [], [])
    p = getattr(_local, "pickler", None)
    if p is None or p.busy:  # first use on this thread, or a reentrant call
        p = _fresh_pickler()
        if getattr(_local, "pickler", None) is None:
            _local.pickler = p
    out = p.out
    p.busy = True
    failure = None
    try:
        pickle.Pickler.dump(p, obj)
        meta = out.getvalue()
        bufs = p._bufs
        buffers = [b.raw() for b in bufs] if bufs else []
        refs = p._refs[:] if p._refs else []
    except BaseException as exc:
        if getattr(_local, "pickler", None) is p:
            _local.pickler = None  # do not reuse a pickler that failed mid-dump
        if not isinstance(exc, Exception):
            raise
        failure = exc
    finally:
        p.reset()
        if out.tell() > _KEEP_OUTPUT_MAX and getattr(_local, "pickler", None) is p:
            _local.pickler = None
        else:
            out.seek(0)
            out.truncate()
        p.busy = False
    if failure is not None:
        _raise_serialization_error(obj, where, failure)
    return SerializedObject(meta, buffers, refs)


def _try_dump(obj):
    """Pickle ``obj`` on its own into nothing; return the error or None."""
    try:
        _pickler_class()(_NullFile()).dump(obj)
    except Exception as exc:
        return exc
    return None


def _raise_serialization_error(obj, where, exc):
    from . import _serialization_diagnose as diag
    try:
        message = diag.failure_message(obj, where, exc, _try_dump, _registry)
    except Exception:  # diagnosis itself must never hide the real error
        message = (f"Could not serialize {where}: a {_type_name(type(obj))} could not be "
                   f"pickled ({type(exc).__name__}: {exc}).")
    raise SerializationError(message) from exc


def deserialize(meta, buffers):
    """Rebuild an object from ``meta`` and its out-of-band ``buffers``.

    The buffers are not copied: numpy arrays and Arrow data come back as
    views on them, read-only when the buffer is read-only.
    """
    try:
        return pickle.loads(meta, buffers=buffers)
    except Exception as exc:
        from . import _serialization_diagnose as diag
        raise SerializationError(diag.load_failure_message(exc)) from exc


# ---------------------------------------------------------------------------
# Contiguous layout
# ---------------------------------------------------------------------------
def _layout(s):
    """([buffer offsets], total size) of ``s`` in the contiguous layout."""
    nbuf = len(s.buffers)
    end = _HDR_SIZE + 16 * nbuf + len(s.meta)
    offsets = []
    for b in s.buffers:
        end = (end + ALIGN - 1) & -ALIGN
        offsets.append(end)
        end += b.nbytes
    return offsets, end


def encoded_size(s: SerializedObject) -> int:
    """Bytes :func:`write_to` / :func:`to_bytes` produce for ``s``."""
    if not s.buffers:
        return _HDR_SIZE + len(s.meta)
    return _layout(s)[1]


def _header(s, offsets):
    nbuf = len(offsets)
    head = _HDR_pack(MAGIC, VERSION, 0, nbuf, len(s.meta))
    if nbuf:
        table = []
        for off, b in zip(offsets, s.buffers):
            table.append(off)
            table.append(b.nbytes)
        head += struct.pack(f"<{2 * nbuf}Q", *table)
    return head


def to_bytes(s: SerializedObject) -> bytes:
    """The layout as one ``bytes`` object (for inline transport)."""
    meta = s.meta
    if not s.buffers:
        return _HDR_pack(MAGIC, VERSION, 0, 0, len(meta)) + meta
    offsets, _ = _layout(s)
    parts = [_header(s, offsets), meta]
    pos = _HDR_SIZE + 16 * len(offsets) + len(meta)
    for off, b in zip(offsets, s.buffers):
        if off > pos:
            parts.append(bytes(off - pos))
        parts.append(b)
        pos = off + b.nbytes
    return b"".join(parts)


def write_to(s: SerializedObject, dest, prepare=None) -> None:
    """Write the layout into ``dest`` (writable, ``len >= encoded_size(s)``).

    Each buffer lands at a 64-byte-aligned offset from ``dest``'s start.
    Buffers of ``PARALLEL_COPY_MIN`` bytes or more are copied by several
    threads (numpy.copyto releases the GIL).  ``prepare(offset, length)``,
    if given, runs before each part of ``dest`` is first written, from the
    thread that writes it: the store reserves fresh pages there, so page
    allocation for one chunk overlaps the copy of another."""
    mv = dest if type(dest) is memoryview else memoryview(dest)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if mv.readonly:
        raise ValueError("write_to needs a writable destination")
    offsets, total = _layout(s)
    if len(mv) < total:
        raise ValueError(f"destination holds {len(mv)} bytes, the object needs {total}")
    head = _header(s, offsets)
    meta = s.meta
    hlen = len(head)
    big = []
    small = []
    for off, b in zip(offsets, s.buffers):
        n = b.nbytes
        if n >= PARALLEL_COPY_MIN:
            big.append((off, b))
        elif n:
            small.append((off, b))
    if prepare is not None:
        prepare(0, hlen + len(meta))
        for off, b in small:
            prepare(off, b.nbytes)
    mv[:hlen] = head
    mv[hlen:hlen + len(meta)] = meta
    for off, b in small:
        mv[off:off + b.nbytes] = b
    if big:
        _parallel_copy(mv, big, prepare)


_pool = None
_pool_lock = threading.Lock()


def _copy_threads() -> int:
    """2-4 threads: copies are memory-bound, more threads than cores only
    contend (measured: 2 threads on 2 cores +30%, 4 threads -25%)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(2, min(4, cores))


def _get_pool():
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                from concurrent.futures import ThreadPoolExecutor
                _pool = ThreadPoolExecutor(_copy_threads() - 1,
                                           thread_name_prefix="miniray-copy")
    return _pool


def shutdown_copy_pool() -> None:
    """Join the copy threads (the runtime calls this at shutdown; they are
    restarted on demand)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)


def _reset_pool_after_fork():
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


PREPARED_CHUNK = 32 * 2**20


def _parallel_copy(mv, big, prepare=None):
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        for off, b in big:
            if prepare is not None:
                prepare(off, b.nbytes)
            mv[off:off + b.nbytes] = b
        return
    nthreads = _copy_threads()
    pool = _get_pool()
    per_thread = [[] for _ in range(nthreads)]
    for off, b in big:
        n = b.nbytes
        dst = np.frombuffer(mv, np.uint8, n, off)
        src = np.frombuffer(b, np.uint8)
        if prepare is None:
            # Contiguous shares: one copy call per thread.
            step = -(-n // nthreads)
            step = (step + ALIGN - 1) & -ALIGN
            starts = range(0, n, step)
        else:
            # Interleaved chunks: while one thread reserves pages for its
            # chunk, the others copy theirs.
            step = PREPARED_CHUNK
            starts = range(0, n, step)
        for k, i in enumerate(starts):
            per_thread[k % nthreads].append((off + i, dst[i:i + step], src[i:i + step]))

    def run(chunks):
        for at, d, c in chunks:
            if prepare is not None:
                prepare(at, d.nbytes)
            np.copyto(d, c)

    futures = [pool.submit(run, chunks) for chunks in per_thread[1:] if chunks]
    try:
        run(per_thread[0])
    finally:
        # Every thread is done with the range before anyone may give it
        # back (ABORT_ALLOC after a failed or interrupted write).
        concurrent.futures.wait(futures)
    for f in futures:
        f.result()


def read_from(src):
    """Parse the layout without copying: ``(meta view, [buffer views])``."""
    mv = src if type(src) is memoryview else memoryview(src)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    size = len(mv)
    if size < _HDR_SIZE:
        raise SerializationError(f"Corrupt serialized object: {size} bytes is shorter "
                                 f"than the {_HDR_SIZE}-byte header")
    magic, version, _flags, nbuf, mlen = _HDR_unpack_from(mv, 0)
    if magic != MAGIC or version != VERSION:
        raise SerializationError(
            f"Corrupt serialized object: header starts {bytes(mv[:2]).hex()}, expected "
            f"magic {MAGIC:02x} version {VERSION:02x} (not written by miniray's write_to?)")
    start = _HDR_SIZE + 16 * nbuf
    if start + mlen > size:
        raise SerializationError(f"Corrupt serialized object: meta ends at {start + mlen}, "
                                 f"past the end of the {size}-byte source")
    meta = mv[start:start + mlen]
    if not nbuf:
        return meta, []
    table = struct.unpack_from(f"<{2 * nbuf}Q", mv, _HDR_SIZE)
    buffers = []
    for i in range(0, 2 * nbuf, 2):
        off, n = table[i], table[i + 1]
        if off + n > size:
            raise SerializationError(f"Corrupt serialized object: buffer {i // 2} ends at "
                                     f"{off + n}, past the end of the {size}-byte source")
        buffers.append(mv[off:off + n])
    return meta, buffers


def loads_from(src, *, aligned=False):
    """``deserialize(*read_from(src))``.  With ``aligned``, every
    out-of-band buffer (numpy/Arrow data) starts 64-byte aligned in memory,
    copied if it is not where it lies in ``src`` (see ``_aligned``); without,
    they are always views on ``src``."""
    if type(src) is bytes and len(src) >= _HDR_SIZE:
        magic, version, _flags, nbuf, mlen = _HDR_unpack_from(src, 0)
        if not nbuf and magic == MAGIC and version == VERSION and \
                _HDR_SIZE + mlen <= len(src):
            try:
                return pickle.loads(memoryview(src)[_HDR_SIZE:_HDR_SIZE + mlen])
            except Exception as exc:
                from . import _serialization_diagnose as diag
                raise SerializationError(diag.load_failure_message(exc)) from exc
    meta, buffers = read_from(src)
    if aligned and buffers:
        buffers = _aligned(buffers)
    return deserialize(meta, buffers)


def _aligned(buffers):
    """``buffers``, each starting at a 64-byte-aligned address, as Ray's are
    (SIMD code and some libraries expect it).  The layout puts them at
    64-byte offsets from its start, so those read from the arena (ranges
    64-aligned in a page-aligned mapping) already are: no copy.  Those in a
    ``bytes`` object (inline objects, which arrive inside messages) start
    wherever Python put its data: they are copied (inline objects are
    small) into fresh aligned memory, read-only if the source was."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return buffers
    out = None
    for i, b in enumerate(buffers):
        src = np.frombuffer(b, np.uint8)
        if not src.ctypes.data % ALIGN:
            continue
        raw = np.empty(src.nbytes + ALIGN, np.uint8)
        start = -raw.ctypes.data % ALIGN
        dst = raw[start:start + src.nbytes]
        dst[:] = src
        if out is None:
            out = list(buffers)
        view = memoryview(dst)
        out[i] = view.toreadonly() if b.readonly else view
    return buffers if out is None else out


def dumps(obj, *, where: str = "value") -> bytes:
    """``to_bytes(serialize(obj, where=where))``."""
    if type(obj) in _ATOMS:
        meta = pickle.dumps(obj, PROTOCOL)
        return _HDR_pack(MAGIC, VERSION, 0, 0, len(meta)) + meta
    return to_bytes(serialize(obj, where=where))


# ---------------------------------------------------------------------------
# Introspection (implementation in _serialization_diagnose; failure path only)
# ---------------------------------------------------------------------------
def inspect_serializability(obj, name=None, *, print_report=True):
    """Walk ``obj``, report the tier each part takes and what fails.

    Returns ``(ok, failures)``; each failure has ``.path``, ``.type_name`` and
    ``.reason``.  Prints a tree when ``print_report``.
    """
    from . import _serialization_diagnose as diag
    return diag.inspect(obj, name, print_report, _try_dump, _registry)


def tier_of(obj) -> str:
    """The tier the top-level object takes: "custom", "fast", "dict",
    "reduce" or "cloudpickle" (a container takes its slowest element's)."""
    from . import _serialization_diagnose as diag
    return diag.tier_of(obj, _registry)
