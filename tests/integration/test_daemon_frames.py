"""The node daemon never unpickles a user's object, and a frame it cannot
decode fails that request only: the connection, the sender and the node go
on.  A raw client speaks the wire protocol to a node started by the CLI."""
from __future__ import annotations

import os
import pickle
import socket
import struct

import pytest

from miniray import _protocol as P
from miniray import _serialization as ser
from miniray._transport import (MAGIC, NONCE_LEN, DIGEST_LEN, client_proof, connect_client,
                                node_proof, parse_address)
from tests.conftest import run_driver

M = P.M


class UserError(Exception):
    """Importable by the test process, never by the daemon."""


class Explosive:
    """Unpickling this runs a command: the daemon must never do it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class RawClient:
    def __init__(self, address, token):
        family, sockaddr = parse_address(address)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(sockaddr)
        challenge = self._recv_exact(len(MAGIC) + NONCE_LEN)
        node_nonce, client_nonce = challenge[len(MAGIC):], os.urandom(NONCE_LEN)
        self.sock.sendall(client_nonce + client_proof(token, node_nonce, client_nonce))
        self.reader = P.FrameReader()
        self.sock.sendall(P.encode((M.HELLO, "driver", os.getpid(), None, {})))
        proof = self._recv_exact(DIGEST_LEN)
        assert proof == node_proof(token, node_nonce, client_nonce)
        data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 4)
        for fd in fds:
            os.close(fd)
        msgs = self.reader.feed(data)
        assert msgs and msgs[0][0] == M.WELCOME
        self.pending = list(msgs[1:])

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "the node closed the connection"
            buf += chunk
        return buf

    def send_raw(self, body: bytes):
        self.sock.sendall(struct.pack("<I", len(body)) + body)

    def send(self, msg):
        self.send_raw(pickle.dumps(msg, 5))

    def next(self):
        while not self.pending:
            data = self.sock.recv(1 << 16)
            assert data, "the node closed the connection"
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)

    def query_stats(self, rid):
        self.send((M.QUERY, rid, P.Q.STATS, None))
        reply = self.next()
        assert reply[:3] == (M.REPLY, rid, True), reply
        return reply[3]


def spec_with(retry_exc):
    tid = os.urandom(14)
    return tid, (tid, b"k" * 16, "f", b"", None, (), 1, (("CPU", 1.0),), 0, retry_exc, (),
                 None, None, None)


@pytest.fixture
def raw(cluster):
    _, env, info = cluster
    client = RawClient(info["address"], bytes.fromhex(info["token"]))
    yield client, cluster
    client.sock.close()


def test_user_class_in_a_submit_fails_that_task_only(raw):
    client, _ = raw
    tid, spec = spec_with((UserError,))    # a class by reference, not bytes
    client.send((M.SUBMIT, spec))
    ret = tid + (0).to_bytes(2, "little")
    client.send((M.GET, 1, [ret]))
    reply = client.next()
    assert reply[:3] == (M.REPLY, 1, True)
    kind, data = reply[3][0]
    assert kind == P.K.ERROR
    err = ser.loads_from(data)
    assert "UserError" in str(err) and "never unpickle" in str(err)
    assert client.query_stats(2)["objects"] >= 1      # same connection, still served


def test_user_object_in_a_request_gets_an_error_reply(raw, tmp_path):
    client, _ = raw
    marker = tmp_path / "ran"
    client.send((M.QUERY, 7, P.Q.GET_ACTOR, (Explosive(str(marker)), "ns")))
    reply = client.next()
    assert reply[:3] == (M.REPLY, 7, False)
    assert "posix.system" in str(reply[3]) or "os.system" in str(reply[3])
    assert not marker.exists(), "the daemon ran code from a frame"
    client.query_stats(8)


def test_truncated_and_garbage_frames_are_reported_not_fatal(raw):
    client, _ = raw
    whole = pickle.dumps((M.QUERY, 3, P.Q.STATS, None), 5)
    client.send_raw(whole[: len(whole) // 2])           # a cut pickle, framed
    bad = client.next()
    assert bad[0] == M.BAD_FRAME and "undecodable frame" in bad[1]
    client.send_raw(os.urandom(64))
    assert client.next()[0] == M.BAD_FRAME
    client.send_raw(pickle.dumps([1, 2, 3], 5))         # not a tagged message
    assert client.next()[0] == M.BAD_FRAME
    client.query_stats(4)


def test_unknown_tags_and_malformed_messages(raw):
    client, _ = raw
    client.send((250, 9, "x"))
    bad = client.next()
    assert bad[0] == M.BAD_FRAME and "unknown message tag 250" in bad[1]
    client.send((M.GET, 10))                            # too few fields
    reply = client.next()
    assert reply[:3] == (M.REPLY, 10, False) and "GET" in str(reply[3])
    client.send((M.PUT_INLINE,))                        # not even an id to answer
    assert client.next()[0] == M.BAD_FRAME
    client.send((M.GET, 11, "not a list of ids"))      # wrong field type
    reply = client.next()
    assert reply[:3] == (M.REPLY, 11, False)
    client.query_stats(12)


def test_node_serves_real_drivers_after_bad_frames(raw):
    client, (_, env, _) = raw
    for i in range(200):
        client.send_raw(os.urandom(32 + i))
    for _ in range(200):
        assert client.next()[0] == M.BAD_FRAME
    out = run_driver("""
        import miniray
        miniray.init(address="auto")
        @miniray.remote
        def f(x):
            return x + 1
        print("result", miniray.get(f.remote(41)))
        miniray.shutdown()
    """, env=env)
    assert out.returncode == 0, out.stderr
    assert "result 42" in out.stdout
    client.query_stats(1)


def test_wrong_token_is_refused_and_the_node_keeps_serving(raw):
    client, (_, env, info) = raw
    with pytest.raises(ConnectionError, match="rejected this process's cluster token"):
        connect_client(info["address"], b"not the token", (M.HELLO, "driver", 1, None, {}))
    client.query_stats(1)


def test_client_never_reads_a_pickle_from_a_node_without_the_token(tmp_path):
    """A fake node greets like a node, skips the proof and sends a pickle
    that would run a command: the client refuses before reading it."""
    import threading
    marker = tmp_path / "ran"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def fake_node():
        sock, _ = listener.accept()
        with sock:
            sock.sendall(MAGIC + os.urandom(NONCE_LEN))
            sock.recv(1 << 16)
            evil = pickle.dumps(Explosive(str(marker)), 5)
            sock.sendall(os.urandom(DIGEST_LEN) + struct.pack("<I", len(evil)) + evil)
            sock.recv(1)
    t = threading.Thread(target=fake_node, name="fake-node")
    t.start()
    try:
        with pytest.raises(ConnectionError, match="could not prove it holds"):
            connect_client(f"127.0.0.1:{port}", b"token", (M.HELLO, "driver", 1, None, {}))
    finally:
        t.join(10)
        listener.close()
    assert not marker.exists()


def test_pickle_sent_before_auth_never_runs_and_10k_frames_do_not_stop_the_node(raw, tmp_path):
    client, (_, env, info) = raw
    marker = tmp_path / "ran"
    family, sockaddr = parse_address(info["address"])
    # A peer that skips the handshake and sends a code-running pickle.
    for _ in range(3):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sockaddr)
        s.recv(len(MAGIC) + NONCE_LEN)
        evil = pickle.dumps(Explosive(str(marker)), 5)
        try:
            s.sendall(struct.pack("<I", len(evil)) + evil + os.urandom(64))
            assert s.recv(1 << 16) == b""           # closed, nothing answered
        except ConnectionResetError:
            pass
        s.close()
    assert not marker.exists(), "the node unpickled bytes from an unauthenticated peer"
    # 10k random frames from an authenticated client: each one answered, none fatal.
    for i in range(10_000):
        client.send_raw(os.urandom(16 + i % 64))
    for _ in range(10_000):
        assert client.next()[0] == M.BAD_FRAME
    client.query_stats(1)
