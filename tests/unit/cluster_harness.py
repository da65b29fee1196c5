"""Several nodes' pure states wired together, for unit tests of the
cluster: no process, thread or socket.

``Net`` does what the nodes' servers and the network would: a CONNECT
becomes a link whose SENDs arrive as the peer's MESSAGES, a SEND_ARENA
arrives as DATA_DONE where the peer expected the bytes, a CLOSE or a dead
node closes the other end, and a SPAWN is a worker that connects at once and
runs whatever it is sent (``behave``: small values, "large" arena values, or
a function).  ``log`` keeps every event and instruction in order."""
from __future__ import annotations

import collections

from miniray import _task_spec as S
from miniray._node_state import D, E
from miniray.exceptions import ObjectLostError

from .node_harness import SEND, VALUE, M, MiB, Node, R, decode, returns

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
        self.log: list = []                # (node, "event" | "do", what), in order

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
            self.log.append((name, "event", event))
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
            self.log.append((name, "do", ins))
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
                self.queue.append((name, (E.SENT, [ins[2][1]])))     # its bytes are out

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
