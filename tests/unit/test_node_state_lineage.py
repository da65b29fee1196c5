"""Lineage in the nodes' pure state: a task's result whose only copy was on
a node that died is made again by re-running the task (recursively for its
lost arguments) while retries remain; otherwise it becomes ObjectLostError
naming the object, the node and why.

Several ``NodeState``s are wired together by ``Net``, which does what their
servers and the network would: a CONNECT becomes a link whose SENDs arrive
as the peer's MESSAGES, a SEND_ARENA arrives as DATA_DONE where the peer
expected the bytes, a CLOSE or a dead node closes the other end, and a
SPAWN is a worker that connects at once and runs whatever it is sent
(``behave``: small values, "large" arena values, or a function).  No
process, thread or socket (the guard of ``conftest`` checks)."""
from __future__ import annotations

import collections

import pytest

from miniray import _task_spec as S
from miniray._node_state import D, E
from miniray._object_table import READY
from miniray.exceptions import ObjectLostError

from .node_harness import (CLASS_KEY, CPU1, FN_BLOB, SEND, VALUE, M, MiB, Node, R, actor_opts,
                           call_spec, decode, init_spec, new_oid, ret, returns, spec)

ON_B = (("B", 1.0), ("CPU", 1.0))       # only nodes with the custom resource "B"
LARGE = 4 * MiB


class Net:
    def __init__(self):
        self.nodes: dict[str, Node] = {}
        self.wires: dict = {}              # (node, cid) -> (peer node, peer cid)
        self.queue = collections.deque()   # (node, event) not delivered yet
        self.expect: set = set()           # (node, cid, oid): DATA goes into a range
        self.to_clients = collections.defaultdict(list)   # node -> [(cid, msg)]
        self.behave: dict = {}             # task name -> "large" | bytes | fn(spec) -> msgs
        self.held: dict = {}               # task name -> [(node, wcid, msg)] not run yet
        self.hold_names: set = set()
        self.ran: list = []                # (node, task name) in the order they ran
        self.cids = 5000
        self.rid = 900_000

    # -- nodes -------------------------------------------------------------------------------
    def add(self, name, *, head=False, num_cpus=1, resources=None) -> Node:
        n = Node(start=False, num_cpus=num_cpus, node_id=name, is_head=head,
                 head_address=None if head else "addr-H", node_ip=f"ip-{name}",
                 resources=resources or {})
        n.st.facts["peer_address"] = f"addr-{name}"
        self.nodes[name] = n
        self.feed(name, (E.START, 0.0))
        self.pump()
        return n

    def kill(self, name) -> None:
        """The node's process is gone: every link to it closes."""
        del self.nodes[name]
        for (a, cid), (b, pcid) in list(self.wires.items()):
            if b == name:
                del self.wires[(a, cid)]
                self.queue.append((a, (E.CLOSED, cid)))
            elif a == name:
                del self.wires[(a, cid)]
        self.pump()

    # -- delivery ----------------------------------------------------------------------------
    def feed(self, name, event) -> None:
        if name in self.nodes:
            self.route(name, self.nodes[name].handle(event))

    def pump(self, limit=10_000) -> None:
        while self.queue:
            limit -= 1
            assert limit > 0, "the nodes keep talking: a loop"
            name, event = self.queue.popleft()
            self.feed(name, event)

    def msgs(self, name, cid, *messages) -> None:
        self.feed(name, (E.MESSAGES, cid, list(messages)))
        self.pump()

    def route(self, name, out) -> None:
        for ins in out:
            tag = ins[0]
            if tag == SEND:
                to = self.wires.get((name, ins[1]))
                if to is not None:
                    self.queue.append((to[0], (E.MESSAGES, to[1], [ins[2]])))
                else:
                    self.to_clients[name].append((ins[1], ins[2]))
                    if ins[2][0] == M.EXECUTE:
                        self.execute(name, ins[1], ins[2])
            elif tag == D.CONNECT:
                peer = ins[2][len("addr-"):]
                if peer not in self.nodes:
                    self.queue.append((name, (E.CLOSED, ins[1])))
                    continue
                self.cids += 1
                self.wires[(name, ins[1])] = (peer, self.cids)
                self.wires[(peer, self.cids)] = (name, ins[1])
            elif tag == D.CLOSE:
                to = self.wires.pop((name, ins[1]), None)
                if to is not None:
                    self.wires.pop(to, None)
                    self.queue.append((to[0], (E.CLOSED, to[1])))
            elif tag == D.SPAWN:
                wid = ins[1]
                n = self.nodes[name]
                n.worker_cid[wid] = 1000 + wid
                self.queue.append((name, (E.SPAWNED, wid, 20_000 + wid)))
                self.queue.append((name, (E.MESSAGES, 1000 + wid,
                                          [(M.HELLO, "worker", 20_000 + wid, wid, None)])))
            elif tag == D.EXPECT_RAW:
                self.expect.add((name, ins[1], ins[2]))
            elif tag == D.SEND_ARENA:
                to = self.wires.get((name, ins[1]))
                if to is not None:
                    oid = ins[2][1]
                    wanted = (to[0], to[1], oid) in self.expect
                    self.expect.discard((to[0], to[1], oid))
                    self.queue.append((to[0], (E.MESSAGES, to[1], [(M.DATA_DONE, oid, wanted)])))

    def execute(self, name, wcid, msg) -> None:
        """A worker was sent a task: it runs it as ``behave`` says (or waits
        for ``release`` if its name is held)."""
        s = msg[1]
        if s[S.NAME] in self.hold_names:
            self.held.setdefault(s[S.NAME], []).append((name, wcid, msg))
            return
        self.ran.append((name, s[S.NAME]))
        tid = s[S.TASK_ID]
        out = []
        if s[S.METHOD] == "__init__":
            out.append((M.TASK_DONE, tid, [(None, VALUE, None, ())], False, None))
        else:
            how = self.behave.get(s[S.NAME], b"small value")
            if callable(how):
                out += how(s)
            else:
                results = []
                for oid in returns(s):
                    if how == "large":
                        self.rid += 1
                        out.append((M.ALLOC, self.rid, oid, LARGE))
                        results.append((oid, VALUE, None, ()))
                    else:
                        results.append((oid, VALUE, how, ()))
                out.append((M.TASK_DONE, tid, results, False, None))
        # The worker lets go of the zero-copy views of its arguments.
        unpins = [(R.UNPIN, oid) for oid, p in zip(s[S.DEPS], msg[3]) if type(p[1]) is tuple]
        if s[S.ARGS_OID] is not None:
            unpins.append((R.UNPIN, s[S.ARGS_OID]))
        if unpins:
            out.append((M.REFS, unpins))
        self.queue.append((name, (E.MESSAGES, wcid, out)))

    def release(self, task_name) -> None:
        self.hold_names.discard(task_name)
        for name, wcid, msg in self.held.pop(task_name, []):
            if name in self.nodes:
                self.execute(name, wcid, msg)
        self.pump()

    # -- looking -----------------------------------------------------------------------------
    def replies(self, name, cid) -> list:
        """The messages sent to client ``cid`` of ``name`` so far (and forget them)."""
        got = [m for c, m in self.to_clients[name] if c == cid]
        self.to_clients[name] = [(c, m) for c, m in self.to_clients[name] if c != cid]
        return got

    def entry(self, name, oid):
        return self.nodes[name].entry(oid)


