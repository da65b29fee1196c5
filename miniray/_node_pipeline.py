"""Pipelining short tasks: part of the node's task manager (a mixin of
``_node_tasks.TaskManager``), pure state like the rest of it.

    no idle worker, short tasks ready -> EXECUTE to a busy worker, queued
        there behind its current task (``pipeline``)
    its task blocks in get/wait, or runs past STUCK_S -> REVOKE -> REVOKED:
        the tasks it had not started come back to the ready queue
    cancel of a task there -> REVOKE first, then fail it (never started)
        or interrupt / kill the worker (it runs it)
    the worker dies -> its queued tasks come back, no retry spent
"""
from __future__ import annotations

from collections import deque

from . import _protocol as P
from . import _task_spec as S
from ._node_events import D
from .exceptions import TaskCancelledError

M = P.M
# Pipelining (see Pipelining.pipeline): a function whose tasks take less
# than SHORT_S on average (measured here) may have tasks sent to a busy
# worker to run after its current one, up to PIPELINE_S of their measured
# time and PIPELINE_MAX tasks per worker.
SHORT_S = 0.001
PIPELINE_S = 0.002
PIPELINE_MAX = 64
DURATIONS_KEPT = 4096   # function keys whose average duration is kept
STUCK_S = 0.05          # a worker that finishes nothing for this long gives its queue back


