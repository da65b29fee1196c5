"""Lineage in the nodes' pure state: a task's result whose only copy was on
a node that died is made again by re-running the task (recursively for its
lost arguments) while retries remain; otherwise it becomes ObjectLostError
naming the object, the node and why.

Several ``NodeState``s are wired together by ``cluster_harness.Net`` (no
process, thread or socket: the guard of ``conftest`` checks)."""
from __future__ import annotations

from miniray import _task_spec as S
from miniray._node_state import E
from miniray._object_table import READY
from miniray.exceptions import ObjectLostError

from .cluster_harness import LARGE, ON_B, cluster, get_error, got_value, unpin_views
from .node_harness import (VALUE, M, Node, R, actor_opts, call_spec, decode, init_spec, new_oid,
                           ret, spec)


def large_on_b(**kw):
    """A cluster (head H, node B), and task f run on B, its large result
    left there (only its lineage and location on H)."""
    net, d = cluster("B")
    f = spec("f", shape=ON_B, **kw)
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    return net, d, f


# -- keeping and dropping the lineage ----------------------------------------------------------

def test_a_remote_result_keeps_its_lineage_until_it_is_freed():
    net, d, f = large_on_b(max_retries=2)
    assert net.ran == [("B", "f")]
    e = net.entry("H", ret(f))
    assert e.state != READY and e.location == "B" and e.size == LARGE
    rec = e.lineage
    assert rec.spec == f and rec.kept and rec.live == 1 and rec.retries_left == 2
    assert rec.task is None and f[S.TASK_ID] not in net.nodes["H"].st.tasks.tasks
    assert net.entry("B", ret(f)).state == READY
    net.msgs("H", d, (M.REFS, [(R.DECREF, ret(f))]))
    assert net.entry("H", ret(f)) is None and rec.live == 0
    assert net.entry("B", ret(f)) is None          # its copy there went too


def test_a_node_alone_keeps_no_lineage():
    n = Node().pool()
    d = n.driver()
    s = spec("f", max_retries=3)
    n.submit(d, s)
    assert n.entry(ret(s)).lineage is None and n.st.tasks.tasks[s[S.TASK_ID]].lineage is None


def test_a_put_argument_stays_while_a_result_made_from_it_lives_elsewhere():
    net, d = cluster("B")
    p = new_oid()
    net.msgs("H", d, (M.PUT_INLINE, p, VALUE, b"put arg", []))
    f = spec("f", shape=ON_B, max_retries=1, deps=[p])
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f), (M.REFS, [(R.DECREF, p)]))
    assert net.ran == [("B", "f")]
    assert net.entry("H", p) is not None          # the lineage of f pins it
    assert net.entry("H", ret(f)).lineage.pins == [p]
    net.msgs("H", d, (M.REFS, [(R.DECREF, ret(f))]))
    assert net.entry("H", p) is None and not net.nodes["H"].st.table.entries


def test_a_result_here_keeps_no_argument_alive():
    net, d = cluster("B")
    p = new_oid()
    net.msgs("H", d, (M.PUT_INLINE, p, VALUE, b"put arg", []))
    f = spec("f", shape=ON_B, max_retries=1, deps=[p])       # a small result: comes back
    net.msgs("H", d, (M.SUBMIT, f), (M.REFS, [(R.DECREF, p)]))
    assert net.entry("H", ret(f)).state == READY
    assert net.entry("H", p) is None


# -- rebuilding ---------------------------------------------------------------------------------

def test_result_lost_with_its_node_is_rebuilt_on_another_node():
    net, d, f = large_on_b(max_retries=2)
    net.add("C", resources={"B": 1})
    net.kill("B")
    assert net.ran == [("B", "f"), ("C", "f")]
    e = net.entry("H", ret(f))
    assert e.location == "C" and e.lineage.retries_left == 1 and e.task is None
    net.msgs("H", d, (M.GET, 5, [ret(f)]))
    [(kind, (offset, size))] = got_value(net, "H", d, 5)
    assert kind == VALUE and size == LARGE
    assert net.entry("H", ret(f)).state == READY
    unpin_views(net, "H", d, ret(f))
    net.msgs("H", d, (M.REFS, [(R.DECREF, ret(f))]))
    assert not net.nodes["H"].st.table.entries and not net.nodes["C"].st.table.entries


