"""Actors in the node's pure state: placement, the constructor, call order,
crashes and restarts, kill, handles going out of scope, names."""
from __future__ import annotations

import pytest

from miniray import _task_spec as S
from miniray._node_state import D
from miniray.exceptions import (ActorDiedError, ActorUnschedulableError, TaskCancelledError)

from .node_harness import (CLASS_BLOB, CPU1, ERROR, SEND, VALUE, M, Node, Q, call_spec,
                           error_results, execute, init_spec, new_oid, ret, spec, values)

META = b"actor meta"


def created(rid, aid, meta=META, new=True):
    return (M.REPLY, rid, True, (aid, meta, new))


def alive_actor(n, d, **opts):
    """An alive actor on worker 1 (the pool's), worker 2 spawned for the pool."""
    init = init_spec()
    aid = init[S.ACTOR_ID]
    assert n.create_actor(d, 1, init, **opts) == [
        (SEND, d, created(1, aid)), (D.SPAWN, 2), (SEND, n.wc(1), execute(init, blob=CLASS_BLOB))]
    assert n.init_done(1, init) == []
    assert n.actor(aid).state == "alive"
    return aid, init


# -- creation ----------------------------------------------------------------------------------

def test_actor_takes_an_idle_worker_and_runs_its_constructor():
    n = Node().pool()
    d = n.driver()
    aid, init = alive_actor(n, d)
    a = n.actor(aid)
    assert a.worker.wid == 1 and n.worker(1).state == "actor" and a.pid == 20_001
    assert n.entry(aid).holders == 1                         # the creator holds a handle
    assert n.connect(2)[1:] == [] and n.idle() == [2]        # the pool is whole again


def test_actor_without_an_idle_worker_gets_the_next_one_that_says_hello():
    n = Node()                                           # worker 1 is still starting
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    assert n.create_actor(d, 5, init) == [(SEND, d, created(5, aid)), (D.SPAWN, 2)]
    out = n.connect(1)
    assert out[0][:2] == (D.WELCOME, n.wc(1))
    assert out[1:] == [(SEND, n.wc(1), execute(init, blob=CLASS_BLOB))]
    assert n.connect(2)[1:] == [] and n.idle() == [2]


def test_actor_asking_for_a_cpu_is_placed_when_one_frees_up():
    n = Node().pool()
    d = n.driver()
    busy = spec("busy")
    n.submit(d, busy)
    init = init_spec(shape=CPU1)
    aid = init[S.ACTOR_ID]
    assert n.create_actor(d, 1, init) == [(SEND, d, created(1, aid))]
    assert n.actor(aid).state == "placing"
    assert n.done(1, busy) == [(D.SPAWN, 2), (SEND, n.wc(1), execute(init, blob=CLASS_BLOB))]
    assert n.cpu() == 0.0                                  # the actor holds its CPU


def test_actor_that_can_never_fit_dies_unschedulable():
    n = Node().pool()
    d = n.driver()
    init = init_spec(shape=(("GPU", 1.0),))
    aid = init[S.ACTOR_ID]
    assert n.create_actor(d, 1, init) == [(SEND, d, created(1, aid))]
    c = call_spec(aid)
    assert n.call(d, c) == []
    err = n.error(ret(c))
    assert isinstance(err, ActorUnschedulableError) and "can never start" in str(err)
    assert n.idle() == [1] and n.cpu() == 1.0


def test_constructor_failure_kills_the_actor_and_its_queued_calls():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init)
    c = call_spec(aid)
    assert n.call(d, c) == []                               # waits for the constructor
    n.get(d, 2, [ret(c)])
    out = n.init_done(1, init, ValueError("boom"))
    # The worker goes (it holds no instance), the waiting get is answered.
    assert out[0] == (SEND, n.wc(1), (M.EXIT, "actor constructor failed"))
    assert out[1][:2] == (SEND, d) and out[1][2][:3] == (M.REPLY, 2, True)
    err = n.error(ret(c))
    assert isinstance(err, ActorDiedError) and "constructor raised" in str(err)
    assert "ValueError: boom" in str(err) and err.actor_id == aid
    later = call_spec(aid)
    assert n.call(d, later) == []
    assert isinstance(n.error(ret(later)), ActorDiedError)
    assert n.st.actors.count_alive() == 0


# -- call order --------------------------------------------------------------------------------

