"""Spilling in the node's pure state (``_node_spill``): which objects go to
disk and when, that a range is reused only once its bytes are on disk, that
objects being read are never spilled, reading back for GET and tasks,
deleting files, and what a disk that refuses does.  The server's part
(SPILLED / RESTORED) is fed as events."""
from __future__ import annotations

from miniray import _task_spec as S
from miniray._node_state import D, E
from miniray._object_table import READY
from miniray.exceptions import ObjectLostError, ObjectStoreFullError

from .node_harness import (ERROR, SEND, VALUE, M, MiB, Node, Q, R, call_spec,
                           decode, execute, init_spec, new_oid, ret, spec)

SZ = 20 * MiB
ENOSPC = "OSError: [Errno 28] No space left on device"


def node(**kw):
    """A 64 MiB store that spills only when an ALLOC does not fit (unless
    told another threshold)."""
    kw.setdefault("object_spilling_threshold", 1.0)
    return Node(arena_size=64 * MiB, **kw)


def quiet(out) -> list:
    """Instructions less PAUSE_PREFAULT (every large ALLOC says it)."""
    return [ins for ins in out if ins[0] != D.PAUSE_PREFAULT]


def alloc(n, cid, rid, oid, size=SZ):
    return quiet(n.msgs(cid, (M.ALLOC, rid, oid, size)))


def put(n, cid, oid, size=SZ, rid=900, keep_place=False):
    """ALLOC + SEAL of an arena object that fits now; its offset.  The
    writer gives up the place it was leased (FORGOT) unless ``keep_place``:
    these tests are about what is spilled, not about places."""
    out = alloc(n, cid, rid, oid, size)
    assert out[-1][2][:3] == (M.REPLY, rid, True), out
    assert n.msgs(cid, (M.SEAL, oid, VALUE, True, [])) == []
    if not keep_place:
        assert n.msgs(cid, (M.REFS, [(R.FORGOT, oid)])) == []
    return out[-1][2][3][0]


def read_and_release(n, cid, oid, rid=800):
    """A GET (a view pinned) then its UNPIN: ``oid`` becomes the most
    recent.  (The place the GET leased is given up too.)"""
    out = n.get(cid, rid, [oid])
    assert out[0][2][:3] == (M.REPLY, rid, True), out
    n.msgs(cid, (M.REFS, [(R.UNPIN, oid), (R.FORGOT, oid)]))


def spilled(n, fid, error=None):
    return quiet(n.handle((E.SPILLED, fid, error)))


def restored(n, oid, error=None):
    return quiet(n.handle((E.RESTORED, oid, error)))


def on_disk(n, oid) -> bool:
    return n.entry(oid).spilled


# -- what is spilled, and when ----------------------------------------------------------------

def test_alloc_that_does_not_fit_waits_for_the_least_recently_read_object_to_be_on_disk():
    n = node()
    d = n.driver()
    a, b, c, x = new_oid(), new_oid(), new_oid(), new_oid()
    off_a, _, _ = put(n, d, a), put(n, d, b), put(n, d, c)
    read_and_release(n, d, a)                   # a is the most recent now: b goes first
    off_b = n.entry(b).offset
    out = alloc(n, d, 1, x)
    assert out == [(D.SPILL, 1, [(b, off_b, SZ)])]       # no reply: the range is not free yet
    assert n.entry(b).offset == off_b and n.st.table.alloc.used == 3 * SZ
    out = spilled(n, 1)
    assert out == [(SEND, d, (M.REPLY, 1, True, (off_b, 3 * SZ - off_b)))]  # b's range, now
    assert on_disk(n, b) and not on_disk(n, a) and n.entry(b).disk == (1, 0)
    assert n.msgs(d, (M.QUERY, 2, Q.OBJECT_INFO, b))[0][2][3]["spilled"] is True
    stats = n.msgs(d, (M.QUERY, 3, Q.STATS, None))[0][2][3]
    assert (stats["spilled_objects"], stats["spilled_bytes"], stats["spill_files"]) == (1, SZ, 1)
    assert off_a != off_b


def test_a_batch_is_written_to_one_file_back_to_back():
    n = node()
    d = n.driver()
    small = [new_oid() for _ in range(6)]
    offs = [put(n, d, o, 10 * MiB) for o in small]
    out = alloc(n, d, 1, new_oid(), 30 * MiB)           # 60 MiB in use: 26 more needed
    assert out == [(D.SPILL, 1, [(o, off, 10 * MiB) for o, off in zip(small[:3], offs[:3])])]
    spilled(n, 1)
    assert [n.entry(o).disk for o in small[:3]] == [(1, 0), (1, 10 * MiB), (1, 20 * MiB)]


