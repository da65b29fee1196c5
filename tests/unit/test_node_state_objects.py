"""Objects in the node's pure state: puts, arena ranges, leases (holders,
pins, views), GET and WAIT, what a closing client gives back."""
from __future__ import annotations

import pytest

from miniray._node_state import D, E, LARGE_WRITE
from miniray.exceptions import ObjectLostError, ObjectStoreFullError

from .node_harness import ERROR, SEND, VALUE, M, MiB, Node, Q, R, new_oid, ret, spec


def alloc(n, cid, rid, oid, size):
    return n.msgs(cid, (M.ALLOC, rid, oid, size))


def seal(n, cid, oid, hold=True, contained=()):
    return n.msgs(cid, (M.SEAL, oid, VALUE, hold, list(contained)))


def arena_put(n, cid, oid, size, rid=900):
    """ALLOC + SEAL (hold=True) of an arena object; its offset."""
    out = alloc(n, cid, rid, oid, size)
    assert out[-1][2][:3] == (M.REPLY, rid, True), out
    assert seal(n, cid, oid) == []
    return out[-1][2][3][0]


# -- inline objects ----------------------------------------------------------------------------

def test_put_inline_then_decref_frees_the_entry():
    n = Node()
    d = n.driver()
    x = new_oid()
    assert n.put(d, x, b"12345") == []
    e = n.entry(x)
    assert (e.holders, e.pins, e.inline) == (1, 0, b"12345")
    assert n.st.table.inline_bytes == 5
    assert n.decref(d, x) == []
    assert n.entry(x) is None and n.st.table.inline_bytes == 0


def test_entry_lives_while_any_process_holds_it():
    n = Node().pool()
    d = n.driver()
    w = n.wc(1)
    x = new_oid()
    n.put(d, x)
    assert n.msgs(w, (M.REFS, [(R.INCREF, x), (R.INCREF, x)])) == []
    assert n.entry(x).holders == 2                           # once per process
    n.decref(d, x)
    assert n.entry(x) is not None
    n.decref(w, x)
    assert n.entry(x) is None


def test_decref_of_a_pending_return_frees_it_once_sealed():
    n = Node().pool()
    d = n.driver()
    s = spec()
    n.submit(d, s)
    n.decref(d, ret(s))
    assert n.entry(ret(s)) is not None                       # the task will write it
    n.done(1, s)
    assert n.entry(ret(s)) is None


def test_contained_refs_live_as_long_as_their_container():
    n = Node()
    d = n.driver()
    inner, outer = new_oid(), new_oid()
    n.put(d, inner, b"inner")
    n.put(d, outer, b"outer", contained=[inner])
    n.decref(d, inner)
    assert n.entry(inner).pins == 1
    n.decref(d, outer)
    assert n.entry(outer) is None and n.entry(inner) is None


def test_task_result_pins_the_refs_it_contains():
    n = Node().pool()
    d = n.driver()
    s = spec()
    inner = new_oid()
    n.submit(d, s)
    n.put(n.wc(1), inner, b"made in the task")
    n.done(1, s, [(ret(s), VALUE, b"holds inner", [inner])])
    n.decref(n.wc(1), inner)
    assert n.entry(inner) is not None
    n.decref(d, ret(s))
    assert n.entry(inner) is None


# -- GET and WAIT ------------------------------------------------------------------------------

def test_get_of_an_unknown_object_fails_with_object_lost():
    n = Node()
    d = n.driver()
    x = new_oid()
    out = n.get(d, 3, [x])
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][:3] == (M.REPLY, 3, False)
    err = out[0][2][3]
    assert isinstance(err, ObjectLostError) and x.hex() in str(err)


def test_get_waits_for_every_object():
    n = Node()
    d, p = n.driver(), n.driver()
    a, b = new_oid(), new_oid()
    n.msgs(d, (M.REFS, [(R.INCREF, a), (R.INCREF, b)]))      # refs to objects not put yet
    assert n.get(d, 1, [a, b, a]) == []
    assert n.put(p, b, b"B") == []
    assert n.put(p, a, b"A") == [
        (SEND, d, (M.REPLY, 1, True, [(VALUE, b"A"), (VALUE, b"B"), (VALUE, b"A")]))]


def test_wait_answers_as_soon_as_enough_are_ready():
    n = Node()
    d, p = n.driver(), n.driver()
    a, b, c = new_oid(), new_oid(), new_oid()
    n.put(p, b)
    n.msgs(d, (M.REFS, [(R.INCREF, a), (R.INCREF, c)]))
    assert n.msgs(d, (M.WAIT, 1, [a, b, c], 1)) == [(SEND, d, (M.REPLY, 1, True, [1]))]
    assert n.msgs(d, (M.WAIT, 2, [a, b, c], 3)) == []
    assert n.put(p, c) == []
    assert n.put(p, a) == [(SEND, d, (M.REPLY, 2, True, [0, 1, 2]))]


