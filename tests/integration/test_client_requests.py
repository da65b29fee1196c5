"""Requests of clients (drivers and workers) and what their replies pin.

A request (GET, WAIT, ALLOC, QUERY...) is a slot filled by whichever thread
reads its REPLY; an abandoned one (timeout, interrupt, a cancelled future)
tells the node with DROP_REQ, and every zero-copy view a reply handed out
is released exactly once, decoded or not.  An ALLOC abandoned before SEAL
gives its range back (ABORT_ALLOC).  A frame the node could not handle
comes back as BAD_FRAME, written to stderr; the connection stays up.
"""
from __future__ import annotations

import asyncio
import gc
import threading
import time

import numpy as np
import pytest

import miniray
from miniray._protocol import M
from miniray.exceptions import GetTimeoutError
from tests.conftest import node_stats as stats, object_info, run_driver, wait_for

pytestmark = pytest.mark.timeout(60)


def client():
    return miniray._runtime.current().client


@miniray.remote
def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


def test_reader_switch_while_a_get_leads_does_not_starve_queued_calls(ray_factory):
    """A thread leads the reads (blocked in a get); another thread then uses a
    future (the io thread is to lead from now on) and fires an actor call
    the first get depends on.  While the io thread waits for the lead it
    must keep flushing queued calls."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    class Flag:
        def __init__(self):
            self.value = False

        def set(self):
            self.value = True

        def get(self):
            return self.value

    @miniray.remote
    def wait_for_flag(flag):
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            if miniray.get(flag.get.remote()):
                return "seen"
            time.sleep(0.01)
        return "gave up"

    flag = Flag.remote()
    assert miniray.get(flag.get.remote(), timeout=20) is False
    ref = wait_for_flag.remote(flag)
    out = {}

    def leader():
        try:
            out["value"] = miniray.get(ref, timeout=8)
        except Exception as exc:      # noqa: BLE001
            out["value"] = exc
        out["at"] = time.monotonic()

    t = threading.Thread(target=leader, daemon=True)
    t.start()
    time.sleep(0.5)                     # the leader sleeps in recv by now
    assert miniray.put(1).future().result(timeout=5) == 1    # -> reader mode
    t0 = time.monotonic()
    flag.set.remote()                   # fire and forget (send_later)
    t.join(15)
    assert out.get("value") == "seen" and out["at"] - t0 < 3, (
        f"the queued flag.set call was not sent while another thread led the reads: "
        f"{out.get('value')!r} after {out.get('at', t0) - t0:.1f} s")


def test_timed_out_gets_leave_no_dropped_entries(ray_factory):
    """A timed-out GET leaves an entry in ``_dropped`` until the node's one
    reply to its DROP_REQ: a polling loop must not grow it without bound."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)
    c = client()
    r = sleep_return.remote(10, 1)
    before = len(c._dropped)
    for _ in range(300):
        with pytest.raises(GetTimeoutError):
            miniray.get(r, timeout=0)
    miniray.cancel(r)
    time.sleep(0.5)
    miniray.available_resources()       # a round trip: reads whatever the node sent
    assert len(c._dropped) - before < 10, f"{len(c._dropped) - before} entries left in _dropped"


def test_get_timeout_racing_its_reply_leaves_no_pin(ray_factory, monkeypatch):
    """A follower's get times out while the leader is about to dispatch its
    reply: when the reply wins the race, the get takes it (its zero-copy
    pin is released with the value).  The window is widened here by
    delaying ``_abandon``."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)
    c = client()

    @miniray.remote
    def late_big(delay):
        time.sleep(delay)
        return np.ones(50_000)                   # 400 KB: in the arena

    leader = threading.Thread(target=lambda: miniray.get(sleep_return.remote(3, 0)),
                              daemon=True)
    leader.start()
    time.sleep(0.3)                               # the leader reads the socket
    r = late_big.remote(0.3)
    oid = r.id
    orig = c._abandon

    def slow_abandon(rid, msg):
        time.sleep(0.8)                           # the reply is dispatched meanwhile
        orig(rid, msg)

    monkeypatch.setattr(c, "_abandon", slow_abandon)
    try:
        miniray.get(r, timeout=0.1)
    except GetTimeoutError:
        pass
    monkeypatch.undo()
    del r
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    leader.join(10)
    assert freed, f"object still in the store after its last ref was dropped: {object_info(oid)}"


def test_future_callback_on_broken_send_does_not_deadlock():
    """A failed send marks the client broken, which runs the pending
    futures' callbacks; a callback that calls miniray again must get
    NodeDiedError, not deadlock on the send lock.  ``shutdown(SHUT_WR)``
    makes the next send fail as it does when the node has just died."""
    try:
        proc = run_driver("""
            import socket, threading, time, miniray
            miniray.init(num_cpus=1, object_store_memory=64 * 2**20)

            @miniray.remote
            def slow():
                time.sleep(30)

            fut = slow.remote().future()
            fut.add_done_callback(lambda f: miniray.put(b"retry"))
            c = miniray._runtime.current().client
            time.sleep(0.5)
            c.sock.shutdown(socket.SHUT_WR)
            try:
                miniray.available_resources()
            except Exception as exc:
                print("raised", type(exc).__name__, flush=True)
        """, timeout=15)
    except Exception as exc:   # subprocess.TimeoutExpired
        pytest.fail(f"the driver deadlocked: {type(exc).__name__}")
    assert "raised NodeDiedError" in proc.stdout, proc.stdout + proc.stderr


def _fail_on_load():
    raise RuntimeError("this object cannot be loaded here")


class Unloadable:
    def __reduce__(self):
        return (_fail_on_load, ())


def test_failed_decode_in_get_list_releases_the_other_pins(ray_factory):
    """When one value of a multi-get fails to deserialize, the zero-copy
    payloads after it are not decoded: their pins are released all the
    same."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def make_bad():
        return Unloadable()

    @miniray.remote
    def make_big():
        return np.ones(100_000)                  # 800 KB: in the arena

    bad, big = make_bad.remote(), make_big.remote()
    miniray.wait([bad, big], num_returns=2, timeout=20)
    oid = big.id
    with pytest.raises(Exception, match="cannot be loaded"):
        miniray.get([bad, big], timeout=20)
    del bad, big
    gc.collect()
    freed = wait_for(lambda: object_info(oid) is None, 5)
    assert freed, f"object still in the store after its last ref was dropped: {object_info(oid)}"


