"""Task output (OUTPUT messages) through the node's pure state: to the driver
of the job on this node, over a peer link to the node whose driver runs the
job (job ids carry their node's index), or to the node's log."""
from __future__ import annotations

from miniray import _protocol as P
from tests.unit.node_harness import D, E, M, SEND, Node, sends, spec

HEAD_ID = "head-node"
ME = "node-under-test"


def output(job, text="hello\n", *, stream=1, cont=False, name="f", pid=20_001, node=ME,
           ip="10.0.0.2", tid=None):
    return (M.OUTPUT, job, stream, text, cont, (name, pid, node, ip), tid)


def row(node_id, index, *, alive=True, is_head=False, address="10.0.0.9:1"):
    """A CLUSTER_VIEW row (``NodeInfo.row``)."""
    return (node_id, address, "10.0.0.9", {"CPU": 1.0}, {"CPU": 1.0}, alive, is_head, 0, index)


def joined(index=3, others=()):
    """A node (not the head) that registered with the head and got ``index``;
    the head's link is cid -1."""
    n = Node(num_cpus=1, head_address="10.0.0.1:6379", node_ip="10.0.0.2")
    view = [row(HEAD_ID, 0, is_head=True), row(ME, index), *others]
    n.msgs(-1, (M.PEER_WELCOME, {"node_id": HEAD_ID, "view": view, "index": index}))
    n.connect_all()
    return n


def welcome_job(out) -> int:
    return [ins for ins in out if ins[0] == D.WELCOME][0][2]["job_id"]


# -- job ids --------------------------------------------------------------------------------------

def test_jobs_of_a_lone_node_or_the_head_are_1_2_3():
    n = Node()
    assert [welcome_job(n.msgs(c, (M.HELLO, "driver", c, None, None))) for c in (5, 6, 7)] == \
        [1, 2, 3]


def test_the_head_numbers_nodes_as_they_register_and_tells_each_its_index():
    n = Node(is_head=True)
    for cid, index in ((-10, 1), (-11, 2)):
        out = n.msgs(cid, (M.HELLO, "node", 99, None, {"node_id": f"n{index}", "register": True,
                                                       "address": "a:1", "ip": "10.0.0.5",
                                                       "resources": {"CPU": 1.0}}))
        welcome = [m for m in sends(out, cid) if m[0] == M.PEER_WELCOME][0][1]
        assert welcome["index"] == index
        assert {r[0]: r[8] for r in welcome["view"]}[f"n{index}"] == index
    assert n.st.cluster.index == 0


def test_a_joined_node_makes_job_ids_from_its_index():
    n = joined(index=3)
    assert n.st.cluster.index == 3
    first = welcome_job(n.msgs(50, (M.HELLO, "driver", 50, None, None)))
    second = welcome_job(n.msgs(51, (M.HELLO, "driver", 51, None, None)))
    assert (first, second) == ((3 << 16) | 1, (3 << 16) | 2)


# -- on one node -----------------------------------------------------------------------------------

def test_output_goes_to_the_driver_of_its_job_only():
    n = Node().pool()
    d1, d2 = n.driver(), n.driver()
    msg1, msg2 = output(1, "one\n"), output(2, "two\n")
    assert n.msgs(n.wc(1), msg1, msg2) == [(SEND, d1, msg1), (SEND, d2, msg2)]


def test_output_before_task_done_reaches_the_driver_before_the_reply():
    n = Node().pool()
    d = n.driver()
    s = spec()
    n.submit(d, s)
    n.get(d, 7, [s[0] + b"\0\0"])
    msg = output(1, "printed\n", tid=s[0])
    out = n.msgs(n.wc(1), msg, (M.TASK_DONE, s[0], [(s[0] + b"\0\0", 0, b"v", ())], False, None))
    to_driver = sends(out, d)
    assert to_driver[0] == msg and to_driver[1][:3] == (M.REPLY, 7, True)


def test_output_of_a_gone_driver_or_unknown_job_goes_to_the_log():
    n = Node().pool()
    d = n.driver()
    n.handle((E.CLOSED, d))
    assert n.msgs(n.wc(1), output(1, "late\nlines\n", name="g", pid=42)) == []
    assert n.logs[-1].endswith("(g pid=42, ip=10.0.0.2) late\n(g pid=42, ip=10.0.0.2) lines")
    assert "job 1" in n.logs[-1]
    assert n.msgs(n.wc(1), output(9, "nobody\n", stream=2)) == []
    assert "stderr of job 9" in n.logs[-1] and n.logs[-1].endswith(") nobody")


