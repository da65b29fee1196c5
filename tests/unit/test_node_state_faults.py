"""Faults in the node's pure state: workers crashing, connections closing,
frames that cannot be decoded or handled, shutdown.  The tests marked
``xfail(strict=True)`` pin bugs of the state machine (see their reasons):
each fails today and will XPASS, failing the suite, once the bug is fixed,
so its marker must then go."""
from __future__ import annotations

import fractions
import pickle

import pytest

from miniray import _protocol as P
from miniray import _task_spec as S
from miniray._node_state import D, E
from miniray.exceptions import (ActorDiedError, RaySystemError, TaskCancelledError,
                                WorkerCrashedError)

from .node_harness import (CLASS_BLOB, FN_BLOB, SEND, VALUE, M, Node, call_spec, error_results,
                           execute, init_spec, new_oid, ret, sends, spec, values)


# -- workers crashing --------------------------------------------------------------------------

def test_crashed_task_is_retried_on_another_worker_then_fails_worker_crashed():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    s = spec("fragile", max_retries=1)
    n.submit(d, s)
    first = n.st.tasks.tasks[s[S.TASK_ID]].worker.wid
    other = 3 - first
    n.get(d, 1, [ret(s)])
    assert n.exited(first) == [(D.CLOSE, n.wc(first)),
                               (SEND, n.wc(other), execute(s, blob=FN_BLOB))]
    assert n.st.tasks.tasks[s[S.TASK_ID]].retries_left == 0
    out = n.exited(other, "killed by SIGSEGV")
    assert [ins[:2] for ins in out] == [(D.CLOSE, n.wc(other)), (SEND, d)]
    assert out[1][2] == (M.REPLY, 1, True, [n.value(ret(s))])
    err = n.error(ret(s))
    assert isinstance(err, WorkerCrashedError)
    assert f"pid={20_000 + other}" in str(err) and "killed by SIGSEGV" in str(err)
    assert "'fragile'" in str(err) and "all 1 retries" in str(err)
    assert n.cpu() == 2.0 and not n.st.tasks.tasks


def test_crash_with_one_cpu_starts_a_worker_for_the_retry():
    n = Node().pool()
    d = n.driver()
    s = spec(max_retries=1)
    n.submit(d, s)
    assert n.exited(1) == [(D.CLOSE, n.wc(1)), (D.SPAWN, 2)]
    assert n.connect(2)[1:] == [(SEND, n.wc(2), execute(s, blob=FN_BLOB))]


def test_crashed_task_is_retried_before_the_tasks_queued_behind_it():
    n = Node().pool()
    d = n.driver()
    s, later = spec("crashes", max_retries=1), spec("later")
    n.submit(d, s)
    n.submit(d, later)
    assert n.exited(1) == [(D.CLOSE, n.wc(1)), (D.SPAWN, 2)]
    assert n.connect(2)[1:] == [(SEND, n.wc(2), execute(s))]


def test_crash_without_retries_fails_at_once():
    n = Node().pool()
    d = n.driver()
    s = spec(max_retries=0)
    n.submit(d, s)
    assert n.exited(1, "exited with code 3") == [(D.CLOSE, n.wc(1))]
    err = n.error(ret(s))
    assert isinstance(err, WorkerCrashedError) and "exited with code 3" in str(err)
    assert "retries failed" not in str(err)
    assert n.cpu() == 1.0 and n.st.workers == {}


def test_idle_worker_crash_only_closes_its_connection():
    n = Node().pool()
    d = n.driver()
    assert n.exited(1) == [(D.CLOSE, n.wc(1))]
    assert n.idle() == [] and n.wc(1) not in n.st.clients
    s = spec()
    assert n.submit(d, s) == [(D.SPAWN, 2)]                   # the pool grows back on demand


