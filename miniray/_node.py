"""The node daemon: one event loop that owns the node's state.

    driver ──┐ SUBMIT/PUT/GET/REFS                       ┌── worker (pool)
    driver ──┼──────────────►  node daemon  ── EXECUTE ──┼── worker (pool)
             │ ◄── REPLY ────  · object table            └── actor worker
             │                 · resources + ready queues
             │                 · worker pool, actors
             └── shared-memory arena (fd passed to every client, mapped once)

Everything the node knows lives in this process and is touched only by its
single thread: the object table (``_object_table``), resources and ready
queues (``_scheduler``), workers, actors, pending requests.  Clients never
wait on each other: every request is answered from this loop.  Per loop turn
the node reads everything available, handles each message, runs one
scheduling pass and then writes each connection's queued frames with one
``send``: messages batch naturally under load.

Workers are children of the node (spawned, never forked); their exits arrive
through pidfds in the same selector, with the exit status, so a crash is
reported with its signal.  The node exits when its owning driver disconnects
(``init()``), or on SHUTDOWN, after stopping every worker.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from . import _protocol as P
from ._node_actors import ActorManager
from ._node_tasks import TaskManager
from ._object_table import ObjectTable, READY, CREATING
from ._scheduler import ResourcePool, ReadyQueues
from ._store.arena import Prefault, create_arena_file
from ._transport import MAGIC, NONCE_LEN, DIGEST_LEN, digest, listen
from .exceptions import ObjectLostError, ObjectStoreFullError

M = P.M
EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
HUGE_PAGE = 2 * 2**20
LARGE_WRITE = 8 * 2**20  # an ALLOC this large pauses the prefault
POKE_TRIES = 20          # SIGUSR1s at most per cancel while output is pending
IDLE_CHECK_S = 2.0      # how often extra idle workers are looked at
IDLE_EXIT_S = 10.0      # how long an extra worker may stay idle


def log(msg: str) -> None:
    sys.stderr.write(f"(miniray node pid={os.getpid()}) {msg}\n")
    sys.stderr.flush()


class Conn:
    """One client connection and what that client holds."""

    __slots__ = ("sock", "fd", "node", "reader", "out", "authed", "nonce", "role",
                 "pid", "held", "pins", "unsealed", "worker", "closed", "want_write",
                 "waiters")

    def __init__(self, sock, node):
        self.sock = sock
        self.fd = sock.fileno()
        self.node = node
        self.reader = P.FrameReader()
        self.out = bytearray()
        self.authed = False
        self.nonce = os.urandom(NONCE_LEN)
        self.role = None
        self.pid = None
        self.held = set()       # oids this process holds refs to
        self.pins = {}          # oid -> views handed to this process
        self.unsealed = set()   # oids allocated by this process, not yet sealed
        self.worker = None
        self.closed = False
        self.want_write = False
        self.waiters = set()

    def send(self, msg) -> None:
        if self.closed:
            return
        body = P._dumps(msg, 5)
        out = self.out
        if not out:
            self.node.dirty.append(self)
        out += P._pack_len(len(body))
        out += body


class Waiter:
    """A GET or WAIT request waiting for objects."""

    __slots__ = ("conn", "rid", "oids", "left", "num_returns", "is_wait", "done", "blocking")

    def __init__(self, conn, rid, oids, left, num_returns, is_wait):
        self.conn, self.rid, self.oids, self.left = conn, rid, oids, left
        self.num_returns, self.is_wait = num_returns, is_wait
        self.done = False
        self.blocking = False

    def on_ready(self, node, entry):
        if self.done:
            return
        self.left -= 1
        if self.is_wait:
            ready = len(self.oids) - self.left
            if ready >= self.num_returns:
                node.finish_wait(self)
        elif self.left <= 0:
            node.finish_get(self)


class Worker:
    __slots__ = ("wid", "proc", "pid", "pidfd", "conn", "state", "task", "fn_keys",
                 "blocked", "actor", "started", "exit_desc", "idle_since")

    def __init__(self, wid, proc):
        self.wid = wid
        self.proc = proc
        self.pid = proc.pid
        self.pidfd = None
        self.conn = None
        self.state = "starting"
        self.task = None
        self.fn_keys = set()
        self.blocked = 0
        self.actor = None
        self.started = time.monotonic()
        self.exit_desc = None
        self.idle_since = self.started


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return f"ended with status {status}"


class Node:
    def __init__(self, config: dict, token: bytes):
        self.config = config
        self.token = token
        self.session = config["session"]
        self.node_id = config["node_id"]
        self.address = config["address"]
        self.sel = selectors.DefaultSelector()
        self.listener = listen(self.address)
        self.sel.register(self.listener, EVENT_READ, self._accept)
        size = int(config["object_store_memory"])
        if config.get("huge_pages"):
            size = -(-size // HUGE_PAGE) * HUGE_PAGE
        self.arena_fd, self.arena_dir, warning = create_arena_file(
            size, self.session, config.get("plasma_directory"))
        self.store_warning = warning
        # Reserving pages of a disk-backed fallback would write them to disk.
        prefault = 0 if warning else min(size, int(config.get("prefault_bytes") or 0))
        self.prefault = Prefault(self.arena_fd, prefault)
        self.arena_size = size
        self.table = ObjectTable(size)
        total = {"CPU": float(config["num_cpus"])}
        total.update({k: float(v) for k, v in (config.get("resources") or {}).items()})
        if config.get("num_gpus"):
            total["GPU"] = float(config["num_gpus"])
        total.setdefault("memory", float(config.get("memory", 0)) or 0.0)
        if not total["memory"]:
            del total["memory"]
        total[f"node:{config.get('node_ip', '127.0.0.1')}"] = 1.0
        self.resources = ResourcePool(total)
        self.ready = ReadyQueues()
        self.functions: dict = {}
        self.serializers = None
        self.conns: dict[int, Conn] = {}
        self.dirty: list[Conn] = []
        self.workers: dict[int, Worker] = {}     # wid -> worker
        self.idle: list[Worker] = []
        self.next_wid = 1
        self.starting = 0
        self.pool_size = max(1, int(config["num_cpus"]))
        self.owner_pid = config.get("owner_pid")
        self.stopping = False
        self.schedule_needed = False
        self.timers: list = []
        self._pokes: list = []
        self.job_counter = 0
        self.started_at = time.time()
        self.tasks = TaskManager(self)
        self.actors = ActorManager(self)
        self.sys_path = config.get("sys_path") or []
        if self.owner_pid:
            try:
                fd = os.pidfd_open(self.owner_pid)
                self.sel.register(fd, EVENT_READ, lambda mask: self._owner_gone())
            except (OSError, AttributeError):
                pass

    # -- loop ---------------------------------------------------------------------
    def run(self, ready_fd=None) -> None:
        for _ in range(self.pool_size):
            self.spawn_worker()
        if ready_fd is not None:
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        self.prefault.start()
        self.add_timer(IDLE_CHECK_S, self._reap_idle_workers)
        sel = self.sel
        while not self.stopping:
            timeout = None
            if self.timers:
                timeout = max(0.0, min(t[0] for t in self.timers) - time.monotonic())
            if self.dirty:
                timeout = 0
            for key, mask in sel.select(timeout):
                key.data(mask)
            if self.schedule_needed:
                self.schedule_needed = False
                self.tasks.schedule()
            if self.timers:
                now = time.monotonic()
                due = [t for t in self.timers if t[0] <= now]
                if due:
                    self.timers = [t for t in self.timers if t[0] > now]
                    for _, fn in due:
                        fn()
            self._flush()
            if self._pokes:
                self._poke_workers()
        self._stop_everything()

    def _reap_idle_workers(self) -> None:
        """Workers started for a burst (or while others were blocked in
        get) exit after IDLE_EXIT_S idle; the pool keeps num_cpus."""
        self.add_timer(IDLE_CHECK_S, self._reap_idle_workers)
        extra = self.pool_count() - self.pool_size
        if extra <= 0 or not self.idle:
            return
        now = time.monotonic()
        for w in sorted(self.idle, key=lambda w: w.idle_since)[:extra]:
            if now - w.idle_since >= IDLE_EXIT_S and w.conn is not None:
                self.idle.remove(w)
                w.state = "exiting"
                w.conn.send((M.EXIT, "idle"))

    def poke(self, w) -> None:
        """Make a worker busy in a task read its socket (for a CANCEL_TASK
        just queued to it): SIGUSR1 once the message is written.  A worker
        whose output is not all written yet is poked again next turn, a
        bounded number of times (each poke interrupts its blocking calls)."""
        if all(p is not w for p, _ in self._pokes):
            self._pokes.append((w, POKE_TRIES))

    def _poke_workers(self) -> None:
        pokes, self._pokes = self._pokes, []
        for w, tries in pokes:
            if w.state == "dead" or w.conn is None:
                continue
            try:
                os.kill(w.pid, signal.SIGUSR1)
            except ProcessLookupError:
                continue
            if w.conn.out and tries > 1:
                self._pokes.append((w, tries - 1))
        if self._pokes:
            self.add_timer(0.01, lambda: None)   # come back soon

    def add_timer(self, delay: float, fn) -> None:
        self.timers.append((time.monotonic() + delay, fn))

    def _flush(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            if conn.closed or not conn.out:
                continue
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close_conn(conn)
                continue
            if sent:
                del conn.out[:sent]
            if conn.out and not conn.want_write:
                conn.want_write = True
                self.sel.modify(conn.sock, EVENT_READ | EVENT_WRITE, lambda m, c=conn: self._on_conn(c, m))

    def _accept(self, mask) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, self)
            self.conns[conn.fd] = conn
            try:
                sock.send(MAGIC + conn.nonce)
            except OSError:
                sock.close()
                del self.conns[conn.fd]
                continue
            self.sel.register(sock, EVENT_READ, lambda m, c=conn: self._on_conn(c, m))

    def _on_conn(self, conn: Conn, mask) -> None:
        if mask & EVENT_WRITE:
            try:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
            except BlockingIOError:
                pass
            except OSError:
                self.close_conn(conn)
                return
            if not conn.out:
                conn.want_write = False
                self.sel.modify(conn.sock, EVENT_READ, lambda m, c=conn: self._on_conn(c, m))
        if not mask & EVENT_READ:
            return
        reader = conn.reader
        try:
            n = reader.recv_from(conn.sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            self.close_conn(conn)
            return
        try:
            if not conn.authed:
                data = self._authenticate(conn, bytes(reader._view[:n]))
                if data is None:
                    return
                msgs = reader.feed(data)
            else:
                msgs = reader.feed_scratch(n)
        except Exception as exc:
            log(f"dropping a connection that sent a bad frame: {exc}")
            self.close_conn(conn)
            return
        handlers = self.handlers
        for msg in msgs:
            if conn.closed:
                return
            handlers[msg[0]](conn, msg)

    def _authenticate(self, conn: Conn, data: bytes):
        buf = conn.reader._buf
        buf += data
        if len(buf) < DIGEST_LEN:
            return None
        got = bytes(buf[:DIGEST_LEN])
        rest = bytes(buf[DIGEST_LEN:])
        buf.clear()
        import hmac
        if not hmac.compare_digest(got, digest(self.token, conn.nonce)):
            log("rejected a connection with a wrong cluster token")
            self.close_conn(conn)
            return None
        conn.authed = True
        return rest

    def close_conn(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        self.conns.pop(conn.fd, None)
        self._release_client_state(conn)
        if conn.role == "driver" and self.owner_pid and conn.pid == self.owner_pid:
            self.stopping = True
        if conn.worker is not None:
            conn.worker.conn = None

    def _release_client_state(self, conn: Conn) -> None:
        for w in list(conn.waiters):
            self.drop_waiter(w)
        table = self.table
        for oid in conn.unsealed:
            table.drop_unsealed(oid)
        entries = table.entries
        for oid, n in conn.pins.items():
            e = entries.get(oid)
            if e is not None:
                e.pins -= n
                table.release_if_unused(e)
        conn.pins.clear()
        for oid in conn.held:
            e = entries.get(oid)
            if e is not None:
                e.holders -= 1
                self.release_entry(e)
        conn.held.clear()

    def _owner_gone(self) -> None:
        self.stopping = True

    # -- workers ------------------------------------------------------------------
    def spawn_worker(self) -> Worker:
        wid = self.next_wid
        self.next_wid += 1
        env = dict(os.environ)
        env["MINIRAY_ADDRESS"] = self.address
        env["MINIRAY_TOKEN"] = self.token.hex()
        env["MINIRAY_WORKER_ID"] = str(wid)
        proc = subprocess.Popen([sys.executable, "-m", "miniray._worker_main"], env=env,
                                stdin=subprocess.DEVNULL, close_fds=True)
        w = Worker(wid, proc)
        try:
            w.pidfd = os.pidfd_open(proc.pid)
            self.sel.register(w.pidfd, EVENT_READ, lambda m, w=w: self._worker_exited(w))
        except OSError:
            w.pidfd = None
        self.workers[wid] = w
        self.starting += 1
        return w

    def _worker_exited(self, w: Worker) -> None:
        try:
            self.sel.unregister(w.pidfd)
        except (KeyError, ValueError):
            pass
        os.close(w.pidfd)
        w.pidfd = None
        try:
            _, status = os.waitpid(w.pid, 0)
            w.exit_desc = describe_exit(status)
        except ChildProcessError:
            w.exit_desc = "exited"
        w.proc.returncode = 0
        if w.conn is not None:
            self.close_conn(w.conn)
        prev = w.state
        w.state = "dead"
        self.workers.pop(w.wid, None)
        if prev == "starting":
            self.starting -= 1
        if w in self.idle:
            self.idle.remove(w)
        if self.stopping:
            return
        if w.task is not None:
            self.tasks.worker_died(w)
        if w.actor is not None:
            self.actors.worker_died(w)
        self.schedule_needed = True

    def worker_hello(self, conn: Conn, wid: int) -> None:
        w = self.workers.get(wid)
        if w is None:
            self.close_conn(conn)
            return
        w.conn = conn
        conn.worker = w
        self.starting -= 1
        w.state = "idle"
        if not self.actors.claim_new_worker(w):
            self.idle.append(w)
        self.schedule_needed = True

    def pool_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.actor is None)

    # -- messages -------------------------------------------------------------------
    def on_hello(self, conn: Conn, msg) -> None:
        _, role, pid, wid, info = msg
        conn.role, conn.pid = role, pid
        if role == "driver":
            self.job_counter += 1
            job = self.job_counter
            if info and info.get("sys_path"):
                self.sys_path = info["sys_path"]
                for c in self.conns.values():
                    if c.role == "worker":
                        c.send((M.JOB, self.sys_path))
        else:
            job = 0
        welcome = {"node_id": self.node_id, "session": self.session, "arena_size": self.arena_size,
                   "resources": dict(self.resources.total), "serializers": self.serializers,
                   "sys_path": self.sys_path, "job_id": job, "address": self.address,
                   "node_pid": os.getpid(), "arena_dir": self.arena_dir,
                   "inline_threshold": self.config["inline_threshold"],
                   "store_warning": self.store_warning}
        frame = P.encode((M.WELCOME, welcome))
        try:
            conn.sock.setblocking(True)
            socket.send_fds(conn.sock, [frame], [self.arena_fd])
            conn.sock.setblocking(False)
        except OSError:
            self.close_conn(conn)
            return
        if role == "worker":
            self.worker_hello(conn, wid)

    def on_put_inline(self, conn, msg) -> None:
        _, oid, kind, data, contained = msg
        e = self.table.get_or_create(oid)
        if oid not in conn.held:
            conn.held.add(oid)
            e.holders += 1
        self.notify(e, self.table.seal(e, kind, data, contained))

    def on_alloc(self, conn, msg) -> None:
        _, rid, oid, size = msg
        table = self.table
        # Pages below this were reserved before: by the prefault, or by the
        # writer of an earlier object (ranges are reused, never punched out).
        reserved = max(table.high_water, self.prefault.done_upto)
        try:
            e = table.allocate(oid, size)
        except ObjectStoreFullError as exc:
            conn.send((M.REPLY, rid, False, ObjectStoreFullError(str(exc))))
            return
        if size >= LARGE_WRITE:
            self.prefault.pause()
        conn.unsealed.add(oid)
        conn.send((M.REPLY, rid, True, (e.offset, max(0, reserved - e.offset))))

    def on_seal(self, conn, msg) -> None:
        _, oid, kind, hold, contained = msg
        conn.unsealed.discard(oid)
        e = self.table.entries.get(oid)
        if e is None or e.state != CREATING:
            return
        if hold and oid not in conn.held:
            conn.held.add(oid)
            e.holders += 1
        self.notify(e, self.table.seal(e, kind, None, contained))

    def notify(self, entry, waiters) -> None:
        for w in waiters:
            w.on_ready(self, entry)

    def payload_for(self, conn: Conn, e) -> tuple:
        """What to send for a READY entry; arena views are pinned for ``conn``."""
        if e.inline is None:
            e.pins += 1
            pins = conn.pins
            pins[e.oid] = pins.get(e.oid, 0) + 1
        return e.payload()

    def on_get(self, conn, msg) -> None:
        _, rid, oids = msg
        entries = self.table.entries
        missing = [oid for oid in oids if oid not in entries]
        if missing:
            conn.send((M.REPLY, rid, False, ObjectLostError(
                f"object {missing[0].hex()} is not in the object store: it was freed because no "
                f"reference to it was left, or the process that made it died before sealing it")))
            return
        left = 0
        w = None
        for oid in oids:
            e = entries[oid]
            if e.state != READY:
                if w is None:
                    w = Waiter(conn, rid, oids, 0, 0, False)
                left += 1
                if e.waiters is None:
                    e.waiters = [w]
                else:
                    e.waiters.append(w)
        if w is None:
            conn.send((M.REPLY, rid, True, [self.payload_for(conn, entries[oid]) for oid in oids]))
            return
        w.left = left
        self._start_waiting(conn, w)

    def _start_waiting(self, conn, w) -> None:
        conn.waiters.add(w)
        worker = conn.worker
        if worker is not None and (worker.task is not None or worker.actor is not None):
            w.blocking = True
            worker.blocked += 1
            if worker.blocked == 1:
                self.tasks.worker_blocked(worker)

    def _end_waiting(self, w) -> None:
        w.done = True
        conn = w.conn
        conn.waiters.discard(w)
        if w.blocking:
            worker = conn.worker
            if worker is not None:
                worker.blocked -= 1
                if worker.blocked == 0:
                    self.tasks.worker_unblocked(worker)

    def finish_get(self, w) -> None:
        self._end_waiting(w)
        entries = self.table.entries
        conn = w.conn
        conn.send((M.REPLY, w.rid, True, [self.payload_for(conn, entries[oid]) for oid in w.oids]))

    def on_wait(self, conn, msg) -> None:
        _, rid, oids, num_returns = msg
        entries = self.table.entries
        w = Waiter(conn, rid, oids, 0, num_returns, True)
        left = 0
        for oid in oids:
            e = entries.get(oid)
            if e is None or e.state != READY:
                left += 1
                if e is not None:
                    if e.waiters is None:
                        e.waiters = [w]
                    else:
                        e.waiters.append(w)
        w.left = left
        if len(oids) - left >= num_returns:
            w.done = True
            conn.send((M.REPLY, rid, True, self._ready_positions(oids)))
            return
        self._start_waiting(conn, w)

    def _ready_positions(self, oids) -> list:
        entries = self.table.entries
        out = []
        for i, oid in enumerate(oids):
            e = entries.get(oid)
            if e is not None and e.state == READY:
                out.append(i)
        return out

    def finish_wait(self, w) -> None:
        self._end_waiting(w)
        w.conn.send((M.REPLY, w.rid, True, self._ready_positions(w.oids)))

    def on_wait_now(self, conn, msg) -> None:
        _, wait_rid = msg
        for w in list(conn.waiters):
            if w.rid == wait_rid and w.is_wait and not w.done:
                self.finish_wait(w)

    def on_drop_req(self, conn, msg) -> None:
        _, rid = msg
        for w in list(conn.waiters):
            if w.rid == rid and not w.done:
                self.drop_waiter(w)
                # The one reply this request gets: lets the client forget it.
                conn.send((M.REPLY, rid, False, None))

    def drop_waiter(self, w) -> None:
        if w.done:
            return
        self._end_waiting(w)
        entries = self.table.entries
        for oid in w.oids:
            e = entries.get(oid)
            if e is not None and e.waiters:
                try:
                    e.waiters.remove(w)
                except ValueError:
                    pass

    def on_refs(self, conn, msg) -> None:
        entries = self.table.entries
        held = conn.held
        for op, oid in msg[1]:
            if op == 2:      # DECREF
                if oid in held:
                    held.discard(oid)
                    e = entries.get(oid)
                    if e is not None:
                        e.holders -= 1
                        self.release_entry(e)
            elif op == 1:    # INCREF
                if oid not in held:
                    held.add(oid)
                    e = entries.get(oid)
                    if e is None:
                        e = self.table.get_or_create(oid)
                    e.holders += 1
            else:            # UNPIN
                n = conn.pins.get(oid, 0)
                if n:
                    if n == 1:
                        del conn.pins[oid]
                    else:
                        conn.pins[oid] = n - 1
                    e = entries.get(oid)
                    if e is not None:
                        e.pins -= 1
                        self.release_entry(e)

    def release_entry(self, e) -> None:
        if e.holders <= 0 and e.pins <= 0:
            if e.kind == P.K.ACTOR_HANDLE:
                self.actors.handles_gone(e)
            self.table.release_if_unused(e)

    def on_register_fn(self, conn, msg) -> None:
        self.functions[msg[1]] = msg[2]

    def on_serializers(self, conn, msg) -> None:
        self.serializers = msg[1]
        for c in list(self.conns.values()):
            if c is not conn and c.role == "worker":
                c.send(msg)

    def on_query(self, conn, msg) -> None:
        _, rid, what, arg = msg
        try:
            result = self._query(what, arg)
            conn.send((M.REPLY, rid, True, result))
        except Exception as exc:
            conn.send((M.REPLY, rid, False, exc))

    def _query(self, what, arg):
        Q = P.Q
        if what == Q.CLUSTER_RESOURCES:
            return dict(self.resources.total)
        if what == Q.AVAILABLE_RESOURCES:
            return self.resources.snapshot_available()
        if what == Q.NODES:
            return [{"NodeID": self.node_id, "Alive": True, "NodeManagerAddress": "127.0.0.1",
                     "NodeManagerHostname": socket.gethostname(), "Resources": dict(self.resources.total),
                     "alive": True, "ObjectStoreSocketName": self.address,
                     "NodeManagerPort": 0, "MetricsExportPort": 0}]
        if what == Q.STATS:
            stats = self.table.stats()
            stats.update(workers=len(self.workers), idle=len(self.idle),
                         worker_pids=[w.pid for w in self.workers.values()],
                         ready_tasks=len(self.ready), tasks=len(self.tasks.tasks),
                         actors=self.actors.count_alive())
            return stats
        if what == Q.OBJECT_INFO:
            e = self.table.entries.get(arg)
            if e is None:
                return None
            return {"state": e.state, "holders": e.holders, "pins": e.pins, "size": e.size,
                    "inline": e.inline is not None}
        return self.actors.query(what, arg)

    def on_shutdown(self, conn, msg) -> None:
        self.stopping = True

    def on_ignore(self, conn, msg) -> None:
        pass

    @property
    def handlers(self):
        h = self.__dict__.get("_handlers")
        if h is None:
            h = [self.on_ignore] * 64
            t, a = self.tasks, self.actors
            for tag, fn in ((M.HELLO, self.on_hello), (M.SUBMIT, t.on_submit),
                            (M.PUT_INLINE, self.on_put_inline), (M.ALLOC, self.on_alloc),
                            (M.SEAL, self.on_seal), (M.GET, self.on_get), (M.WAIT, self.on_wait),
                            (M.WAIT_NOW, self.on_wait_now), (M.DROP_REQ, self.on_drop_req),
                            (M.REFS, self.on_refs), (M.REGISTER_FN, self.on_register_fn),
                            (M.SERIALIZERS, self.on_serializers), (M.TASK_DONE, t.on_task_done),
                            (M.CANCEL, t.on_cancel), (M.QUERY, self.on_query),
                            (M.ACTOR_CREATE, a.on_create), (M.ACTOR_CALL, a.on_call),
                            (M.ACTOR_KILL, a.on_kill), (M.SHUTDOWN, self.on_shutdown)):
                h[tag] = fn
            self.__dict__["_handlers"] = h
        return h

    # -- shutdown ---------------------------------------------------------------------
    def _stop_everything(self) -> None:
        for conn in list(self.conns.values()):
            if conn.role == "worker":
                conn.send((M.EXIT, "node shutting down"))
        self._flush()
        for w in self.workers.values():
            if w.conn is None and w.proc.poll() is None:
                # Still starting up: it holds nothing, so it need not exit cleanly.
                w.proc.kill()
        deadline = time.monotonic() + 1.0
        for w in list(self.workers.values()):
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for w in list(self.workers.values()):
            if w.proc.poll() is None:
                try:
                    w.proc.kill()
                except ProcessLookupError:
                    pass
        for w in list(self.workers.values()):
            try:
                w.proc.wait(5)
            except subprocess.TimeoutExpired:
                log(f"worker pid={w.pid} did not exit after SIGKILL")
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.listener.close()
        self.prefault.stop()
        os.close(self.arena_fd)


def main() -> None:
    config = json.loads(sys.argv[1])
    token = bytes.fromhex(os.environ.pop("MINIRAY_TOKEN"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    ready_fd = config.get("ready_fd")
    node = Node(config, token)
    profile_path = os.environ.get("MINIRAY_PROFILE_NODE")
    if profile_path:
        # Debugging aid: profile the node's loop (see docs/performance.md).
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        node.run(ready_fd)
    except SystemExit:
        node._stop_everything()
    except BaseException as exc:
        import traceback
        log("node crashed:\n" + traceback.format_exc())
        try:
            node._stop_everything()
        finally:
            raise SystemExit(1) from exc
    finally:
        if profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)


if __name__ == "__main__":
    main()