def test_wait_now_answers_with_what_is_ready():
    n = Node()
    d, p = n.driver(), n.driver()
    a, b = new_oid(), new_oid()
    n.msgs(d, (M.REFS, [(R.INCREF, a), (R.INCREF, b)]))
    assert n.msgs(d, (M.WAIT, 4, [a, b], 2)) == []
    n.put(p, b)
    assert n.msgs(d, (M.WAIT_NOW, 4)) == [(SEND, d, (M.REPLY, 4, True, [1]))]
    assert n.entry(a).waiters == []
    assert n.put(p, a) == []                                  # answered already


def test_drop_req_forgets_a_waiting_get():
    n = Node()
    d, p = n.driver(), n.driver()
    a = new_oid()
    n.msgs(d, (M.REFS, [(R.INCREF, a)]))
    n.get(d, 8, [a])
    assert n.msgs(d, (M.DROP_REQ, 8)) == [(SEND, d, (M.REPLY, 8, False, None))]
    assert n.msgs(d, (M.DROP_REQ, 8)) == []
    assert n.put(p, a) == []


# -- arena ranges: ALLOC, SEAL, ABORT_ALLOC, views ---------------------------------------------

def test_alloc_seal_abort():
    n = Node()
    d = n.driver()
    x, y = new_oid(), new_oid()
    assert alloc(n, d, 1, x, 1000) == [(SEND, d, (M.REPLY, 1, True, (0, 0)))]
    assert alloc(n, d, 2, y, 1000) == [(SEND, d, (M.REPLY, 2, True, (1024, 0)))]
    assert n.st.clients[d].unsealed == {x, y}
    assert n.msgs(d, (M.ABORT_ALLOC, x)) == []
    assert n.entry(x) is None and n.st.table.alloc.used == 1024
    assert seal(n, d, y) == []
    assert n.value(y) == (VALUE, None) and n.entry(y).holders == 1
    assert n.msgs(d, (M.ABORT_ALLOC, y)) == []               # sealed: not given back
    assert n.entry(y) is not None and n.st.table.alloc.used == 1024
    assert n.msgs(d, (M.ABORT_ALLOC, new_oid())) == []


def test_a_reused_range_reports_its_pages_as_reserved():
    n = Node()
    d = n.driver()
    x, y, z = new_oid(), new_oid(), new_oid()
    alloc(n, d, 1, x, 1000)
    alloc(n, d, 2, y, 1000)
    n.msgs(d, (M.ABORT_ALLOC, x))
    # Everything below the end of y (1024 + 1000) was handed out before.
    assert alloc(n, d, 3, z, 500) == [(SEND, d, (M.REPLY, 3, True, (0, 2024)))]


def test_prefault_progress_counts_as_reserved():
    n = Node()
    d = n.driver()
    assert n.handle((E.PREFAULT, 1 * MiB)) == []
    assert alloc(n, d, 1, new_oid(), 1000) == [(SEND, d, (M.REPLY, 1, True, (0, MiB)))]


def test_large_alloc_pauses_the_prefault():
    n = Node()
    d = n.driver()
    assert alloc(n, d, 1, new_oid(), LARGE_WRITE) == [
        (D.PAUSE_PREFAULT,), (SEND, d, (M.REPLY, 1, True, (0, 0)))]


def test_store_full_replies_object_store_full_and_keeps_working():
    # A store full of objects being read (a view is alive: nothing can be
    # spilled; see test_node_state_spill for the rest).
    n = Node(arena_size=MiB)
    d = n.driver()
    x = new_oid()
    arena_put(n, d, x, 700 * 1024)
    n.get(d, 1, [x])
    out = alloc(n, d, 2, new_oid(), 700 * 1024)
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][:3] == (M.REPLY, 2, False)
    err = out[0][2][3]
    assert isinstance(err, ObjectStoreFullError)
    assert "0.7 MiB" in str(err) and "pinned by readers" in str(err) and "1.0 MiB" in str(err)
    n.msgs(d, (M.REFS, [(R.UNPIN, x), (R.DECREF, x)]))
    assert alloc(n, d, 3, new_oid(), 700 * 1024) == [(SEND, d, (M.REPLY, 3, True, (0, 716800)))]