def test_worker_dying_before_hello_is_replaced_for_waiting_tasks():
    n = Node()
    d = n.driver()
    s = spec()
    assert n.submit(d, s) == []
    assert n.exited(1, "exited with code 1") == [(D.SPAWN, 2)]
    assert n.st.starting == 1


def test_crash_while_blocked_in_get_gives_the_lent_cpu_back_once():
    n = Node().pool()
    d = n.driver()
    outer, inner = spec("outer"), spec("inner")
    n.submit(d, outer)
    n.submit(n.wc(1), inner)
    assert n.get(n.wc(1), 1, [ret(inner)]) == [(D.SPAWN, 2)]
    assert n.exited(1) == [(D.CLOSE, n.wc(1))]
    assert isinstance(n.error(ret(outer)), WorkerCrashedError)
    assert n.cpu() == 1.0
    assert n.connect(2)[1:] == [(SEND, n.wc(2), execute(inner))]
    n.done(2, inner)
    assert n.cpu() == 1.0


def test_crashed_worker_gives_back_its_unsealed_ranges_and_views():
    n = Node().pool()
    d = n.driver()
    arg = new_oid()
    n.msgs(d, (M.ALLOC, 1, arg, 4000), (M.SEAL, arg, VALUE, True, []))
    s = spec(deps=[arg], max_retries=1)
    assert n.submit(d, s) == [(SEND, n.wc(1), execute(s, deps=[(VALUE, (0, 4000))]))]
    n.msgs(n.wc(1), (M.ALLOC, 2, ret(s), 10_000))
    assert n.st.table.alloc.used == 4032 + 10_048            # 64-byte aligned
    n.exited(1)
    assert n.st.table.alloc.used == 4032                     # the arg stays, pinned by s
    assert n.entry(arg).pins == 1 and n.entry(ret(s)).state == 0


# -- connections -------------------------------------------------------------------------------

def test_driver_hello_with_sys_path_tells_the_workers():
    n = Node(num_cpus=2).pool()
    out = n.msgs(5, (M.HELLO, "driver", 555, None, {"sys_path": ["/proj"]}))
    assert out[:2] == [(SEND, n.wc(1), (M.JOB, ["/proj"])), (SEND, n.wc(2), (M.JOB, ["/proj"]))]
    assert [ins[:2] for ins in out[2:]] == [(D.WELCOME, 5)]
    assert (out[2][2]["job_id"], out[2][2]["sys_path"]) == (1, ["/proj"])


def test_serializers_go_to_every_worker_and_to_later_ones_in_welcome():
    n = Node(num_cpus=2)
    d = n.driver()
    n.connect(1)
    assert n.msgs(d, (M.SERIALIZERS, b"registry")) == [
        (SEND, n.wc(1), (M.SERIALIZERS, b"registry"))]
    assert n.connect(2)[0][2]["serializers"] == b"registry"


def test_hello_from_an_unknown_worker_is_closed_and_the_rest_dropped():
    n = Node()
    x = new_oid()
    out = n.msgs(77, (M.HELLO, "worker", 1, 99, None), (M.PUT_INLINE, x, VALUE, b"x", []))
    assert [ins[:2] for ins in out] == [(D.WELCOME, 77), (D.CLOSE, 77)]
    assert n.entry(x) is None and 77 not in n.st.clients


def test_second_hello_for_a_connected_worker_is_closed():
    n = Node().pool()
    out = n.msgs(55, (M.HELLO, "worker", 1, 1, None))
    assert [ins[:2] for ins in out] == [(D.WELCOME, 55), (D.CLOSE, 55)]
    assert n.worker(1).client.cid == n.wc(1) and n.idle() == [1]


def test_closed_unknown_client_is_ignored():
    n = Node()
    assert n.handle((E.CLOSED, 12345)) == []


# -- shutdown ----------------------------------------------------------------------------------

