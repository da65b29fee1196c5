"""Worker process entry: runs tasks, or one actor, for its node.

    node ── EXECUTE ──► SocketReader.read ──► on_push ──► queue ──► main thread runs the task
    node ◄─ TASK_DONE ───────────────────────────────────────────────┘ (results inline,
                                                                  or written to the arena)

The main thread, waiting for work, reads the socket itself (leader/follower,
see ``_client_reader``); for async and threaded actors the io thread reads.

The main thread runs plain tasks and sync actor calls one at a time.  An
actor's calls go through its ``_actor_runtime.ActorRuntime``: a threaded
actor (max_concurrency > 1, or concurrency groups) runs them on thread
pools, an async actor on event loop threads; their results go out from
those threads (``CoreClient.send`` is thread-safe).

EXECUTE is ``(EXECUTE, spec, blob, deps, args)``, plus a sixth field
``{"GPU": (ids...)}`` when the task or actor holds GPUs.  A task or actor
creation sees those ids as CUDA_VISIBLE_DEVICES and ``get_gpu_ids()``
(``WorkerState.gpu_ids``) while it runs; an actor keeps them for its life.
On a node with GPUs, a task that holds none sees CUDA_VISIBLE_DEVICES=""
(as in Ray); on a node without, the variable is left alone.

Cancels: ``CANCEL_TASK`` interrupts the main thread with SIGINT (the node
also pokes a busy worker with SIGUSR1 so that it reads the message at all).
SIGINT goes through the client's interrupt gate (``_client_gate``): inside
the task's own code it raises KeyboardInterrupt at once, as in Ray (so an
``except Exception`` in the task does not swallow it), even in a sleep in C
code; while the runtime decodes the task's arguments, imports its function,
or packs and sends its results, it waits for the gate to open.  The caller
of a cancelled task gets TaskCancelledError.

Output: ``sys.stdout`` / ``sys.stderr`` are ``_task_output.TaskOutput``
streams: what a task prints goes to the node as OUTPUT messages (whole
lines, before the task's TASK_DONE) and on to the driver of its job, which
shows it prefixed ``(task_name pid=N)`` as Ray does (``, ip=X`` from
another node).  Output outside any task goes to the node's log.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections import deque

from . import _client_gate
from . import _protocol as P
from . import _serialization as ser
from . import _task_spec as S
from ._actor_runtime import ActorRuntime
from ._runtime import job_of
from ._task_output import STDERR, STDOUT, TaskOutput
from ._client_gate import gate as _gate
from ._task_kind import TaskKind, kind_of
from .exceptions import ActorExit, RayTaskError, TaskCancelledError, SerializationError

M = P.M
VALUE, ERROR = P.K.VALUE, P.K.ERROR
_TASK, _CREATE, _CALL = TaskKind.TASK, TaskKind.ACTOR_CREATE, TaskKind.ACTOR_CALL
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
# Ray's switch for leaving CUDA_VISIBLE_DEVICES alone (the ids are still
# assigned and returned by get_gpu_ids).
NOSET_CUDA_VISIBLE_DEVICES = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


class WorkerState:
    """What this worker is doing: read by get_runtime_context, get_gpu_ids,
    exit_actor and prints."""

    def __init__(self):
        self.local = threading.local()
        self.actor_id = None
        self.actor_name = None
        self.actor_spec = None      # the actor's creation spec
        self.actor_is_async = False
        self.instance = None
        self.functions = {}
        self.gpu_ids = []           # GPU ids of the running task, or of the actor
        self.current_tid = None     # the task running on the main thread
        self.main_spec = None       # its spec (a thread it started prints in its job)
        self.cancel_tid = None      # its cancel, set just before the SIGINT
        self.cancelled = set()      # ids of tasks cancelled (acted on once)
        self.exit_requested = False     # exit_actor() was called
        self.on_exit_request = None     # what else exit_actor() must trigger (async actors)

    def request_exit(self):
        """``exit_actor()``: the actor ends after the current call (see
        ``_actor_runtime``)."""
        self.exit_requested = True
        hook = self.on_exit_request
        if hook is not None:
            hook()

    def task_name(self):
        name = getattr(self.local, "name", None)
        return name or self.actor_name or "worker"

    def current_spec(self):
        return getattr(self.local, "spec", None)

    def output_context(self):
        """(job, name, task id) of what prints on this thread: its task, else
        the actor, else the task on the main thread; job 0 outside any
        (see ``_task_output``)."""
        local = self.local
        spec = getattr(local, "spec", None)
        if spec is not None:
            return job_of(spec, self.actor_spec), local.name or "worker", spec[S.TASK_ID]
        spec = self.actor_spec
        if spec is not None:
            return job_of(spec), self.actor_name or "worker", None
        spec = self.main_spec
        if spec is not None:
            return job_of(spec), spec[S.NAME], spec[S.TASK_ID]
        return 0, "worker", None


class Worker:
    def __init__(self):
        from . import _runtime
        self.state = WorkerState()
        self.queue = deque()        # messages for the main thread
        self.main_ident = threading.get_ident()
        self.actor = None           # the ActorRuntime, once an actor's creation arrives
        self.client = None
        # Direct calls (``_direct_server``): (spec, connection) in arrival
        # order, and the connection each running one answers on.
        self.direct = None
        self.direct_q = deque()
        self.direct_replies = {}
        # GPU ids are positions in the CUDA_VISIBLE_DEVICES the node was
        # started with, if any (Ray maps them the same way).
        visible = os.environ.get(CUDA_VISIBLE_DEVICES)
        self.visible_gpus = visible.split(",") if visible else None
        _die_with_parent()
        # The node pokes a busy worker with SIGUSR1 when it sends CANCEL_TASK
        # (nobody reads the socket while the main thread runs a task).
        signal.signal(signal.SIGUSR1, self._on_poke)
        _client_gate.install(self._deliver_sigint)
        self.runtime = _runtime.connect_worker(self.state, self.on_push)
        self.client = self.runtime.client
        self.node_has_gpus = bool((self.client.welcome.get("resources") or {}).get("GPU"))
        source = (os.getpid(), self.client.node_id, self.runtime.node_ip)
        context, send = self.state.output_context, self.client.send_nowait
        sys.stdout = self.stdout = TaskOutput(sys.stdout, STDOUT, context, send, source)
        sys.stderr = self.stderr = TaskOutput(sys.stderr, STDERR, context, send, source)

    # -- messages from the reader thread -------------------------------------------
    def on_push(self, msg):
        tag = msg[0]
        if tag == M.CANCEL_TASK:
            tid = msg[1]
            st = self.state
            if tid in st.cancelled:      # a repeated delivery: act once
                return
            st.cancelled.add(tid)
            if self.actor is not None and self.actor.cancel(tid):
                pass                 # an async actor's call: its asyncio task is cancelled
            elif st.current_tid == tid:
                st.cancel_tid = tid
                signal.pthread_kill(self.main_ident, signal.SIGINT)
            return
        if tag == M.REVOKE:
            self.revoke(msg[1])
            return
        if tag == M.JOB:
            missing = [p for p in msg[1] if p not in sys.path]
            sys.path[0:0] = missing
            return
        if tag == M.EXIT:
            # The actor is over for the node: calls straight from callers
            # no longer run (the node fails them; their channels break).
            # ``stopped`` first: a read in progress drops what it takes.
            if self.direct is not None:
                self.direct.stopped = True
            self.direct_q.clear()
            self.queue.append(msg)
            if self.direct is not None:
                self.direct.wake_main()
            if msg[1] == "node connection lost":
                os._exit(1)
            return
        self.queue.append(msg)
        if self.direct is not None:
            self.direct.wake_main()     # (when it waits on callers alone: side_poll)

    def revoke(self, tids) -> None:
        """REVOKE: the node takes back tasks it sent to run after the
        current one (its task blocks in get/wait: see ``_node_tasks``).
        Those not started are dropped here and named in REVOKED; the node
        queues them again.  Runs wherever messages are read (the thread
        that leads the reads, or the poke handler): ``send_nowait``."""
        wanted = set(tids)
        back = []
        for msg in list(self.queue):
            if msg[0] == M.EXECUTE and msg[1][S.TASK_ID] in wanted:
                try:
                    self.queue.remove(msg)
                except ValueError:      # the main thread took it meanwhile: it runs here
                    continue
                if msg[2] is not None:  # the function came with it: later EXECUTEs omit it
                    self.state.functions.setdefault(msg[1][S.FN_KEY], _LazyFunction(msg[2]))
                back.append(msg[1][S.TASK_ID])
        self.client.send_nowait((M.REVOKED, back))

    def _on_poke(self, signum, frame):
        if self.client is not None:
            self.client.poll_now()

    def _deliver_sigint(self, signum, frame):
        """What a SIGINT let through the gate does: cancel the task running
        on the main thread, if that is the one to cancel (else nothing:
        the task ended meanwhile)."""
        st = self.state
        tid = st.cancel_tid
        if tid is not None and tid == st.current_tid:
            st.cancel_tid = None
            # No local holds the exception: a frame <-> traceback cycle
            # would keep the task's arguments alive until a GC pass.
            raise KeyboardInterrupt(f"task {tid.hex()} was cancelled (miniray.cancel)")

    # -- the loop ------------------------------------------------------------------
    def run(self):
        queue = self.queue
        direct_q = self.direct_q
        has_work = lambda: queue or direct_q      # noqa: E731
        wait_until = self.client.wait_until
        before_node = None      # direct calls to run before the node's message at the head
        while True:
            if queue and before_node is None and self.direct is not None and \
                    self.actor is not None:
                # A message from the node waits: the direct calls read by now
                # go first (a caller's earlier calls run before its later
                # call through the node), then it; later ones wait their
                # turn (a caller that keeps the actor busy starves no one).
                self.direct.flush()
                self.direct.drain()
                before_node = len(direct_q)
            if direct_q and (before_node is None or before_node > 0):
                if before_node is not None:
                    before_node -= 1
                try:
                    call = direct_q.popleft()
                except IndexError:      # an EXIT read on another thread emptied it
                    continue
                self.run_direct(*call)
                continue
            if not queue:
                if self.direct is not None:
                    self.direct.flush()     # results of a burst
                # No task runs: a SIGINT has nothing to cancel, so the wait
                # need not be interruptible (and skips a poll per task).
                wait_until(has_work, interruptible=False, extra=self.direct)
                if not (queue or direct_q):   # the connection closed: this process is ending
                    break
                continue
            before_node = None
            msg = queue.popleft()
            if msg[0] == M.EXIT:
                break
            if msg[0] == M.LEASE_SERVE:
                self.serve_lease(msg[1])
                continue
            if msg[0] == M.EXECUTE:
                spec, blob, deps, args = msg[1], msg[2], msg[3], msg[4]
                if blob is not None:    # (a function loaded already keeps its module state)
                    self.state.functions.setdefault(spec[S.FN_KEY], _LazyFunction(blob))
                if kind_of(spec) == _CALL:
                    self.actor.dispatch(spec, deps, args)
                else:
                    self.assign_gpus(msg[5] if len(msg) > 5 else None)
                    self.execute(spec, deps, args)
        self.shutdown()

    def run_direct(self, spec, conn) -> None:
        """A call that came straight from its caller: run, answer on ``conn``."""
        self.direct_replies[spec[S.TASK_ID]] = conn
        if self.actor is not None:
            self.actor.dispatch(spec, (), spec[S.ARGS])
        elif spec[S.ACTOR_ID] is None:
            self.assign_gpus(None)
            self.execute(spec, (), spec[S.ARGS])
        else:       # an actor call sent to a worker that no longer is that actor's
            self.fail_call(spec, RuntimeError(
                "this actor call reached a worker that no longer runs its actor (the actor "
                "was replaced); call the method again on the actor handle"))

    def learn_function(self, spec, blob) -> None:
        """(the direct server's reads) A leased worker's first call of a
        function brings its code."""
        self.state.functions.setdefault(spec[S.FN_KEY], _LazyFunction(blob))

    def serve_direct(self) -> None:
        """Once the constructor is done: take calls straight from callers,
        if this actor runs one call at a time."""
        if self.direct is not None:
            # It served leases before it became this actor: those callers
            # are gone (it was idle); its callers now find it by actor id.
            self.client.on_quiet = None
            self.direct.close()
            self.direct = None
        if self.actor.threaded or os.environ.get("MINIRAY_DIRECT_CALLS", "1") == "0":
            return
        self._start_direct(self.state.actor_id, f"actor {self.state.actor_name}")

    def serve_lease(self, lid) -> None:
        """LEASE_SERVE: take a driver's tasks straight from it (the node
        leased this idle worker to it); LEASE_READY says where."""
        if self.direct is None:
            self._start_direct(os.urandom(16), "this worker")
        addr = self.direct.address if self.direct is not None else None
        self.client.send((M.LEASE_READY, lid, addr))

    def _start_direct(self, name, who) -> None:
        from ._direct_server import DirectServer
        client = self.client
        try:
            self.direct = DirectServer(self, name, client.token, client.node_id)
        except OSError as exc:      # e.g. a stale process of the same actor still bound
            print(f"miniray: {who} takes its calls through the node only ({exc})",
                  file=sys.stderr)
            return
        client.on_quiet = self.direct.while_busy

    def assign_gpus(self, resources) -> None:
        """The GPU ids of the task or actor about to start, from EXECUTE's
        sixth field: ``get_gpu_ids()`` returns them, and its code sees them
        as CUDA_VISIBLE_DEVICES (set before an actor's constructor runs)."""
        ids = resources.get("GPU") if resources else None
        if not ids and not self.node_has_gpus:
            return
        visible = self.visible_gpus
        if visible is not None:
            gpu_ids = [visible[i] if i < len(visible) else str(i) for i in ids or ()]
        else:
            gpu_ids = list(ids or ())
        self.state.gpu_ids = gpu_ids
        if not os.environ.get(NOSET_CUDA_VISIBLE_DEVICES):
            value = ",".join(map(str, gpu_ids))
            if os.environ.get(CUDA_VISIBLE_DEVICES) != value:
                os.environ[CUDA_VISIBLE_DEVICES] = value

    def shutdown(self):
        if self.direct is not None:
            self.direct.close()
        if self.actor is not None:
            self.actor.shutdown()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass

    # -- running a task ---------------------------------------------------------------
    def resolve_args(self, spec, deps, args):
        """The call's arguments.  Decoding makes pins and may import numpy
        or user modules: in the gate, so a cancel waits it out.  If one
        fails to decode, the views of those after it are released.  Arrays
        come 64-byte aligned, as in Ray (those of inline payloads are
        copied to be; see ``_serialization._aligned``)."""
        client = self.client
        decode = client.decode
        loads_from = ser.loads_from
        inline = type(args) is bytes
        payloads = list(zip(spec[S.DEPS], deps))
        if not inline:
            payloads.insert(0, (spec[S.ARGS_OID], args))
        with _gate:
            i = -1
            try:
                if inline:
                    args_list, kwargs, positions = loads_from(args, aligned=True)
                values = []
                for i, (oid, (kind, data)) in enumerate(payloads):
                    # An inline payload needs no pin: what decode would do, aligned.
                    values.append(loads_from(data, aligned=True) if type(data) is bytes
                                  else decode(oid, kind, data))
            except BaseException:
                client.release_payloads(payloads[i + 1:])
                raise
        if not inline:
            args_list, kwargs, positions = values.pop(0)
        for pos, value in zip(positions, values):
            if type(pos) is int:
                args_list[pos] = value
            else:
                kwargs[pos] = value
        return args_list, kwargs

    def execute(self, spec, deps, args, *, on_main=True):
        """Run one task or sync actor call and send its TASK_DONE.

        All of it runs in the interrupt gate but the task's own code: a
        cancel lands in the user's function, or waits (decoding the args,
        loading the function, packing and sending the results are never cut
        short); one that comes after the function returned is ignored."""
        st = self.state
        tid = spec[S.TASK_ID]
        name = spec[S.NAME]
        kind = kind_of(spec)
        local = st.local
        with _gate:
            local.name, local.spec = name, spec
            if on_main:
                st.current_tid = tid
                st.main_spec = spec
            retryable = False
            note = None
            try:
                if tid in st.cancelled:          # cancelled before it could start
                    raise TaskCancelledError(tid.hex())
                if kind == _TASK:
                    # A pooled worker runs each task in its job's namespace.
                    extra = spec[S.EXTRA]
                    self.runtime.namespace = extra.get("namespace") if extra else None
                if kind == _CREATE:
                    self.actor = ActorRuntime(self, spec)
                args_list, kwargs = self.resolve_args(spec, deps, args)
                if kind == _CREATE:
                    self.actor.construct(spec, args_list, kwargs)
                    results = [(None, VALUE, None, ())]
                else:
                    fn = self.target(spec)
                    value = _gate.interruptible(self.call, fn, args_list, kwargs)
                    del args_list, kwargs
                    results = self.pack_results(spec, value)
            except BaseException as exc:
                if kind is not _TASK:
                    if isinstance(exc, ActorExit):       # exit_actor(): never returns
                        self.actor.exit_by_request(spec)
                    if isinstance(exc, SystemExit):      # as in Ray, the process exits
                        self.actor.crash(spec, exc)
                results, retryable, note = self.failed(spec, kind, exc)
            finally:
                if on_main:
                    st.current_tid = st.main_spec = None
                    if st.cancel_tid == tid:
                        st.cancel_tid = None
                local.name = local.spec = None
            if st.exit_requested and kind is not _TASK:
                # exit_actor() was called, and the exception it raised caught.
                self.actor.exit_by_request(spec)
            if kind == _CREATE and results[0][1] == ERROR:
                results = [(None, ERROR, results[0][2], ())]
            self.finish(tid, results, retryable, note)
            if kind == _CREATE and results[0][1] != ERROR:
                self.serve_direct()

    def failed(self, spec, kind, exc):
        """(results, retryable, note) of a task that raised ``exc``.  (A
        helper, so that no local of ``execute`` holds the error: its
        traceback holds that frame, and the cycle would keep the task's
        arguments alive until a GC pass.)"""
        tid = spec[S.TASK_ID]
        retryable = False
        if isinstance(exc, TaskCancelledError):
            err = exc                # a nested get of a cancelled task, not caught
        elif tid in self.state.cancelled:
            err = TaskCancelledError(tid.hex())   # ours: the gate's KeyboardInterrupt
        else:
            retryable = _should_retry(spec, exc)
            err = self.task_error(spec[S.NAME], exc)
        # A failed constructor's text: the node describes the dead actor
        # with it (it never unpickles an error).
        note = str(err) if kind == _CREATE else None
        return self.error_results(spec, err), retryable, note

    def call(self, fn, args, kwargs):
        """The task's own code (interruptible: see ``execute``)."""
        return fn(*args, **kwargs)

    def finish(self, tid, results, retryable, note=None):
        # A line the task left unended goes first: its driver shows it
        # before the get returns.
        stdout, stderr = self.stdout, self.stderr
        stdout.task_ended()
        stderr.task_ended()
        printed = stdout.take_emitted() | stderr.take_emitted()
        if self.direct_replies:
            conn = self.direct_replies.pop(tid, None)
            if conn is not None:
                answer = results
                if printed:
                    # Its prints go through the node: so does its result (the
                    # caller reads it there), so that they show before its get
                    # returns, as for any task.
                    answer = [(r[0], r[1], None, r[3]) for r in results]
                # The node hears before the next call starts (this process
                # may die in it).  The caller's result is queued: alone (a
                # caller waiting for it) it leaves first; in a burst, when no
                # more direct calls wait (``Worker.run``) or within the io
                # thread's tick (``DirectServer.while_busy``).
                direct = self.direct
                done = (M.DIRECT_DONE, tid, results, retryable, conn.cid)
                if self.actor is None:
                    # A leased worker's task: the node hears first, so that it
                    # never takes a call whose result its caller has for one
                    # this process died in (the caller's next call comes only
                    # after this result).
                    self.client.send(done)
                direct.reply(conn, (tid, answer, retryable))
                if not self.direct_q:
                    direct.flush()
                if self.actor is not None:
                    self.client.send(done)
                return
        self.client.send((M.TASK_DONE, tid, results, retryable, note))

    def fail_call(self, spec, exc) -> None:
        """Fail a task that cannot run with ``exc`` (as a RayTaskError)."""
        self.finish(spec[S.TASK_ID], self.error_results(spec, self.task_error(spec[S.NAME], exc)),
                    False)

    def task_error(self, name, exc):
        """``exc`` as the RayTaskError callers get, with Ray's header facts:
        this process, this node's IP and, in an actor, its id and repr."""
        if isinstance(exc, RayTaskError):
            return exc          # an error from a nested get keeps its original cause
        st = self.state
        actor_id = actor_repr = None
        if st.actor_id is not None:
            actor_id = st.actor_id.hex()
            try:
                actor_repr = repr(self.actor.instance) if self.actor is not None else None
            except Exception:       # a user __repr__ may raise
                actor_repr = None
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RayTaskError(name, tb, exc, pid=os.getpid(), ip=self.runtime.node_ip,
                            actor_id=actor_id, actor_repr=actor_repr)

    def target(self, spec):
        if spec[S.ACTOR_ID] is not None:
            return self.actor.method(spec[S.METHOD])
        return self.function(spec[S.FN_KEY])

    def function(self, key):
        """The registered function or class; loaded on first use, so a load
        error fails the task that needs it, not the worker."""
        fn = self.state.functions[key]
        if type(fn) is _LazyFunction:
            with _gate:       # imports user modules: a cancel must not leave one half done
                fn = self.state.functions[key] = ser.loads_from(fn.blob)
        return fn

    def pack_results(self, spec, value):
        n = spec[S.NUM_RETURNS]
        name = spec[S.NAME]
        tid = spec[S.TASK_ID]
        if n == 1:
            values = (value,)
        elif n == 0:
            return []
        else:
            try:
                values = tuple(value)
            except TypeError:
                values = ()
            if len(values) != n:
                err = ValueError(f"task '{name}' declares num_returns={n} but returned "
                                 f"{type(value).__name__} {_short(value)}; return a tuple or "
                                 f"list of exactly {n} values")
                return self.error_results(spec, self.task_error(name, err))
        results = []
        client = self.client
        written = []      # ranges ALLOC'd here: TASK_DONE seals them, or they go back
        try:
            for i, v in enumerate(values):
                oid = tid + i.to_bytes(2, "little")
                try:
                    sobj = ser.serialize(v, where=f"the return value of '{name}'")
                except SerializationError as exc:
                    for oid in written:
                        client.abort_alloc(oid)
                    return self.error_results(spec, self.task_error(name, exc))
                size = ser.encoded_size(sobj)
                if size <= client.inline_threshold:
                    results.append((oid, VALUE, ser.to_bytes(sobj), sobj.contained_refs))
                else:
                    client.write_arena(oid, sobj, size)
                    written.append(oid)
                    results.append((oid, VALUE, None, sobj.contained_refs))
        except BaseException:
            for oid in written:
                client.abort_alloc(oid)
            raise
        return results

    def error_results(self, spec, exc):
        try:
            data = ser.dumps(exc)
        except Exception:
            text = "".join(traceback.format_exception(exc))
            data = ser.dumps(RayTaskError(spec[S.NAME], text, None, pid=os.getpid()))
        tid = spec[S.TASK_ID]
        n = max(1, spec[S.NUM_RETURNS])
        return [(tid + i.to_bytes(2, "little"), ERROR, data, ()) for i in range(n)]


def _die_with_parent():
    """Exit with the node even if this worker is busy in a task and never
    reads its socket (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:   # the node died before prctl took effect
            os._exit(1)
    except Exception:
        pass


class _LazyFunction:
    __slots__ = ("blob",)

    def __init__(self, blob):
        self.blob = blob


def _should_retry(spec, exc):
    """Does ``retry_exceptions`` cover ``exc``?  A list of exception types
    travels as bytes the node never decodes; the worker decodes it only
    here, when a task has failed."""
    rule = spec[S.RETRY_EXC]
    if not rule or isinstance(exc, (TaskCancelledError, KeyboardInterrupt)):
        return False
    if rule is True:
        return isinstance(exc, Exception)
    try:
        types = ser.loads_from(rule)
    except Exception as err:
        print(f"miniray: cannot load the retry_exceptions of '{spec[S.NAME]}' in this worker "
              f"({type(err).__name__}: {err}); the task is not retried", file=sys.stderr)
        return False
    return isinstance(exc, types)


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def main():
    try:
        worker = Worker()
    except OSError:
        # The node went away before this worker could connect: nothing to do.
        os._exit(1)
    try:
        worker.run()
    finally:
        worker.client.close()
    os._exit(0)


if __name__ == "__main__":
    main()
