"""One actor inside its worker process: the instance, how a call finds its
method, where a call runs (concurrency groups), and how the actor ends.

    Worker.run (main thread) ── EXECUTE of a call ──► ActorRuntime.dispatch
        ├─ one call at a time (sync actor, max_concurrency 1, no groups):
        │      Worker.execute, right there on the main thread
        ├─ threaded (max_concurrency > 1, or concurrency groups):
        │      the thread pool of the call's group ──► Worker.execute
        └─ async: the event loop thread of the call's group ──► run_async_call
    Each call sends its own TASK_DONE from the thread that ran it
    (``CoreClient.send`` is thread-safe).

Concurrency groups (Ray's ``@remote(concurrency_groups={"io": 2})``): each
group has its own pool of threads (sync actor) or its own event loop
(async actor) that runs at most its ``max_concurrency`` calls at once, so a
group whose calls block holds back no other group.  A call's group is the
one it was sent with (``.options(concurrency_group=...)``, in the spec's
EXTRA), else the one its method declares (``@method(concurrency_group=...)``),
else the default group, which gets the actor's ``max_concurrency``.

Method lookup: a call names a method of the class, so the name is looked up
on the class and bound to the instance (an instance attribute with the same
name, ``self.value = 0`` next to ``def value(self)``, does not hide it).
The three built-in methods every Ray actor has (``__ray_ready__``,
``__ray_terminate__``, ``__ray_call__``) are implemented here.

How an actor ends itself:

* ``exit_actor()`` (and ``__ray_terminate__``): the call that asked fails
  with ActorDiedError, ``ACTOR_KILL(no restart)`` tells the node (which
  fails every queued call), atexit handlers run, the process exits 0.  It
  raises to stop the method there, but the actor ends even if the method
  catches that, or when an asyncio task that is not a call asked.
* ``sys.exit()`` in the actor's code: the process exits with that status
  and tells the node nothing, as Ray treats an unexpected SystemExit: the
  node sees its worker die, restarts the actor within ``max_restarts`` and
  retries the call within ``max_task_retries``.
"""
from __future__ import annotations

import inspect
import os
import sys
import threading
import time

from . import _protocol as P
from . import _task_spec as S
from ._client_gate import gate as _gate
from ._task_kind import TaskKind, kind_of
from .actor import ActorBlueprint, exit_actor
from .exceptions import ActorDiedError, ActorExit, TaskCancelledError

__all__ = ["ActorRuntime", "DEFAULT_GROUP"]

M = P.M
_CALL, _CREATE = TaskKind.ACTOR_CALL, TaskKind.ACTOR_CREATE
DEFAULT_GROUP = None      # the key of the default concurrency group
_MISSING = object()
JOIN_TIMEOUT = 1.0        # seconds to wait for the loop threads at shutdown, all together
                          # (one may be blocked in a call; the process exits right after)