def test_stop_tells_every_worker_to_exit_and_schedules_nothing_more():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    assert n.handle((E.STOP, "SIGTERM")) == [(SEND, n.wc(1), (M.EXIT, "node shutting down")),
                                             (SEND, n.wc(2), (M.EXIT, "node shutting down")),
                                             (D.STOP,)]
    assert n.submit(d, spec()) == []
    assert n.exited(1) == [(D.CLOSE, n.wc(1))]
    assert n.handle((E.STOP, "again")) == []


def test_shutdown_message_stops_the_node():
    n = Node().pool()
    d = n.driver()
    assert n.msgs(d, (M.SHUTDOWN,)) == [(SEND, n.wc(1), (M.EXIT, "node shutting down")),
                                        (D.STOP,)]


def test_the_driver_that_started_the_node_closing_stops_it():
    n = Node(owner_pid=4242).pool()
    other = n.driver(pid=777)
    owner = n.driver(pid=4242)
    assert n.handle((E.CLOSED, other)) == []
    assert n.handle((E.CLOSED, owner)) == [(SEND, n.wc(1), (M.EXIT, "node shutting down")),
                                           (D.STOP,)]


# -- frames that cannot be decoded or handled --------------------------------------------------

def _salvaged_frame(msg):
    """What ``decode_untrusted`` makes of a frame naming a class."""
    bad = P.decode_untrusted(pickle.dumps(msg, 5))
    assert bad[0] == M.BAD_FRAME and bad[2] is not None
    return bad


def test_submit_naming_a_class_fails_its_returns_and_the_node_keeps_working():
    n = Node().pool()
    d = n.driver()
    s = spec(num_returns=2, extra={"oops": fractions.Fraction(1, 3)})
    bad = _salvaged_frame((M.SUBMIT, s))
    out = n.msgs(d, bad, (M.GET, 1, [ret(s, 1)]))
    assert out == [(SEND, d, (M.REPLY, 1, True, [n.value(ret(s, 1))]))]
    for i in range(2):
        err = n.error(ret(s, i))
        assert type(err) is RaySystemError and str(err) == bad[1]
        assert "fractions.Fraction" in str(err)
    assert not n.st.tasks.tasks and n.idle() == [1]
    good = spec()
    assert n.submit(d, good) == [(SEND, n.wc(1), execute(good))]


def test_salvaged_request_gets_an_error_reply():
    n = Node()
    d = n.driver()
    bad = _salvaged_frame((M.GET, 12, [fractions.Fraction(1, 2)]))
    out = n.msgs(d, bad)
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][:3] == (M.REPLY, 12, False)
    assert type(out[0][2][3]) is RaySystemError and str(out[0][2][3]) == bad[1]


def test_salvaged_actor_create_gets_an_error_reply():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    bad = _salvaged_frame((M.ACTOR_CREATE, 3, init, {"meta": fractions.Fraction(1)}))
    out = n.msgs(d, bad)
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][:3] == (M.REPLY, 3, False)
    assert not n.st.actors.actors and n.idle() == [1]


def test_undecodable_frame_gets_a_notice():
    n = Node()
    d = n.driver()
    bad = P.decode_untrusted(b"\x80\x05garbage")
    assert bad[0] == M.BAD_FRAME and bad[2] is None
    out = n.msgs(d, bad)
    assert out == [(SEND, d, (M.BAD_FRAME, f"the node could not decode a message from this "
                                           f"process and ignored it: {bad[1]}"))]


def test_salvaged_submit_without_a_usable_spec_gets_a_notice():
    n = Node()
    d = n.driver()
    bad = _salvaged_frame((M.SUBMIT, fractions.Fraction(1, 3)))
    assert n.msgs(d, bad) == [(SEND, d, (M.BAD_FRAME, bad[1]))]


def test_unknown_tag_gets_a_notice_and_the_next_message_is_handled():
    n = Node()
    d = n.driver()
    x = new_oid()
    out = n.msgs(d, (99, "from the future"), (M.PUT_INLINE, x, VALUE, b"x", []))
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][0] == M.BAD_FRAME
    assert "unknown message tag 99" in out[0][2][1]
    assert n.entry(x) is not None
    assert not n.logs          # the sender's mistake, not the node's: no traceback logged


