"""Worker leases in the node's pure state (``_node_leases``): a driver's
task finishes on an otherwise idle node and its worker stays leased to that
driver; the driver's direct calls are registered (DIRECT_CALL with the
lease id) and finished by DIRECT_DONE, in either order; the lease goes back
when other work waits, when the driver returns it or leaves; a crash, a
cancel and a worker waiting in get work as for dispatched tasks."""
from __future__ import annotations

from miniray import _task_spec as S
from miniray._node_state import E
from miniray.exceptions import TaskCancelledError, WorkerCrashedError

from .node_harness import SEND, M, Node, D, error_results, execute, ret, spec, values

ADDR = "unix:@miniray-direct-test"
LEASING = {"leases": True}


def leased_node(num_cpus=1):
    """A node whose driver holds a lease on worker 1 (granted, active);
    (node, driver cid, lease id)."""
    n = Node(num_cpus=num_cpus).pool()
    d = n.driver(info=LEASING)
    first = spec()
    assert n.submit(d, first) == [(SEND, n.wc(1), execute(first))]
    out = n.done(1, first)
    serve = [m for m in out if m[0] == SEND and m[2][0] == M.LEASE_SERVE]
    assert serve and serve[0][1] == n.wc(1), out
    lid = serve[0][2][1]
    out = n.msgs(n.wc(1), (M.LEASE_READY, lid, ADDR))
    assert out == [(SEND, d, (M.LEASE_GRANTED, lid, first[S.RESOURCES], 20_001, ADDR,
                               [first[S.FN_KEY]]))]
    return n, d, lid


def register(n, d, s, lid):
    return n.msgs(d, (M.DIRECT_CALL, s, lid))


def direct_done(n, wid, s, caller, results=None, retryable=False):
    results = values(s) if results is None else results
    return n.msgs(n.wc(wid), (M.DIRECT_DONE, s[S.TASK_ID], results, retryable, caller))


def test_a_finished_task_leaves_its_worker_leased_to_its_driver():
    n, d, lid = leased_node()
    w = n.worker(1)
    assert w.state == "leased" and n.idle() == []
    assert n.cpu() == 0.0                                   # held by the lease
    assert n.st.available_now()["CPU"] == 1.0               # ... but free to anyone who asks


def test_a_driver_that_takes_no_leases_gets_none():
    n = Node().pool()
    d = n.driver()
    s = spec()
    n.submit(d, s)
    out = n.done(1, s)
    assert not [m for m in out if m[0] == SEND and m[2][0] in (M.LEASE_SERVE,
                                                                M.LEASE_GRANTED)]
    assert n.idle() == [1]


def test_registered_then_done_seals_and_keeps_the_lease():
    n, d, lid = leased_node()
    s = spec()
    assert register(n, d, s, lid) == []                     # no EXECUTE: the worker has it
    assert n.worker(1).task is not None
    assert direct_done(n, 1, s, d) == []
    assert n.value(ret(s)) == values(s)[0][1:3]
    assert n.worker(1).state == "leased" and n.worker(1).task is None
    assert not n.st.tasks.tasks


def test_done_before_registration_seals_when_it_comes():
    n, d, lid = leased_node()
    s = spec()
    assert direct_done(n, 1, s, d) == []
    assert n.entry(ret(s)) is None and n.st.direct.early
    assert register(n, d, s, lid) == []
    assert n.value(ret(s)) == values(s)[0][1:3]
    assert not n.st.direct.early and not n.st.tasks.tasks


def test_a_second_grant_to_a_worker_that_serves_already_needs_no_round_trip():
    n, d, lid = leased_node()
    n.msgs(d, (M.LEASE_RETURN, lid))
    assert n.idle() == [1] and n.cpu() == 1.0
    s = spec()
    n.submit(d, s)
    out = n.done(1, s)
    granted = [m for m in out if m[0] == SEND and m[2][0] == M.LEASE_GRANTED]
    assert granted and granted[0][1] == d and granted[0][2][1] != lid


