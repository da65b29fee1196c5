import pytest

from miniray import _protocol as P
from miniray._transport import digest, parse_address


def test_frames_split_anywhere():
    msgs = [(P.Msg.SUBMIT, b"x" * 1000, [1, 2]), (P.Msg.REFS, [(1, b"a" * 16)]),
            (P.Msg.SHUTDOWN,)]
    data = b"".join(P.encode(m) for m in msgs)
    for cut in range(0, len(data), 7):
        r = P.FrameReader()
        got = r.feed(data[:cut]) + r.feed(data[cut:])
        assert got == msgs
        assert r.pending_bytes() == 0


def test_oversized_frame_rejected():
    r = P.FrameReader()
    with pytest.raises(ValueError, match="too large"):
        r.feed(b"\xff\xff\xff\xff" + b"x")


def test_address_parsing():
    import socket
    assert parse_address("unix:@abc") == (socket.AF_UNIX, "\0abc")
    assert parse_address("127.0.0.1:6379") == (socket.AF_INET, ("127.0.0.1", 6379))
    assert parse_address("tcp:localhost:1") == (socket.AF_INET, ("localhost", 1))
    with pytest.raises(ValueError):
        parse_address("nonsense")


def test_digest_depends_on_token_and_nonce():
    assert digest(b"t", b"n") != digest(b"t", b"m") != digest(b"u", b"n")


def test_interrupted_dispatch_repeats_rather_than_loses():
    r = P.FrameReader()
    data = b"".join(P.encode((P.M.REPLY, i, True, None)) for i in range(5))
    r._scratch[:len(data)] = data
    r.push_scratch(len(data))
    seen = []

    def handle(msg):
        seen.append(msg[1])
        if msg[1] == 2 and seen.count(2) == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        r.dispatch(handle)
    r.dispatch(handle)
    assert seen == [0, 1, 2, 2, 3, 4]
    assert not r.ready