def test_malformed_get_fails_only_that_request():
    n = Node()
    d = n.driver()
    x = new_oid()
    n.put(d, x, b"x")
    out = n.msgs(d, (M.GET, 4, None), (M.GET, 5, [x]))
    assert [ins[:2] for ins in out] == [(SEND, d), (SEND, d)]
    assert out[0][2][:3] == (M.REPLY, 4, False)
    err = out[0][2][3]
    assert type(err) is RaySystemError
    assert str(err).startswith("the node could not handle a GET message: TypeError")
    assert out[1][2] == (M.REPLY, 5, True, [(VALUE, b"x")])
    assert "message GET from pid=10001 failed" in n.logs[-1] and "Traceback" in n.logs[-1]


def test_malformed_get_without_a_request_id_gets_a_notice():
    n = Node()
    d = n.driver()
    out = n.msgs(d, (M.GET, "not a rid", 5))
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][0] == M.BAD_FRAME
    assert "GET" in out[0][2][1]


def test_malformed_alloc_is_answered_with_an_error():
    n = Node()
    d = n.driver()
    out = n.msgs(d, (M.ALLOC, 6, new_oid(), "huge"))
    assert out[0][2][:3] == (M.REPLY, 6, False) and type(out[0][2][3]) is RaySystemError
    assert n.st.table.alloc.used == 0


@pytest.mark.parametrize("msg", [(M.REFS, None), (M.CANCEL, None, False), (M.SEAL,)])
def test_malformed_notices(msg):
    n = Node()
    d = n.driver()
    out = n.msgs(d, msg)
    assert [ins[:2] for ins in out] == [(SEND, d)] and out[0][2][0] == M.BAD_FRAME


def test_submit_whose_shape_is_malformed_fails_its_returns():
    n = Node().pool()
    d = n.driver()
    s = spec(shape=None)
    assert n.submit(d, s) == []
    err = n.error(ret(s))
    assert type(err) is RaySystemError and "SUBMIT" in str(err)
    assert not n.st.tasks.tasks and n.cpu() == 1.0


def test_duplicate_task_id_is_refused_and_the_first_task_runs_on():
    n = Node().pool()
    d = n.driver()
    s = spec()
    n.submit(d, s)
    assert n.submit(d, s) == []
    assert n.entry(ret(s)).state == 0
    n.get(d, 1, [ret(s)])
    assert n.done(1, s) == [(SEND, d, (M.REPLY, 1, True, [(VALUE, b"value")]))]


def test_task_done_for_an_unknown_task_is_ignored():
    n = Node().pool()
    assert n.done(1, spec()) == []
    assert n.idle() == [1]


# -- regressions: bugs these tests found, fixed ---------------------------------------------------------------

def test_idle_worker_whose_connection_closed_gets_no_task():
    n = Node().pool()
    d = n.driver()
    n.handle((E.CLOSED, n.wc(1)))       # the socket's EOF is read before the pidfd fires
    s = spec()
    out = n.submit(d, s)
    assert not [ins for ins in out if ins[:2] == (SEND, n.wc(1))]
    out += n.exited(1) + n.connect_all()
    assert (SEND, n.wc(2), execute(s)) in out


def test_get_whose_ready_object_is_freed_meanwhile_is_still_answered():
    n = Node().pool()
    d = n.driver()
    a = new_oid()
    n.put(d, a, b"a")
    s = spec()
    n.submit(d, s)
    assert n.get(d, 5, [a, ret(s)]) == []
    n.decref(d, a)
    out = n.done(1, s)
    assert not [msg for msg in sends(out) if msg[0] == M.BAD_FRAME]
    assert [msg[:2] for msg in sends(out, d)] == [(M.REPLY, 5)]
    assert not n.st.tasks.tasks


