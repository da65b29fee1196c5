"""Long queues in the node's pure state: the return entry of a queued task
made only when something needs it (``_object_table.Entries``), small
results shared, and pipelining short tasks to busy workers
(``_node_pipeline``).

A test that needs the node to know a function is short either sets its
measured duration (``durations``) or feeds turns with a clock
(``NodeState.handle(events, now)``); the other unit tests never move the
clock, so nothing is pipelined there.
"""
from __future__ import annotations

import pytest

from miniray import _protocol as P
from miniray import _task_spec as S
from miniray._node_pipeline import STUCK_S
from miniray._node_state import D, E
from miniray._object_table import PENDING, READY, SMALL_PAYLOAD
from miniray.exceptions import TaskCancelledError

from .node_harness import (FN_KEY, SEND, VALUE, M, Node, R, decode, execute, new_oid, ret,
                           spec, values)


def peek(n, oid):
    """The entry of ``oid`` if it was made (never making it)."""
    return n.st.table.peek(oid)


def reply_of(out, cid, rid):
    for ins in out:
        if ins[0] == SEND and ins[1] == cid and ins[2][0] == M.REPLY and ins[2][1] == rid:
            return ins[2]
    return None


# -- a queued task's return entry ----------------------------------------------------------------

def one_running_one_queued():
    """A one-worker node, a driver, task a running and task b queued."""
    n = Node().pool()
    d = n.driver()
    a, b = spec("a"), spec("b")
    n.submit(d, a)
    n.submit(d, b)
    return n, d, a, b


def test_queued_task_has_no_return_entry_until_its_result_is_sealed():
    n, d, a, b = one_running_one_queued()            # the one worker runs a, b waits
    table = n.st.table
    assert peek(n, ret(b)) is None and ret(b) in table.entries
    assert table.entries.deferred == 2 and table.stats()["objects"] == 2
    assert ret(b) not in n.st.clients[d].held      # the implicit hold is counted when made
    n.done(1, a)
    n.done(1, b, values(b, b"b!"))
    e = peek(n, ret(b))
    assert e.state == READY and e.holders == 1 and ret(b) in n.st.clients[d].held
    assert table.entries.deferred == 0
    assert n.decref(d, ret(a), ret(b)) == []
    assert not table.entries and table.stats()["objects"] == 0


def test_get_of_a_queued_return_waits_on_the_task_without_making_its_entry():
    n, d, a, b = one_running_one_queued()
    assert n.get(d, 5, [ret(a), ret(b)]) == []
    assert peek(n, ret(b)) is None                  # the GET waits on task b itself
    assert n.st.tasks.tasks[b[S.TASK_ID]].deferred is not None
    assert reply_of(n.done(1, a, values(a, b"A")), d, 5) is None
    out = n.done(1, b, values(b, b"B"))
    assert reply_of(out, d, 5) == (M.REPLY, 5, True, [(VALUE, b"A"), (VALUE, b"B")])
    assert not peek(n, ret(b)).waiters


def test_two_gets_and_a_wait_on_one_queued_return():
    n, d, a, b = one_running_one_queued()
    n.get(d, 1, [ret(b)])
    n.get(d, 2, [ret(b), ret(b)])
    n.msgs(d, (M.WAIT, 3, [ret(a), ret(b)], 2))
    assert peek(n, ret(b)) is None
    n.done(1, a)
    out = n.done(1, b)
    assert [reply_of(out, d, rid)[2] for rid in (1, 2, 3)] == [True, True, True]
    assert reply_of(out, d, 3)[3] == [0, 1]


def test_wait_now_and_a_dropped_get_leave_nothing_on_the_queued_task():
    n, d, a, b = one_running_one_queued()
    n.msgs(d, (M.WAIT, 3, [ret(b)], 1))
    n.get(d, 4, [ret(b)])
    out = n.msgs(d, (M.WAIT_NOW, 3))
    assert reply_of(out, d, 3) == (M.REPLY, 3, True, [])
    out = n.msgs(d, (M.DROP_REQ, 4))
    assert reply_of(out, d, 4) == (M.REPLY, 4, False, None)
    t = n.st.tasks.tasks[b[S.TASK_ID]]
    assert t.deferred is True and peek(n, ret(b)) is None
    n.done(1, a)
    assert [i for i in n.done(1, b) if i[0] == SEND and i[1] == d] == []


