"""Function tasks in the node's pure state: dispatch, arguments, retries on
application errors, cancellation, CPU lending, the worker pool.

Each test feeds events to ``NodeState.handle`` and compares the
instructions that come back with the exact list the server would carry out.
"""
from __future__ import annotations

import pytest

from miniray import _task_spec as S
from miniray._node_state import IDLE_CHECK_S, D, E
from miniray.exceptions import ObjectLostError, TaskCancelledError

from .node_harness import (ERROR, FN_BLOB, SEND, VALUE, M, Node, error_results, execute,
                           new_oid, ret, spec, values)


# -- the pool ----------------------------------------------------------------------------------

def test_start_spawns_the_pool_and_arms_the_reaper():
    n = Node(num_cpus=3, start=False)
    assert n.handle((E.START, 0.0)) == [(D.SPAWN, 1), (D.SPAWN, 2), (D.SPAWN, 3),
                                        (D.TIMER, IDLE_CHECK_S, "reap"), (D.READY,)]
    assert n.starting() == [1, 2, 3]


def test_worker_hello_is_welcomed_and_makes_it_idle():
    n = Node()
    assert n.spawned(1) == []
    out = n.hello_worker(1)
    assert [ins[:2] for ins in out] == [(D.WELCOME, n.wc(1))]
    assert out[0][2]["resources"] == {"CPU": 1.0, "node:127.0.0.1": 1.0}
    assert n.idle() == [1] and n.worker(1).pid == 20_001


def test_task_submitted_before_any_worker_runs_when_one_says_hello():
    n = Node(num_cpus=2)
    d = n.driver()
    s = spec()
    assert n.submit(d, s) == []          # two workers are starting already: none more
    out = n.connect(2)
    assert out[0][:2] == (D.WELCOME, n.wc(2))
    assert out[1:] == [(SEND, n.wc(2), execute(s))]


# -- submit -> dispatch -> done ----------------------------------------------------------------

def test_submit_dispatch_done_seals_results_and_answers_a_waiting_get():
    n = Node().pool()
    d = n.driver()
    s = spec()
    assert n.submit(d, s) == [(SEND, n.wc(1), execute(s))]
    assert n.cpu() == 0.0 and n.idle() == []
    assert n.get(d, 7, [ret(s)]) == []
    assert n.done(1, s, values(s, b"42")) == [(SEND, d, (M.REPLY, 7, True, [(VALUE, b"42")]))]
    assert n.value(ret(s)) == (VALUE, b"42")
    assert n.cpu() == 1.0 and n.idle() == [1]
    assert s[S.TASK_ID] not in n.st.tasks.tasks


def test_get_of_a_finished_task_is_answered_at_once():
    n = Node().pool()
    d = n.driver()
    s = spec(num_returns=2)
    n.submit(d, s)
    assert n.done(1, s, [(ret(s, 0), VALUE, b"a", ()), (ret(s, 1), VALUE, b"b", ())]) == []
    assert n.get(d, 3, [ret(s, 1), ret(s, 0)]) == [
        (SEND, d, (M.REPLY, 3, True, [(VALUE, b"b"), (VALUE, b"a")]))]


def test_function_blob_goes_to_a_worker_once():
    n = Node().pool()
    d = n.driver()
    s1, s2 = spec(), spec()
    assert n.submit(d, s1) == [(SEND, n.wc(1), execute(s1, blob=FN_BLOB))]
    assert n.submit(d, s2) == []                     # the only CPU is taken
    assert n.done(1, s1) == [(SEND, n.wc(1), execute(s2, blob=None))]


def test_ready_tasks_run_fifo_as_cpus_free_up():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    s1, s2, s3, s4 = spec("a"), spec("b"), spec("c"), spec("d")
    out = n.msgs(d, (M.SUBMIT, s1), (M.SUBMIT, s2), (M.SUBMIT, s3), (M.SUBMIT, s4))
    assert out == [(SEND, n.wc(2), execute(s1)), (SEND, n.wc(1), execute(s2))]
    assert n.done(1, s2) == [(SEND, n.wc(1), execute(s3, blob=None))]
    assert n.done(2, s1) == [(SEND, n.wc(2), execute(s4, blob=None))]


