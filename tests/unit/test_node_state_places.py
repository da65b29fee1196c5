"""Places leased to processes (``ObjectTable.lease_place``, ``_client_places``):
a process that knows where an object lives reads it without asking the
node, so the node must not free that range by spilling until the process
gives the place up (FORGOT after a FORGET, its DECREF, or its exit)."""
from __future__ import annotations

from miniray._node_spill import FORGET_WAIT_S
from miniray._node_state import D, E
from miniray.exceptions import ObjectStoreFullError

from .node_harness import SEND, VALUE, M, MiB, Node, R, new_oid

SZ = 20 * MiB


def node():
    """A 64 MiB store that spills only when an ALLOC does not fit."""
    return Node(arena_size=64 * MiB, object_spilling_threshold=1.0)


def quiet(out) -> list:
    return [ins for ins in out if ins[0] != D.PAUSE_PREFAULT]


def put(n, cid, oid, rid=900):
    """ALLOC + SEAL with hold: the writer is leased the place."""
    out = quiet(n.msgs(cid, (M.ALLOC, rid, oid, SZ)))
    assert out[-1][2][:3] == (M.REPLY, rid, True), out
    assert n.msgs(cid, (M.SEAL, oid, VALUE, True, [])) == []
    return out[-1][2][3][0]


def alloc(n, cid, rid, oid):
    return quiet(n.msgs(cid, (M.ALLOC, rid, oid, SZ)))


def asked(cid, *oids) -> list:
    """A FORGET of ``oids`` to ``cid``, and the timer that bounds the wait."""
    return [(SEND, cid, (M.FORGET, list(oids))), (D.TIMER, FORGET_WAIT_S, "forget")]


def three_puts(n, d):
    oids = [new_oid() for _ in range(3)]
    for o in oids:
        put(n, d, o)
    return oids


def test_a_placed_object_is_spilled_only_after_its_writer_forgot_the_place():
    n = node()
    d = n.driver()
    a, b, c = three_puts(n, d)
    assert n.entry(a).placed == 1
    out = alloc(n, d, 1, new_oid())                 # 60 of 64 MiB used: room is wanted
    assert out == asked(d, a)      # asked, least recently read first
    assert n.entry(a).offset >= 0                   # nothing written, nothing freed yet
    out = quiet(n.msgs(d, (M.REFS, [(R.FORGOT, a)])))
    assert out == [(D.SPILL, 1, [(a, n.entry(a).offset, SZ)])]
    assert n.entry(a).placed == 0


def test_a_view_made_from_a_place_is_counted_and_keeps_the_object_in_the_arena():
    n = node()
    d = n.driver()
    a, b, c = three_puts(n, d)
    n.msgs(d, (M.REFS, [(R.PIN, a)]))              # the driver read a at its place
    assert n.entry(a).viewers == 1
    assert alloc(n, d, 1, new_oid()) == asked(d, b)   # a is being read
    out = quiet(n.msgs(d, (M.REFS, [(R.FORGOT, b)])))
    assert out == [(D.SPILL, 1, [(b, n.entry(b).offset, SZ)])]
    n.msgs(d, (M.REFS, [(R.UNPIN, a)]))
    assert n.entry(a).viewers == 0 and n.entry(a).offset >= 0 and n.entry(a).placed == 1


def test_a_process_asked_again_after_it_took_the_place_back_with_a_get():
    n = node()
    d = n.driver()
    a, b, c = three_puts(n, d)
    assert alloc(n, d, 1, new_oid()) == asked(d, a)
    # FORGOT, then a GET of a in the same turn leases the place again: it
    # must be asked for again, not waited for forever.
    out = quiet(n.msgs(d, (M.REFS, [(R.FORGOT, a)]), (M.GET, 5, [a]), (M.REFS, [(R.UNPIN, a)])))
    assert (SEND, d, (M.FORGET, [b])) in out or (SEND, d, (M.FORGET, [a])) in out, out
    assert n.entry(a).placed == 1


def test_a_decref_or_the_exit_of_the_process_ends_its_lease():
    n = node()
    d = n.driver()
    e = n.driver()
    a, b, c = three_puts(n, d)
    n.msgs(d, (M.REFS, [(R.INCREF, a)]))
    x = new_oid()
    assert alloc(n, e, 1, x) == asked(d, a)
    n.msgs(e, (M.REFS, [(R.INCREF, b)]))
    # d drops a (its DECREF ends the lease and frees it): room at once.
    out = quiet(n.msgs(d, (M.REFS, [(R.DECREF, a)])))
    assert out[0][2][:3] == (M.REPLY, 1, True), out
    # d exits before it answers: its places and refs go (b stays: e holds it).
    n.msgs(e, (M.SEAL, x, VALUE, True, []))
    assert alloc(n, e, 2, new_oid()) == asked(d, b)
    out = quiet(n.handle((E.CLOSED, d)))
    assert out[0][2][:3] == (M.REPLY, 2, True), out        # c was freed
    assert n.entry(b).placed == 0 and n.entry(b).offset >= 0


def test_a_get_leases_places_only_to_a_process_that_holds_the_ref():
    n = node()
    d = n.driver()
    w = n.driver()
    a = new_oid()
    put(n, d, a)
    n.get(w, 1, [a])                     # no ref held by w: no place
    assert n.entry(a).placed == 1
    n.msgs(w, (M.REFS, [(R.INCREF, a)]))
    n.get(w, 2, [a])
    assert n.entry(a).placed == 2
    n.get(w, 3, [a])                     # one lease per process
    assert n.entry(a).placed == 2


def test_a_worker_asked_to_forget_is_poked():
    n = node().pool()
    d = n.driver()
    wid = 1
    wc = n.wc(wid)
    a = new_oid()
    put(n, wc, a)
    put(n, d, new_oid())
    put(n, d, new_oid())
    out = alloc(n, d, 1, new_oid())
    # All three are placed: the worker's, the least recently read, is asked for.
    assert (SEND, wc, (M.FORGET, [a])) in out
    assert any(ins[0] == D.POKE and ins[1] == wid for ins in out), out


def test_a_process_that_never_answers_is_not_waited_for():
    """A process stuck without reading its connection: after FORGET_WAIT_S
    what needs room fails, saying what holds the store."""
    n = node()
    d = n.driver()
    three_puts(n, d)
    x = new_oid()
    assert alloc(n, d, 1, x)[0][2][0] == M.FORGET
    assert quiet(n.handle((E.TIMER, "forget", FORGET_WAIT_S / 2))) == []    # still waiting
    out = quiet(n.handle((E.TIMER, "forget", FORGET_WAIT_S + 0.1)))
    (reply,) = [ins[2] for ins in out if ins[0] == SEND and ins[2][0] == M.REPLY]
    assert reply[:3] == (M.REPLY, 1, False) and isinstance(reply[3], ObjectStoreFullError)
    assert "read in place" in str(reply[3])