def test_waiting_work_revokes_the_lease_and_gets_the_worker_when_returned():
    n, d, lid = leased_node()
    other = n.driver()
    s = spec()
    out = n.submit(other, s)
    assert (SEND, d, (M.LEASE_REVOKE, lid)) in out          # 1 CPU, held by the lease
    assert not [m for m in out if m[0] == SEND and m[2][0] == M.EXECUTE]
    out = n.msgs(d, (M.LEASE_RETURN, lid))
    assert (SEND, n.wc(1), execute(s, blob=None)) in out
    assert n.worker(1).lease is None and not n.st.leases.leases


def test_a_lease_returned_with_a_call_running_ends_at_its_done():
    n, d, lid = leased_node()
    s = spec()
    register(n, d, s, lid)
    n.msgs(d, (M.LEASE_RETURN, lid))
    assert n.worker(1).state == "leased" and n.cpu() == 0.0
    direct_done(n, 1, s, d)
    assert n.idle() == [1] and n.cpu() == 1.0 and not n.st.leases.leases


def test_a_crash_retries_the_registered_call_through_the_node():
    n, d, lid = leased_node()
    s = spec(max_retries=1)
    register(n, d, s, lid)
    out = n.exited(1)
    assert (SEND, d, (M.LEASE_REVOKE, lid)) in out          # the driver gives it back
    assert n.cpu() == 1.0
    n.connect_all()
    wid = max(n.st.workers)
    assert n.worker(wid).task is not None and n.worker(wid).task.tid == s[S.TASK_ID]
    n.done(wid, s)
    assert n.value(ret(s)) == values(s)[0][1:3]
    n.msgs(d, (M.LEASE_RETURN, lid))
    assert lid not in n.st.leases.leases        # (the new worker is leased to it now)


def test_a_crash_fails_a_call_without_retries_and_one_registered_after_it():
    n, d, lid = leased_node()
    running, late = spec("running"), spec("late")
    register(n, d, running, lid)
    n.exited(1, "killed by SIGKILL")
    err = n.error(ret(running))
    assert isinstance(err, WorkerCrashedError) and "SIGKILL" in str(err)
    register(n, d, late, lid)                               # on its way when it died
    assert isinstance(n.error(ret(late)), WorkerCrashedError)
    n.msgs(d, (M.LEASE_RETURN, lid))
    assert not n.st.leases.leases and not n.st.tasks.tasks


def test_cancel_interrupts_the_call_and_force_kills_without_charging_others():
    n, d, lid = leased_node()
    s = spec()
    register(n, d, s, lid)
    out = n.msgs(d, (M.CANCEL, ret(s), False, True))
    assert (SEND, n.wc(1), (M.CANCEL_TASK, s[S.TASK_ID])) in out
    direct_done(n, 1, s, d, results=error_results(s, TaskCancelledError(s[S.TASK_ID].hex())))
    assert isinstance(n.error(ret(s)), TaskCancelledError)
    assert n.worker(1).state == "leased"
    forced = spec("forced")
    register(n, d, forced, lid)
    out = n.msgs(d, (M.CANCEL, ret(forced), True, True))
    assert (D.KILL, 1) in out
    n.exited(1)
    assert isinstance(n.error(ret(forced)), TaskCancelledError)


def test_a_worker_waiting_in_get_lends_the_lease_cpu_even_before_its_call_is_registered():
    n, d, lid = leased_node()
    child = spec("child")
    n.submit(n.wc(1), child)                    # the leased worker's task submits a child
    out = n.get(n.wc(1), 7, [ret(child)])       # ... and waits for it
    assert n.cpu() == 1.0                       # the lease's CPU, lent
    assert [m for m in out if m[0] == D.SPAWN]  # no idle worker: one starts for the child
    n.connect_all()
    wid = max(n.st.workers)
    n.done(wid, child)
    assert n.cpu() == 0.0                       # the get answered: taken back


def test_a_driver_that_leaves_ends_its_leases():
    n, d, lid = leased_node()
    n.handle((E.CLOSED, d))
    assert n.idle() == [1] and n.cpu() == 1.0 and not n.st.leases.leases


def test_a_lease_revoked_while_being_granted_ends_at_once():
    n = Node().pool()
    d = n.driver(info=LEASING)
    first = spec()
    n.submit(d, first)
    out = n.done(1, first)
    lid = [m for m in out if m[0] == SEND and m[2][0] == M.LEASE_SERVE][0][2][1]
    other = n.driver()
    s = spec()
    out = n.submit(other, s)                    # waits: the lease ends, the driver never knew
    assert (SEND, n.wc(1), execute(s, blob=None)) in out
    assert not [m for m in out if m[0] == SEND and m[1] == d]
    out = n.msgs(n.wc(1), (M.LEASE_READY, lid, ADDR))
    assert out == [] and n.worker(1).lease_addr == ADDR



