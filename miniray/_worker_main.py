"""Worker process entry: runs tasks, or one actor, for its node.

    node ── EXECUTE ──► reader thread ──► queue ──► main thread runs the task
    node ◄─ TASK_DONE ─────────────────────────────┘ (results inline, or
                                                       written to the arena)

The main thread runs plain tasks and sync actor calls one at a time.  A
threaded actor (max_concurrency > 1) runs calls on a thread pool, an async
actor on its own event loop thread; their results go out from those threads
(``CoreClient.send`` is thread-safe).  ``CANCEL_TASK`` interrupts the main
thread with SIGINT, turned into TaskCancelledError by the handler below,
so even a task sleeping in C code is interrupted.

Worker output goes to the node's stdout/stderr, which are the driver's, with
each line prefixed ``(task_name pid=N)`` as Ray does.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections import deque

from . import _protocol as P
from . import _serialization as ser
from . import _task_spec as S
from .exceptions import ActorExit, RayTaskError, TaskCancelledError, SerializationError

M = P.M
VALUE, ERROR = P.K.VALUE, P.K.ERROR


class _PrefixedStream:
    """Prefixes each line written by task code with the task name and pid."""

    def __init__(self, stream, context):
        self._stream = stream
        self._context = context
        self._at_line_start = True
        self._lock = threading.Lock()

    def write(self, s):
        if not s:
            return 0
        prefix = f"({self._context.task_name()} pid={os.getpid()}) "
        with self._lock:
            out = []
            for line in s.splitlines(keepends=True):
                if self._at_line_start:
                    out.append(prefix)
                out.append(line)
                self._at_line_start = line.endswith("\n")
            self._stream.write("".join(out))
            if "\n" in s:
                self._stream.flush()
        return len(s)

    def flush(self):
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


class WorkerState:
    """What this worker is doing: read by get_runtime_context and prints."""

    def __init__(self):
        self.local = threading.local()
        self.actor_id = None
        self.actor_name = None
        self.instance = None
        self.functions = {}
        self.current_tid = None
        self.cancel_tid = None
        self.cancelled = set()

    def task_name(self):
        name = getattr(self.local, "name", None)
        return name or self.actor_name or "worker"

    def current_spec(self):
        return getattr(self.local, "spec", None)


class Worker:
    def __init__(self):
        from . import _runtime
        self.state = WorkerState()
        self.queue = deque()        # messages for the main thread
        self.main_ident = threading.get_ident()
        self.pool = None
        self.loop = None
        self._async_tasks = {}      # task id -> asyncio.Task (async actors)
        self.client = None
        _die_with_parent()
        # The node pokes a busy worker with SIGUSR1 when it sends CANCEL_TASK
        # (nobody reads the socket while the main thread runs a task).
        signal.signal(signal.SIGUSR1, self._on_poke)
        signal.signal(signal.SIGINT, self._on_sigint)
        self.runtime = _runtime.connect_worker(self.state, self.on_push)
        self.client = self.runtime.client
        sys.stdout = _PrefixedStream(sys.stdout, self.state)
        sys.stderr = _PrefixedStream(sys.stderr, self.state)

    # -- messages from the reader thread -------------------------------------------
    def on_push(self, msg):
        tag = msg[0]
        if tag == M.CANCEL_TASK:
            tid = msg[1]
            st = self.state
            if tid in st.cancelled:      # a repeated delivery: act once
                return
            st.cancelled.add(tid)
            if self.loop is not None:
                # An async actor's call: cancel its asyncio task.
                self.loop.call_soon_threadsafe(self._cancel_async, tid)
            elif st.current_tid == tid:
                st.cancel_tid = tid
                signal.pthread_kill(self.main_ident, signal.SIGINT)
            return
        if tag == M.JOB:
            missing = [p for p in msg[1] if p not in sys.path]
            sys.path[0:0] = missing
            return
        if tag == M.EXIT:
            self.queue.append(msg)
            if msg[1] == "node connection lost":
                os._exit(1)
            return
        self.queue.append(msg)

    def _on_poke(self, signum, frame):
        if self.client is not None:
            self.client.poll_now()

    def _on_sigint(self, signum, frame):
        st = self.state
        tid = st.cancel_tid
        if tid is not None and tid == st.current_tid:
            st.cancel_tid = None
            client = self.client
            if client is not None and (client.critical or client.reading_in(self.main_ident)):
                # Inside a socket read or a decode: raising now could lose
                # frames or pins; the runtime raises it when it is done.
                client.deferred_interrupt = TaskCancelledError(tid.hex())
                return
            # No local holds the exception: a frame <-> traceback cycle
            # would keep the task's arguments alive until a GC pass.
            raise TaskCancelledError(tid.hex())

    # -- the loop ------------------------------------------------------------------
    def run(self):
        queue = self.queue
        has_work = queue.__len__
        wait_until = self.client.wait_until
        while True:
            if not queue:
                wait_until(has_work)
            msg = queue.popleft()
            if msg[0] == M.EXIT:
                break
            if msg[0] == M.EXECUTE:
                _, spec, blob, deps, args = msg
                if blob is not None:
                    self.state.functions[spec[S.FN_KEY]] = _LazyFunction(blob)
                if spec[S.ACTOR_ID] is not None and spec[S.METHOD] != "__init__":
                    self.dispatch_actor_call(spec, deps, args)
                else:
                    self.execute(spec, deps, args)
        self.shutdown()

    def shutdown(self):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass

    # -- running a task ---------------------------------------------------------------
    def resolve_args(self, spec, deps, args, on_main=False):
        client = self.client
        if not on_main:
            return self._resolve_args(spec, deps, args)
        # Decoding makes pins and may import numpy: a cancel waits it out.
        client.critical += 1
        try:
            return self._resolve_args(spec, deps, args)
        finally:
            client.critical -= 1
            if client.deferred_interrupt is not None and not client.critical:
                client._raise_deferred()

    def _resolve_args(self, spec, deps, args):
        client = self.client
        if type(args) is bytes:
            args_list, kwargs, positions = ser.loads_from(args)
        else:
            kind, data = args
            args_list, kwargs, positions = client.decode(spec[S.ARGS_OID], kind, data)
        for pos, oid, (kind, data) in zip(positions, spec[S.DEPS], deps):
            value = client.decode(oid, kind, data)
            if type(pos) is int:
                args_list[pos] = value
            else:
                kwargs[pos] = value
        return args_list, kwargs

    def execute(self, spec, deps, args, *, on_main=True):
        st = self.state
        tid = spec[S.TASK_ID]
        name = spec[S.NAME]
        local = st.local
        local.name, local.spec = name, spec
        if on_main:
            st.current_tid = tid
        retryable = False
        try:
            if tid in st.cancelled:
                raise TaskCancelledError(tid.hex())
            if spec[S.ACTOR_ID] is None:
                # A pooled worker runs each task in its job's namespace.
                extra = spec[S.EXTRA]
                self.runtime.namespace = extra.get("namespace") if extra else None
            args_list, kwargs = self.resolve_args(spec, deps, args, on_main)
            if spec[S.METHOD] == "__init__":
                self.construct_actor(spec, args_list, kwargs)
                results = [(None, VALUE, None, ())]
            else:
                fn = self.target(spec)
                value = fn(*args_list, **kwargs)
                if self.loop is not None and _is_coroutine(value):
                    value = self.run_coroutine(value)
                del args_list, kwargs
                results = self.pack_results(spec, value)
        except TaskCancelledError as exc:
            results = self.error_results(spec, exc)
        except ActorExit:
            self.exit_actor(spec)
            return
        except BaseException as exc:
            if on_main and st.cancel_tid == tid:
                st.cancel_tid = None
            retryable = _should_retry(spec, exc)
            results = self.error_results(spec, _task_error(name, exc))
        finally:
            if on_main:
                st.current_tid = None
            local.name = local.spec = None
        if spec[S.METHOD] == "__init__" and results[0][1] == ERROR:
            results = [(None, ERROR, results[0][2], ())]
        self.finish(tid, results, retryable)

    def exit_actor(self, spec):
        """The method called exit_actor(): fail this call, tell the node the
        actor is gone (so no restart), run atexit handlers and leave."""
        from .exceptions import ActorDiedError
        name = self.state.actor_name
        err = ActorDiedError(f"actor {name} (pid={os.getpid()}) exited by calling "
                             f"exit_actor() in '{spec[S.NAME]}'; calls to it cannot run.")
        self.finish(spec[S.TASK_ID], self.error_results(spec, err), False)
        self.client.send((M.ACTOR_KILL, self.state.actor_id, True, str(err)))
        import atexit
        atexit._run_exitfuncs()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        self.client.close()
        os._exit(0)

    def finish(self, tid, results, retryable):
        self.client.send((M.TASK_DONE, tid, results, retryable))

    def target(self, spec):
        if spec[S.ACTOR_ID] is not None:
            return getattr(self.state.instance, spec[S.METHOD])
        return self.function(spec[S.FN_KEY])

    def function(self, key):
        """The registered function or class; loaded on first use, so a load
        error fails the task that needs it, not the worker."""
        fn = self.state.functions[key]
        if type(fn) is _LazyFunction:
            fn = self.state.functions[key] = ser.loads_from(fn.blob)
        return fn

    def construct_actor(self, spec, args, kwargs):
        st = self.state
        cls = self.function(spec[S.FN_KEY])
        st.actor_id = spec[S.ACTOR_ID]
        st.actor_name = spec[S.NAME]
        extra = spec[S.EXTRA] or {}
        self.runtime.namespace = extra.get("namespace")
        if extra.get("is_async") or extra.get("max_concurrency", 1) > 1:
            # Calls finish on other threads, whose replies must arrive while
            # the main thread waits for work: let the io thread read.
            self.client.use_reader_thread()
        if extra.get("is_async"):
            self._start_loop()
        st.instance = cls(*args, **kwargs)
        concurrency = extra.get("max_concurrency", 1)
        if concurrency > 1 and not extra.get("is_async"):
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="miniray-actor")
        self.concurrency = concurrency

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
                return self.error_results(spec, _task_error(name, err))
        results = []
        client = self.client
        for i, v in enumerate(values):
            oid = tid + i.to_bytes(2, "little")
            try:
                sobj = ser.serialize(v, where=f"the return value of '{name}'")
            except SerializationError as exc:
                return self.error_results(spec, _task_error(name, exc))
            size = ser.encoded_size(sobj)
            if size <= client.inline_threshold:
                results.append((oid, VALUE, ser.to_bytes(sobj), sobj.contained_refs))
            else:
                client.write_arena(oid, sobj, size)
                results.append((oid, VALUE, None, sobj.contained_refs))
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

    # -- actors -----------------------------------------------------------------------------
    def dispatch_actor_call(self, spec, deps, args):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._schedule_async, spec, deps, args)
        elif self.pool is not None:
            self.pool.submit(self.execute, spec, deps, args, on_main=False)
        else:
            self.execute(spec, deps, args)

    def _start_loop(self):
        import asyncio
        loop = asyncio.new_event_loop()
        self.loop = loop
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()

        t = threading.Thread(target=run, name="miniray-actor-loop", daemon=True)
        t.start()
        ready.wait()

    def _schedule_async(self, spec, deps, args):
        import asyncio
        loop = self.loop
        concurrency = getattr(self, "concurrency", 1000)
        if not hasattr(self, "_sem"):
            self._sem = asyncio.Semaphore(concurrency)
        tid = spec[S.TASK_ID]

        async def run_call():
            try:
                async with self._sem:
                    await self._run_async_call(spec, deps, args)
            except asyncio.CancelledError:      # cancelled while waiting for a slot
                self.finish(tid, self.error_results(spec, TaskCancelledError(tid.hex())), False)
            finally:
                self._async_tasks.pop(tid, None)
        self._async_tasks[tid] = loop.create_task(run_call())

    def _cancel_async(self, tid):
        task = self._async_tasks.get(tid)
        if task is not None:
            task.cancel()

    async def _run_async_call(self, spec, deps, args):
        st = self.state
        name = spec[S.NAME]
        tid = spec[S.TASK_ID]
        retryable = False
        try:
            if tid in st.cancelled:
                raise TaskCancelledError(tid.hex())
            args_list, kwargs = self.resolve_args(spec, deps, args)
            fn = self.target(spec)
            value = fn(*args_list, **kwargs)
            if _is_coroutine(value):
                value = await value
            results = self.pack_results(spec, value)
        except ActorExit:
            self.exit_actor(spec)
            return
        except BaseException as exc:
            import asyncio
            if isinstance(exc, (asyncio.CancelledError, TaskCancelledError)):
                exc = TaskCancelledError(tid.hex())
                results = self.error_results(spec, exc)
            else:
                retryable = _should_retry(spec, exc)
                results = self.error_results(spec, _task_error(name, exc))
        st.local.name = None
        self.finish(tid, results, retryable)

    def run_coroutine(self, coro):
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


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


def _is_coroutine(value):
    import inspect
    return inspect.iscoroutine(value)


def _should_retry(spec, exc):
    rule = spec[S.RETRY_EXC]
    if not rule or isinstance(exc, (TaskCancelledError, KeyboardInterrupt)):
        return False
    if rule is True:
        return isinstance(exc, Exception)
    return isinstance(exc, tuple(rule))


def _task_error(name, exc):
    if isinstance(exc, RayTaskError):
        # An error from a nested get keeps its original cause.
        return exc
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    err = RayTaskError(name, tb, exc, pid=os.getpid())
    try:
        # The driver must be able to rebuild it: check the round trip here,
        # where a failure can still fall back to the text.
        ser.loads_from(ser.dumps(err))
    except Exception:
        err = RayTaskError(name, tb, None, pid=os.getpid())
    return err


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