def test_task_no_node_can_run_stays_pending_with_one_warning():
    n = Node().pool()
    d = n.driver()
    s = spec(shape=(("CPU", 1.0), ("GPU", 2.0)))
    out = n.submit(d, s)
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][0] == M.WARNING
    assert "GPU: 2" in out[0][2][1] and "stays pending" in out[0][2][1]
    assert n.submit(d, spec(shape=(("CPU", 1.0), ("GPU", 2.0)))) == []   # told once
    assert n.entry(ret(s)).state != 2 and n.cpu() == 1.0 and n.idle() == [1]
    assert n.msgs(d, (M.CANCEL, ret(s), False, True)) == []
    assert isinstance(n.error(ret(s)), TaskCancelledError)


def test_zero_return_task_runs_and_is_forgotten():
    n = Node().pool()
    d = n.driver()
    s = spec(num_returns=0)
    assert n.submit(d, s) == [(SEND, n.wc(1), execute(s))]
    assert n.done(1, s, []) == []
    assert not n.st.tasks.tasks and n.idle() == [1]


def test_task_with_an_unregistered_function_gives_back_cpu_and_worker():
    n = Node().pool()
    d = n.driver()
    s = spec(key=b"never registered")
    assert n.submit(d, s) == []
    err = n.error(ret(s))
    assert isinstance(err, ObjectLostError) and "never registered" in str(err)
    assert n.cpu() == 1.0 and n.idle() == [1]
    s2 = spec()
    assert n.submit(d, s2) == [(SEND, n.wc(1), execute(s2))]


# -- arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("first", [0, 1])
def test_task_waits_for_both_args_sealed_in_either_order(first):
    n = Node(num_cpus=3).pool()
    d = n.driver()
    p = [spec("p0"), spec("p1")]
    for s in p:
        n.submit(d, s)
    c = spec("consumer", deps=[ret(p[0]), ret(p[1])])
    assert n.submit(d, c) == []
    runs_on = {s[S.TASK_ID]: n.st.tasks.tasks[s[S.TASK_ID]].worker.wid for s in p}
    a, b = p[first], p[1 - first]
    wa, wb = runs_on[a[S.TASK_ID]], runs_on[b[S.TASK_ID]]
    assert n.done(wa, a, values(a, b"A")) == []          # one arg is still missing
    assert n.entry(ret(a)).pins == 1                    # kept for the consumer
    data = {a[S.TASK_ID]: b"A", b[S.TASK_ID]: b"B"}
    expected_deps = [(VALUE, data[p[0][S.TASK_ID]]), (VALUE, data[p[1][S.TASK_ID]])]
    assert n.done(wb, b, values(b, b"B")) == [
        (SEND, n.wc(wb), execute(c, blob=None, deps=expected_deps))]


def test_args_stay_pinned_until_the_task_is_finished():
    n = Node().pool()
    d = n.driver()
    x = new_oid()
    n.put(d, x, b"x")
    s = spec(deps=[x])
    assert n.submit(d, s) == [(SEND, n.wc(1), execute(s, deps=[(VALUE, b"x")]))]
    assert n.decref(d, x) == []
    assert n.entry(x) is not None                       # the running task needs it
    n.done(1, s)
    assert n.entry(x) is None


def test_failed_arg_fails_the_task_without_running_it():
    n = Node().pool()
    d = n.driver()
    p = spec("producer")
    n.submit(d, p)
    c = spec("consumer", deps=[ret(p)])
    n.submit(d, c)
    n.get(d, 5, [ret(c)])
    err = error_results(p, ValueError("producer failed"))
    assert n.done(1, p, err) == [(SEND, d, (M.REPLY, 5, True, [(ERROR, err[0][2])]))]
    assert n.value(ret(c)) == (ERROR, err[0][2])
    assert n.cpu() == 1.0 and n.idle() == [1] and not n.st.tasks.tasks