def test_above_the_high_water_mark_objects_are_spilled_ahead_of_need():
    n = node(object_spilling_threshold=0.5)             # 32 MiB of 64
    d = n.driver()
    a, b, c = new_oid(), new_oid(), new_oid()
    put(n, d, a, 12 * MiB)
    put(n, d, b, 12 * MiB)
    out = alloc(n, d, 1, c, 12 * MiB)                   # 36 MiB in use: above the mark
    assert out == [(SEND, d, (M.REPLY, 1, True, (24 * MiB, 0))),
                   (D.SPILL, 1, [(a, n.entry(a).offset, 12 * MiB)])]
    assert n.msgs(d, (M.SEAL, c, VALUE, True, [])) == []
    assert spilled(n, 1) == [] and on_disk(n, a) and n.st.table.alloc.used == 24 * MiB
    assert put(n, d, new_oid(), 4 * MiB) >= 0           # 28 MiB: below the mark, no SPILL


def test_objects_being_read_are_never_spilled():
    n = node()
    d = n.driver()
    a, b, c = new_oid(), new_oid(), new_oid()
    put(n, d, a)
    put(n, d, b)
    put(n, d, c)
    n.get(d, 5, [a])                                    # a view of a stays alive
    out = alloc(n, d, 1, new_oid())
    assert out == [(D.SPILL, 1, [(b, n.entry(b).offset, SZ)])]      # a is older, but read
    spilled(n, 1)
    n.get(d, 6, [c])
    out = alloc(n, d, 2, new_oid(), 30 * MiB)           # a and c read, b on disk: no room
    assert [ins[:2] for ins in out] == [(SEND, d)]
    err = out[0][2][3]
    assert out[0][2][:3] == (M.REPLY, 2, False) and isinstance(err, ObjectStoreFullError)
    assert "40.0 MiB of its 64.0 MiB are pinned by readers" in str(err)
    assert not on_disk(n, a) and not on_disk(n, c)


def test_an_object_read_while_it_is_written_out_keeps_its_range():
    n = node()
    d = n.driver()
    a, b, c = new_oid(), new_oid(), new_oid()
    off_a = put(n, d, a)
    off_b = put(n, d, b)
    put(n, d, c)
    assert alloc(n, d, 1, new_oid())[0][0] == D.SPILL   # a is being written out
    assert n.get(d, 2, [a]) == [(SEND, d, (M.REPLY, 2, True, [(VALUE, (off_a, SZ))]))]
    out = spilled(n, 1)                                 # a is read: its range stays
    assert n.entry(a).offset == off_a and n.entry(a).disk == (1, 0) and not on_disk(n, a)
    assert out == [(D.SPILL, 2, [(b, off_b, SZ)])]      # room is still wanted
    n.msgs(d, (M.REFS, [(R.UNPIN, a)]))
    out = spilled(n, 2)
    assert out[0][2][:3] == (M.REPLY, 1, True) and out[0][2][3][0] == off_b


def test_an_object_read_back_is_spilled_again_without_writing():
    n = node()
    d = n.driver()
    a, b, c = spill_a(n, d)
    assert n.get(d, 3, [a])[0][0] == D.RESTORE
    assert restored(n, a)[0][2][:3] == (M.REPLY, 3, True)
    n.msgs(d, (M.REFS, [(R.UNPIN, a), (R.FORGOT, a)]))
    read_and_release(n, d, b)
    read_and_release(n, d, c)                           # a is the least recent now
    out = alloc(n, d, 4, new_oid())                     # its copy on disk is still good:
    assert [ins[0] for ins in out] == [SEND] and out[0][2][:3] == (M.REPLY, 4, True)
    assert on_disk(n, a) and n.entry(a).disk == (1, 0)  # its range is freed at once


# -- reading back ------------------------------------------------------------------------------

def spill_a(n, d):
    """Three 20 MiB objects, the first spilled to make room for a fourth
    that is then freed: (a, b, c), a on disk in file 1, 24 MiB free."""
    a, b, c, x = new_oid(), new_oid(), new_oid(), new_oid()
    put(n, d, a)
    put(n, d, b)
    put(n, d, c)
    assert alloc(n, d, 1, x)[0][0] == D.SPILL
    spilled(n, 1)
    n.msgs(d, (M.SEAL, x, VALUE, True, []))
    n.decref(d, x)
    assert on_disk(n, a) and n.st.table.alloc.used == 2 * SZ
    return a, b, c


