"""The node daemon's server: the I/O around the node's pure state.

    driver ──┐ SUBMIT/PUT/GET/REFS                        ┌── worker (pool)
    driver ──┼──────────────►  NodeServer ── EXECUTE ─────┼── worker (pool)
             │ ◄── REPLY ────   │  ▲                      └── actor worker
             │        events    ▼  │ instructions
             │               NodeState (_node_state): tables, tasks, actors
             └── shared-memory arena (fd passed to every client, mapped once)

The server owns everything that touches the operating system: the selector,
the listening socket and the connections (handshake, framing, write
buffers; TLS on TCP links when configured, in ``_node_tls``), worker
processes (spawn, reap through pidfds, SIGKILL, SIGUSR1 pokes), timers,
signals and the arena's prefault thread.  It turns what it reads into events
for ``NodeState.handle`` and carries out the instructions that come back; it
decides nothing about tasks, objects or actors.

One loop turn: wait for readiness (or the next timer), read everything
available from every ready socket, hand all of it to the state in one
``handle`` call (which ends with one scheduling pass), carry out the
instructions, then write each connection's queued frames with one ``send``:
messages batch under load without any timer.  The node exits when the state
says STOP (SHUTDOWN, or its owning driver gone), after stopping every worker.
"""
from __future__ import annotations

import gc
import itertools
import json
import mmap
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from . import _node_tls
from . import _protocol as P
from . import _tls
from ._node_events import E, D
from ._node_conn import Conn, Sent
from ._node_state import NodeState
from ._store.arena import Prefault, create_arena_file
from ._store.spill_files import SpillFiles
from ._transport import (MAGIC, NONCE_LEN, DIGEST_LEN, CHALLENGE_LEN, CLIENT_PROOF_LEN,
                         client_proof, compare_digest, node_proof, listen, parse_address)

M = P.M
EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
HUGE_PAGE = 2 * 2**20
DIAL_TIMEOUT_S = 5.0     # a peer node's handshake must complete within this
# What a non-blocking read or write raises when it would block (with TLS on,
# its SSLWantRead/WantWrite too: see NodeServer.__init__).
WOULD_BLOCK = (BlockingIOError, InterruptedError)
POKE_TRIES = 20          # SIGUSR1s at most per cancel while output is pending
SEND = D.SEND


log = _node_tls.log


class Proc:
    """A worker process the server started."""

    __slots__ = ("wid", "popen", "pidfd", "pokes")

    def __init__(self, wid, popen):
        self.wid = wid
        self.popen = popen
        self.pidfd = None
        self.pokes = 0


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