def test_arena_stored_args_are_sent_as_a_view():
    n = Node().pool()
    d = n.driver()
    a = new_oid()
    n.msgs(d, (M.ALLOC, 1, a, 5000))
    n.msgs(d, (M.SEAL, a, VALUE, False, []))            # the args object: nobody holds it
    s = spec(args_oid=a)
    assert n.submit(d, s) == [(SEND, n.wc(1), execute(s, args=(VALUE, (0, 5000))))]
    assert n.st.clients[n.wc(1)].views == {a: 1}
    n.done(1, s)
    assert n.entry(a) is not None                       # the worker's view is still out
    n.msgs(n.wc(1), (M.REFS, [(3, a)]))                 # UNPIN
    assert n.entry(a) is None and n.st.table.alloc.used == 0


# -- retries on application errors -------------------------------------------------------------

def test_retryable_error_is_retried_until_max_retries_then_sealed():
    n = Node().pool()
    d = n.driver()
    s = spec(max_retries=2, retry_exc=True)
    n.submit(d, s)
    n.get(d, 9, [ret(s)])
    t = n.st.tasks.tasks[s[S.TASK_ID]]
    err = error_results(s, ValueError("flaky"))
    assert n.done(1, s, err, retryable=True) == [(SEND, n.wc(1), execute(s, blob=None))]
    assert t.retries_left == 1 and n.entry(ret(s)).state != 2
    assert n.done(1, s, err, retryable=True) == [(SEND, n.wc(1), execute(s, blob=None))]
    assert t.retries_left == 0
    assert n.done(1, s, err, retryable=True) == [
        (SEND, d, (M.REPLY, 9, True, [(ERROR, err[0][2])]))]
    assert isinstance(n.error(ret(s)), ValueError)
    assert n.cpu() == 1.0 and not n.st.tasks.tasks


def test_error_not_marked_retryable_is_sealed_at_once():
    n = Node().pool()
    d = n.driver()
    s = spec(max_retries=3, retry_exc=True)
    n.submit(d, s)
    err = error_results(s, KeyError("not retried"))
    assert n.done(1, s, err, retryable=False) == []
    assert n.value(ret(s)) == (ERROR, err[0][2])
    assert not n.st.tasks.tasks and n.idle() == [1]


def test_retried_task_goes_before_tasks_queued_behind_it():
    n = Node().pool()
    d = n.driver()
    s, later = spec("flaky", max_retries=1, retry_exc=True), spec("later")
    n.submit(d, s)
    n.submit(d, later)
    err = error_results(s, ValueError())
    assert n.done(1, s, err, retryable=True) == [(SEND, n.wc(1), execute(s, blob=None))]


# -- cancel ------------------------------------------------------------------------------------

def test_cancel_of_a_queued_task_seals_cancelled_and_never_runs_it():
    n = Node().pool()
    d = n.driver()
    busy, s = spec("busy"), spec("queued")
    n.submit(d, busy)
    n.submit(d, s)
    n.get(d, 4, [ret(s)])
    out = n.msgs(d, (M.CANCEL, ret(s), False))
    assert [ins[:2] for ins in out] == [(SEND, d)]
    assert out[0][2][:3] == (M.REPLY, 4, True)
    err = n.error(ret(s))
    assert isinstance(err, TaskCancelledError) and err.task_id == s[S.TASK_ID].hex()
    assert n.done(1, busy) == []                         # the CPU frees: nothing to run
    assert n.idle() == [1] and not n.st.tasks.tasks


def test_cancel_of_a_task_waiting_for_args():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    p = spec("producer")
    n.submit(d, p)
    s = spec("consumer", deps=[ret(p)])
    n.submit(d, s)
    assert n.msgs(d, (M.CANCEL, ret(s), False)) == []
    assert isinstance(n.error(ret(s)), TaskCancelledError)
    wid = n.st.tasks.tasks[p[S.TASK_ID]].worker.wid
    assert n.done(wid, p) == []                           # the arg is ready: nothing runs
    assert sorted(n.idle()) == [1, 2]