class ActorRuntime:
    """The actor of this worker.  Made when its creation task arrives; the
    worker hands it every call of the actor (``dispatch``)."""

    def __init__(self, worker, spec):
        self.worker = worker
        self.client = worker.client
        self.state = st = worker.state
        extra = spec[S.EXTRA] or {}
        self.is_async = bool(extra.get("is_async"))
        self.max_concurrency = extra.get("max_concurrency", 1)
        self.groups = {}            # group name (DEFAULT_GROUP: default) -> where its calls run
        self.method_groups = {}     # method name -> group it declares (@method)
        self.instance = None
        self.threaded = False       # calls run off the main thread
        self._lookup = {}           # method name -> class attribute (None: not on the class)
        # Ray's built-in methods (the names ``actor.BUILTIN_METHODS`` lets handles call).
        self._builtins = {"__ray_ready__": _ready, "__ray_terminate__": _terminate,
                          "__ray_call__": self._ray_call}
        self._async_calls = {}      # task id -> (loop, asyncio.Task) of a running async call
        self._leaving = threading.Lock()   # held by the one thread that ends the process
        st.actor_id = spec[S.ACTOR_ID]
        st.actor_name = spec[S.NAME]
        st.actor_spec = spec
        st.actor_is_async = self.is_async
        if self.is_async:
            st.on_exit_request = self._exit_soon
        self.worker.runtime.namespace = extra.get("namespace")

    # -- creation ---------------------------------------------------------------------------
    def construct(self, spec, args, kwargs) -> None:
        """Run the constructor (the caller holds the interrupt gate)."""
        key = spec[S.FN_KEY]
        cls = self.worker.function(key)
        groups = {}
        if isinstance(cls, ActorBlueprint):
            groups = dict(cls.concurrency_groups)
            cls = cls.cls
            self.state.functions[key] = cls     # readers of ``functions`` expect the class
        groups = (spec[S.EXTRA] or {}).get("concurrency_groups") or groups
        self.method_groups = _declared_groups(cls)
        limits = {DEFAULT_GROUP: self.max_concurrency, **groups}
        self.threaded = self.is_async or bool(groups) or self.max_concurrency > 1
        if self.threaded:
            # Calls finish on other threads, whose replies must arrive while
            # the main thread waits for work: let the io thread read.
            self.client.use_reader_thread()
        if self.is_async:
            for name, limit in limits.items():
                self.groups[name] = _LoopGroup(name, limit, self._escaped)
            # On the default loop, so that __init__ may start asyncio tasks;
            # it sees the creation task as its own there too.
            local = self.state.local
            task = (local.name, local.spec)

            def build():
                local.name, local.spec = task
                try:
                    return cls(*args, **kwargs)
                finally:
                    local.name = local.spec = None
            self.instance = _gate.interruptible(self.groups[DEFAULT_GROUP].run, build)
        else:
            self.instance = _gate.interruptible(_construct, cls, args, kwargs)
            if self.threaded:
                for name, limit in limits.items():
                    self.groups[name] = _PoolGroup(name, limit)
            else:
                self.groups[DEFAULT_GROUP] = _MainThread()
        self.state.instance = self.instance

    # -- calls ------------------------------------------------------------------------------
    def dispatch(self, spec, deps, args) -> None:
        """Start a call (main thread, in the order the node sent them)."""
        if not self.threaded and spec[S.EXTRA] is None:
            self.worker.execute(spec, deps, args)       # the common case, kept short
            return
        group = self.group_of(spec)
        where = self.groups.get(group)
        if where is None:
            known = sorted(g for g in self.groups if g is not DEFAULT_GROUP)
            self.worker.fail_call(spec, ValueError(
                f"'{spec[S.NAME]}' was called in concurrency group '{group}', which actor "
                f"{self.state.actor_name} does not have (its groups: {known or 'none'}). "
                f"Declare it with @remote(concurrency_groups={{'{group}': N}})."))
            return
        where.start(self, spec, deps, args)

    def group_of(self, spec):
        extra = spec[S.EXTRA]
        group = extra.get("concurrency_group") if extra else None
        return group if group is not None else self.method_groups.get(spec[S.METHOD])

    def method(self, name):
        """The callable a call of ``name`` runs: the class's attribute bound
        to the instance (never an instance attribute of the same name)."""
        fn = self._builtins.get(name)
        if fn is not None:
            return fn
        raw = self._lookup.get(name, _MISSING)
        if raw is _MISSING:
            raw = self._lookup[name] = _class_attribute(type(self.instance), name)
        if raw is None:          # provided by a __getattr__ only
            return getattr(self.instance, name)
        get = getattr(type(raw), "__get__", None)
        return raw if get is None else get(raw, self.instance, type(self.instance))

    def _ray_call(self, fn, *args, **kwargs):
        """``__ray_call__``: run ``fn(instance, *args, **kwargs)`` in the actor."""
        return fn(self.instance, *args, **kwargs)

    def cancel(self, tid) -> bool:
        """Cancel an async call (from the io thread); False when calls are
        not async (the worker interrupts the main thread instead)."""
        if not self.is_async:
            return False
        entry = self._async_calls.get(tid)
        if entry is not None:
            loop, task = entry
            loop.call_soon_threadsafe(task.cancel)
        # Not started yet: it sees its id in ``state.cancelled`` when it starts.
        return True

    # -- async calls ------------------------------------------------------------------------
    def start_async(self, group, spec, deps, args):
        """Start a call on ``group``'s loop (runs on that loop's thread)."""
        tid = spec[S.TASK_ID]
        import asyncio

        async def run_call():
            try:
                async with group.slots:
                    await self.run_async_call(spec, deps, args)
            except asyncio.CancelledError:      # cancelled while waiting for a slot
                worker = self.worker
                worker.finish(tid, worker.error_results(spec, TaskCancelledError(tid.hex())),
                              False)
            finally:
                self._async_calls.pop(tid, None)
        self._async_calls[tid] = (group.loop, group.loop.create_task(run_call()))

    async def run_async_call(self, spec, deps, args):
        worker = self.worker
        st = self.state
        tid = spec[S.TASK_ID]
        retryable = False
        try:
            if tid in st.cancelled:
                raise TaskCancelledError(tid.hex())
            args_list, kwargs = worker.resolve_args(spec, deps, args)
            value = self.method(spec[S.METHOD])(*args_list, **kwargs)
            del args_list, kwargs
            if inspect.iscoroutine(value):
                value = await value
            results = worker.pack_results(spec, value)
        except BaseException as exc:
            if isinstance(exc, ActorExit):       # exit_actor(): never returns
                self.exit_by_request(spec)
            if isinstance(exc, SystemExit):      # as in Ray, the process exits
                self.crash(spec, exc)
            results, retryable, _ = worker.failed(spec, _CALL, exc)
        if st.exit_requested:
            self.exit_by_request(spec)
        worker.finish(tid, results, retryable)

    # -- ending -----------------------------------------------------------------------------
    def _exit_soon(self):
        """``exit_actor()`` was called in an async actor: if that was not a
        call (an asyncio task it started), nothing else will act on it, so
        end the actor once the current step of the loop is done.  (A call
        that asked ends it first, in the same step.)"""
        import asyncio
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon(self.exit_by_request, None)

    def _escaped(self, exc: SystemExit) -> None:
        """A SystemExit escaped an event loop (asyncio re-raises it out of
        the loop when a task the actor's code started raises it)."""
        if isinstance(exc, ActorExit):
            self.exit_by_request(None)
        self.crash(None, exc)

    def exit_by_request(self, spec) -> None:
        """End the actor because ``exit_actor()`` was called, during ``spec``
        (a call, the constructor, or None: an asyncio task).  Never returns."""
        self._claim_exit()
        st = self.state
        kind = kind_of(spec) if spec is not None else None
        where = (f"in '{spec[S.NAME]}'" if kind is _CALL else
                 "in its constructor" if kind is _CREATE else "in an asyncio task")
        err = ActorDiedError(f"actor {st.actor_name} (pid={os.getpid()}) exited by calling "
                             f"exit_actor() {where}; calls to it cannot run.")
        if kind is _CALL:
            worker = self.worker
            worker.finish(spec[S.TASK_ID], worker.error_results(spec, err), False)
        # The node fails every queued call and does not restart the actor.
        self.client.send((M.ACTOR_KILL, st.actor_id, True, str(err)))
        self._leave(0)

    def crash(self, spec, exc: SystemExit) -> None:
        """The actor's code raised SystemExit (``sys.exit()``): exit with its
        status without telling the node, which handles it as a crash.
        Never returns."""
        self._claim_exit()
        code = exc.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code & 0xFF
        else:
            print(code, file=sys.stderr)       # what sys.exit("message") prints
            status = 1
        where = f"'{spec[S.NAME]}'" if spec is not None else "an asyncio task"
        print(f"miniray: sys.exit({code!r}) in {where} ends the process of actor "
              f"{self.state.actor_name} (pid={os.getpid()}, exit status {status}). The node "
              f"restarts it if max_restarts allows, else its calls fail with ActorDiedError. "
              f"To end an actor for good, call miniray.actor.exit_actor() instead.",
              file=sys.stderr)
        self._leave(status)

    def _claim_exit(self) -> None:
        """Only one thread ends the process; another one that tries waits
        for that (forever: the process is going)."""
        if not self._leaving.acquire(blocking=False):
            threading.Event().wait()

    def _leave(self, status: int) -> None:
        """Run atexit handlers, write what is queued, exit with ``status``.
        The connection is not closed first: that would wake the main
        thread, which could end the process before this thread does (with
        another status); the node sees it close with the process."""
        import atexit
        try:
            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            self.client.flush_later()
        except Exception:
            pass
        os._exit(status)

    def shutdown(self) -> None:
        """Stop the pools and loops (the worker is exiting)."""
        deadline = time.monotonic() + JOIN_TIMEOUT
        for group in self.groups.values():
            group.close(deadline)