class NodeServer(_node_tls.TLSLinks):
    def __init__(self, config: dict, token: bytes):
        global WOULD_BLOCK
        self.config = config
        self.token = token
        self.address = config["address"]
        self.sel = selectors.DefaultSelector()
        # (server, client) SSL contexts when TCP links use TLS (_node_tls);
        # plain nodes never import ssl.
        self.tls = _tls.contexts(config["tls"]) if config.get("tls") else None
        if self.tls is not None:
            WOULD_BLOCK = _node_tls.would_block()
        self.listeners = [listen(self.address)]
        peer_address = None
        if config.get("peer_listen"):
            # Other nodes (and nothing else) connect here, over TCP.
            tcp = listen(config["peer_listen"])
            self.listeners.append(tcp)
            host = config["peer_listen"].rpartition(":")[0] or "127.0.0.1"
            peer_address = f"{host}:{tcp.getsockname()[1]}"
        self.peer_address = peer_address
        for lst in self.listeners:
            self.sel.register(lst, EVENT_READ, lambda m, lst=lst: self._accept(lst))
        size = int(config["object_store_memory"])
        if config.get("huge_pages"):
            size = -(-size // HUGE_PAGE) * HUGE_PAGE
        self.arena_fd, arena_dir, warning = create_arena_file(
            size, config["session"], config.get("plasma_directory"))
        # Reserving pages of a disk-backed fallback would write them to disk.
        prefault = 0 if warning else min(size, int(config.get("prefault_bytes") or 0))
        self.prefault = Prefault(self.arena_fd, prefault)
        self.prefault_seen = 0
        config.setdefault("hostname", socket.gethostname())
        self.arena_size = size
        self._arena_map = None      # mapped on first use: objects sent to / read from peers
        self.ready_fd = None
        self.state = NodeState(config, {"arena_size": size, "arena_dir": arena_dir,
                                        "store_warning": warning, "node_pid": os.getpid(),
                                        "peer_address": peer_address})
        self.conns: dict[int, Conn] = {}
        self.dirty: list[Conn] = []
        self.procs: dict[int, Proc] = {}        # wid -> worker process
        self.events: list = []
        self.timers: list = []                  # (when, name)
        self.next_due = None                    # the earliest timer's time
        self.pokes: list = []                   # Procs to SIGUSR1 after the flush
        self.stopping = False
        self._cids = itertools.count(1)
        self._do = {D.WELCOME: self._welcome, D.CLOSE: self._close_instructed,
                    D.SPAWN: self._spawn, D.KILL: self._kill, D.POKE: self._poke,
                    D.TIMER: self._arm_timer, D.PAUSE_PREFAULT: self._pause_prefault,
                    D.STOP: self._stop, D.LOG: lambda ins: log(ins[1]),
                    D.READY: self._ready, D.CONNECT: self._connect,
                    D.SEND_ARENA: self._send_arena, D.EXPECT_RAW: self._expect_raw}
        # Spilling: the state (_node_spill) decides, this thread writes and reads.
        self.spill_io = SpillFiles(self.arena_fd, self._arena,
                                   config.get("object_spilling_directory"), config["session"])
        self.sel.register(self.spill_io.wake, EVENT_READ, self._spill_done)
        for tag in (D.SPILL, D.RESTORE, D.DELETE_SPILL):
            self._do[tag] = self.spill_io.submit
        owner = config.get("owner_pid")
        if owner:
            try:
                fd = os.pidfd_open(owner)
                self.sel.register(fd, EVENT_READ, lambda mask: self.events.append(
                    (E.STOP, "the driver that started this node exited")))
            except (OSError, AttributeError):
                pass

    # -- the loop --------------------------------------------------------------------------
    def run(self, ready_fd=None) -> None:
        self.ready_fd = ready_fd
        self.apply(self.state.handle([(E.START, time.monotonic())]))
        self.prefault.start()
        sel = self.sel
        events = self.events
        monotonic = time.monotonic
        while not self.stopping:
            # The loop runs once per batch of messages: nothing here may cost
            # more than a comparison unless it is due.
            if self.dirty or events:
                timeout = 0
            elif self.next_due is None:
                timeout = None
            else:
                timeout = max(0.0, self.next_due - monotonic())
            for key, mask in sel.select(timeout):
                key.data(mask)
            if self.next_due is not None and monotonic() >= self.next_due:
                now = monotonic()
                self._check_dials()
                due = [t for t in self.timers if t[0] <= now]
                self.timers = [t for t in self.timers if t[0] > now]
                self.next_due = min((t[0] for t in self.timers), default=None)
                events.extend((E.TIMER, name, now) for _, name in due if name)
            done = self.prefault.done_upto
            if done != self.prefault_seen:
                self.prefault_seen = done
                events.insert(0, (E.PREFAULT, done))
            if self.spill_io.held:
                self._spill_done()
            if events:
                self.events = []
                self.apply(self.state.handle(events, monotonic()))
                events = self.events
            self._flush()
            if self.pokes:
                self._poke_workers()
        self._stop_everything()

    def apply(self, instructions) -> None:
        conns = self.conns
        do = self._do
        for ins in instructions:
            if ins[0] == SEND:
                conn = conns.get(ins[1])
                if conn is not None:
                    conn.send(ins[2])
            else:
                do[ins[0]](ins)

    # -- connections --------------------------------------------------------------------------
    def _flush(self) -> None:
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            if conn.closed or not conn.pending():
                continue
            if conn.dialing is not None and conn.dialing[2] is None:
                continue            # our proof must go first: sent by _dial_step
            if not self._write(conn):
                continue
            if conn.pending() and not conn.want_write:
                conn.want_write = True
                self.sel.modify(conn.sock, EVENT_READ | EVENT_WRITE, conn.handler)

    def _write(self, conn) -> bool:
        """Send what the socket takes: queued items (frames, then object
        bytes straight from the arena) in order, then the frames after
        them.  False if the connection broke (it is closed)."""
        sock = conn.sock
        q = conn.queue
        try:
            while True:
                while q:
                    item = q[0]
                    if type(item) is Sent:      # an object's last chunk went out
                        q.popleft()
                        self.events.append((E.SENT, [item.oid]))
                        continue
                    sent = sock.send(item)
                    if sent < len(item):
                        q[0] = memoryview(item)[sent:]
                        return True
                    q.popleft()
                if conn.out:            # frames go between chunks
                    sent = sock.send(conn.out)
                    del conn.out[:sent]
                    if conn.out:
                        return True
                if not conn.streams:
                    break
                conn.next_chunk()
        except WOULD_BLOCK:
            # Over TLS nothing was taken: the same bytes (or more after
            # them) go again, as OpenSSL requires of a retried write.
            pass
        except OSError:
            self._close(conn)
            return False
        return True

    def _accept(self, listener) -> None:
        while True:
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            conn = Conn(sock, self, next(self._cids))
            tls = False
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                tls = self.tls is not None
                conn.peer = f"{addr[0]}:{addr[1]}"
                # One that connects and never authenticates is dropped.
                conn.auth_by = time.monotonic() + DIAL_TIMEOUT_S
                self._arm_timer((D.TIMER, DIAL_TIMEOUT_S, None))
            try:
                # With TLS, MAGIC and our nonce go inside it (_tls_step).
                sock.send(_tls.TLS_GREETING if tls else MAGIC + conn.nonce)
            except OSError:
                sock.close()
                continue
            self.conns[conn.cid] = conn
            self._register(conn, "greet" if tls else None)

    def _register(self, conn, tls) -> None:
        conn.tls = tls
        if tls is None:
            conn.handler = lambda m, c=conn: self._on_conn(c, m)
        else:
            conn.handler = lambda m, c=conn: self._on_tls(c, m)
        self.sel.register(conn.sock, EVENT_READ, conn.handler)

    def _on_conn(self, conn: Conn, mask) -> None:
        if mask & EVENT_WRITE:
            if not self._write(conn):
                return
            if not conn.pending():
                conn.want_write = False
                self.sel.modify(conn.sock, EVENT_READ, conn.handler)
        if not mask & EVENT_READ:
            return
        if conn.raw is not None:
            self._recv_raw(conn)
            return
        reader = conn.reader
        try:
            n = reader.recv_from(conn.sock)
        except WOULD_BLOCK:
            return
        except OSError as exc:
            if self.tls is not None:
                self._tls_error(conn, exc)
            n = 0
        if not n:
            self._close(conn)
            return
        try:
            if conn.dialing is not None:
                data = self._dial_step(conn, bytes(reader._view[:n]))
                if data is None:
                    return
                msgs = reader.feed(data)
            elif not conn.authed:
                data = self._authenticate(conn, bytes(reader._view[:n]))
                if data is None:
                    return
                msgs = reader.feed(data)
            else:
                msgs = reader.feed_scratch(n)
        except ValueError as exc:
            # Framing itself is broken (a length no miniray peer sends): the
            # stream cannot be resynchronised, so this one connection goes.
            log(f"closing a connection whose framing is broken: {exc}")
            self._close(conn)
            return
        if msgs:
            if msgs[-1][0] == M.DATA:
                self._start_raw(conn, msgs)
            else:
                self.events.append((E.MESSAGES, conn.cid, msgs))

    def _start_raw(self, conn, msgs) -> None:
        """A DATA header: its object's bytes follow, to be read straight
        into the range the state set aside for them (EXPECT_RAW)."""
        while msgs and msgs[-1][0] == M.DATA:
            header = msgs.pop()
            if msgs:
                self.events.append((E.MESSAGES, conn.cid, msgs))
            try:
                _, oid, size, pos, last = header
                dest = conn.expect.get(oid)
                if type(size) is not int or type(pos) is not int or size < 0 or pos < 0 or (
                        dest is not None and pos + size > len(dest)):
                    raise ValueError(header[:1] + header[2:])
            except (ValueError, TypeError) as exc:
                # The bytes that follow cannot be placed: the stream is lost.
                log(f"closing a connection that sent a bad DATA header: {exc}")
                self._close(conn)
                return
            if dest is not None:
                dest = dest[pos:pos + size]
            conn.raw = [dest, 0, size, oid, last]
            self._raw_bytes(conn, conn.reader.take_buffered(size))
            if conn.raw is not None:
                return              # the rest comes with later reads
            msgs = conn.reader.feed(b"")     # frames that followed the bytes

    def _raw_bytes(self, conn, data) -> None:
        dest, got, size, oid, last = conn.raw
        if data:
            if dest is not None:
                dest[got:got + len(data)] = data
            got += len(data)
            conn.raw[1] = got
        if got >= size:
            conn.raw = None
            if last:
                wanted = conn.expect.pop(oid, None) is not None
                self.events.append((E.MESSAGES, conn.cid, [(M.DATA_DONE, oid, wanted)]))

    def _recv_raw(self, conn) -> None:
        dest, got, size, oid, _ = conn.raw
        try:
            if dest is not None:
                n = conn.sock.recv_into(dest[got:], size - got)
            else:           # nobody wanted it any more: read and drop
                n = conn.sock.recv_into(conn.reader._scratch, min(size - got, P.RECV_SIZE))
        except WOULD_BLOCK:
            return
        except OSError:
            n = 0
        if not n:
            self._close(conn)
            return
        conn.raw[1] = got + n
        if got + n >= size:
            self._raw_bytes(conn, b"")
            msgs = conn.reader.feed(b"")
            if msgs:
                if msgs[-1][0] == M.DATA:
                    self._start_raw(conn, msgs)
                else:
                    self.events.append((E.MESSAGES, conn.cid, msgs))

    def _authenticate(self, conn: Conn, data: bytes):
        """The client's nonce and proof; then our proof goes first on its
        output, so it precedes the WELCOME frame.  Bytes after the proof
        are frames, parsed only now that the client is known."""
        buf = conn.reader._buf
        buf += data
        if len(buf) < CLIENT_PROOF_LEN:
            return None
        client_nonce = bytes(buf[:NONCE_LEN])
        got = bytes(buf[NONCE_LEN:CLIENT_PROOF_LEN])
        rest = bytes(buf[CLIENT_PROOF_LEN:])
        buf.clear()
        if not compare_digest(got, client_proof(self.token, conn.nonce, client_nonce)):
            peer = conn.peer or "a local process"
            if client_nonce + got == _tls.TLS_NOTICE:
                log(f"refused a connection from {peer}: it uses TLS and this node does not. "
                    f"Every node of a cluster must use TLS, or none: start this node with "
                    f"{_tls.HOW}, or drop TLS there")
            else:
                log(f"rejected a connection from {peer}: it does not hold this cluster's token")
            self._close(conn, notify=False)
            return None
        conn.authed = True
        conn.out += node_proof(self.token, conn.nonce, client_nonce)
        self.dirty.append(conn)
        return rest

    def _close(self, conn: Conn, notify=True) -> None:
        if conn.closed:
            return
        conn.closed = True
        unsent = conn.unsent()
        if unsent:
            self.events.append((E.SENT, unsent))
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if self.conns.get(conn.cid) is conn:
            del self.conns[conn.cid]
        if notify and (conn.authed or conn.dialing is not None):
            self.events.append((E.CLOSED, conn.cid))

    # -- instructions ---------------------------------------------------------------------------
    def _welcome(self, ins) -> None:
        conn = self.conns.get(ins[1])
        if conn is None:
            return
        if conn.sock.family != socket.AF_UNIX:
            # No store to pass over TCP (a client there finds no descriptor
            # and says that drivers attach to their own host's node).
            conn.send((M.WELCOME, ins[2]))
            return
        frame = P.encode((M.WELCOME, ins[2]))
        try:
            # Everything queued for it before goes first.
            if conn.out:
                conn.sock.setblocking(True)
                conn.sock.sendall(conn.out)
                conn.out.clear()
            conn.sock.setblocking(True)
            socket.send_fds(conn.sock, [frame], [self.arena_fd])
            conn.sock.setblocking(False)
        except OSError:
            self._close(conn)

    def _close_instructed(self, ins) -> None:
        conn = self.conns.get(ins[1])
        if conn is not None:
            self._close(conn, notify=False)

    def _spawn(self, ins) -> None:
        wid = ins[1]
        env = dict(os.environ)
        env["MINIRAY_ADDRESS"] = self.address
        env["MINIRAY_TOKEN"] = self.token.hex()
        env["MINIRAY_WORKER_ID"] = str(wid)
        popen = subprocess.Popen([sys.executable, "-m", "miniray._worker_main"], env=env,
                                 stdin=subprocess.DEVNULL, close_fds=True)
        proc = self.procs[wid] = Proc(wid, popen)
        try:
            proc.pidfd = os.pidfd_open(popen.pid)
            self.sel.register(proc.pidfd, EVENT_READ, lambda m, p=proc: self._reap(p))
        except OSError:
            proc.pidfd = None
        self.events.append((E.SPAWNED, wid, popen.pid))

    def _reap(self, proc: Proc) -> None:
        try:
            self.sel.unregister(proc.pidfd)
        except (KeyError, ValueError):
            pass
        os.close(proc.pidfd)
        proc.pidfd = None
        try:
            _, status = os.waitpid(proc.popen.pid, 0)
            desc = describe_exit(status)
        except ChildProcessError:
            desc = "exited"
        proc.popen.returncode = 0
        self.procs.pop(proc.wid, None)
        self.events.append((E.WORKER_EXITED, proc.wid, desc))

    def _kill(self, ins) -> None:
        proc = self.procs.get(ins[1])
        if proc is not None:
            try:
                os.kill(proc.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _poke(self, ins) -> None:
        _, wid, cid = ins
        proc = self.procs.get(wid)
        if proc is not None and all(p is not proc for p, _ in self.pokes):
            proc.pokes = POKE_TRIES
            self.pokes.append((proc, cid))

    def _poke_workers(self) -> None:
        """SIGUSR1 each poked worker once its output is written: its handler
        then reads the CANCEL_TASK.  A worker whose output is not all
        written yet is poked again next turn, a bounded number of times
        (each poke interrupts its blocking calls)."""
        pokes, self.pokes = self.pokes, []
        for proc, cid in pokes:
            if proc.wid not in self.procs:
                continue
            try:
                os.kill(proc.popen.pid, signal.SIGUSR1)
            except ProcessLookupError:
                continue
            proc.pokes -= 1
            conn = self.conns.get(cid)
            if proc.pokes > 0 and conn is not None and conn.out:
                self.pokes.append((proc, cid))
        if self.pokes:
            self._arm_timer((D.TIMER, 0.01, None))   # come back soon

    def _arm_timer(self, ins) -> None:
        when = time.monotonic() + ins[1]
        self.timers.append((when, ins[2]))
        if self.next_due is None or when < self.next_due:
            self.next_due = when

    def _ready(self, ins) -> None:
        """The node serves (and joined its cluster): tell whoever started it,
        with the address other nodes reach it at."""
        if self.ready_fd is not None:
            os.write(self.ready_fd, f"ready {self.peer_address or ''}\n".encode())
            os.close(self.ready_fd)
            self.ready_fd = None

    def _connect(self, ins) -> None:
        """A link to another node.  Non-blocking, handshake included: two
        nodes dialling each other at once must not wait on each other."""
        _, cid, address = ins
        try:
            family, sockaddr = parse_address(address)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(sockaddr)
            except BlockingIOError:
                pass
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log(f"could not connect to the node at {address}: {exc}")
            self.events.append((E.CLOSED, cid))
            return
        conn = Conn(sock, self, cid)
        conn.peer = address
        # address, bytes so far, (their nonce, ours) once sent, deadline
        conn.dialing = [address, b"", None, time.monotonic() + DIAL_TIMEOUT_S]
        self.conns[cid] = conn
        tls = self.tls is not None and family == socket.AF_INET
        self._register(conn, "dial" if tls else None)
        self._arm_timer((D.TIMER, DIAL_TIMEOUT_S, None))

    def _check_dials(self) -> None:
        """A peer that never completes the handshake fails its link in
        bounded time, whichever side dialed."""
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.dialing is not None and conn.dialing[3] <= now:
                log(f"the node at {conn.dialing[0]} did not answer within {DIAL_TIMEOUT_S:g} s")
                self._close(conn)
            elif conn.auth_by is not None and not conn.authed and conn.auth_by <= now:
                log(f"{conn.peer} connected but did not authenticate within "
                    f"{DIAL_TIMEOUT_S:g} s: closed")
                self._close(conn)

    def _dial_step(self, conn, data: bytes):
        """Our side of the handshake with a peer node; the bytes after it
        (frames) once the peer proved it holds the token, else None."""
        address, buf, nonces, _ = conn.dialing
        buf += data
        if nonces is None:
            if len(buf) >= len(MAGIC) and buf[:len(MAGIC)] != MAGIC:
                if buf[:len(MAGIC)] == _tls.TLS_GREETING:
                    log(_tls.peer_is_tls(address) + " (this node was started without TLS)")
                    self._notice(conn, _tls.PLAIN_NOTICE)
                else:
                    log(f"{address} is not a miniray node of this version")
                self._close(conn)
                return None
            if len(buf) < CHALLENGE_LEN:
                conn.dialing[1] = buf
                return None
            node_nonce = buf[len(MAGIC):CHALLENGE_LEN]
            nonce = os.urandom(NONCE_LEN)
            # Our proof goes first, before the frames queued meanwhile.
            conn.out[:0] = nonce + client_proof(self.token, node_nonce, nonce)
            self.dirty.append(conn)
            nonces = conn.dialing[2] = (node_nonce, nonce)
            buf = buf[CHALLENGE_LEN:]
        if len(buf) < DIGEST_LEN:
            conn.dialing[1] = buf
            return None
        node_nonce, nonce = nonces
        if not compare_digest(buf[:DIGEST_LEN], node_proof(self.token, node_nonce, nonce)):
            log(f"the process at {address} could not prove it holds this cluster's token: "
                f"link refused, nothing it sent was read")
            self._close(conn)
            return None
        conn.dialing = None
        conn.authed = True
        return buf[DIGEST_LEN:]

    def _arena(self):
        if self._arena_map is None:
            self._arena_map = mmap.mmap(self.arena_fd, self.arena_size)
        return self._arena_map

    def _send_arena(self, ins) -> None:
        """A DATA header, then the range's bytes from the arena as they are
        (no copy in this process: the kernel reads the shared pages)."""
        _, cid, msg, offset, size = ins
        conn = self.conns.get(cid)
        if conn is not None:
            conn.send_stream(msg[1], memoryview(self._arena())[offset:offset + size])

    def _expect_raw(self, ins) -> None:
        _, cid, oid, offset, size = ins
        conn = self.conns.get(cid)
        if conn is not None:
            conn.expect[oid] = memoryview(self._arena())[offset:offset + size]

    # -- spilling (disk I/O in _store.spill_files) ---------------------------------------------
    def _spill_done(self, mask=None) -> None:
        """SPILLED / RESTORED for the state; a SPILLED whose ranges a peer
        link is still sending waits (looked at again every turn)."""
        self.events.extend(self.spill_io.results(self.conns.values()))
        if self.spill_io.held:
            self._arm_timer((D.TIMER, 0.005, None))

    def _pause_prefault(self, ins) -> None:
        self.prefault.pause()

    def _stop(self, ins) -> None:
        self.stopping = True

    # -- shutdown ---------------------------------------------------------------------------------
    def _stop_everything(self) -> None:
        if not self.stopping:      # a signal or a crash, not the state's STOP
            self.stopping = True
            try:
                self.apply(self.state.handle([(E.STOP, "the node daemon was stopped")]))
            except Exception:
                pass
        self._flush()
        procs = list(self.procs.values())
        for p in procs:
            if p.popen.poll() is None and not self._connected(p):
                # Still starting up: it holds nothing, so it need not exit cleanly.
                p.popen.kill()
        deadline = time.monotonic() + 1.0
        for p in procs:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            if p.popen.poll() is None:
                try:
                    p.popen.kill()
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.popen.wait(5)
            except subprocess.TimeoutExpired:
                log(f"worker pid={p.popen.pid} did not exit after SIGKILL")
        for conn in list(self.conns.values()):
            conn.sock.close()
        for lst in self.listeners:
            lst.close()
        spilled = self.spill_io.stop()
        if spilled and os.environ.get("MINIRAY_VERBOSE_SPILL_LOGS", "1") != "0":
            log(spilled)
        self.prefault.stop()
        os.close(self.arena_fd)

    def _connected(self, proc) -> bool:
        w = self.state.workers.get(proc.wid)
        return w is not None and w.client is not None


def main() -> None:
    config = json.loads(sys.argv[1])
    token = bytes.fromhex(os.environ.pop("MINIRAY_TOKEN"))
    # Under a long queue the state holds millions of long-lived objects
    # (tasks, entries), and its task path makes no reference cycles: with
    # the default thresholds (a collection every 700 allocations) the full
    # collections, which walk all of them, took ~15% of the node's time.
    # Young cycles (error paths) are still collected within 50k allocations.
    gc.set_threshold(50_000, 20, 100)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    ready_fd = config.get("ready_fd")
    # Ray's knob for the lineage kept to rebuild lost results (_node_lineage).
    limit = os.environ.get("MINIRAY_MAX_LINEAGE_BYTES") or os.environ.get("RAY_max_lineage_bytes")
    if limit:
        try:
            config["max_lineage_bytes"] = max(1, int(limit))
        except ValueError:
            log(f"ignoring max_lineage_bytes={limit!r}: not a whole number of bytes")
    server = NodeServer(config, token)
    profile_path = os.environ.get("MINIRAY_PROFILE_NODE")
    if profile_path:
        # Debugging aid: profile the node's loop (see docs/performance.md).
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        server.run(ready_fd)
    except SystemExit:
        server._stop_everything()
    except BaseException as exc:
        import traceback
        log("node crashed:\n" + traceback.format_exc())
        try:
            server._stop_everything()
        finally:
            raise SystemExit(1) from exc
    finally:
        if profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)


if __name__ == "__main__":
    main()