def test_cancel_of_a_running_task_interrupts_its_worker():
    n = Node().pool()
    d = n.driver()
    s = spec(max_retries=2, retry_exc=True)
    n.submit(d, s)
    assert n.msgs(d, (M.CANCEL, ret(s), False)) == [
        (SEND, n.wc(1), (M.CANCEL_TASK, s[S.TASK_ID])), (D.POKE, 1, n.wc(1))]
    assert n.msgs(d, (M.CANCEL, ret(s), False)) == []     # a cancel acts once
    err = error_results(s, TaskCancelledError(s[S.TASK_ID].hex()))
    assert n.done(1, s, err, retryable=True) == []        # cancelled: never retried
    assert isinstance(n.error(ret(s)), TaskCancelledError)
    assert n.idle() == [1] and n.cpu() == 1.0


def test_force_cancel_kills_the_worker_and_is_not_retried():
    n = Node().pool()
    d = n.driver()
    s = spec(max_retries=3)
    n.submit(d, s)
    assert n.msgs(d, (M.CANCEL, ret(s), True)) == [(D.KILL, 1)]
    assert n.exited(1) == [(D.CLOSE, n.wc(1))]            # no retry, no new worker
    assert isinstance(n.error(ret(s)), TaskCancelledError)
    assert n.cpu() == 1.0 and not n.st.tasks.tasks


def test_cancel_of_a_finished_task_does_nothing():
    n = Node().pool()
    d = n.driver()
    s = spec()
    n.submit(d, s)
    n.done(1, s, values(s, b"kept"))
    assert n.msgs(d, (M.CANCEL, ret(s), False)) == []
    assert n.msgs(d, (M.CANCEL, ret(s), True)) == []
    assert n.value(ret(s)) == (VALUE, b"kept")


def test_cancel_reaches_the_tasks_a_task_submitted():
    n = Node().pool()
    d = n.driver()
    outer, child = spec("outer"), spec("child")
    n.submit(d, outer)
    w1 = n.wc(1)
    n.submit(w1, child)
    assert n.get(w1, 1, [ret(child)]) == [(D.SPAWN, 2)]
    out = n.msgs(d, (M.CANCEL, ret(outer), False))
    cancelled = n.value(ret(child))
    assert out == [(SEND, w1, (M.REPLY, 1, True, [cancelled])),
                   (SEND, w1, (M.CANCEL_TASK, outer[S.TASK_ID])), (D.POKE, 1, w1)]
    assert isinstance(n.error(ret(child)), TaskCancelledError)
    assert n.connect(2)[1:] == []                        # the child never runs


def test_cancel_not_recursive_leaves_the_children_alone():
    n = Node().pool()
    d = n.driver()
    outer, child = spec("outer"), spec("child")
    n.submit(d, outer)
    n.submit(n.wc(1), child)
    assert n.msgs(d, (M.CANCEL, ret(outer), False, False)) == [
        (SEND, n.wc(1), (M.CANCEL_TASK, outer[S.TASK_ID])), (D.POKE, 1, n.wc(1))]
    assert n.entry(ret(child)).state == 0
    n.done(1, outer, error_results(outer, TaskCancelledError(outer[S.TASK_ID].hex())))
    assert n.st.tasks.tasks[child[S.TASK_ID]].state == "running"


def test_force_cancel_kills_the_workers_of_running_children_first():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    outer, child = spec("outer"), spec("child")
    n.submit(d, outer)
    wo = n.st.tasks.tasks[outer[S.TASK_ID]].worker.wid
    n.submit(n.wc(wo), child)
    wc = n.st.tasks.tasks[child[S.TASK_ID]].worker.wid
    assert n.msgs(d, (M.CANCEL, ret(outer), True)) == [(D.KILL, wc), (D.KILL, wo)]