def test_calls_sent_before_the_constructor_finishes_go_in_order_after_it():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init)
    calls = [call_spec(aid, f"m{i}") for i in range(3)]
    for c in calls:
        assert n.call(d, c) == []
    assert n.init_done(1, init) == [(SEND, n.wc(1), execute(c, blob=None)) for c in calls]


def test_call_whose_arg_is_not_ready_holds_the_calls_behind_it():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    n.connect(2)
    p = spec("producer")
    assert n.submit(d, p) == [(SEND, n.wc(2), execute(p))]
    c1 = call_spec(aid, "needs_arg", deps=[ret(p)])
    c2 = call_spec(aid, "plain")
    assert n.call(d, c1) == []
    assert n.call(d, c2) == []                              # held behind c1
    assert n.done(2, p, values(p, b"P")) == [
        (SEND, n.wc(1), execute(c1, blob=None, deps=[(VALUE, b"P")])),
        (SEND, n.wc(1), execute(c2, blob=None))]


def test_call_waiting_for_its_arg_holds_back_only_its_own_caller():
    n = Node().pool()
    d, other = n.driver(), n.driver()
    aid, _ = alive_actor(n, d)
    n.connect(2)
    p = spec("producer")
    n.submit(d, p)
    waits, mine, theirs = (call_spec(aid, "waits", deps=[ret(p)]), call_spec(aid, "mine"),
                           call_spec(aid, "theirs"))
    assert n.call(d, waits) == []
    assert n.call(d, mine) == []
    assert n.call(other, theirs) == [(SEND, n.wc(1), execute(theirs, blob=None))]
    assert n.done(2, p, values(p, b"P")) == [
        (SEND, n.wc(1), execute(waits, blob=None, deps=[(VALUE, b"P")])),
        (SEND, n.wc(1), execute(mine, blob=None))]


def test_threaded_actor_gets_every_ready_call():
    n = Node().pool()
    d = n.driver()
    init = init_spec(extra={"is_async": False, "max_concurrency": 4, "namespace": None})
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init)
    n.init_done(1, init)
    n.connect(2)
    p = spec("producer")
    n.submit(d, p)
    waits, ready = call_spec(aid, "waits", deps=[ret(p)]), call_spec(aid, "ready")
    assert n.call(d, waits) == []
    assert n.call(d, ready) == [(SEND, n.wc(1), execute(ready, blob=None))]
    assert n.done(2, p, values(p, b"P")) == [
        (SEND, n.wc(1), execute(waits, blob=None, deps=[(VALUE, b"P")]))]


def test_call_results_are_sealed_and_calls_keep_flowing():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c1, c2 = call_spec(aid), call_spec(aid)
    assert n.call(d, c1) == [(SEND, n.wc(1), execute(c1, blob=None))]
    assert n.call(d, c2) == [(SEND, n.wc(1), execute(c2, blob=None))]
    n.get(d, 3, [ret(c2)])
    assert n.done(1, c1, values(c1, b"1")) == []
    assert n.done(1, c2, values(c2, b"2")) == [(SEND, d, (M.REPLY, 3, True, [(VALUE, b"2")]))]
    assert not n.actor(aid).inflight and not n.st.tasks.tasks


def test_call_with_a_failed_arg_fails_without_running():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    bad = new_oid()
    c = call_spec(aid, deps=[bad])
    assert n.call(d, c) == []
    err = error_results(spec(), ValueError("upstream"))[0][2]
    assert n.msgs(d, (M.PUT_INLINE, bad, ERROR, err, [])) == []
    assert n.value(ret(c)) == (ERROR, err)


def test_retryable_error_in_a_call_runs_it_again():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid, max_retries=1, retry_exc=True)
    n.call(d, c)
    err = error_results(c, ValueError("flaky"))
    assert n.done(1, c, err, retryable=True) == [(SEND, n.wc(1), execute(c, blob=None))]
    assert n.done(1, c, err, retryable=True) == []
    assert n.value(ret(c)) == (ERROR, err[0][2])


def test_cancel_of_a_queued_call_lets_the_next_one_go():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init)
    c1, c2 = call_spec(aid), call_spec(aid)
    n.call(d, c1)
    n.call(d, c2)
    assert n.msgs(d, (M.CANCEL, ret(c1), False)) == []
    assert isinstance(n.error(ret(c1)), TaskCancelledError)
    assert n.init_done(1, init) == [(SEND, n.wc(1), execute(c2, blob=None))]