def cluster(*others, head_resources=None) -> tuple:
    """A head "H" with a driver, and the named nodes (each has "B")."""
    net = Net()
    h = net.add("H", head=True, resources=head_resources)
    for name in others:
        net.add(name, resources={"B": 1})
    return net, h.driver()


def got_value(net, name, cid, rid):
    replies = [m for m in net.replies(name, cid) if m[0] == M.REPLY and m[1] == rid]
    assert len(replies) == 1, replies
    _, _, ok, payloads = replies[0]
    assert ok, payloads
    return payloads


def get_error(net, d, oid, rid=7):
    net.msgs("H", d, (M.GET, rid, [oid]))
    [(kind, data)] = got_value(net, "H", d, rid)
    err = decode(data)
    assert isinstance(err, ObjectLostError), err
    return str(err)


def unpin_views(net, name, cid, *oids):
    net.msgs(name, cid, (M.REFS, [(R.UNPIN, oid) for oid in oids]))


# -- keeping and dropping the lineage ----------------------------------------------------------

def test_a_remote_result_keeps_its_lineage_until_it_is_freed():
    net, d = cluster("B")
    f = spec("f", shape=ON_B, max_retries=2)
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
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
    net, d = cluster("B")
    f = spec("f", shape=ON_B, max_retries=2)
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
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
    # A driver on D got the ref (say, inside a value) and gets it: D pulls
    # from H, the owner, which pulls from B.  B dies before answering.
    dd = net.nodes["D"].driver()
    net.nodes["D"].st.cluster.learn_owners({ret(f): "H"})
    net.feed("D", (E.MESSAGES, dd, [(M.REFS, [(R.INCREF, ret(f))]), (M.GET, 3, [ret(f)])]))
    while net.queue and not net.entry("H", ret(f)).pulling:
        net.feed(*net.queue.popleft())
    assert net.entry("H", ret(f)).peer_waiters
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
    net, d = cluster("B")
    f = spec("f", shape=ON_B, max_retries=1, num_returns=2)
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
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
    net, d = cluster("B")
    f = spec("f", shape=ON_B, max_retries=1)
    net.behave["f"] = "large"
    net.msgs("H", d, (M.SUBMIT, f))
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
