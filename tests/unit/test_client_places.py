"""The client's known places (``_client_places``): what it may read without
asking the node, and the ref ops that keep the node's leases right."""
from __future__ import annotations

from collections import deque

from miniray import _protocol as P
from miniray._client_places import Places

R, VALUE = P.R, P.K.VALUE
A, B = b"a" * 16, b"b" * 16
AT_A = (VALUE, (0, 64))
AT_B = (VALUE, (64, 64))


def places():
    ops = deque()
    return Places(ops), ops


def test_a_view_from_a_place_is_pinned_and_a_forgotten_place_is_not_used():
    p, ops = places()
    p.add(A, AT_A)
    assert p.take(A) == AT_A and list(ops) == [(R.PIN, A)]
    p.forget([A])
    assert p.take(A) is None and A not in p
    assert list(ops) == [(R.PIN, A), (R.FORGOT, A)]     # the PIN reaches the node first


def test_a_reply_is_learned_only_for_held_refs_and_arena_payloads():
    p, ops = places()
    since = p.epoch
    p.learn([A, B], [AT_A, (VALUE, b"inline")], {A: 1, B: 1}, since)
    assert A in p and B not in p
    p.learn([B], [AT_B], {}, since)                     # not held (any more)
    assert B not in p


def test_a_reply_read_after_a_forget_or_a_decref_teaches_nothing():
    for end in (lambda p: p.forget([B]), lambda p: p.drop(B)):
        p, ops = places()
        since = p.epoch                                 # the GET leaves
        end(p)                                          # a lease ended meanwhile
        p.learn([A], [AT_A], {A: 1}, since)
        assert A not in p


def test_the_last_ref_gone_drops_the_place():
    p, ops = places()
    p.add(A, AT_A)
    p.drop(A)
    assert A not in p and not p and not ops             # the DECREF that follows ends the lease