def test_decref_of_a_queued_return_frees_it_once_sealed():
    n, d, a, b = one_running_one_queued()
    assert n.decref(d, ret(b)) == []
    e = peek(n, ret(b))                             # made to count the drop
    assert e.state == PENDING and e.holders == 0 and e.task is not None
    assert ret(b) not in n.st.clients[d].held
    n.done(1, a)
    n.done(1, b)
    assert peek(n, ret(b)) is None                  # sealed with nobody holding it: freed


def test_cancel_of_a_queued_task_seals_its_error_and_frees_on_decref():
    n, d, a, b = one_running_one_queued()
    n.get(d, 9, [ret(b)])
    out = n.msgs(d, (M.CANCEL, ret(b), False, True))
    ok, payload = reply_of(out, d, 9)[2:]
    assert ok and payload[0][0] == 1                # K.ERROR
    assert isinstance(decode(payload[0][1]), TaskCancelledError)
    assert b[S.TASK_ID] not in n.st.tasks.tasks and peek(n, ret(b)).state == READY
    n.decref(d, ret(b))
    assert peek(n, ret(b)) is None


def test_queued_return_of_a_closed_submitter_is_freed_when_sealed():
    n = Node().pool()
    d, d2 = n.driver(), n.driver()
    a, b = spec("a"), spec("b")
    n.submit(d, a)
    n.submit(d2, b)
    n.handle((E.CLOSED, d2))
    n.done(1, a)
    n.done(1, b)
    assert peek(n, ret(b)) is None and n.st.table.entries.deferred == 0


def test_a_task_waiting_for_a_queued_return_makes_its_entry_and_waits():
    n = Node().pool()
    d = n.driver()
    a, b = spec("a"), spec("b")
    c = spec("c", deps=[ret(b)])
    n.submit(d, a)
    n.submit(d, b)
    n.submit(d, c)
    e = peek(n, ret(b))
    assert e is not None and e.waiters == [n.st.tasks.tasks[c[S.TASK_ID]]]
    n.done(1, a)
    out = n.done(1, b)
    assert (SEND, n.wc(1), execute(c, blob=None, deps=[(VALUE, b"value")])) in out


def test_object_listing_shows_queued_returns():
    n, d, a, b = one_running_one_queued()
    listed = {o["object_id"] for o in n.st.report.objects()}
    assert ret(b).hex() in listed and ret(a).hex() in listed


def test_small_equal_results_share_one_payload():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    s1, s2 = spec("a"), spec("b")
    n.submit(d, s1)
    n.submit(d, s2)
    for s in (s1, s2):
        wid = n.st.tasks.tasks[s[S.TASK_ID]].worker.wid
        n.done(wid, s, values(s, bytes(bytearray(b"N."))))
    e1, e2 = peek(n, ret(s1)), peek(n, ret(s2))
    assert e1.inline is e2.inline and e1.payload() is e2.payload()
    big = b"x" * (SMALL_PAYLOAD + 1)
    x, y = new_oid(), new_oid()
    n.put(d, x, bytes(bytearray(big)))              # equal, distinct objects: kept apart
    n.put(d, y, bytes(bytearray(big)))
    assert peek(n, x).inline is not peek(n, y).inline


# -- pipelining ------------------------------------------------------------------------------------

def short(n, seconds=1e-5):
    """The node has measured FN_KEY's tasks at ``seconds`` each."""
    n.st.tasks.durations[FN_KEY] = seconds
    return n