class Pipelining:
    # A worker that runs one task at a time waits a round trip through the
    # node between tasks (TASK_DONE, then the next EXECUTE): for tasks of a
    # few microseconds that wait, and one node turn per task, is most of the
    # cost.  So when tasks are left in a queue with no idle worker for them,
    # short ones (their function measured under SHORT_S per task) are sent to
    # busy workers running a task of the same shape, to run after it: the
    # worker queues them in order (``Worker.queued`` here), and its resources
    # pass from one to the next.  A worker whose task blocks in get/wait
    # gives its queued tasks back (REVOKE -> REVOKED: the tasks it had not
    # started), so a task waiting for a task queued behind it cannot
    # deadlock; so does one whose current task runs past STUCK_S (a short
    # function's long call must not hold work that idle workers could run).
    # The bound (PIPELINE_S of measured time per worker) keeps a long task
    # from holding much work behind it.
    #
    # Which of its tasks a worker runs is known here only up to the
    # TASK_DONEs on their way: so a cancel of a task at a worker with a
    # queue (``cancel_pipelined``), or a crash, is decided on facts: the
    # REVOKED answer comes after every TASK_DONE the worker sent before it,
    # so then the tasks it names never started, those done are done, and
    # the one left is the one it runs.
    def pipeline(self, shape) -> None:
        """Send the short tasks at the head of ``shape``'s queue to busy
        workers running that shape."""
        st = self.st
        ready = st.ready
        deferred = st.spill.deferred
        for w in st.workers.values():
            if w.state != "busy" or w.blocked or w.revoking or w.client is None or \
                    st.now - w.turn >= STUCK_S:
                continue        # (not behind a task that runs long: ``check_stuck``)
            cur = w.task
            if cur is None or cur.shape != shape or cur.lent or w.kind != "cpu" or \
                    self._average(cur) is None or (deferred and w in deferred):
                continue
            q = w.queued
            while True:
                t = ready.peek(shape)
                if t is None:
                    return
                avg = self._average(t)
                if avg is None:
                    return          # not known short: it waits for a worker (FIFO order)
                if q is not None and len(q) >= min(PIPELINE_MAX, PIPELINE_S / max(avg, 1e-6)):
                    break
                ready.pop(shape)
                if q is None:
                    q = w.queued = deque()
                q.append(t)
                self.dispatch(t, w, queued=True)
                if not self.stuck_timer:
                    self.stuck_timer = True
                    st.out.append((D.TIMER, STUCK_S, "pipeline"))

    def _average(self, t):
        """The measured time per task of ``t``'s function, if ``t`` may be
        pipelined (a plain task, no arguments to fetch or pin, no
        max_calls) and that time is short; else None."""
        spec = t.spec
        if t.actor is not None or spec[S.DEPS] or spec[S.ARGS_OID] is not None:
            return None
        avg = self.durations.get(spec[S.FN_KEY])
        if avg is None or avg >= SHORT_S:
            return None
        extra = spec[S.EXTRA]
        if extra and extra.get("max_calls"):
            return None
        return avg

    def _measured(self, w, t) -> None:
        """``t`` finished on ``w``.  The tasks that finish on a worker in one
        turn ran in the time since its previous such turn (or since it got
        its first task): each counts that time divided by their number,
        once the turn is over (``_sample``).  A state whose clock does not
        move (``now`` comes with each turn: ``NodeState.handle``) measures
        nothing, and pipelines nothing."""
        now = self.st.now
        if now != w.turn:
            self._sample(w)
            w.since = w.turn
            w.turn = now
        w.batch.append(t.spec[S.FN_KEY])

    def _sample(self, w) -> None:
        batch = w.batch
        if not batch:
            return
        w.batch = []
        span = w.turn - w.since
        if span <= 0:
            return
        each = span / len(batch)
        durations = self.durations
        for key in batch:
            avg = durations.get(key)
            if avg is None:
                if len(durations) >= DURATIONS_KEPT:
                    durations.clear()
                durations[key] = each
            else:
                durations[key] = avg + 0.05 * (each - avg)

    def revoke(self, w, poke=True) -> None:
        """Ask ``w`` for the tasks queued behind its current one (once); a
        worker busy in its task reads the REVOKE when poked (one waiting
        in get/wait reads it anyway: ``poke=False``)."""
        if w.queued and not w.revoking and w.client is not None:
            w.revoking = True
            self.st.send(w.client, (M.REVOKE, [q.tid for q in w.queued]))
            if poke:
                self.st.poke(w)

    def check_stuck(self) -> None:
        """The "pipeline" timer: a worker that finished nothing for STUCK_S
        while tasks wait behind its current one gives them back."""
        self.stuck_timer = False
        st = self.st
        now = st.now
        queued = False
        for w in st.workers.values():
            if w.queued:
                if not w.revoking and now - w.turn >= STUCK_S:
                    self.revoke(w)
                else:
                    queued = True
        if queued:
            self.stuck_timer = True
            st.out.append((D.TIMER, STUCK_S, "pipeline"))

    def cancel_pipelined(self, t, force) -> bool:
        """Cancel ``t``, which runs or is queued at a worker with tasks queued
        behind the current one (else False: the plain running-task cancel
        applies).  The worker gives its queue back; ``on_revoked`` then
        fails ``t`` if it never started, or interrupts (kills, with
        ``force``) the worker if ``t`` is what it runs."""
        w = t.worker
        if w is None or w.client is None or not (w.queued or w.revoking):
            return False
        self.cancels[t.tid] = force or self.cancels.get(t.tid, False)
        self.revoke(w)
        return True

    def on_revoked(self, client, msg) -> None:
        """REVOKED: the queued tasks the worker gave back (it will not run
        them) go back to the front of their queue, in order; cancelled
        ones fail.  A cancel waiting for this answer now reaches the task
        the worker runs."""
        w = client.worker
        if w is None:
            return
        w.revoking = False
        back = set(msg[1])
        returned = []
        if back:
            q = w.queued
            if q:
                keep = deque()
                for t in q:
                    (returned if t.tid in back else keep).append(t)
                w.queued = keep or None
            cur = w.task
            if cur is not None and cur.actor is None and cur.tid in back:
                # Its task ended before it read the REVOKE (the task's thread
                # blocked, not the task), and this one, which it never started,
                # had become its current task here.
                returned.insert(0, cur)
                self._release_worker(w, cur)
        ready = self.st.ready
        cancels = self.cancels
        for t in reversed(returned):
            t.worker = None
            if t.cancelled:
                cancels.pop(t.tid, None)
                t.state = "cancelled"
                self.fail(t, TaskCancelledError(t.tid.hex()))
            else:
                t.state = "ready"
                ready.push_front(t.shape, t)
        cur = w.task
        if cancels and cur is not None and cur.tid in cancels:
            self.interrupt(w, cur, cancels.pop(cur.tid))
        self.st.schedule_needed = True

    def _requeue(self, w) -> None:
        """``w`` is gone: the tasks queued there (never started) go back to
        the front of their queue, in order (cancelled ones fail)."""
        q = w.queued
        w.queued = None
        w.revoking = False
        if q:
            ready = self.st.ready
            for t in reversed(q):
                t.worker = None
                if t.cancelled:
                    self.cancels.pop(t.tid, None)
                    t.state = "cancelled"
                    self.fail(t, TaskCancelledError(t.tid.hex()))
                else:
                    t.state = "ready"
                    ready.push_front(t.shape, t)
            self.st.schedule_needed = True
