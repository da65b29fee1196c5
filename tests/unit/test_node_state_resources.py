"""Resources in the node's pure state: custom resources, GPUs (ids handed
out with EXECUTE, whole GPUs exclusive, fractions packed on one id), and
GPU work kept out of CPU workers' processes."""
from __future__ import annotations

from miniray import _task_spec as S
from miniray._node_state import D

from .node_harness import SEND, M, Node, Q, call_spec, execute, init_spec, ret, spec

GPU1 = (("CPU", 1.0), ("GPU", 1.0))


def gpu_execute(s, ids, **kw):
    return execute(s, **kw) + ({"GPU": ids},)


def test_custom_resources_limit_concurrency():
    n = Node(num_cpus=4, resources={"lock": 1}).pool()
    d = n.driver()
    shape = (("CPU", 1.0), ("lock", 1.0))
    a, b = spec("a", shape=shape), spec("b", shape=shape)
    assert n.submit(d, a) == [(SEND, n.wc(4), execute(a))]
    assert n.submit(d, b) == []
    assert n.done(4, a) == [(SEND, n.wc(4), execute(b, blob=None))]
    out = n.msgs(d, (M.QUERY, 1, Q.CLUSTER_RESOURCES, None))
    assert out == [(SEND, d, (M.REPLY, 1, True, {"CPU": 4.0, "lock": 1.0,
                                                 "node:127.0.0.1": 1.0}))]


def test_gpu_tasks_get_distinct_whole_gpus():
    n = Node(num_cpus=3, num_gpus=2).pool()
    d = n.driver()
    g1, g2, g3 = spec("g1", shape=GPU1), spec("g2", shape=GPU1), spec("g3", shape=GPU1)
    assert n.submit(d, g1) == [(SEND, n.wc(3), gpu_execute(g1, (0,)))]
    assert n.submit(d, g2) == [(SEND, n.wc(2), gpu_execute(g2, (1,)))]
    assert n.submit(d, g3) == []                            # a CPU is free, no GPU is
    assert n.done(2, g2) == [(SEND, n.wc(2), gpu_execute(g3, (1,), blob=None))]
    assert n.st.resources.gpu_left == [0.0, 0.0]


def test_fractional_gpus_are_packed_on_one_id():
    n = Node(num_cpus=3, num_gpus=2).pool()
    d = n.driver()
    half = (("GPU", 0.5),)
    h = [spec(f"h{i}", shape=half) for i in range(3)]
    assert n.submit(d, h[0]) == [(SEND, n.wc(3), gpu_execute(h[0], (0,)))]
    assert n.submit(d, h[1]) == [(SEND, n.wc(2), gpu_execute(h[1], (0,)))]
    assert n.submit(d, h[2]) == [(SEND, n.wc(1), gpu_execute(h[2], (1,)))]
    n.done(3, h[0])
    assert n.st.resources.gpu_left == [0.5, 0.5]


def test_gpu_worker_is_not_reused_for_cpu_work():
    n = Node(num_cpus=2, num_gpus=1).pool()
    d = n.driver()
    g, c = spec("g", shape=GPU1), spec("c")
    assert n.submit(d, g) == [(SEND, n.wc(2), gpu_execute(g, (0,)))]
    assert n.done(2, g) == []
    assert n.idle() == [1, 2] and n.worker(2).kind == "gpu"
    assert n.submit(d, c) == [(SEND, n.wc(1), execute(c))]   # not the GPU worker
    c2 = spec("c2")
    assert n.submit(d, c2) == [(D.SPAWN, 3)]                 # a CPU is free: a new worker


def test_gpu_actor_holds_its_gpu_ids_for_its_calls_and_gives_them_back():
    n = Node(num_cpus=1, num_gpus=1).pool()
    d = n.driver()
    init = init_spec(shape=(("GPU", 1.0),))
    aid = init[S.ACTOR_ID]
    out = n.create_actor(d, 1, init)
    assert out[1:] == [(D.SPAWN, 2), (SEND, n.wc(1), gpu_execute(init, (0,),
                                                                 blob=b"the pickled actor class"))]
    n.init_done(1, init)
    c = call_spec(aid)
    assert n.call(d, c) == [(SEND, n.wc(1), gpu_execute(c, (0,), blob=None))]
    g = spec("g", shape=GPU1)
    assert n.submit(d, g) == []                              # the actor holds the GPU
    n.connect(2)
    # The GPU is free the moment the actor is dead (before its process is reaped).
    assert n.msgs(d, (M.ACTOR_KILL, aid, True)) == [
        (D.KILL, 1), (SEND, n.wc(2), gpu_execute(g, (0,)))]
    assert n.entry(ret(c)).state == 2
    assert n.exited(1) == [(D.CLOSE, n.wc(1))]
