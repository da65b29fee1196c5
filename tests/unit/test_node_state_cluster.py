"""Cluster decisions in the nodes' pure states (``cluster_harness.Net``; no
process, thread or socket): a task goes where its argument bytes are,
actor names are unique across nodes, bytes streaming into a node are
bounded, and a broadcast spreads over the nodes that have copies."""
from __future__ import annotations

import pytest

from miniray import _node_transfer
from miniray._node_state import D, E
from miniray._object_table import READY

from .cluster_harness import LARGE, Net
from miniray import _task_spec as S

from miniray.exceptions import ActorDiedError

from .node_harness import (CPU1, SEND, VALUE, M, MiB, Q, R, call_spec, init_spec, new_oid, ret,
                           spec)

ON = {n: ((n, 1.0), ("CPU", 1.0)) for n in "BCD"}     # pinned to the node with resource n


def nodes(*names):
    """A head "H" with a driver, and nodes with a resource named as each."""
    net = Net()
    h = net.add("H", head=True)
    for n in names:
        net.add(n, resources={n: 1})
    return net, h.driver()


def put_large(net, name, cid, size=LARGE):
    oid = new_oid()
    net.msgs(name, cid, (M.ALLOC, 1, oid, size), (M.SEAL, oid, VALUE, True, []))
    assert net.entry(name, oid).state == READY
    return oid


def did(net, name, tag) -> list:
    """The instructions of kind ``tag`` node ``name`` gave, in order."""
    return [x for n, kind, x in net.log if n == name and kind == "do" and x[0] == tag]


def sent(net, name, tag) -> list:
    """The messages of kind ``tag`` that node ``name`` sent, in order."""
    return [ins[2] for ins in did(net, name, SEND) if ins[2][0] == tag]


def replies(net, name, cid) -> list:
    return [m for m in net.replies(name, cid) if m[0] == M.REPLY]


# -- placement by argument bytes ---------------------------------------------------------------

def test_a_task_runs_on_the_node_holding_its_argument_bytes():
    net, d = nodes("B")
    f = spec("f", shape=ON["B"])
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    g = spec("g", shape=CPU1, deps=[ret(f)])
    net.msgs("H", d, (M.SUBMIT, g))
    # The head could run g, but B holds the 4 MiB it reads: g goes there,
    # and the head never pulls the object.
    assert net.ran == [("B", "f"), ("B", "g")]
    assert sent(net, "H", M.PULL) == []
    assert net.entry("H", ret(f)).state != READY


def test_small_arguments_do_not_move_a_task():
    net, d = nodes("B")
    f = spec("f", shape=ON["B"])
    net.behave["f"] = b"small"
    net.msgs("H", d, (M.SUBMIT, f))
    g = spec("g", shape=CPU1, deps=[ret(f)])
    net.msgs("H", d, (M.SUBMIT, g))
    assert net.ran == [("B", "f"), ("H", "g")]


def test_a_task_placed_here_pulls_its_arguments_made_elsewhere_first():
    net, d = nodes("B")
    f = spec("f", shape=ON["B"])
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    net.hold_names.add("busy")                       # B's only CPU stays taken
    net.msgs("H", d, (M.SUBMIT, spec("busy", shape=ON["B"])))
    g = spec("g", shape=CPU1, deps=[ret(f)])
    net.msgs("H", d, (M.SUBMIT, g))
    assert net.ran == [("B", "f"), ("H", "g")]
    assert net.entry("H", ret(f)).state == READY     # pulled before g ran
    [pull] = sent(net, "H", M.PULL)
    assert pull[1] == ret(f)


# -- actor names ---------------------------------------------------------------------------------

def _opts(name, namespace=None, get_if_exists=False):
    return {"name": name, "namespace": namespace, "get_if_exists": get_if_exists,
            "lifetime": None, "max_restarts": 0, "max_task_retries": 0, "meta": b"actor meta"}


def test_an_actor_name_taken_on_one_node_is_refused_on_another():
    net, _ = nodes("B", "C")
    db, dc = net.nodes["B"].driver(), net.nodes["C"].driver()
    first = init_spec("A")
    net.msgs("B", db, (M.ACTOR_CREATE, 1, first, _opts("solo")))
    [made] = replies(net, "B", db)
    assert made[2] is True
    net.msgs("C", dc, (M.ACTOR_CREATE, 2, init_spec("A"), _opts("solo")))
    [refused] = replies(net, "C", dc)
    assert refused[2] is False and "already exists" in str(refused[3])
    # get_if_exists hands back the first one, made on B.
    net.msgs("C", dc, (M.ACTOR_CREATE, 3, init_spec("A"), _opts("solo", get_if_exists=True)))
    [found] = replies(net, "C", dc)
    assert found[2] is True and found[3][0] == first[S.ACTOR_ID] and found[3][2] is False
    # Another namespace is another name.
    net.msgs("C", dc, (M.ACTOR_CREATE, 4, init_spec("A"), _opts("solo", namespace="other")))
    [other] = replies(net, "C", dc)
    assert other[2] is True
    # The head asked itself nothing; the claims went to it from B and C.
    assert [q[2] for q in sent(net, "B", M.QUERY)] == [Q.CLAIM_ACTOR_NAME]
    assert len(sent(net, "C", M.QUERY)) == 3