def test_a_get_pulling_the_object_when_its_node_dies_gets_the_rebuilt_one():
    net, d = cluster("B", "C")
    f = spec("f", shape=ON_B, max_retries=1,
             extra={"strategy": ("NODE", "B", True)})       # made on B (soft)
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    assert net.ran == [("B", "f")]
    net.feed("H", (E.MESSAGES, d, [(M.GET, 5, [ret(f)])]))     # PULL to B, not delivered
    assert net.entry("H", ret(f)).pulling
    net.kill("B")
    assert net.ran == [("B", "f"), ("C", "f")]
    [(kind, (offset, size))] = got_value(net, "H", d, 5)
    assert size == LARGE


def test_a_get_on_another_node_waits_through_the_rebuild():
    net, d = cluster("B", "C")
    net.add("D")
    f = spec("f", shape=ON_B, max_retries=1, extra={"strategy": ("NODE", "B", True)})
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    # A driver on D got the ref (say, inside a value) and gets it: D asks
    # H, the owner, which sends it to B, where the only copy is.  B dies
    # before answering: D asks H again, and H has it made again.
    dd = net.nodes["D"].driver()
    net.nodes["D"].st.cluster.learn_owners({ret(f): "H"})
    net.feed("D", (E.MESSAGES, dd, [(M.REFS, [(R.INCREF, ret(f))]), (M.GET, 3, [ret(f)])]))
    redirected = net.nodes["D"].st.cluster.transfer.redirected
    while net.queue and ret(f) not in redirected:
        net.feed(*net.queue.popleft())
    assert redirected[ret(f)][0] == "B"
    net.kill("B")
    assert ("C", "f") in net.ran
    [(kind, payload)] = got_value(net, "D", dd, 3)
    assert kind == VALUE


def test_a_chain_is_rebuilt_recursively():
    net, d = cluster("B")
    f = spec("f", shape=ON_B, max_retries=1)
    g = spec("g", shape=ON_B, max_retries=1, deps=[ret(f)],
             extra={"strategy": ("NODE", "B", True)})
    net.behave.update(f="large", g="large")
    net.msgs("H", d, (M.SUBMIT, f), (M.SUBMIT, g), (M.REFS, [(R.DECREF, ret(f))]))
    assert net.ran == [("B", "f"), ("B", "g")]
    g_rec = net.entry("H", ret(g)).lineage
    assert [p.spec for p in g_rec.parents] == [f]
    net.add("C", resources={"B": 1})
    net.kill("B")
    assert net.ran[2:] == [("C", "f"), ("C", "g")]
    e = net.entry("H", ret(g))
    assert e.location == "C" and g_rec.retries_left == 0 and g_rec.parents[0].retries_left == 0
    net.msgs("H", d, (M.GET, 9, [ret(g)]))
    [(kind, (offset, size))] = got_value(net, "H", d, 9)
    assert size == LARGE
    unpin_views(net, "H", d, ret(g))
    net.msgs("H", d, (M.REFS, [(R.DECREF, ret(g))]))
    # Everything went, here and there: entries, records, leases.
    assert not net.nodes["H"].st.table.entries, net.nodes["H"].st.table.entries
    assert not net.nodes["C"].st.table.entries
    assert g_rec.live == 0 and g_rec.parents == ()


def test_one_rerun_rebuilds_every_return():
    net, d, f = large_on_b(max_retries=1, num_returns=2)
    net.msgs("H", d, (M.GET, 4, [ret(f, 0)]))            # the first one is pulled here
    got_value(net, "H", d, 4)
    net.add("C", resources={"B": 1})
    net.kill("B")
    assert net.ran == [("B", "f"), ("C", "f")]
    assert net.entry("H", ret(f, 0)).state == READY
    assert net.entry("H", ret(f, 1)).location == "C"
    # C's copy of the first return is not needed: H gave it back.
    assert net.entry("C", ret(f, 0)) is None and net.entry("C", ret(f, 1)) is not None