def test_driver_with_many_open_files_can_get(cluster):
    """A driver with descriptors >= 1024 (FD_SETSIZE) open when it connects
    must be able to get, with and without a timeout: the reader polls, it
    never ``select``s."""
    _cli, env, _info = cluster
    import resource
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("the hard limit on open files is below 1200")
    proc = run_driver("""
        import os, resource, miniray
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        files = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
        miniray.init(address="auto")

        @miniray.remote
        def f():
            return 1
        for kw in ({}, {"timeout": 10}):
            try:
                print("get", miniray.get(f.remote(), **kw), flush=True)
            except Exception as exc:
                print("get failed", type(exc).__name__, exc, flush=True)
        miniray.shutdown()
    """, timeout=30, env=env)
    assert proc.stdout.count("get 1") == 2, proc.stdout + proc.stderr[-2000:]


def test_cancelled_future_drops_its_request(ray_factory):
    """``fut.cancel()`` on a ``ref.future()`` tells the node (DROP_REQ): the
    request is forgotten on both sides, not kept until the value comes."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)
    c = client()
    slow = sleep_return.remote(30, 0)
    before = set(c._pending)
    futs = [slow.future() for _ in range(20)]
    assert len(set(c._pending) - before) == 20
    assert all(f.cancel() for f in futs)
    assert set(c._pending) == before, "cancelled futures still wait for their reply"
    # The node answers each DROP_REQ once: then nothing is left to expect.
    assert wait_for(lambda: not c._dropped, 5), f"{len(c._dropped)} drops never answered"
    miniray.cancel(slow)


def test_cancelled_await_drops_its_request(ray_factory):
    """The same when a coroutine awaiting a ref is cancelled."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)
    c = client()
    slow = sleep_return.remote(30, 0)
    before = set(c._pending)

    async def main():
        tasks = [asyncio.ensure_future(_await(slow)) for _ in range(10)]
        await asyncio.sleep(0.2)
        assert len(set(c._pending) - before) == 10
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    assert wait_for(lambda: set(c._pending) == before and not c._dropped, 5), (
        f"pending {len(set(c._pending) - before)}, dropped {len(c._dropped)}")
    miniray.cancel(slow)


async def _await(ref):
    return await ref


def test_future_cancelled_as_its_value_arrives_leaves_no_pin(ray_factory):
    """Futures of an arena object cancelled about when the value arrives:
    whichever wins, the reply's pin is released."""
    ray_factory(num_cpus=2, object_store_memory=64 * 2**20)

    @miniray.remote
    def late_big(delay):
        time.sleep(delay)
        return np.ones(50_000)                   # 400 KB: in the arena

    for k in range(10):
        r = late_big.remote(0.05)
        futs = [r.future() for _ in range(3)]
        time.sleep(0.045 + 0.002 * k)
        cancelled = [f.cancel() for f in futs]    # (a loop variable would keep one alive)
        del futs, r, cancelled
    gc.collect()
    assert wait_for(lambda: stats()["arena_objects"] == 0, 5), stats()


def test_failed_arena_write_gives_the_range_back(ray_factory, monkeypatch):
    """A write that fails after ALLOC (a full tmpfs, a buffer that cannot be
    read): the put raises and the range is freed at once, not when this
    process disconnects."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)
    import miniray._serialization as ser

    def broken_write(*args, **kwargs):
        raise OSError("simulated failure while writing into the arena")
    monkeypatch.setattr(ser, "write_to", broken_write)
    with pytest.raises(OSError, match="simulated failure"):
        miniray.put(np.ones(200_000))            # 1.6 MB: ALLOC, write, SEAL
    monkeypatch.undo()
    assert stats()["arena_objects"] == 0, stats()
    r = miniray.put(np.ones(200_000))            # the store still works
    assert miniray.get(r).sum() == 200_000


class _NotForTheNode:
    pass


def test_bad_frame_is_reported_and_the_connection_stays_up(ray_factory, capfd):
    """A frame the node cannot handle (here: it names a Python class, which
    daemons never unpickle) comes back as BAD_FRAME: written to stderr with
    a ``miniray:`` prefix, and the connection keeps working."""
    ray_factory(num_cpus=1, object_store_memory=64 * 2**20)
    client().send((M.REGISTER_FN, _NotForTheNode(), b""))
    assert miniray.get(sleep_return.remote(0, 5), timeout=10) == 5
    err = capfd.readouterr().err        # BAD_FRAME came before the get's reply
    assert "miniray: " in err and "_NotForTheNode" in err, err