def test_a_name_is_free_again_once_its_actor_is_gone():
    net, _ = nodes("B", "C")
    db, dc = net.nodes["B"].driver(), net.nodes["C"].driver()
    first = init_spec("A")
    net.msgs("B", db, (M.ACTOR_CREATE, 1, first, _opts("solo")))
    net.msgs("B", db, (M.ACTOR_KILL, first[S.ACTOR_ID], True))
    net.msgs("C", dc, (M.ACTOR_CREATE, 2, init_spec("A"), _opts("solo")))
    assert [r[2] for r in replies(net, "C", dc)] == [True]


@pytest.mark.parametrize("where", ["B", "H"])
def test_a_name_is_free_again_when_the_creation_it_was_reserved_for_fails(where):
    """A creation that fails after its name was reserved at the head (here:
    a request the node cannot handle) gives the name back."""
    net, dh = nodes("B")
    d = dh if where == "H" else net.nodes["B"].driver()
    bad = init_spec("A", shape=(("CPU", "one"),))     # not a number: the creation fails
    net.msgs(where, d, (M.ACTOR_CREATE, 2, bad, _opts("two")))
    [failed] = replies(net, where, d)
    assert failed[2] is False, failed
    net.msgs(where, d, (M.ACTOR_CREATE, 3, init_spec("A"), _opts("two")))
    [again] = replies(net, where, d)
    assert again[2] is True, again


# -- bytes in flight -----------------------------------------------------------------------------

def test_objects_streaming_into_a_node_are_bounded(monkeypatch):
    monkeypatch.setattr(_node_transfer, "MAX_INCOMING_BYTES", 6 * MiB)
    net, d = nodes("B")
    db = net.nodes["B"].driver()
    a, b = put_large(net, "B", db), put_large(net, "B", db)     # 4 MiB each, on B
    # A get on H wants both at once (refs owned by B, as a task's worker
    # there would have passed them).
    h = net.nodes["H"].st
    h.cluster.learn_owners({a: "B", b: "B"})
    net.msgs("H", d, (M.REFS, [(R.INCREF, a), (R.INCREF, b)]), (M.GET, 5, [a, b]))
    assert [m[1] for m in sent(net, "B", M.OBJECT_META)] == [a, b]
    # b's range was set aside only after all of a's bytes were in.
    log = [(kind, x) for n, kind, x in net.log if n == "H"]
    done_a = next(i for i, (kind, x) in enumerate(log) if kind == "event"
                  and x[0] == E.MESSAGES and x[2][0][:2] == (M.DATA_DONE, a))
    expect = [i for i, (kind, x) in enumerate(log) if kind == "do" and x[0] == D.EXPECT_RAW]
    assert len(expect) == 2 and expect[0] < done_a < expect[1]
    [(m, rid, ok, payloads)] = replies(net, "H", d)
    assert rid == 5 and ok and len(payloads) == 2       # the get got both
    assert h.cluster.transfer.incoming_bytes == 0


# -- broadcast -----------------------------------------------------------------------------------

def test_later_pullers_are_sent_to_nodes_that_have_a_copy():
    net, d = nodes("B", "C", "D")
    oid = put_large(net, "H", d)
    net.hold_names.update({"rb", "rc", "rd"})        # readers keep their copies alive
    for n in "BCD":
        net.msgs("H", d, (M.SUBMIT, spec(f"r{n.lower()}", shape=ON[n], deps=[oid])))
    # H streamed it to B; C was sent to B; D's turn came back to H.
    assert [m[1:] for m in sent(net, "H", M.PULL_FROM)] == [(oid, "B")]
    assert _arena_sends(net, "B") == [oid]
    assert _arena_sends(net, "H") == [oid, oid]
    for n in "BCD":
        assert net.entry(n, oid).state == READY
    for t in ("rb", "rc", "rd"):
        net.release(t)
    assert net.ran == [("B", "rb"), ("C", "rc"), ("D", "rd")]


def test_a_puller_sent_to_a_freed_copy_asks_again():
    net, d = nodes("B", "C")
    oid = put_large(net, "H", d)
    net.msgs("H", d, (M.SUBMIT, spec("rb", shape=ON["B"], deps=[oid])))
    assert net.entry("B", oid) is None                # B's copy went with its task
    net.msgs("H", d, (M.SUBMIT, spec("rc", shape=ON["C"], deps=[oid])))
    # H sent C to B, B no longer had it, C asked H again (naming B) and H
    # served it and forgot B's copy.
    assert [m[1:] for m in sent(net, "H", M.PULL_FROM)] == [(oid, "B")]
    assert [m[1] for m in sent(net, "B", M.OBJECT_LOST)] == [oid]
    assert [m[1:] for m in sent(net, "C", M.PULL)][-1] == (oid, False, "B")
    assert net.ran == [("B", "rb"), ("C", "rc")]
    assert "B" not in net.entry("H", oid).copies