def test_a_rebuilt_result_is_freed_like_the_original_on_every_node():
    net, d = cluster("B")
    f = spec("f", shape=ON_B, max_retries=1, num_returns=2)
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f), (M.REFS, [(R.DECREF, ret(f, 1))]))   # one dropped
    rec = net.entry("H", ret(f, 0)).lineage
    assert rec.live == 1 and net.entry("B", ret(f, 1)) is None
    net.add("C", resources={"B": 1})
    net.kill("B")
    # The re-run makes both; the dropped one goes at once, there too.
    assert net.ran == [("B", "f"), ("C", "f")]
    assert net.entry("H", ret(f, 1)) is None and net.entry("C", ret(f, 1)) is None
    net.msgs("H", d, (M.REFS, [(R.DECREF, ret(f, 0))]))
    assert not net.nodes["H"].st.table.entries and not net.nodes["C"].st.table.entries
    assert rec.live == 0


# -- what cannot be rebuilt -----------------------------------------------------------------------

def test_no_retries_means_lost_naming_object_node_and_reason():
    net, d = cluster("B", "C")
    f = spec("f", shape=ON_B, max_retries=0, extra={"strategy": ("NODE", "B", True)})
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    net.kill("B")
    assert net.ran == [("B", "f")]
    text = get_error(net, d, ret(f))
    assert ret(f).hex() in text and "node B" in text and "max_retries=0" in text


def test_retries_run_out_after_rebuilds():
    net, d, f = large_on_b(max_retries=1)
    net.add("C", resources={"B": 1})
    net.kill("B")
    net.add("D", resources={"B": 1})
    net.kill("C")
    assert net.ran == [("B", "f"), ("C", "f")]
    text = get_error(net, d, ret(f))
    assert "node C" in text and "max_retries=1, all spent" in text


def test_an_argument_that_cannot_be_rebuilt_is_named():
    net, d = cluster("B")
    f = spec("f", shape=ON_B, max_retries=0)
    g = spec("g", shape=ON_B, max_retries=2, deps=[ret(f)],
             extra={"strategy": ("NODE", "B", True)})
    net.behave.update(f="large", g="large")
    net.msgs("H", d, (M.SUBMIT, f), (M.SUBMIT, g), (M.REFS, [(R.DECREF, ret(f))]))
    net.add("C", resources={"B": 1})
    net.kill("B")
    assert net.ran == [("B", "f"), ("B", "g")]
    text = get_error(net, d, ret(g))
    assert ret(g).hex() in text and "node B" in text
    assert f"argument {ret(f).hex()}" in text and "max_retries=0" in text


def test_a_put_object_only_on_a_dead_node_is_lost():
    net, d = cluster("B")
    x = new_oid()

    def put_and_return_it(s):
        # The task's worker puts x (it keeps its ref) and returns a value holding it.
        return [(M.PUT_INLINE, x, VALUE, b"put on B", []),
                (M.TASK_DONE, s[S.TASK_ID], [(ret(s), VALUE, b"holds x", [x])], False, None)]
    net.behave["make"] = put_and_return_it
    make = spec("make", shape=ON_B, max_retries=3)
    net.msgs("H", d, (M.SUBMIT, make))
    e = net.entry("H", x)
    assert e.owner == "B" and e.state != READY and e.lineage is None
    net.msgs("H", d, (M.REFS, [(R.INCREF, x)]))          # the driver read the value
    net.feed("H", (E.MESSAGES, d, [(M.GET, 8, [x])]))     # PULL to B, never answered
    net.kill("B")
    [(kind, data)] = got_value(net, "H", d, 8)
    text = str(decode(data))
    assert isinstance(decode(data), ObjectLostError)
    assert x.hex() in text and "node B" in text and "put" in text


def test_an_actor_method_result_is_not_rebuilt():
    net, d = cluster("B")
    h = net.nodes["H"]
    init = init_spec("A", shape=ON_B)
    aid = init[S.ACTOR_ID]
    net.msgs("H", d, (M.ACTOR_CREATE, 1, init, actor_opts()))
    assert net.ran == [("B", "A")]
    call = call_spec(aid, "m")
    net.behave["A.m"] = "large"
    net.msgs("H", d, (M.ACTOR_CALL, call))
    assert net.ran[-1] == ("B", "A.m") and net.entry("H", ret(call)).location == "B"
    net.add("C", resources={"B": 1})
    net.kill("B")
    text = get_error(net, d, ret(call))
    assert ret(call).hex() in text and "node B" in text and "actor method" in text
    assert h.st.tasks.tasks == {}


