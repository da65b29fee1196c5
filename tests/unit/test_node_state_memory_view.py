"""What fills the store, as the node's pure state answers it: LIST_OBJECTS
and STORE_STATS (``_store_report``), the holder breakdown of each object
(refs by process, views, task arguments, containers, the node's own
pins), call sites (CALL_SITE) and the cluster-wide gather over peer links."""
from __future__ import annotations

from miniray import _protocol as P
from miniray._node_state import D, E

from .node_harness import SEND, VALUE, M, MiB, Node, Q, R, new_oid, ret, spec
from .cluster_harness import Net


def query(n, cid, what, arg=None, rid=77):
    """The payload of the REPLY to a QUERY."""
    out = n.msgs(cid, (M.QUERY, rid, what, arg))
    replies = [ins[2] for ins in out if ins[0] == SEND and ins[1] == cid and ins[2][1] == rid]
    assert len(replies) == 1, out
    _, _, ok, payload = replies[0]
    assert ok, payload
    return payload


def objects(n, cid, **arg) -> dict:
    """This node's objects by id."""
    report = query(n, cid, Q.LIST_OBJECTS, dict(arg, scope="node"))
    return {bytes.fromhex(o["object_id"]): o for o in report["objects"]}


def arena_put(n, cid, oid, size, rid=900, contained=()):
    out = n.msgs(cid, (M.ALLOC, rid, oid, size))
    assert out[-1][2][:3] == (M.REPLY, rid, True), out
    assert n.msgs(cid, (M.SEAL, oid, VALUE, True, list(contained))) == []


def pid_of(n, cid):
    return n.st.clients[cid].pid


# -- holders -----------------------------------------------------------------------------------

def test_a_put_is_held_by_the_driver_that_made_it():
    n = Node()
    d = n.driver()
    x = new_oid()
    n.put(d, x, b"12345")
    o = objects(n, d)[x]
    assert (o["size"], o["where"], o["state"], o["kind"]) == (5, "inline", "ready", "value")
    assert o["refs"] == [("driver", pid_of(n, d), None)]
    assert (o["views"], o["task_args"], o["contained_in"], o["kept"]) == ([], [], [], [])
    assert o["call_site"] is None and o["task_status"] == "FINISHED"


def test_arena_object_and_a_view_handed_to_another_process():
    n = Node()
    d, other = n.driver(), n.driver()
    x = new_oid()
    arena_put(n, d, x, 3 * MiB)
    n.msgs(other, (M.GET, 5, [x]))
    n.msgs(other, (M.GET, 6, [x]))
    o = objects(n, d)[x]
    assert (o["size"], o["where"]) == (3 * MiB, "shared_memory")
    assert o["refs"] == [("driver", pid_of(n, d), None)]
    assert o["views"] == [("driver", pid_of(n, other), None, 2)]
    n.decref(d, x)
    o = objects(n, d)[x]
    assert o["refs"] == [] and o["views"] == [("driver", pid_of(n, other), None, 2)]
    n.msgs(other, (M.REFS, [(R.UNPIN, x), (R.UNPIN, x)]))
    assert x not in objects(n, d)


def test_contained_object_names_its_container():
    n = Node()
    d = n.driver()
    inner, outer = new_oid(), new_oid()
    n.put(d, inner, b"inner")
    n.put(d, outer, b"outer", contained=[inner])
    n.decref(d, inner)
    seen = objects(n, d)
    assert seen[inner]["refs"] == [] and seen[inner]["contained_in"] == [outer.hex()]
    assert seen[inner]["kept"] == []
    assert seen[outer]["refs"] == [("driver", pid_of(n, d), None)]