# -- where calls run ---------------------------------------------------------------------------

class _MainThread:
    """The default group of a sync actor that runs one call at a time: the
    worker's main thread, which runs the call right away."""

    def start(self, runtime, spec, deps, args):
        runtime.worker.execute(spec, deps, args)

    def close(self, deadline):
        pass


class _PoolGroup:
    """A group of a threaded actor: ``limit`` threads."""

    def __init__(self, name, limit):
        from concurrent.futures import ThreadPoolExecutor
        self.pool = ThreadPoolExecutor(limit, thread_name_prefix=_thread_name(name))

    def start(self, runtime, spec, deps, args):
        self.pool.submit(runtime.worker.execute, spec, deps, args, on_main=False)

    def close(self, deadline):
        self.pool.shutdown(wait=False, cancel_futures=True)


class _LoopGroup:
    """A group of an async actor: an event loop on its own thread, running
    at most ``limit`` calls at once.  A SystemExit that escapes the loop
    goes to ``on_system_exit``."""

    def __init__(self, name, limit, on_system_exit):
        # asyncio (and ssl, which it imports) only in async actors: 2 MiB
        # less in every other worker.
        import asyncio
        self.loop = asyncio.new_event_loop()
        self.slots = asyncio.Semaphore(limit)
        self._on_system_exit = on_system_exit
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                       name=_thread_name(name))
        self.thread.start()
        ready.wait()

    def _main(self, ready):
        import asyncio
        asyncio.set_event_loop(self.loop)
        ready.set()
        try:
            self.loop.run_forever()
        except SystemExit as exc:
            self._on_system_exit(exc)

    def start(self, runtime, spec, deps, args):
        self.loop.call_soon_threadsafe(runtime.start_async, self, spec, deps, args)

    def run(self, fn):
        """``fn()`` on this loop's thread, inside a task (so that it may
        start asyncio tasks); waits for its result."""
        import asyncio

        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    def close(self, deadline):
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(max(0.0, deadline - time.monotonic()))


def _thread_name(group) -> str:
    return "miniray-actor" if group is DEFAULT_GROUP else f"miniray-actor-{group}"


# -- helpers -------------------------------------------------------------------------------------

def _construct(cls, args, kwargs):
    return cls(*args, **kwargs)


def _ready():
    """``__ray_ready__``: calls run only once the constructor is done."""
    return True


def _terminate():
    """``__ray_terminate__``: end the actor after the calls queued before
    this one, as ``exit_actor()`` does."""
    exit_actor()


def _class_attribute(cls, name):
    """``name`` as found on the class (its MRO), not on the instance; None
    if only a ``__getattr__`` provides it."""
    try:
        return inspect.getattr_static(cls, name)
    except AttributeError:
        return None


def _declared_groups(cls) -> dict:
    """method name -> the concurrency group its ``@method`` declares."""
    out = {}
    for name, fn in inspect.getmembers(cls, predicate=callable):
        opts = (getattr(fn, "__miniray_method_options__", None) or
                getattr(fn, "__ray_method_options__", None))
        if opts and opts.get("concurrency_group") is not None:
            out[name] = opts["concurrency_group"]
    return out