def test_finished_child_is_forgotten_by_its_parent():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    outer, child = spec("outer"), spec("child")
    n.submit(d, outer)
    wo = n.st.tasks.tasks[outer[S.TASK_ID]].worker.wid
    n.submit(n.wc(wo), child)
    parent = n.st.tasks.tasks[outer[S.TASK_ID]]
    assert list(parent.children) == [child[S.TASK_ID]]
    n.done(3 - wo, child, values(child, b"kept"))
    assert not parent.children
    assert n.msgs(d, (M.CANCEL, ret(outer), False)) == [
        (SEND, n.wc(wo), (M.CANCEL_TASK, outer[S.TASK_ID])), (D.POKE, wo, n.wc(wo))]
    assert n.value(ret(child)) == (VALUE, b"kept")


# -- nested tasks: a worker blocked in get lends its CPU ---------------------------------------

def test_blocked_worker_lends_its_cpu_and_takes_it_back_when_answered():
    n = Node().pool()
    d = n.driver()
    outer, inner, third = spec("outer"), spec("inner"), spec("third")
    n.submit(d, outer)
    w1 = n.wc(1)
    assert n.submit(w1, inner) == []                      # no CPU free: queued, no worker
    assert n.submit(d, third) == []
    assert n.get(w1, 1, [ret(inner)]) == [(D.SPAWN, 2)]   # lent: inner may run now
    assert n.cpu() == 1.0
    out = n.connect(2)
    assert out[1:] == [(SEND, n.wc(2), execute(inner))]
    assert n.cpu() == 0.0
    # inner's result answers the get; outer runs again, so third must wait.
    assert n.done(2, inner, values(inner, b"in")) == [
        (SEND, w1, (M.REPLY, 1, True, [(VALUE, b"in")]))]
    assert n.cpu() == 0.0 and n.idle() == [2]
    assert n.done(1, outer) == [(SEND, n.wc(1), execute(third, blob=None))]


def test_blocked_worker_lends_its_cpu_to_an_idle_worker():
    n = Node().pool()
    d = n.driver()
    outer, inner = spec("outer"), spec("inner")
    n.submit(d, outer)
    n.submit(n.wc(1), inner)
    n.get(n.wc(1), 1, [ret(inner)])
    n.connect(2)                       # started for the first lending, idle once done
    n.done(2, inner)
    n.done(1, outer)
    assert n.idle() == [2, 1]
    outer, inner = spec("outer2"), spec("inner2")
    assert n.submit(d, outer) == [(SEND, n.wc(1), execute(outer, blob=None))]
    assert n.submit(n.wc(1), inner) == []
    assert n.msgs(n.wc(1), (M.WAIT, 2, [ret(inner)], 1)) == [
        (SEND, n.wc(2), execute(inner, blob=None))]
    assert n.done(2, inner) == [(SEND, n.wc(1), (M.REPLY, 2, True, [0]))]
    assert n.cpu() == 0.0


def test_cpu_stays_lent_until_every_get_of_the_worker_is_answered():
    n = Node().pool()
    d = n.driver()
    outer, a, b, later = spec("outer"), spec("a"), spec("b"), spec("later")
    n.submit(d, outer)
    w1 = n.wc(1)
    n.submit(w1, a)
    n.submit(w1, b)
    assert n.get(w1, 1, [ret(a)]) == [(D.SPAWN, 2)]          # two threads of the task
    assert n.get(w1, 2, [ret(b)]) == []                      # lent once
    assert n.cpu() == 1.0
    n.connect(2)
    n.submit(d, later)
    assert n.done(2, a) == [(SEND, w1, (M.REPLY, 1, True, [(VALUE, b"value")])),
                            (SEND, n.wc(2), execute(b, blob=None))]
    assert n.done(2, b) == [(SEND, w1, (M.REPLY, 2, True, [(VALUE, b"value")]))]
    assert n.cpu() == 0.0                                    # later waits for outer
    assert n.done(1, outer) == [(SEND, w1, execute(later, blob=None))]


def test_get_answered_at_once_lends_nothing():
    n = Node().pool()
    d = n.driver()
    x = new_oid()
    n.put(d, x, b"x")
    outer, queued = spec("outer"), spec("queued")
    n.submit(d, outer)
    n.submit(d, queued)
    assert n.get(n.wc(1), 1, [x]) == [(SEND, n.wc(1), (M.REPLY, 1, True, [(VALUE, b"x")]))]
    assert n.cpu() == 0.0