def test_short_tasks_queue_at_a_busy_worker_and_run_in_order():
    n = short(Node().pool())
    d = n.driver()
    a, b, c = spec("a"), spec("b"), spec("c")
    assert n.submit(d, a) == [(SEND, n.wc(1), execute(a))]
    assert n.submit(d, b) == [(SEND, n.wc(1), execute(b, blob=None)),     # queued behind a
                              (D.TIMER, STUCK_S, "pipeline")]
    assert n.submit(d, c) == [(SEND, n.wc(1), execute(c, blob=None))]
    w = n.worker(1)
    assert w.task.tid == a[S.TASK_ID] and [t.tid for t in w.queued] == [b[S.TASK_ID], c[S.TASK_ID]]
    assert n.cpu() == 0.0 and len(n.st.ready) == 0
    assert n.done(1, a) == []                       # b starts: nothing to send, CPU passes on
    assert w.task.tid == b[S.TASK_ID] and n.cpu() == 0.0
    n.done(1, b)
    assert n.done(1, c) == [] and w.task is None and w.queued is None
    assert n.cpu() == 1.0 and n.idle() == [1]
    assert [n.value(ret(s))[0] for s in (a, b, c)] == [VALUE] * 3


def test_unmeasured_long_or_argument_tasks_are_not_pipelined():
    n = Node().pool()
    d = n.driver()
    a, b = spec("a"), spec("b")
    n.submit(d, a)
    assert n.submit(d, b) == []                     # its function was never measured
    n.done(1, a)
    short(n, 0.5)                                   # measured long
    c = spec("c")
    n.submit(d, c)
    assert n.worker(1).queued is None
    short(n)
    x = new_oid()
    n.put(d, x)
    e = spec("e", deps=[x])
    n.submit(d, e)                                  # queued behind b, c: an argument: not sent
    assert n.worker(1).queued is None or all(t.tid != e[S.TASK_ID] for t in n.worker(1).queued)


def test_the_clock_of_the_turns_measures_durations():
    n = Node().pool()
    d = n.driver()
    a, b = spec("a"), spec("b")
    n.st.handle([(E.MESSAGES, d, [(M.SUBMIT, a), (M.SUBMIT, b)])], 10.0)
    # a ran from 10.0 to 10.0001; counted when the worker gets b in that turn.
    n.st.handle([(E.MESSAGES, n.wc(1), [(M.TASK_DONE, a[S.TASK_ID], values(a), False, None)])],
                10.0001)
    assert abs(n.st.tasks.durations[FN_KEY] - 1e-4) < 1e-9
    c, e = spec("c"), spec("e")
    n.st.handle([(E.MESSAGES, d, [(M.SUBMIT, c), (M.SUBMIT, e)])], 10.0002)
    assert [t.tid for t in n.worker(1).queued] == [c[S.TASK_ID], e[S.TASK_ID]]
    # b, c and e end in one turn: 0.0003 s for the three of them.
    n.st.handle([(E.MESSAGES, n.wc(1), [(M.TASK_DONE, s[S.TASK_ID], values(s), False, None)
                                        for s in (b, c, e)])], 10.0004)
    n.st.handle([(E.MESSAGES, d, [(M.SUBMIT, spec("f"))])], 10.001)
    assert abs(n.st.tasks.durations[FN_KEY] - (1e-4 + 0.05 * 3 * (1e-4 - 1e-4))) < 1e-9
    long = spec("long", key=b"long-fn-key-0000")
    n.msgs(d, (M.REGISTER_FN, b"long-fn-key-0000", b"blob"))
    n.st.handle([(E.MESSAGES, n.wc(1), [(M.TASK_DONE, n.worker(1).task.tid,
                                         values(spec(tid=n.worker(1).task.tid)), False, None)])],
                10.002)
    n.st.handle([(E.MESSAGES, d, [(M.SUBMIT, long)])], 10.002)
    n.st.handle([(E.MESSAGES, n.wc(1), [(M.TASK_DONE, long[S.TASK_ID], values(long), False,
                                         None)])], 12.002)
    n.st.handle([(E.MESSAGES, d, [(M.SUBMIT, spec("again", key=b"long-fn-key-0000"))])], 12.003)
    assert n.st.tasks.durations[b"long-fn-key-0000"] >= 1.0