def test_argument_of_a_running_task_and_the_worker_that_runs_it():
    n = Node().pool()
    d = n.driver()
    x = new_oid()
    arena_put(n, d, x, 2 * MiB)
    s = spec("work", deps=[x])
    n.submit(d, s)                          # dispatched: the worker gets a view of x
    w = n.wc(1)
    n.msgs(w, (M.REFS, [(R.INCREF, x)]))     # and the task keeps a ref of its own
    seen = objects(n, d)
    o = seen[x]
    wpid = pid_of(n, w)
    assert sorted(o["refs"], key=str) == sorted(
        [("driver", pid_of(n, d), None), ("worker", wpid, "work")], key=str)
    assert o["views"] == [("worker", wpid, "work", 1)]
    assert o["task_args"] == [("work", "running", s[0].hex(), "driver", pid_of(n, d), None)]
    r = seen[ret(s)]
    assert (r["state"], r["where"], r["task_status"], r["size"]) == (
        "pending", "pending", "RUNNING", 0)
    n.done(1, s)
    seen = objects(n, d)
    assert seen[x]["task_args"] == []
    assert seen[ret(s)]["task_status"] == "FINISHED" and seen[ret(s)]["where"] == "inline"


def test_waiting_task_argument_shows_the_task_status():
    n = Node().pool()
    d = n.driver()
    pending = new_oid()
    n.msgs(d, (M.REFS, [(R.INCREF, pending)]))       # a ref to an object not made yet
    s = spec("later", deps=[pending])
    n.submit(d, s)
    seen = objects(n, d)
    assert seen[pending]["task_args"][0][:2] == ("later", "waiting")
    assert seen[ret(s)]["task_status"] == "PENDING_ARGS_AVAIL"


def test_detached_actor_is_kept_by_the_node():
    n = Node().pool()
    d = n.driver()
    from .node_harness import init_spec
    init = init_spec(shape=())
    aid = init[11]
    n.create_actor(d, 3, init, lifetime="detached")
    o = objects(n, d)[aid]
    assert o["kind"] == "actor_handle" and o["where"] == "actor_handle"
    assert o["refs"] == [("driver", pid_of(n, d), None)]
    assert o["kept"] == ["detached actor"]


def test_largest_objects_first_and_the_limit():
    n = Node()
    d = n.driver()
    small, big = new_oid(), new_oid()
    n.put(d, small, b"s")
    arena_put(n, d, big, MiB)
    report = query(n, d, Q.LIST_OBJECTS, {"scope": "node", "limit": 1})
    assert report["total"] == 2
    assert [o["object_id"] for o in report["objects"]] == [big.hex()]


# -- store numbers -----------------------------------------------------------------------------

def test_store_stats_move_with_puts_and_frees():
    n = Node(arena_size=64 * MiB)
    d = n.driver()
    before = query(n, d, Q.STORE_STATS, {"scope": "node"})
    assert (before["used"], before["free"], before["capacity"]) == (0, 64 * MiB, 64 * MiB)
    assert (before["spilled"], before["num_objects"]) == (0, 0)
    x = new_oid()
    arena_put(n, d, x, 8 * MiB)
    n.put(d, new_oid(), b"tiny")
    after = query(n, d, Q.STORE_STATS, {"scope": "node"})
    assert after["used"] >= 8 * MiB and after["free"] == 64 * MiB - after["used"]
    assert after["num_objects"] == 2 and after["inline_bytes"] == 4
    n.decref(d, x)
    assert query(n, d, Q.STORE_STATS, {"scope": "node"})["used"] == 0


def test_a_lone_node_answers_for_itself():
    n = Node()
    d = n.driver()
    report = query(n, d, Q.STORE_STATS)
    assert report["missing"] == [] and [p["node_id"] for p in report["nodes"]] == [
        "node-under-test"]


# -- call sites ----------------------------------------------------------------------------------