def test_log_to_driver_false_keeps_that_jobs_output_in_the_log():
    n = Node().pool()
    quiet = n.msgs(5, (M.HELLO, "driver", 5, None, {"log_to_driver": False}))
    loud = n.driver()
    assert welcome_job(quiet) == 1
    assert n.msgs(n.wc(1), output(1, "quiet\n")) == []
    assert n.logs[-1].endswith(") quiet")
    msg = output(2, "loud\n")
    assert n.msgs(n.wc(1), msg) == [(SEND, loud, msg)]


def test_a_partial_line_keeps_its_continuation_flag_in_the_log():
    n = Node().pool()
    n.msgs(n.wc(1), output(5, "rest\nnext\n", cont=True))
    assert n.logs[-1].endswith(":\nrest\n(f pid=20001, ip=10.0.0.2) next")


def test_malformed_output_is_refused_and_the_node_goes_on():
    n = Node().pool()
    d = n.driver()
    out = n.msgs(n.wc(1), (M.OUTPUT, "job", 1, b"bytes", False, None, None), output(1))
    assert sends(out, n.wc(1))[0][0] == M.BAD_FRAME
    assert sends(out, d) == [output(1)]


# -- across nodes ----------------------------------------------------------------------------------

def test_output_of_another_nodes_job_goes_over_the_link_to_it():
    n = joined(index=3, others=[row("node-b", 4)])
    msg = output((4 << 16) | 2)
    out = n.msgs(n.wc(1), msg)
    # No link to node-b yet: one is opened, then the output follows the HELLO.
    connect = [ins for ins in out if ins[0] == D.CONNECT]
    assert len(connect) == 1 and connect[0][2] == "10.0.0.9:1"
    link = connect[0][1]
    assert [m[0] for m in sends(out, link)] == [M.HELLO, M.OUTPUT]
    assert sends(out, link)[1] == msg
    # The head's jobs go to the head over its link.
    head_job = output(1)
    assert n.msgs(n.wc(1), head_job) == [(SEND, -1, head_job)]


def test_output_from_a_peer_for_a_job_here_goes_to_its_driver():
    n = joined(index=3)
    n.msgs(50, (M.HELLO, "driver", 50, None, None))
    msg = output((3 << 16) | 1, node="node-b")
    assert n.msgs(-1, msg) == [(SEND, 50, msg)]


def test_output_for_a_dead_node_goes_to_the_log():
    n = joined(index=3, others=[row("node-b", 4, alive=False)])
    assert n.msgs(n.wc(1), output((4 << 16) | 1, "lost\n")) == []
    assert n.logs[-1].endswith(") lost")


def test_a_forwarded_tasks_output_goes_back_over_the_link_it_came_by():
    """Its RESULTS go back on that link: on the same link, the output comes
    first, so the driver's get returns after the print is shown."""
    n = joined(index=3, others=[row("node-a", 2)])
    peer = 77
    n.msgs(peer, (M.HELLO, "node", 5, None, {"node_id": "node-a", "register": False}))
    s = spec()
    n.msgs(peer, (M.FORWARD, s, {}, b"the pickled function", None))
    assert n.st.workers[1].task is not None
    msg = output((2 << 16) | 1, tid=s[0])
    out = n.msgs(n.wc(1), msg)
    assert out == [(SEND, peer, msg)]
    done = n.msgs(n.wc(1), (M.TASK_DONE, s[0], [(s[0] + b"\0\0", 0, b"v", ())], False, None))
    assert [m[0] for m in sends(done, peer)] == [M.RESULTS]


def test_output_of_a_nested_task_goes_to_the_drivers_node_not_its_parents():
    """A task that came from node-a runs here for a driver on node-b's job:
    the output goes to node-b (the job's node), not back to node-a."""
    n = joined(index=3, others=[row("node-a", 2), row("node-b", 4, address="b:1")])
    peer = 77
    n.msgs(peer, (M.HELLO, "node", 5, None, {"node_id": "node-a", "register": False}))
    s = spec(extra={"job_id": (4 << 16) | 1})
    n.msgs(peer, (M.FORWARD, s, {}, b"the pickled function", None))
    msg = output((4 << 16) | 1, tid=s[0])
    out = n.msgs(n.wc(1), msg)
    assert [ins[2] for ins in out if ins[0] == D.CONNECT] == ["b:1"]
    assert msg in sends(out)
    assert not sends(out, peer)


def test_protocol_tag():
    assert P.Msg.OUTPUT == 46 and P.M.OUTPUT == 46
