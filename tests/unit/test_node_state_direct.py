"""Direct actor calls in the node's pure state (``_node_direct``): calls the
node registers (DIRECT_CALL from the caller) but never dispatches, finished
by the worker's DIRECT_DONE, in either order; restarts, cancel, crashes and
callers that leave."""
from __future__ import annotations

from miniray import _task_spec as S
from miniray._node_state import E
from miniray.exceptions import ActorDiedError, TaskCancelledError

from .node_harness import SEND, M, Node, Q, call_spec, execute, ret, values
from .test_node_state_actors import alive_actor

PID = 20_001        # the actor's worker (worker 1 of the pool)


def register(n, cid, c, pid=PID):
    return n.msgs(cid, (M.DIRECT_CALL, c, pid))


def direct_done(n, wid, c, caller, results=None, retryable=False):
    results = values(c) if results is None else results
    return n.msgs(n.wc(wid), (M.DIRECT_DONE, c[S.TASK_ID], results, retryable, caller))


def nothing_left(n):
    book = n.st.direct
    return not book.early and not book.ended


def test_registered_then_done_seals_the_result_and_dispatches_nothing():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid)
    assert register(n, d, c) == []                      # no EXECUTE: the worker has it
    assert c[S.TASK_ID] in n.actor(aid).inflight
    assert direct_done(n, 1, c, d) == []
    assert n.value(ret(c)) == values(c)[0][1:3]
    assert not n.actor(aid).inflight and nothing_left(n)
    assert n.get(d, 3, [ret(c)])[0][2][3][0][1] == b"value"


def test_done_before_registered_waits_for_the_registration():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid)
    assert direct_done(n, 1, c, d) == []
    assert n.entry(ret(c)) is None and n.st.direct.early
    assert register(n, d, c) == []
    assert n.value(ret(c)) == values(c)[0][1:3]
    assert not n.actor(aid).inflight and nothing_left(n)


def test_a_call_sent_to_a_worker_since_replaced_is_retried_on_the_restarted_actor():
    n = Node().pool()
    d = n.driver()
    aid, init = alive_actor(n, d, max_restarts=1, max_task_retries=1)
    n.connect(2)
    n.exited(1)                                        # dies before the registration came
    c = call_spec(aid, max_retries=1)
    assert register(n, d, c) == []                     # queued for the new incarnation
    n.connect(3)
    assert n.init_done(3, init) == [(SEND, n.wc(3), execute(c, blob=None))]
    assert n.done(3, c) == []
    assert n.value(ret(c)) == values(c)[0][1:3]


def test_a_call_sent_to_a_dead_worker_without_retries_fails_with_actor_died():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d, max_restarts=1)
    n.exited(1)
    c = call_spec(aid)
    register(n, d, c)
    err = n.error(ret(c))
    assert isinstance(err, ActorDiedError) and "max_task_retries" in str(err)


def test_worker_crash_fails_registered_direct_calls():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid)
    register(n, d, c)
    n.exited(1)
    assert isinstance(n.error(ret(c)), ActorDiedError)
    assert nothing_left(n)


def test_cancelled_queued_direct_call_fails_at_once_and_its_late_done_is_dropped():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    running, queued = call_spec(aid, "running"), call_spec(aid, "queued")
    register(n, d, running)
    register(n, d, queued)
    out = n.msgs(d, (M.CANCEL, ret(queued), False, False))
    assert (SEND, n.wc(1), (M.CANCEL_TASK, queued[S.TASK_ID])) in out
    assert isinstance(n.error(ret(queued)), TaskCancelledError)
    assert n.st.direct.ended                                # its DIRECT_DONE may still come
    assert direct_done(n, 1, queued, d) == []               # dropped, not kept as early
    assert direct_done(n, 1, running, d) == []
    assert isinstance(n.error(ret(queued)), TaskCancelledError)
    assert nothing_left(n) and not n.actor(aid).inflight


def test_a_caller_that_leaves_before_registering_leaves_nothing_behind():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    other = n.driver()
    c = call_spec(aid)
    direct_done(n, 1, c, other)
    assert n.st.direct.early
    n.handle((E.CLOSED, other))
    assert nothing_left(n)


def test_retryable_error_of_a_direct_call_runs_it_again_through_the_node():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid, max_retries=1)
    register(n, d, c)
    assert direct_done(n, 1, c, d, retryable=True) == [
        (SEND, n.wc(1), execute(c, blob=None))]
    assert n.done(1, c) == []
    assert n.value(ret(c)) == values(c)[0][1:3]


def test_calls_pending_says_whether_the_asker_has_calls_unfinished():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)

    def pending(rid):
        out = n.msgs(d, (M.QUERY, rid, Q.CALLS_PENDING, aid))
        return out[0][2][3]

    assert pending(1) is False
    c = call_spec(aid)
    n.call(d, c)
    assert pending(2) is True
    other = n.driver()
    assert n.msgs(other, (M.QUERY, 3, Q.CALLS_PENDING, aid))[0][2][3] is False
    n.done(1, c)
    assert pending(4) is False


def test_a_call_registered_between_its_workers_close_and_exit_fails_saying_how_it_died():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid)
    n.handle((E.CLOSED, n.wc(1)))                       # its connection is gone first
    assert register(n, d, c) == []
    n.exited(1, "was killed by signal SIGKILL")
    err = n.error(ret(c))
    assert isinstance(err, ActorDiedError) and "SIGKILL" in str(err)


def test_a_direct_call_retried_after_a_crash_counts_as_pending_through_the_node():
    n = Node().pool()
    d = n.driver()
    aid, init = alive_actor(n, d, max_restarts=1, max_task_retries=1)
    n.connect(2)
    c = call_spec(aid, max_retries=1)
    register(n, d, c)
    n.exited(1)                                         # retried on the restarted actor

    def pending(rid):
        return n.msgs(d, (M.QUERY, rid, Q.CALLS_PENDING, aid))[0][2][3]

    assert pending(1) is True               # a next call must not pass it
    n.connect(3)
    n.init_done(3, init)
    n.done(3, c)
    assert pending(2) is False and nothing_left(n)