def test_call_sites_are_kept_by_task_id_for_puts_and_task_returns():
    n = Node().pool()
    d = n.driver()
    x = new_oid()
    s = spec(num_returns=2)
    n.msgs(d, (M.CALL_SITE, x[:14], "driver.py:10"), (M.PUT_INLINE, x, VALUE, b"v", []))
    n.msgs(d, (M.CALL_SITE, s[0], "driver.py:11"), (M.SUBMIT, s))
    report = query(n, d, Q.LIST_OBJECTS, {"scope": "node"})
    sites = {bytes.fromhex(o["object_id"]): o["call_site"] for o in report["objects"]}
    assert sites == {x: "driver.py:10", ret(s, 0): "driver.py:11", ret(s, 1): "driver.py:11"}
    assert report["call_sites"] is True


def test_call_sites_of_freed_objects_are_pruned():
    n = Node()
    d = n.driver()
    for i in range(1100):
        x = new_oid()
        n.msgs(d, (M.CALL_SITE, x[:14], f"loop.py:{i}"), (M.PUT_INLINE, x, VALUE, b"v", []))
        n.decref(d, x)
    assert len(n.st.report.sites) <= 1025


def test_malformed_call_site_fails_alone():
    n = Node()
    d = n.driver()
    out = n.msgs(d, (M.CALL_SITE, "not bytes", 5))
    assert [m[0] for m in (ins[2] for ins in out if ins[0] == SEND)] == [M.BAD_FRAME]
    x = new_oid()
    n.put(d, x)
    assert objects(n, d)[x]["call_site"] is None


# -- across nodes -------------------------------------------------------------------------------

def _ask(net, name, cid, what, rid=41):
    net.msgs(name, cid, (M.QUERY, rid, what, {"scope": "cluster"}))
    got = [m for m in net.replies(name, cid) if m[0] == M.REPLY and m[1] == rid]
    return got


def test_every_node_answers_a_cluster_wide_query():
    net = Net()
    h = net.add("H", head=True)
    net.add("A")
    d = h.driver()
    x = new_oid()
    h.put(d, x, b"on the head")
    got = _ask(net, "H", d, Q.LIST_OBJECTS)
    assert len(got) == 1 and got[0][2] is True
    report = got[0][3]
    assert report["missing"] == []
    assert sorted(p["node_id"] for p in report["nodes"]) == ["A", "H"]
    head = next(p for p in report["nodes"] if p["node_id"] == "H")
    assert x.hex() in [o["object_id"] for o in head["objects"]]
    assert head["ip"] == "ip-H"


def test_a_node_that_does_not_answer_is_named_after_the_timeout():
    net = Net()
    h = net.add("H", head=True)
    net.add("A")
    d = h.driver()
    # The link to A swallows what it is sent (A hangs).
    for key, (peer, _) in list(net.wires.items()):
        if key[0] == "H" and peer == "A":
            net.wires[key] = ("nowhere", 0)
    net.msgs("H", d, (M.QUERY, 42, Q.STORE_STATS, None))
    assert [m for m in net.replies("H", d) if m[0] == M.REPLY] == []
    timers = [name for name in h.st.report.gathers]
    assert len(timers) == 1
    net.feed("H", (E.TIMER, timers[0], 10.0))
    (reply,) = [m for m in net.replies("H", d) if m[0] == M.REPLY]
    report = reply[3]
    assert [p["node_id"] for p in report["nodes"]] == ["H"]
    assert [m[0] for m in report["missing"]] == ["A"] and "no answer" in report["missing"][0][1]
    assert h.st.report.gathers == {}


def test_protocol_numbers_are_unique():
    # An IntEnum makes a repeated value an alias, silently.
    for enum_cls in (P.Msg, P.Query):
        values = [m.value for m in enum_cls.__members__.values()]
        assert len(values) == len(set(values)), enum_cls


def test_gather_timer_is_armed_only_when_nodes_are_asked():
    n = Node()
    d = n.driver()
    out = n.msgs(d, (M.QUERY, 9, Q.LIST_OBJECTS, {}))
    assert not [ins for ins in out if ins[0] == D.TIMER]