@pytest.mark.parametrize("unpin_first", [False, True])
def test_get_of_an_arena_object_pins_a_view_until_unpinned_and_decrefed(unpin_first):
    n = Node()
    d = n.driver()
    x = new_oid()
    off = arena_put(n, d, x, 5000)
    assert n.get(d, 1, [x]) == [(SEND, d, (M.REPLY, 1, True, [(VALUE, (off, 5000))]))]
    assert n.st.clients[d].views == {x: 1} and n.entry(x).pins == 1
    ops = [(R.UNPIN, x), (R.DECREF, x)]
    if not unpin_first:
        ops.reverse()
    n.msgs(d, (M.REFS, [ops[0]]))
    assert n.entry(x) is not None
    n.msgs(d, (M.REFS, [ops[1]]))
    assert n.entry(x) is None and n.st.table.alloc.used == 0


def test_each_view_needs_its_own_unpin():
    n = Node()
    d = n.driver()
    x = new_oid()
    arena_put(n, d, x, 100)
    n.get(d, 1, [x])
    n.get(d, 2, [x])
    n.msgs(d, (M.REFS, [(R.DECREF, x), (R.UNPIN, x)]))
    assert n.entry(x) is not None
    n.msgs(d, (M.REFS, [(R.UNPIN, x), (R.UNPIN, x)]))       # one too many: ignored
    assert n.entry(x) is None


def test_seal_with_hold_false_frees_once_nothing_else_needs_it():
    n = Node()
    d = n.driver()
    x = new_oid()
    alloc(n, d, 1, x, 100)
    assert seal(n, d, x, hold=False) == []
    assert n.entry(x) is not None                           # released on the next lease change
    n.msgs(d, (M.REFS, [(R.INCREF, x), (R.DECREF, x)]))
    assert n.entry(x) is None and n.st.table.alloc.used == 0


# -- a client going away -----------------------------------------------------------------------

def test_closed_client_releases_what_it_held_viewed_and_was_writing():
    n = Node()
    d, other = n.driver(), n.driver()
    held, viewed, writing, shared = new_oid(), new_oid(), new_oid(), new_oid()
    n.put(d, held)
    arena_put(n, other, viewed, 3000)
    n.msgs(d, (M.REFS, [(R.INCREF, viewed)]))
    n.get(d, 1, [viewed])
    n.msgs(other, (M.REFS, [(R.DECREF, viewed)]))
    alloc(n, d, 2, writing, 2000)
    n.put(other, shared)
    n.msgs(d, (M.REFS, [(R.INCREF, shared)]))
    assert n.handle((E.CLOSED, d)) == []
    assert n.entry(held) is None and n.entry(viewed) is None and n.entry(writing) is None
    assert n.entry(shared).holders == 1                     # still held by the other
    assert n.st.table.alloc.used == 0 and d not in n.st.clients


def test_closed_client_stops_waiting_and_its_task_still_finishes():
    n = Node().pool()
    d = n.driver()
    s = spec()
    n.submit(d, s)
    n.get(d, 1, [ret(s)])
    assert n.handle((E.CLOSED, d)) == []
    assert not n.entry(ret(s)).waiters
    assert n.done(1, s) == []                               # no reply to a closed client
    assert n.entry(ret(s)) is None and n.idle() == [1]


# -- queries -----------------------------------------------------------------------------------

def test_object_info_and_stats_queries():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    x = new_oid()
    arena_put(n, d, x, 100)
    assert n.msgs(d, (M.QUERY, 1, Q.OBJECT_INFO, x)) == [(SEND, d, (M.REPLY, 1, True, {
        "state": 2, "holders": 1, "pins": 0, "size": 100, "inline": False, "spilled": False}))]
    assert n.msgs(d, (M.QUERY, 2, Q.OBJECT_INFO, new_oid())) == [
        (SEND, d, (M.REPLY, 2, True, None))]
    s = spec()
    n.submit(d, s)
    out = n.msgs(d, (M.QUERY, 3, Q.STATS, None))
    stats = out[0][2][3]
    assert (stats["objects"], stats["workers"], stats["idle"], stats["tasks"]) == (2, 2, 1, 1)
    assert stats["worker_pids"] == [20_001, 20_002] and stats["arena_used"] == 128
    out = n.msgs(d, (M.QUERY, 4, Q.AVAILABLE_RESOURCES, None))
    assert out == [(SEND, d, (M.REPLY, 4, True, {"CPU": 1.0, "node:127.0.0.1": 1.0}))]


def test_error_objects_are_answered_like_values():
    n = Node().pool()
    d = n.driver()
    s = spec()
    n.submit(d, s)
    n.done(1, s, [(ret(s), ERROR, b"err", ())])
    assert n.get(d, 1, [ret(s)]) == [(SEND, d, (M.REPLY, 1, True, [(ERROR, b"err")]))]