def test_get_of_a_spilled_object_reads_it_back_then_answers():
    n = node()
    d = n.driver()
    a, b, c = spill_a(n, d)
    out = n.get(d, 7, [b, a])
    off = n.entry(a).offset
    assert out == [(D.RESTORE, a, 1, 0, SZ, off)] and off >= 0
    assert n.entry(b).protect == 1                      # b is not spilled meanwhile
    out = restored(n, a)
    assert out == [(SEND, d, (M.REPLY, 7, True, [(VALUE, (n.entry(b).offset, SZ)),
                                                  (VALUE, (off, SZ))]))]
    assert n.st.clients[d].views == {a: 1, b: 1} and n.entry(b).protect == 0
    stats = n.msgs(d, (M.QUERY, 8, Q.STATS, None))[0][2][3]
    assert (stats["restored_total"], stats["spilled_objects"]) == (1, 0)


def test_get_that_needs_room_spills_others_first():
    n = node()
    d = n.driver()
    a, b, c = spill_a(n, d)
    y = new_oid()
    put(n, d, y)                                        # 60 MiB in use: no room for a
    out = n.get(d, 7, [a])
    assert out == [(D.SPILL, 2, [(b, n.entry(b).offset, SZ)])]
    out = spilled(n, 2)
    assert out == [(D.RESTORE, a, 1, 0, SZ, n.entry(a).offset)]
    assert restored(n, a)[0][2][:3] == (M.REPLY, 7, True)


def test_get_of_more_than_the_store_can_hold_at_once_fails_clearly():
    n = node()
    d = n.driver()
    a, b, c = spill_a(n, d)
    x, y = new_oid(), new_oid()
    put(n, d, x)
    alloc(n, d, 2, y)
    spilled(n, 2)                                       # b on disk
    n.msgs(d, (M.SEAL, y, VALUE, True, []))
    alloc(n, d, 3, new_oid())
    spilled(n, 3)                                       # c on disk
    out = n.get(d, 9, [a, b, c, x, y])                  # 100 MiB in a 64 MiB store
    kinds = [ins[0] for ins in out]
    assert kinds[-1] == SEND and out[-1][2][:3] == (M.REPLY, 9, False), out
    err = out[-1][2][3]
    assert isinstance(err, ObjectStoreFullError) and "pinned by readers" in str(err)
    assert all(n.entry(o).protect == 0 for o in (a, b, c, x, y))
    assert not n.st.clients[d].views


def test_task_argument_on_disk_is_read_back_before_its_execute():
    n = node().pool()
    d = n.driver()
    a, b, c = spill_a(n, d)
    s = spec(deps=[a])
    out = n.submit(d, s)
    off = n.entry(a).offset
    assert out == [(D.RESTORE, a, 1, 0, SZ, off)]
    assert n.worker(1).state == "busy" and n.st.tasks.tasks[s[S.TASK_ID]].state == "running"
    out = restored(n, a)
    assert out == [(SEND, n.wc(1), execute(s, deps=[(VALUE, (off, SZ))]))]
    assert n.st.clients[n.wc(1)].views == {a: 1}


def test_actor_calls_keep_their_order_when_an_argument_is_on_disk():
    n = node(num_cpus=2).pool()
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init)
    n.init_done(1, init)
    a, b, c = spill_a(n, d)
    first = call_spec(aid, "m", deps=[a])               # its argument is on disk
    second = call_spec(aid, "m")
    out = n.call(d, first) + n.call(d, second)
    assert out == [(D.RESTORE, a, 1, 0, SZ, n.entry(a).offset)]     # second waits behind
    out = restored(n, a)
    w = n.wc(n.actor_wid(aid))
    assert out == [(SEND, w, execute(first, blob=None, deps=[(VALUE, (n.entry(a).offset, SZ))])),
                   (SEND, w, execute(second, blob=None))]


def test_a_copy_that_cannot_be_read_back_makes_the_object_lost():
    n = node()
    d = n.driver()
    a, b, c = spill_a(n, d)
    n.get(d, 7, [a])
    out = restored(n, a, "OSError: [Errno 5] Input/output error")
    assert out[-1][0] == D.DELETE_SPILL or out[0][0] == D.DELETE_SPILL
    reply = [ins[2] for ins in out if ins[0] == SEND][0]
    assert reply[:3] == (M.REPLY, 7, True) and reply[3][0][0] == ERROR
    err = decode(reply[3][0][1])
    assert isinstance(err, ObjectLostError) and "Input/output error" in str(err)
    assert n.st.table.alloc.used == 2 * SZ