def test_get_timeout_drop_takes_the_lent_cpu_back():
    n = Node().pool()
    d = n.driver()
    outer, inner = spec("outer"), spec("inner")
    n.submit(d, outer)
    w1 = n.wc(1)
    n.submit(w1, inner)
    assert n.get(w1, 1, [ret(inner)]) == [(D.SPAWN, 2)]
    assert n.msgs(w1, (M.DROP_REQ, 1)) == [(SEND, w1, (M.REPLY, 1, False, None))]
    assert n.cpu() == 0.0
    assert n.connect(2)[1:] == []                         # no CPU for inner now


# -- idle workers ------------------------------------------------------------------------------

def test_extra_idle_worker_is_told_to_exit_after_a_while():
    n = Node().pool()
    d = n.driver()
    outer, inner = spec("outer"), spec("inner")
    n.submit(d, outer)
    n.submit(n.wc(1), inner)
    n.get(n.wc(1), 1, [ret(inner)])
    n.connect(2)
    n.handle((E.TIMER, "clock", 3.0))                     # only moves the clock
    n.done(2, inner)
    n.handle((E.TIMER, "clock", 4.0))
    n.done(1, outer)
    assert n.idle() == [2, 1]
    assert n.handle((E.TIMER, "reap", 12.5)) == [(D.TIMER, IDLE_CHECK_S, "reap")]
    assert n.handle((E.TIMER, "reap", 13.5)) == [(D.TIMER, IDLE_CHECK_S, "reap"),
                                                  (SEND, n.wc(2), (M.EXIT, "idle"))]
    assert n.idle() == [1] and n.worker(2).state == "exiting"
    assert n.exited(2, "exited with code 0") == [(D.CLOSE, n.wc(2))]
    assert n.handle((E.TIMER, "reap", 60.0)) == [(D.TIMER, IDLE_CHECK_S, "reap")]


def test_pool_of_num_cpus_is_never_reaped():
    n = Node(num_cpus=2).pool()
    assert n.handle((E.TIMER, "reap", 1000.0)) == [(D.TIMER, IDLE_CHECK_S, "reap")]



def test_get_answers_as_soon_as_one_object_failed():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    failing, slow = spec(), spec()
    n.submit(d, failing)
    n.submit(d, slow)
    assert n.get(d, 7, [ret(slow), ret(failing)]) == []
    wa = n.st.tasks.tasks[failing[S.TASK_ID]].worker.wid
    out = n.msgs(n.wc(wa), (M.TASK_DONE, failing[S.TASK_ID],
                            error_results(failing, ValueError("boom")), False, None))
    replies = [ins[2] for ins in out if ins[:2] == (SEND, d)]
    assert len(replies) == 1 and replies[0][:3] == (M.REPLY, 7, True)
    assert replies[0][3][0] is None and replies[0][3][1][0] == ERROR
    # The slow task's result no longer has this GET waiting on it.
    assert not n.entry(ret(slow)).waiters


def test_a_long_queue_keeps_one_copy_of_the_fields_its_specs_repeat():
    from miniray import _node_tasks
    n = Node().pool()
    d = n.driver()
    specs = [spec("f") for _ in range(_node_tasks.COMPACT_FROM + 50)]
    for s in specs:
        n.submit(d, s)
    queued = [n.st.tasks.tasks[s[S.TASK_ID]].spec for s in specs[-50:]]
    for field in (S.FN_KEY, S.NAME, S.RESOURCES, S.DEPS):
        assert len({id(q[field]) for q in queued}) == 1, field
    assert queued == specs[-50:]                  # the same values
    # They run as submitted.
    first, last = specs[0], specs[-1]
    assert n.done(1, first)[0] == (SEND, n.wc(1), execute(specs[1], blob=None))
    for s in specs[1:-1]:
        n.done(1, s)
    n.done(1, last)
    assert n.value(ret(last)) == (VALUE, b"value")