def test_a_hard_affinity_to_the_dead_node_cannot_rebuild():
    net, d = cluster("B", "C")
    f = spec("f", shape=ON_B, max_retries=3, extra={"strategy": ("NODE", "B", False)})
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    net.kill("B")
    text = get_error(net, d, ret(f))
    assert "soft=False" in text and net.ran == [("B", "f")]


def test_a_dead_node_link_is_closed_and_a_half_streamed_copy_dropped():
    net, d = cluster("B", "C")
    f = spec("f", shape=ON_B, max_retries=1, extra={"strategy": ("NODE", "B", True)})
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
    h = net.nodes["H"]
    # The pull got as far as the range being set aside here; then the head
    # declares B dead (no heartbeat) while its link is still open.
    net.feed("H", (E.MESSAGES, d, [(M.GET, 5, [ret(f)])]))
    while net.queue and net.entry("H", ret(f)).offset < 0:
        net.feed(*net.queue.popleft())
    assert net.entry("H", ret(f)).offset >= 0
    net.queue.clear()
    used = h.st.table.alloc.used
    h.st.out = []
    h.st.cluster.declare_dead("B", "no heartbeat for 3 s")
    net.route("H", h.st.out)
    net.pump()
    assert ("H", "B") not in {(a, b) for (a, _), (b, _) in net.wires.items()}
    assert ("C", "f") in net.ran
    [(kind, (offset, size))] = got_value(net, "H", d, 5)
    assert h.st.table.alloc.used == used      # the first range went back, the copy took one


def test_the_oldest_lineage_goes_past_its_bound_and_its_result_fails_saying_so():
    net, d = cluster("B")
    lineage = net.nodes["H"].st.tasks.lineage
    lineage.max_bytes = 2000                        # room for about four records
    specs = [spec(f"f{i}", shape=ON_B, max_retries=2, args=b"x" * 100) for i in range(6)]
    for s in specs:
        net.behave[s[S.NAME]] = "large"
        net.msgs("H", d, (M.SUBMIT, s))
    assert lineage.kept_bytes <= 2000
    dropped = [s for s in specs if net.entry("H", ret(s)).lineage.dropped is not None]
    assert [s[S.NAME] for s in dropped] == ["f0", "f1"]
    assert net.entry("H", ret(specs[0])).lineage.spec[S.ARGS] is None     # its args went
    net.add("C", resources={"B": 1})
    net.kill("B")
    err = get_error(net, d, ret(specs[0]))
    assert "lineage of task 'f0'" in err and "max_lineage_bytes" in err
    assert ("C", "f5") in net.ran and ("C", "f0") not in net.ran      # the kept ones rebuilt
    # Freed results give their bytes back.
    net.msgs("H", d, (M.REFS, [(R.DECREF, ret(s)) for s in specs]))
    assert lineage.kept_bytes == 0


def test_records_being_rerun_are_kept_past_the_bound_and_nothing_spins():
    net, d = cluster("B")
    lineage = net.nodes["H"].st.tasks.lineage
    fs = [spec(f"f{i}", shape=ON_B, max_retries=2, args=b"x" * 100) for i in range(2)]
    for s in fs:
        net.behave[s[S.NAME]] = "large"
        net.msgs("H", d, (M.SUBMIT, s))
    net.add("C", resources={"B": 1})
    net.hold_names |= {"f0", "f1"}                  # their re-runs on C do not finish yet
    net.kill("B")
    assert all(r.task is not None for r in lineage.kept)
    lineage.max_bytes = lineage.kept_bytes - 1
    net.msgs("H", d, (M.SUBMIT, spec("g", max_retries=1)))      # a task finishes on H
    assert len(lineage.kept) == 2 and not any(r.dropped for r in lineage.kept)


def test_records_let_go_leave_the_bookkeeping():
    net, d = cluster("B")
    lineage = net.nodes["H"].st.tasks.lineage
    specs = [spec(f"t{i}", max_retries=1, args=b"z" * 1000) for i in range(50)]
    for s in specs:
        net.msgs("H", d, (M.SUBMIT, s))
    net.msgs("H", d, (M.REFS, [(R.DECREF, ret(s)) for s in specs]))
    assert lineage.kept_bytes == 0 and not lineage.kept