def test_a_dead_worker_gives_its_queued_tasks_back_without_spending_retries():
    n = short(Node().pool())
    d = n.driver()
    a, b, c = spec("a", max_retries=0), spec("b", max_retries=0), spec("c", max_retries=0)
    for s in (a, b, c):
        n.submit(d, s)
    n.get(d, 3, [ret(a), ret(b), ret(c)])
    out = n.exited(1)
    assert (D.SPAWN, 2) in out
    assert isinstance(n.error(ret(a)), Exception)   # a ran there: no retries left
    assert [t.state for t in n.st.ready._queues[a[S.RESOURCES]]] == ["ready", "ready"]
    out = n.connect(2)
    assert (SEND, n.wc(2), execute(b)) in out
    n.done(2, b)
    n.done(2, c)
    assert n.value(ret(b)) == (VALUE, b"value") and n.value(ret(c)) == (VALUE, b"value")


def queued_three(n):
    d = n.driver()
    a, b, c = spec("a"), spec("b"), spec("c")
    for x in (a, b, c):
        n.submit(d, x)
    n.get(d, 4, [ret(b)])
    return d, a, b, c


def test_cancel_of_a_queued_task_takes_the_queue_back_first_then_fails_it():
    n = short(Node().pool())
    d, a, b, c = queued_three(n)
    out = n.msgs(d, (M.CANCEL, ret(b), True, True))
    # Whether the worker started b is known only once it answers.
    assert out == [(SEND, n.wc(1), (M.REVOKE, [b[S.TASK_ID], c[S.TASK_ID]])),
                   (D.POKE, 1, n.wc(1))]            # busy in a: made to read it
    out = n.msgs(n.wc(1), (M.REVOKED, [b[S.TASK_ID], c[S.TASK_ID]]))
    assert isinstance(decode(reply_of(out, d, 4)[3][0][1]), TaskCancelledError)
    assert (D.KILL, 1) not in out                   # force, but b never started: no kill
    assert n.st.tasks.tasks[c[S.TASK_ID]].state != "cancelled"
    n.done(1, a)
    assert n.value(ret(a))[0] == VALUE


@pytest.mark.parametrize("force", [False, True])
def test_cancel_of_a_queued_task_the_worker_had_started_reaches_it(force):
    n = short(Node().pool())
    d, a, b, c = queued_three(n)
    n.msgs(d, (M.CANCEL, ret(b), force, True))
    n.done(1, a)                                    # (sent before its REVOKED: a was done)
    out = n.msgs(n.wc(1), (M.REVOKED, [c[S.TASK_ID]]))      # b had started
    if force:
        assert (D.KILL, 1) in out
        out = n.exited(1)
        assert isinstance(decode(reply_of(out, d, 4)[3][0][1]), TaskCancelledError)
        assert n.st.tasks.tasks[c[S.TASK_ID]].retries_left == 0 and \
            n.st.tasks.tasks[c[S.TASK_ID]].state == "ready"   # c never ran: back in the queue
    else:
        assert (SEND, n.wc(1), (M.CANCEL_TASK, b[S.TASK_ID])) in out and (D.POKE, 1, n.wc(1)) in out


def test_cancel_of_a_queued_task_that_finished_meanwhile_keeps_its_value():
    n = short(Node().pool())
    d, a, b, c = queued_three(n)
    n.msgs(d, (M.CANCEL, ret(b), True, True))
    n.done(1, a)
    out = n.done(1, b, values(b, b"ran"))
    assert reply_of(out, d, 4)[3][0] == (VALUE, b"ran")     # too late to cancel, as in Ray
    out = n.msgs(n.wc(1), (M.REVOKED, [c[S.TASK_ID]]))
    assert (D.KILL, 1) not in out and not any(ins[0] == SEND and ins[2][0] == M.CANCEL_TASK
                                              for ins in out)