def _arena_sends(net, name):
    return [ins[2][1] for ins in did(net, name, D.SEND_ARENA)]


# -- actors on a node that dies ------------------------------------------------------------------

def _actor_on_x(max_restarts, **call_kw):
    net = Net()
    h = net.add("H", head=True)
    for n in "BC":
        net.add(n, resources={"X": 1})
    d = h.driver()
    init = init_spec("A", shape=(("X", 1.0),))
    aid = init[S.ACTOR_ID]
    opts = dict(_opts(None), max_restarts=max_restarts)
    net.msgs("H", d, (M.ACTOR_CREATE, 1, init, opts))
    where = h.st.cluster.actor_nodes[aid]
    net.msgs("H", d, (M.ACTOR_CALL, call_spec(aid, "m")))
    assert net.ran[-2:] == [(where, "A"), (where, "A.m")] or (where, "A.m") in net.ran
    return net, h, d, aid, where


def test_an_actor_whose_node_dies_starts_again_on_another_node():
    net, h, d, aid, where = _actor_on_x(max_restarts=1)
    other = "C" if where == "B" else "B"
    net.kill(where)
    assert h.st.cluster.actor_nodes[aid] == other
    call = call_spec(aid, "m")
    net.msgs("H", d, (M.ACTOR_CALL, call))
    assert net.ran[-1] == (other, "A.m")
    assert net.nodes["H"].value(ret(call)) == (VALUE, b"small value")
    # Its one restart is spent: the next death ends it, naming the node.
    net.kill(other)
    call = call_spec(aid, "m")
    net.msgs("H", d, (M.ACTOR_CALL, call))
    err = net.nodes["H"].error(ret(call))
    assert isinstance(err, ActorDiedError) and other in str(err) and "max_restarts" in str(err)


def test_an_actor_without_restarts_fails_its_calls_naming_its_dead_node():
    net, h, d, aid, where = _actor_on_x(max_restarts=0)
    net.hold_names.add("A.m")                    # a call under way when the node dies
    pending = call_spec(aid, "m")
    net.msgs("H", d, (M.ACTOR_CALL, pending))
    net.kill(where)
    err = net.nodes["H"].error(ret(pending))
    assert isinstance(err, ActorDiedError) and where in str(err)
    later = call_spec(aid, "m")
    net.msgs("H", d, (M.ACTOR_CALL, later))
    err = net.nodes["H"].error(ret(later))
    assert isinstance(err, ActorDiedError) and where in str(err)


def test_a_call_with_retries_follows_its_actor_to_the_new_node():
    net, h, d, aid, where = _actor_on_x(max_restarts=1)
    other = "C" if where == "B" else "B"
    net.hold_names.add("A.m")
    call = call_spec(aid, "m", max_retries=1)
    net.msgs("H", d, (M.ACTOR_CALL, call))
    net.kill(where)
    net.release("A.m")
    assert net.ran[-1] == (other, "A.m")
    assert net.nodes["H"].value(ret(call)) == (VALUE, b"small value")


def test_a_third_node_pulls_from_the_node_with_the_copy_not_through_the_owner():
    net, d = nodes("B", "C")
    f = spec("f", shape=ON["B"])
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))                 # its result stays on B, owned by H
    assert net.entry("H", ret(f)).location == "B"
    g = spec("g", shape=ON["C"], deps=[ret(f)])
    net.msgs("H", d, (M.SUBMIT, g))
    assert ("C", "g") in net.ran
    assert sent(net, "H", M.PULL_FROM) and not did(net, "H", D.SEND_ARENA)
    assert not did(net, "H", D.EXPECT_RAW)           # no copy through H's store
    streams = did(net, "B", D.SEND_ARENA)
    assert [(x[2][1], net.wires[("B", x[1])][0]) for x in streams] == [(ret(f), "C")]


def test_a_range_being_sent_to_a_peer_is_not_spilled_until_its_last_chunk_is_out():
    net, d = nodes("B")
    x = put_large(net, "H", d)
    net.msgs("H", d, (M.REFS, [(R.FORGOT, x)]))     # (the driver reads it no more in place)
    held = []
    route = net.route

    def hold_sent(name, out):           # the server has not written the last chunk yet
        route(name, out)
        for item in [q for q in net.queue if q[1][0] == E.SENT]:
            net.queue.remove(item)
            held.append(item)

    net.route = hold_sent
    net.msgs("H", d, (M.SUBMIT, spec("g", shape=ON["B"], deps=[x])))
    h = net.nodes["H"].st
    e = h.table.entries[x]
    assert did(net, "H", D.SEND_ARENA) and held
    assert e.protect == 1 and not h.table.spillable(e)
    net.route = route
    for name, ev in held:
        net.feed(name, ev)
    assert e.protect == 0 and h.table.spillable(e)
