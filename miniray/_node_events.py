"""The node's events and instructions: the vocabulary between the node's
pure state (``_node_state``) and its server (``_node``).  Tuples tagged by
these enums (sent as plain ints on the hot path)."""
from __future__ import annotations

import enum

from . import _protocol as P

__all__ = ["Ev", "Do", "E", "D"]


class Ev(enum.IntEnum):
    """Events, as tuples tagged by these (sent as plain ints)."""
    START = 1          # (START, now): the server is up
    MESSAGES = 2       # (MESSAGES, cid, [msg, ...]): frames from an authenticated client
    CLOSED = 3         # (CLOSED, cid): the client's connection ended
    SPAWNED = 4        # (SPAWNED, wid, pid): a worker process was started
    WORKER_EXITED = 5  # (WORKER_EXITED, wid, description): reaped, with its exit status
    TIMER = 6          # (TIMER, name, now): a timer armed by Do.TIMER fired
    PREFAULT = 7       # (PREFAULT, reserved_upto): arena pages reserved so far
    STOP = 8           # (STOP, why): a signal, or the driver that started the node died
    # Spilling (``_node_spill``): the server's disk I/O is over.
    SPILLED = 20       # (SPILLED, file_id, error): the SPILL batch is on disk (error None)
                       #   or not at all (error: the text of the OSError)
    RESTORED = 21      # (RESTORED, oid, error): its bytes are back in its range (error None)
    # Transfers (``_node_transfer``): the server no longer reads these ranges
    # for a peer (their last chunk is written, or the link closed).
    SENT = 22          # (SENT, [oid, ...])


class Do(enum.IntEnum):
    """Instructions, as tuples tagged by these (plain ints)."""
    SEND = 1            # (SEND, cid, msg)
    WELCOME = 2         # (WELCOME, cid, info): WELCOME frame + the arena's fd
    CLOSE = 3           # (CLOSE, cid): close the connection (no CLOSED event follows)
    SPAWN = 4           # (SPAWN, wid): start a worker process
    KILL = 5            # (KILL, wid): SIGKILL the worker
    POKE = 6            # (POKE, wid, cid): SIGUSR1 once its output is written (cancels)
    TIMER = 7           # (TIMER, delay_s, name)
    PAUSE_PREFAULT = 8  # (PAUSE_PREFAULT,): a large write starts
    STOP = 9            # (STOP,): stop every worker and exit
    LOG = 10            # (LOG, text): a line for the node's log (stderr)
    READY = 11          # (READY,): the node serves (joined its cluster): tell who started it
    CONNECT = 12        # (CONNECT, cid, address): open an authenticated link to a peer node
    SEND_ARENA = 13     # (SEND_ARENA, cid, header, offset, size): the DATA header, then
                        #   the range's bytes as they are
    EXPECT_RAW = 15     # (EXPECT_RAW, cid, oid, offset, size): that link's DATA for oid
                        #   goes straight into this arena range (then DATA_DONE)
    # Spilling: done off the loop by the server's I/O thread, answered by an event.
    SPILL = 20          # (SPILL, file_id, [(oid, offset, size), ...]): write these ranges,
                        #   back to back, to a new spill file (then SPILLED)
    RESTORE = 21        # (RESTORE, oid, file_id, file_offset, size, offset): read the
                        #   bytes back into this range (then RESTORED)
    DELETE_SPILL = 22   # (DELETE_SPILL, file_id): no object needs the file any more


E = P._as_ints(Ev)
D = P._as_ints(Do)