def test_a_kill_for_a_cancel_charges_no_other_task():
    """A forced cancel kills the worker for task a; a had just finished and
    the worker took b: b did not crash it and keeps its retries."""
    n = Node().pool()
    d = n.driver()
    a, b = spec("a"), spec("b", max_retries=0)
    n.submit(d, a)
    n.submit(d, b)
    assert (D.KILL, 1) in n.msgs(d, (M.CANCEL, ret(a), True, True))
    out = n.done(1, a)                              # its TASK_DONE was on the way
    assert (SEND, n.wc(1), execute(b, blob=None)) in out
    n.exited(1)
    t = n.st.tasks.tasks[b[S.TASK_ID]]
    e = peek(n, ret(b))
    assert t.state == "ready" and (e is None or e.state != READY)


def test_a_worker_that_finishes_nothing_for_a_while_gives_its_queue_back():
    n = short(Node().pool())
    d, a, b, c = queued_three(n)
    assert n.handle((E.TIMER, "pipeline", STUCK_S / 2)) == [(D.TIMER, STUCK_S, "pipeline")]
    out = n.handle((E.TIMER, "pipeline", 1.0))      # a has run for a second
    assert out == [(SEND, n.wc(1), (M.REVOKE, [b[S.TASK_ID], c[S.TASK_ID]])),
                   (D.POKE, 1, n.wc(1))]
    n.msgs(n.wc(1), (M.REVOKED, [b[S.TASK_ID], c[S.TASK_ID]]))
    assert n.worker(1).queued is None
    assert [t.tid for t in n.st.ready._queues[a[S.RESOURCES]]] == [b[S.TASK_ID], c[S.TASK_ID]]


def test_a_blocked_worker_gives_back_its_queued_tasks():
    n = short(Node().pool())
    d = n.driver()
    a, b, c = spec("a"), spec("b"), spec("c")
    for s in (a, b, c):
        n.submit(d, s)
    # a waits for c, queued behind it on the same worker.
    out = n.get(n.wc(1), 1, [ret(c)])
    assert (SEND, n.wc(1), (M.REVOKE, [b[S.TASK_ID], c[S.TASK_ID]])) in out
    w = n.worker(1)
    assert w.revoking and n.cpu() == 1.0            # its CPU lent meanwhile
    assert (D.SPAWN, 2) in n.submit(d, spec("more"))   # the lent CPU will run the queue
    assert len(w.queued) == 2                       # nothing more sent to it
    # It had started neither: both go back, first in their queue, in order.
    out = n.msgs(n.wc(1), (M.REVOKED, [b[S.TASK_ID], c[S.TASK_ID]]))
    assert w.queued is None and not w.revoking
    queue = [t.tid for t in n.st.ready._queues[a[S.RESOURCES]]]
    assert queue[:2] == [b[S.TASK_ID], c[S.TASK_ID]]
    out = n.connect(2)
    assert (SEND, n.wc(2), execute(b)) in out


def test_a_revoke_answered_after_a_task_started_leaves_that_one_running():
    n = short(Node().pool())
    d = n.driver()
    a, b, c = spec("a"), spec("b"), spec("c")
    for s in (a, b, c):
        n.submit(d, s)
    n.get(n.wc(1), 1, [new_oid()[:0] + ret(a)])     # blocked (on its own result)
    n.msgs(n.wc(1), (M.REVOKED, [c[S.TASK_ID]]))    # b was no longer in its queue
    w = n.worker(1)
    assert [t.tid for t in w.queued] == [b[S.TASK_ID]]
    assert [t.tid for t in n.st.ready._queues[a[S.RESOURCES]]][0] == c[S.TASK_ID]


def test_a_stale_task_done_changes_nothing():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    a = spec("a")
    n.submit(d, a)
    runner = n.st.tasks.tasks[a[S.TASK_ID]].worker.wid
    other = 2 if runner == 1 else 1
    assert n.done(other, a) == []
    assert n.st.tasks.tasks[a[S.TASK_ID]].state == "running"
    n.done(runner, a)
    assert n.value(ret(a)) == (VALUE, b"value")