def test_submit_whose_deps_are_malformed_fails_its_returns():
    n = Node().pool()
    d = n.driver()
    s = list(spec())
    s[S.DEPS] = None
    s = tuple(s)
    n.submit(d, s)
    assert type(n.error(ret(s))) is RaySystemError
    assert not n.st.tasks.tasks


def test_first_writer_disconnecting_does_not_drop_the_retry_s_range():
    n = Node(num_cpus=2).pool()
    d = n.driver()
    s = spec(num_returns=2, max_retries=1, retry_exc=True)
    other = spec()
    n.submit(d, s)
    n.submit(d, other)
    a = n.st.tasks.tasks[s[S.TASK_ID]].worker.wid
    b = 3 - a
    n.msgs(n.wc(a), (M.ALLOC, 1, ret(s, 0), 1000))        # value 0 written, value 1 failed
    err = error_results(s, ValueError("unpicklable return"))
    out = n.handle((E.MESSAGES, n.wc(a), [(M.TASK_DONE, s[S.TASK_ID], err, True, None)]),
                   (E.MESSAGES, n.wc(b), [(M.TASK_DONE, other[S.TASK_ID], values(other),
                                           False, None)]))
    assert out == [(SEND, n.wc(b), execute(s, blob=None))]
    n.msgs(n.wc(b), (M.ALLOC, 2, ret(s, 0), 1000))
    n.handle((E.CLOSED, n.wc(a)))                          # e.g. reaped when idle
    n.done(b, s, [(ret(s, 0), VALUE, None, ()), (ret(s, 1), VALUE, b"v", ())])
    assert n.entry(ret(s, 0)).state == 2


def test_failed_constructor_releases_its_worker():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    n.create_actor(d, 1, init)
    out = n.init_done(1, init, ValueError("boom"))
    assert [ins for ins in out if ins == (D.KILL, 1) or
            (ins[:2] == (SEND, n.wc(1)) and ins[2][0] == M.EXIT)]
    n.exited(1, "exited with code 0")
    n.connect(2)
    assert n.handle((E.TIMER, "reap", 100.0)) == [(D.TIMER, 2.0, "reap")]


def test_actor_whose_new_worker_dies_before_hello_gets_another():
    n = Node().pool()
    d = n.driver()
    n.submit(d, spec("keeps worker 1 busy"))
    init = init_spec()
    aid = init[S.ACTOR_ID]
    assert n.create_actor(d, 1, init)[1:] == [(D.SPAWN, 2)]
    assert n.exited(2, "exited with code 1") == [(D.SPAWN, 3)]
    assert n.connect(3)[1:] == [(SEND, n.wc(3), execute(init, blob=CLASS_BLOB))]
    assert n.actor(aid).state == "starting"


def test_cancel_of_a_call_waiting_for_its_restart_retry():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init, max_restarts=1, max_task_retries=1)
    n.init_done(1, init)
    c = call_spec(aid, max_retries=1)
    n.call(d, c)
    n.connect(2)
    n.exited(1)
    n.msgs(d, (M.CANCEL, ret(c), False))
    assert isinstance(n.error(ret(c)), TaskCancelledError)
    n.connect(3)
    assert n.init_done(3, init) == []


def test_exiting_actor_that_crashes_is_not_restarted():
    n = Node().pool()
    d = n.driver()
    init = init_spec()
    aid = init[S.ACTOR_ID]
    n.create_actor(d, 1, init, max_restarts=1)
    n.init_done(1, init)
    n.connect(2)
    c = call_spec(aid, max_retries=0)
    n.call(d, c)
    assert n.decref(d, aid) == []                          # drains c first
    out = n.exited(1)
    assert isinstance(n.error(ret(c)), ActorDiedError)
    assert out == [(D.CLOSE, n.wc(1))]
    assert n.actor(aid).state == "dead"

