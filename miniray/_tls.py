"""Optional TLS on the TCP links of a cluster (stdlib ``ssl``, TLS 1.2+).

Settings, first found wins: ``miniray start --tls-cert CERT --tls-key KEY
[--tls-ca CA]`` (``Cluster.add_node(tls_cert=..., tls_key=..., tls_ca=...)``);
``MINIRAY_TLS_CERT`` / ``MINIRAY_TLS_KEY`` / ``MINIRAY_TLS_CA``; Ray's
``RAY_USE_TLS=1`` with ``RAY_TLS_SERVER_CERT`` / ``RAY_TLS_SERVER_KEY`` /
``RAY_TLS_CA_CERT``.  Both ends of a link present their certificate and
verify the other's (mutual TLS) against the CA, or, without a CA, against
the certificate itself (a self-signed certificate shared by the cluster
pins it).  Hostnames are not checked: nodes are addressed by IP.

On the wire (TCP only; Unix sockets on one host stay plain)::

    node (TLS)   -> client   b"MRAYT"            in clear: "TLS from here on"
    client       -> node     TLS handshake, then inside TLS the usual
                             miniray handshake (MAGIC + nonce, both proofs)
                             and frames

A plain node greets with ``MAGIC`` instead, so each side knows from the
first five bytes whether the other speaks TLS.  On a mismatch the side that
finds out sends a notice of its own kind (``PLAIN_NOTICE`` / ``TLS_NOTICE``,
never a secret) so the other side can log why, and both fail at once with a
message naming the setting.  A side with TLS configured never falls back to
plain: rewriting the greeting in transit gains an attacker nothing.  The
token handshake still runs inside TLS: TLS protects the bytes, the token
proves membership.
"""
from __future__ import annotations

import os

__all__ = ["TLS_GREETING", "PLAIN_NOTICE", "TLS_NOTICE", "settings", "contexts",
           "client_context", "server_context", "HOW"]

TLS_GREETING = b"MRAYT"
# Exactly a client proof's length (nonce + HMAC), so a plain node reads it
# where it expects the proof, and the proof check is where it is recognised.
TLS_NOTICE = b"MRAYT: this peer speaks TLS; set --tls-cert/--tls-key".ljust(64, b".")
PLAIN_NOTICE = b"MRAYP: this peer does not speak TLS".ljust(64, b".")
HOW = ("--tls-cert/--tls-key of `miniray start` (or MINIRAY_TLS_CERT/MINIRAY_TLS_KEY, with "
       "MINIRAY_TLS_CA for a CA-signed certificate)")
_TRUE = ("1", "true", "yes", "on")


def settings(cert=None, key=None, ca=None, environ=None) -> dict | None:
    """{"cert", "key", "ca"} (absolute paths; ca may be None) or None for no
    TLS.  Arguments win; else MINIRAY_TLS_*, else RAY_USE_TLS + RAY_TLS_*."""
    env = os.environ if environ is None else environ
    source = "--tls-cert/--tls-key"
    if not (cert or key or ca):
        cert, key, ca = (env.get("MINIRAY_TLS_CERT"), env.get("MINIRAY_TLS_KEY"),
                         env.get("MINIRAY_TLS_CA"))
        source = "MINIRAY_TLS_CERT/MINIRAY_TLS_KEY"
        if not (cert or key or ca) and env.get("RAY_USE_TLS", "").strip().lower() in _TRUE:
            cert, key, ca = (env.get("RAY_TLS_SERVER_CERT"), env.get("RAY_TLS_SERVER_KEY"),
                             env.get("RAY_TLS_CA_CERT"))
            source = "RAY_USE_TLS=1 with RAY_TLS_SERVER_CERT/RAY_TLS_SERVER_KEY"
            if not (cert and key):
                raise ValueError("RAY_USE_TLS=1 needs RAY_TLS_SERVER_CERT and "
                                 "RAY_TLS_SERVER_KEY (and RAY_TLS_CA_CERT for a CA)")
    if not (cert or key or ca):
        return None
    if not (cert and key):
        raise ValueError(f"TLS needs both a certificate and its key ({source}; the CA alone "
                         f"is not enough)")
    return {"cert": os.path.abspath(cert), "key": os.path.abspath(key),
            "ca": os.path.abspath(ca) if ca else None}


# ``ssl`` is imported where it is used: processes without TLS never load it.

def _common(ctx, tls):
    import ssl
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["cert"], tls["key"])
    # Without a CA the certificate itself is the trust anchor: every node
    # shares it, and a peer must present that very certificate.
    ctx.load_verify_locations(cafile=tls["ca"] or tls["cert"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(tls):
    import ssl
    return _common(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls)


def client_context(tls):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False      # nodes are addressed by IP: the CA (or pin) decides
    return _common(ctx, tls)


def contexts(tls) -> tuple:
    """(server context, client context); raises ValueError with the file at
    fault if a certificate, key or CA cannot be loaded."""
    try:
        return server_context(tls), client_context(tls)
    except OSError as exc:          # ssl.SSLError included
        raise ValueError(f"cannot load the TLS certificate {tls['cert']}, key {tls['key']}"
                         f"{' or CA ' + tls['ca'] if tls['ca'] else ''}: {exc}") from None


def peer_is_plain(address) -> str:
    """The TLS side's error when the other side greeted in clear."""
    return (f"the node at {address} does not use TLS, but this process does: every node of a "
            f"cluster must use TLS, or none. Start that node with {HOW}, or drop TLS here")


def peer_is_tls(address) -> str:
    """The plain side's error when the other side greeted with TLS."""
    return (f"the node at {address} requires TLS and this process does not use it: give it "
            f"the cluster's certificate with {HOW}")


def handshake_failed(peer, exc) -> str:
    """Why TLS with ``peer`` failed (``exc``: an ``ssl.SSLError``)."""
    verify = getattr(exc, "verify_message", None)
    reason = str(verify or getattr(exc, "reason", None) or exc)
    rule = ("every node needs a certificate signed by the CA the others trust (--tls-ca / "
            "MINIRAY_TLS_CA), or, without a CA, the very certificate the others have")
    if verify:
        return f"TLS with {peer} failed: its certificate is not trusted here ({reason}): {rule}"
    if "ALERT" in reason and ("CA" in reason or "CERTIFICATE" in reason):
        return f"TLS with {peer} failed: it refused this side's certificate ({reason}): {rule}"
    return f"TLS with {peer} failed ({reason}): the connection is closed"