def test_freed_while_read_back_keeps_the_range_until_the_read_is_over():
    n = node()
    d, other = n.driver(), n.driver()
    a, b, c = spill_a(n, d)
    n.get(other, 7, [a])                                # other holds no ref to a
    n.decref(d, a)                                      # a is freed while being read
    assert n.entry(a) is None and n.st.table.alloc.used == 3 * SZ
    out = restored(n, a)
    assert n.st.table.alloc.used == 2 * SZ
    assert [m[:3] for m in (ins[2] for ins in out if ins[0] == SEND)] == [(M.REPLY, 7, False)]


# -- files -------------------------------------------------------------------------------------

def test_freeing_spilled_objects_deletes_their_file_once_all_are_gone():
    n = node()
    d = n.driver()
    small = [new_oid() for _ in range(6)]
    for o in small:
        put(n, d, o, 10 * MiB)
    alloc(n, d, 1, new_oid(), 30 * MiB)
    spilled(n, 1)                                       # small[:3] in file 1
    assert n.decref(d, small[0]) == [] and n.decref(d, small[1]) == []
    assert n.decref(d, small[2]) == [(D.DELETE_SPILL, 1)]
    assert n.msgs(d, (M.QUERY, 2, Q.STATS, None))[0][2][3]["spill_files"] == 0


def test_object_freed_while_written_out_leaves_no_file():
    n = node()
    d = n.driver()
    a = new_oid()
    put(n, d, a)
    put(n, d, new_oid())
    put(n, d, new_oid())
    alloc(n, d, 1, new_oid())
    n.decref(d, a)                                      # gone before its bytes are on disk
    out = spilled(n, 1)
    assert (D.DELETE_SPILL, 1) in out


# -- a disk that refuses -----------------------------------------------------------------------

def test_spill_failure_fails_the_waiting_alloc_clearly_and_keeps_the_objects():
    n = node()
    d = n.driver()
    a = new_oid()
    off_a = put(n, d, a)
    put(n, d, new_oid())
    put(n, d, new_oid())
    alloc(n, d, 1, new_oid())
    out = spilled(n, 1, ENOSPC)
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][:3] == (M.REPLY, 1, False)
    err = out[0][2][3]
    assert isinstance(err, ObjectStoreFullError)
    assert "spilling objects to disk failed" in str(err) and "No space left" in str(err)
    assert n.entry(a).offset == off_a and not on_disk(n, a) and n.entry(a).io == 0
    assert any("No space left" in line for line in n.logs)
    # The node keeps working: a is read from the arena, a later ALLOC tries again.
    assert n.get(d, 2, [a]) == [(SEND, d, (M.REPLY, 2, True, [(VALUE, (off_a, SZ))]))]
    out = alloc(n, d, 3, new_oid())
    assert [ins[0] for ins in out] == [D.SPILL]
    assert spilled(n, 2)[0][2][:3] == (M.REPLY, 3, True)


def test_no_spilling_ahead_after_a_failure_until_one_succeeds():
    n = node(object_spilling_threshold=0.5)
    d = n.driver()
    put(n, d, new_oid(), 12 * MiB)
    put(n, d, new_oid(), 12 * MiB)
    o = new_oid()
    assert alloc(n, d, 1, o, 12 * MiB)[-1][0] == D.SPILL
    n.msgs(d, (M.SEAL, o, VALUE, True, []), (M.REFS, [(R.FORGOT, o)]))
    assert spilled(n, 1, ENOSPC) == []                  # nobody waited: a log line only
    out = alloc(n, d, 2, new_oid(), 4 * MiB)            # 40 MiB: above the mark, but
    assert [ins[0] for ins in out] == [SEND]            # spilling ahead pauses
    out = alloc(n, d, 3, new_oid(), 30 * MiB)           # a request that needs room tries
    assert [ins[0] for ins in out] == [D.SPILL]
    out = spilled(n, 2)
    assert out[0][2][:3] == (M.REPLY, 3, True) and n.st.spill.failed is None


def test_alloc_waiting_for_room_is_dropped_when_its_writer_gives_up():
    n = node()
    d = n.driver()
    for _ in range(3):
        put(n, d, new_oid())
    x = new_oid()
    assert alloc(n, d, 1, x)[0][0] == D.SPILL
    n.msgs(d, (M.ABORT_ALLOC, x))                       # interrupted while waiting
    assert spilled(n, 1) == [] and n.entry(x) is None
    assert n.st.table.alloc.used == 2 * SZ