def test_cancel_of_a_running_call_interrupts_the_worker():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c1, c2 = call_spec(aid), call_spec(aid)
    n.call(d, c1)
    n.call(d, c2)
    assert n.msgs(d, (M.CANCEL, ret(c1), False)) == [
        (SEND, n.wc(1), (M.CANCEL_TASK, c1[S.TASK_ID])), (D.POKE, 1, n.wc(1))]
    assert n.entry(ret(c1)).state == 0                     # the worker answers for it
    # c2 was sent but waits behind c1 in a one-at-a-time actor: failed at once.
    assert n.msgs(d, (M.CANCEL, ret(c2), False)) == [
        (SEND, n.wc(1), (M.CANCEL_TASK, c2[S.TASK_ID])), (D.POKE, 1, n.wc(1))]
    assert isinstance(n.error(ret(c2)), TaskCancelledError)


# -- crashes and restarts ----------------------------------------------------------------------

def restarted(init, times):
    """The constructor's spec as the node re-sends it after a crash."""
    spec = list(init)
    spec[S.EXTRA] = dict(spec[S.EXTRA] or {}, num_restarts=times)
    return tuple(spec)


def test_crash_with_restarts_respawns_reruns_the_constructor_and_retries_calls():
    n = Node().pool()
    d = n.driver()
    aid, init = alive_actor(n, d, max_restarts=1, max_task_retries=1)
    n.connect(2)
    retried = call_spec(aid, "retried", max_retries=1)
    failed = call_spec(aid, "not_retried", max_retries=0)
    n.call(d, retried)
    n.call(d, failed)
    n.get(d, 7, [ret(failed)])
    out = n.exited(1)
    assert [ins[:2] for ins in out] == [(D.CLOSE, n.wc(1)), (SEND, d), (D.SPAWN, 3)]
    err = n.error(ret(failed))
    assert isinstance(err, ActorDiedError) and "max_task_retries" in str(err)
    assert "killed by SIGKILL" in str(err)
    a = n.actor(aid)
    assert a.state == "awaiting_worker" and a.restarts_left == 0 and a.num_restarts == 1
    late = call_spec(aid, "late")
    assert n.call(d, late) == []                            # queued during the restart
    out = n.connect(3)
    assert out[1:] == [(SEND, n.wc(3), execute(restarted(init, 1), blob=CLASS_BLOB))]
    assert n.init_done(3, init) == [(SEND, n.wc(3), execute(retried, blob=None)),
                                    (SEND, n.wc(3), execute(late, blob=None))]
    assert n.st.tasks.tasks[retried[S.TASK_ID]].retries_left == 0
    assert n.idle() == [2]                                  # the pool worker stayed put


def test_crash_during_the_constructor_restarts_it():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init, max_restarts=2)
    c = call_spec(aid)
    n.call(d, c)
    assert n.exited(1, "exited with code 1") == [(D.CLOSE, n.wc(1)), (D.SPAWN, 3)]
    # Any worker that says hello first serves the actor: here the pool's.
    out = n.connect(2)
    assert out[1:] == [(SEND, n.wc(2), execute(restarted(init, 1), blob=CLASS_BLOB))]
    assert n.connect(3)[1:] == [] and n.idle() == [3]
    assert n.init_done(2, init) == [(SEND, n.wc(2), execute(c, blob=None))]
    assert n.actor(aid).restarts_left == 1


def test_crash_without_restarts_fails_every_call_and_later_ones():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid)
    n.call(d, c)
    assert n.exited(1) == [(D.CLOSE, n.wc(1))]
    err = n.error(ret(c))
    assert isinstance(err, ActorDiedError)
    assert "pid=20001" in str(err) and "killed by SIGKILL" in str(err)
    assert "max_restarts" in str(err)
    later = call_spec(aid)
    assert n.call(d, later) == []
    assert n.error(ret(later)).args == err.args
    assert n.actor(aid).state == "dead" and n.st.actors.count_alive() == 0


def test_restarts_run_out():
    n = Node().pool()
    d = n.driver()
    aid, init = alive_actor(n, d, max_restarts=1)
    n.exited(1)
    n.connect(2)                                        # takes the actor
    n.connect(3)
    n.init_done(2, init)
    c = call_spec(aid)
    n.call(d, c)
    assert n.exited(2) == [(D.CLOSE, n.wc(2))]
    err = n.error(ret(c))
    assert isinstance(err, ActorDiedError) and "restarted 1 time(s)" in str(err)


# -- kill and scope ----------------------------------------------------------------------------