def test_refs_of_queued_returns_reach_zero_after_a_pipelined_run():
    n = short(Node().pool())
    d = n.driver()
    specs = [spec(f"t{i}") for i in range(6)]
    for s in specs:
        n.submit(d, s)
    n.get(d, 1, [ret(s) for s in specs])
    for s in specs:
        n.done(1, s)
    n.decref(d, *[ret(s) for s in specs])
    assert not n.st.table.entries and not n.st.tasks.tasks and n.st.table.entries.deferred == 0
    assert not n.st.clients[d].held and n.cpu() == 1.0


def test_refcount_ops_in_a_batch_with_queued_returns():
    n, d, a, b = one_running_one_queued()
    n.msgs(d, (M.REFS, [(R.DECREF, ret(b)), (R.INCREF, ret(b))]))
    e = peek(n, ret(b))
    assert e.holders == 1 and ret(b) in n.st.clients[d].held


# -- many ids in one GET/WAIT ------------------------------------------------------------------------

def test_get_and_wait_of_packed_ids():
    n = Node().pool()
    d = n.driver()
    specs = [spec(f"t{i}") for i in range(P.PACK_FROM + 3)]
    for s in specs:
        n.submit(d, s)
    oids = [ret(s) for s in specs]
    packed = P.pack_ids(oids)
    assert type(packed) is bytes and list(P.IdRun(packed)) == oids
    assert P.pack_ids(oids[:2]) == oids[:2]                     # a few stay a list
    n.msgs(d, (M.WAIT, 2, packed, 2))
    assert n.get(d, 1, [oids[0]] + oids[5:]) == []
    assert n.msgs(d, (M.GET, 3, packed)) == []
    out = []
    for s in specs:
        wid = n.st.tasks.tasks[s[S.TASK_ID]].worker.wid
        out += n.done(wid, s)
    assert reply_of(out, d, 2) == (M.REPLY, 2, True, [0, 1])
    assert reply_of(out, d, 3)[3] == [(VALUE, b"value")] * len(specs)
    out = n.msgs(d, (M.GET, 4, packed[:-1]))                 # not a whole number of ids
    assert reply_of(out, d, 4)[2] is False


def test_id_run_is_a_sequence_of_ids():
    oids = [new_oid() for _ in range(5)]
    run = P.IdRun(b"".join(oids))
    assert len(run) == 5 and run[0] == oids[0] and run[-1] == oids[-1]
    assert list(enumerate(run))[3] == (3, oids[3])
    assert P.ids_of(oids) is oids and list(P.ids_of(b"".join(oids))) == oids


def test_a_revoke_read_after_the_blocked_task_ended_returns_its_successor_too():
    n = short(Node().pool())
    d = n.driver()
    a, b, c = spec("a"), spec("b"), spec("c")
    for s in (a, b, c):
        n.submit(d, s)
    out = n.get(n.wc(1), 1, [ret(c)])               # a thread of a waits: REVOKE [b, c]
    assert (SEND, n.wc(1), (M.REVOKE, [b[S.TASK_ID], c[S.TASK_ID]])) in out
    n.done(1, a)                                    # a itself ended before the REVOKE was read
    w = n.worker(1)
    assert w.task.tid == b[S.TASK_ID]               # here, b is its task now
    out = n.msgs(n.wc(1), (M.REVOKED, [b[S.TASK_ID], c[S.TASK_ID]]))
    # It had started neither: b is sent again (the worker is free), c waits its turn.
    assert (SEND, n.wc(1), execute(b, blob=None)) in out
    assert w.task.tid == b[S.TASK_ID] and w.queued is None
    assert [t.tid for t in n.st.ready._queues[a[S.RESOURCES]]] == [c[S.TASK_ID]]
    n.done(1, b)
    out = n.done(1, c)
    assert (SEND, n.wc(1), (M.REPLY, 1, True, [(VALUE, b"value")])) in out