def test_an_object_larger_than_the_store_fails_at_once():
    n = node()
    d = n.driver()
    out = alloc(n, d, 1, new_oid(), 65 * MiB)
    assert out[0][2][:3] == (M.REPLY, 1, False)
    assert "larger than the whole store" in str(out[0][2][3])


# -- another node pulls a spilled object --------------------------------------------------------

def test_a_peer_pulling_a_spilled_object_waits_while_it_is_read_back():
    from .cluster_harness import Net
    net = Net()
    h = net.add("H", head=True)
    net.add("B", resources={"B": 1})
    d = h.driver()
    a, b, c = new_oid(), new_oid(), new_oid()
    for rid, o in enumerate((a, b, c)):
        net.msgs("H", d, (M.ALLOC, rid, o, SZ), (M.SEAL, o, VALUE, True, []),
                 (M.REFS, [(R.FORGOT, o)]))
    # 60 MiB sealed, above the 0.8 mark: a (least recent) is written out.
    (spill,) = [x for n, kind, x in net.log if n == "H" and kind == "do" and x[0] == D.SPILL]
    assert [item[0] for item in spill[2]] == [a]
    net.feed("H", (E.SPILLED, spill[1], None))
    assert net.entry("H", a).spilled
    s = spec("rb", shape=(("B", 1.0), ("CPU", 1.0)), deps=[a])
    net.msgs("H", d, (M.SUBMIT, s))
    restores = [x for n, kind, x in net.log if n == "H" and kind == "do" and x[0] == D.RESTORE]
    assert [x[1] for x in restores] == [a] and net.ran == []     # B waits for the bytes
    net.feed("H", (E.RESTORED, a, None))
    net.pump()
    sends = [x for n, kind, x in net.log if n == "H" and kind == "do" and x[0] == D.SEND_ARENA]
    assert [(x[2][1], x[3]) for x in sends] == [(a, restores[0][5])]
    assert net.ran == [("B", "rb")]


def test_a_pulled_object_waits_for_room_like_a_put():
    """A node whose store is full spills to make room for an object it
    pulls from another node (it used to fail the pull at once)."""
    from .cluster_harness import ON_B, Net
    net = Net()
    h = net.add("H", head=True)
    b = net.add("B", resources={"B": 1})
    b.st.spill.high_mark = b.st.table.alloc.capacity     # spill only when needed
    db = b.driver()
    mine = [new_oid() for _ in range(3)]
    for rid, o in enumerate(mine):                       # 60 of B's 64 MiB
        net.msgs("B", db, (M.ALLOC, rid, o, SZ), (M.SEAL, o, VALUE, True, []),
                 (M.REFS, [(R.FORGOT, o)]))
    d = h.driver()
    x = new_oid()
    net.msgs("H", d, (M.ALLOC, 1, x, SZ), (M.SEAL, x, VALUE, True, []))
    s = spec("on_b", shape=ON_B, deps=[x])
    net.msgs("H", d, (M.SUBMIT, s))
    spills = [ins for n, kind, ins in net.log if n == "B" and kind == "do" and ins[0] == D.SPILL]
    assert len(spills) == 1 and spills[0][2][0][0] == mine[0] and net.ran == []
    net.feed("B", (E.SPILLED, spills[0][1], None))      # room now: the pull goes on
    net.pump()
    assert net.ran == [("B", "on_b")]
    assert net.entry("B", mine[0]).spilled


def test_a_pulled_object_that_can_never_fit_fails_naming_the_node():
    from .cluster_harness import ON_B, Net
    net = Net()
    h = net.add("H", head=True)
    b = net.add("B", resources={"B": 1})
    db = b.driver()
    big = new_oid()
    net.msgs("B", db, (M.ALLOC, 1, big, 50 * MiB), (M.SEAL, big, VALUE, True, []))
    net.msgs("B", db, (M.REFS, [(R.PIN, big)]))         # being read: cannot be spilled
    d = h.driver()
    x = new_oid()
    net.msgs("H", d, (M.ALLOC, 1, x, SZ), (M.SEAL, x, VALUE, True, []))
    s = spec("on_b", shape=ON_B, deps=[x])
    net.msgs("H", d, (M.SUBMIT, s))
    err = net.entry("H", ret(s))
    assert err.state == READY and err.kind == ERROR and net.ran == []
    text = str(decode(err.inline))
    assert "node B" in text and "object store" in text, text