def test_a_dead_lease_given_back_or_never_granted_is_dropped_at_once():
    n, d, lid = leased_node()
    s = spec(max_retries=1)
    register(n, d, s, lid)
    n.msgs(d, (M.LEASE_RETURN, lid))            # given back; its call still runs
    out = n.exited(1)
    assert not [m for m in out if m[0] == SEND and m[1] == d]     # no revoke: nothing to return
    assert lid not in n.st.leases.leases
    n2 = Node().pool()
    d2 = n2.driver(info=LEASING)
    first = spec()
    n2.submit(d2, first)
    out = n2.done(1, first)
    assert [m for m in out if m[0] == SEND and m[2][0] == M.LEASE_SERVE]
    out = n2.exited(1)                          # dies while being granted
    assert not [m for m in out if m[0] == SEND and m[1] == d2]
    assert not n2.st.leases.leases


def test_force_cancel_charges_a_finished_call_whose_done_never_came():
    # (The worker sends a lease call's DIRECT_DONE before its result, so this
    # needs the DONE lost; the call ran: it is not run again for free.)
    n, d, lid = leased_node()
    t1, t2 = spec("t1", max_retries=0), spec("t2", max_retries=0)
    register(n, d, t1, lid)
    register(n, d, t2, lid)
    assert (D.KILL, 1) in n.msgs(d, (M.CANCEL, ret(t2), True, True))
    out = n.exited(1) + n.connect_all()
    assert not [m for m in out if m[0] == SEND and m[2][0] == M.EXECUTE]
    assert isinstance(n.error(ret(t1)), WorkerCrashedError)
    assert isinstance(n.error(ret(t2)), TaskCancelledError)


def test_a_child_submitted_before_its_parents_registration_is_still_its_child():
    n, d, lid = leased_node()
    parent, child = spec("parent"), spec("child")
    n.submit(n.wc(1), child)                    # the call submits before its registration came
    register(n, d, parent, lid)
    n.msgs(d, (M.CANCEL, ret(parent), False, True))
    c = n.st.tasks.tasks.get(child[S.TASK_ID])
    assert c is None or c.cancelled             # a recursive cancel reached it


def test_a_function_that_came_with_a_call_is_not_sent_again():
    n, d, lid = leased_node()
    other = spec("g", key=b"other-key-000000")
    register(n, d, other, lid)                  # its code came with the call
    direct_done(n, 1, other, d)
    assert b"other-key-000000" in n.worker(1).fn_keys
    n.msgs(d, (M.LEASE_RETURN, lid))
    again = spec("g", key=b"other-key-000000")
    n.msgs(d, (M.REGISTER_FN, b"other-key-000000", b"code"))
    assert (SEND, n.wc(1), execute(again, blob=None)) in n.submit(n.driver(), again)


def test_an_idle_lease_lent_while_its_worker_waits_counts_once():
    n, d, lid = leased_node()
    child = spec("child")
    n.submit(n.wc(1), child)
    n.get(n.wc(1), 7, [ret(child)])             # lent: the CPU is free here
    assert n.st.available_now()["CPU"] == 1.0   # not 2: an idle lease's CPU counted once


def test_a_task_submitted_after_its_parent_was_cancelled_recursively_is_cancelled():
    # (Not about leases: a cancel that overtakes the parent's later submits.)
    n = Node(num_cpus=2).pool()
    d = n.driver()
    parent = spec("parent")
    n.submit(d, parent)
    wid = n.st.tasks.tasks[parent[S.TASK_ID]].worker.wid
    first, late = spec("first"), spec("late")
    n.submit(n.wc(wid), first)
    n.msgs(d, (M.CANCEL, ret(parent), False, True))
    assert n.st.tasks.tasks[first[S.TASK_ID]].cancelled
    n.submit(n.wc(wid), late)                   # was on its way when the cancel came
    t = n.st.tasks.tasks.get(late[S.TASK_ID])
    assert t is None or t.cancelled