def test_kill_fails_calls_and_kills_the_worker():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d, max_restarts=3)
    running = call_spec(aid)
    n.call(d, running)
    n.get(d, 4, [ret(running)])
    out = n.msgs(d, (M.ACTOR_KILL, aid, True))
    assert [ins[:2] for ins in out] == [(SEND, d), (D.KILL, 1)]
    err = n.error(ret(running))
    assert isinstance(err, ActorDiedError) and "miniray.kill()" in str(err)
    assert n.exited(1) == [(D.CLOSE, n.wc(1))]              # no restart
    later = call_spec(aid)
    assert n.call(d, later) == []
    assert isinstance(n.error(ret(later)), ActorDiedError)
    assert n.msgs(d, (M.ACTOR_KILL, aid, True)) == []        # already dead


def test_kill_allowing_restart_restarts_the_actor():
    n = Node().pool()
    d = n.driver()
    aid, init = alive_actor(n, d, max_restarts=1)
    assert n.msgs(d, (M.ACTOR_KILL, aid, False)) == [(D.KILL, 1)]
    assert n.exited(1) == [(D.CLOSE, n.wc(1)), (D.SPAWN, 3)]
    assert n.actor(aid).state == "awaiting_worker"


def test_actor_ending_itself_is_not_killed_by_the_node():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d, max_restarts=1)
    c = call_spec(aid)
    n.call(d, c)
    why = "actor A exited by calling exit_actor()"
    assert n.msgs(n.wc(1), (M.ACTOR_KILL, aid, True, why)) == []
    err = n.error(ret(c))
    assert isinstance(err, ActorDiedError) and str(err) == why
    assert n.exited(1, "exited with code 0") == [(D.CLOSE, n.wc(1))]


def test_last_handle_gone_ends_the_actor():
    n = Node().pool()
    d = n.driver()
    init = init_spec(shape=CPU1)
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init)
    n.init_done(1, init)
    assert n.cpu() == 0.0
    assert n.decref(d, aid) == [(SEND, n.wc(1), (M.EXIT, "actor out of scope"))]
    assert n.actor(aid).state == "dead" and n.entry(aid) is None and n.cpu() == 1.0


def test_actor_out_of_scope_finishes_its_calls_first():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d)
    c = call_spec(aid)
    n.call(d, c)
    assert n.decref(d, aid) == []
    assert n.done(1, c) == [(SEND, n.wc(1), (M.EXIT, "actor out of scope"))]
    assert n.value(ret(c)) == (VALUE, b"value")


def test_detached_actor_outlives_its_handles():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d, lifetime="detached")
    assert n.decref(d, aid) == []
    assert n.actor(aid).state == "alive" and n.entry(aid) is not None


def test_named_actor_get_if_exists_and_duplicates():
    n = Node().pool()
    d = n.driver()
    aid, _ = alive_actor(n, d, name="svc", namespace="ns")
    dup = init_spec()
    out = n.create_actor(d, 2, dup, name="svc", namespace="ns")
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][:3] == (M.REPLY, 2, False)
    assert isinstance(out[0][2][3], ValueError) and "already exists" in str(out[0][2][3])
    assert n.create_actor(d, 3, init_spec(), name="svc", namespace="ns",
                          get_if_exists=True) == [(SEND, d, created(3, aid, new=False))]
    assert n.msgs(d, (M.QUERY, 4, Q.GET_ACTOR, ("svc", "ns"))) == [
        (SEND, d, (M.REPLY, 4, True, (aid, META)))]
    assert n.msgs(d, (M.QUERY, 5, Q.LIST_NAMED_ACTORS, None)) == [
        (SEND, d, (M.REPLY, 5, True, [{"name": "svc", "namespace": "ns"}]))]
    n.msgs(d, (M.ACTOR_KILL, aid, True))
    out = n.msgs(d, (M.QUERY, 6, Q.GET_ACTOR, ("svc", "ns")))
    assert out[0][2][:3] == (M.REPLY, 6, False) and "no actor named 'svc'" in str(out[0][2][3])


@pytest.mark.parametrize("restarts", [0, 1])
def test_actor_resources_come_back_when_it_dies(restarts):
    n = Node(num_cpus=2).pool()
    d = n.driver()
    init = init_spec(shape=CPU1)
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init, max_restarts=restarts)
    wid = n.actor_wid(aid)
    n.init_done(wid, init)
    assert n.cpu() == 1.0
    n.msgs(d, (M.ACTOR_KILL, aid, True))
    n.exited(wid)
    assert n.cpu() == 2.0
