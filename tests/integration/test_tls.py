"""TLS on the TCP links between nodes (``--tls-cert/--tls-key``): real nodes
started with the CLI, each with its own cluster directory (a "host"), the
joiner reaching the head through a recording TCP proxy so the test can look
at what crosses the wire.  Certificates are made here, with the
``cryptography`` package if it is installed, else with the ``openssl`` CLI;
skipped (with the reason) when neither exists."""
from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest

from miniray import _tls
from miniray._protocol import M
from miniray._transport import MAGIC, connect_client
from tests.conftest import assert_clean, run_driver, wait_gone

STORE = str(64 * 2**20)


# -- certificates -------------------------------------------------------------------------------

def _make_cert_cryptography(cert_path, key_path, cn):
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _make_cert_openssl(cert_path, key_path, cn):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key_path),
                    "-out", str(cert_path), "-days", "2", "-subj", f"/CN={cn}"],
                   check=True, capture_output=True, timeout=60)


def _cert_maker():
    if importlib.util.find_spec("cryptography") is not None:
        return _make_cert_cryptography, None
    if shutil.which("openssl"):
        return _make_cert_openssl, None
    return None, "neither the cryptography package nor the openssl CLI is installed"


_make_cert, _why_not = _cert_maker()
pytestmark = pytest.mark.skipif(_make_cert is None, reason=_why_not or "")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The cluster's self-signed certificate (pinned: no CA) and another one."""
    d = tmp_path_factory.mktemp("certs")
    out = {}
    for name in ("cluster", "stranger"):
        _make_cert(d / f"{name}.pem", d / f"{name}.key", f"miniray-{name}")
        os.chmod(d / f"{name}.key", 0o600)
        out[name] = (str(d / f"{name}.pem"), str(d / f"{name}.key"))
    return out


# -- hosts and a recording proxy ----------------------------------------------------------------

class Host:
    """A cluster directory of its own: one `miniray start` per host."""

    def __init__(self, path):
        path.mkdir(exist_ok=True)
        self.dir = path
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MINIRAY_AUTH_TOKEN", "MINIRAY_TLS_", "RAY_TLS_",
                                         "RAY_USE_TLS"))}
        self.env["MINIRAY_CLUSTER_DIR"] = str(path)

    def cli(self, *args, env=None, check=True):
        out = subprocess.run([sys.executable, "-m", "miniray.cli", *args], capture_output=True,
                             text=True, env={**self.env, **(env or {})}, timeout=90)
        if check:
            assert out.returncode == 0, out.stdout + out.stderr
        return out

    def info(self):
        try:
            return json.loads((self.dir / "cluster.json").read_text())
        except OSError:
            return None

    def log(self) -> str:
        try:
            return (self.dir / "node.log").read_text()
        except OSError:
            return ""

    def pids(self) -> set:
        info = self.info()
        if info is None:
            return set()
        try:
            return {info["pid"]} | {p.pid for p in
                                    psutil.Process(info["pid"]).children(recursive=True)}
        except psutil.Error:
            return {info["pid"]}

    def stop(self):
        pids = self.pids()
        self.cli("stop", check=False)
        return pids


class Proxy:
    """Forwards TCP connections to ``target`` and records every byte, per
    connection and direction."""

    def __init__(self, target):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.lsock.getsockname()[1]}"
        self.streams = []           # [to target (bytearray), from target (bytearray)]
        self.stopping = False
        self.socks = [self.lsock]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping:
            ready, _, _ = select.select([self.lsock], [], [], 0.1)
            if not ready:
                continue
            try:
                a, _ = self.lsock.accept()
                b = socket.create_connection(self.target)
            except OSError:
                continue
            rec = [bytearray(), bytearray()]
            self.streams.append(rec)
            self.socks += [a, b]
            for src, dst, buf in ((a, b, rec[0]), (b, a, rec[1])):
                t = threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst, buf):
        while not self.stopping:
            ready, _, _ = select.select([src], [], [], 0.1)
            if not ready:
                continue
            try:
                data = src.recv(1 << 18)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            buf += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.stopping = True
        for t in self.threads:
            t.join(5)
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, certs):
    """A TLS head ("host" h) and a TLS node ("host" j) that joined it
    through a recording proxy, both started with the CLI.  Stopped and
    checked for leftover processes and shared memory at the end."""
    root = tmp_path_factory.mktemp("tls-cluster")
    cert, key = certs["cluster"]
    head, joiner = Host(root / "h"), Host(root / "j")
    proxy = None
    try:
        out = head.cli("start", "--head", "--port", "0", "--num-cpus", "1", "--resources",
                       '{"H": 1}', "--object-store-memory", STORE,
                       "--tls-cert", cert, "--tls-key", key)
        assert "(TLS)" in out.stdout and "--tls-cert" in out.stdout
        proxy = Proxy(head.info()["peer_address"])
        # The joiner takes its TLS settings from the environment.
        joiner.cli("start", "--address", proxy.address, "--num-cpus", "1", "--resources",
                   '{"B": 1}', "--object-store-memory", STORE,
                   env={"MINIRAY_AUTH_TOKEN_PATH": str(head.dir / "token"),
                        "MINIRAY_TLS_CERT": cert, "MINIRAY_TLS_KEY": key})
        status = head.cli("status").stdout
        assert "2 node(s) alive" in status and "(TLS)" in status
        yield head, joiner, proxy
    finally:
        pids = set()
        for h in (joiner, head):
            pids |= h.stop()
        if proxy is not None:
            proxy.close()
        left = wait_gone(pids, timeout=20)
        assert not left, f"processes left behind: {left}"
        assert_clean(set())


# -- tests --------------------------------------------------------------------------------------

def test_tls_cluster_runs_tasks_on_both_nodes_and_moves_20mb(tls_cluster, certs):
    head, joiner, proxy = tls_cluster
    secret = f"secret-payload-{uuid.uuid4().hex}"
    # A driver on the joiner's host, joining with the head's address over
    # the (TLS) link; its TLS settings in the environment do not disturb its
    # local Unix connection.
    driver = run_driver(f"""
        import hashlib
        import numpy as np
        import miniray
        miniray.init(address={proxy.address!r})
        here = miniray.get_runtime_context().get_node_id()

        @miniray.remote(resources={{"H": 1}})
        def on_head(arr, word):
            return (hashlib.sha256(arr.tobytes()).hexdigest(), word,
                    miniray.get_runtime_context().get_node_id())

        @miniray.remote(resources={{"H": 1}})
        def make_on_head():
            return np.arange(2_500_000, dtype=np.float64) * 3

        @miniray.remote(resources={{"B": 1}})
        def on_joiner():
            return miniray.get_runtime_context().get_node_id()

        arr = np.random.default_rng(7).random(2_500_000)        # 20 MB, pushed to the head
        digest, word, there = miniray.get(on_head.remote(miniray.put(arr), {secret!r}),
                                          timeout=120)
        print("digest-ok", digest == hashlib.sha256(arr.tobytes()).hexdigest())
        print("word-ok", word == {secret!r})
        print("nodes", len({{there, miniray.get(on_joiner.remote(), timeout=60), here}}))
        back = miniray.get(make_on_head.remote(), timeout=120)   # 20 MB, pulled from the head
        print("back-ok", bool((back == np.arange(2_500_000, dtype=np.float64) * 3).all()))
        miniray.shutdown()
    """, env={**joiner.env, "MINIRAY_TLS_CERT": certs["cluster"][0],
              "MINIRAY_TLS_KEY": certs["cluster"][1]}, timeout=180)
    assert driver.returncode == 0, driver.stdout + driver.stderr
    assert "digest-ok True" in driver.stdout and "word-ok True" in driver.stdout
    assert "nodes 2" in driver.stdout and "back-ok True" in driver.stdout, driver.stdout
    # Both arrays crossed the proxied link, encrypted: none of it in clear.
    up = b"".join(bytes(s[0]) for s in proxy.streams)
    down = b"".join(bytes(s[1]) for s in proxy.streams)
    assert len(up) > 20e6 and len(down) > 20e6, (len(up), len(down))
    token = (head.dir / "token").read_text().strip().encode()
    for stream in (up, down):
        assert secret.encode() not in stream
        assert token not in stream
        assert MAGIC not in stream               # not even the miniray handshake
        assert b"numpy" not in stream and b"miniray" not in stream


def test_tls_listener_speaks_tls_before_anything_else(tls_cluster, certs):
    head, joiner, proxy = tls_cluster
    addr = head.info()["peer_address"]
    host, _, port = addr.rpartition(":")
    # A plain socket gets the TLS greeting and then nothing: no nonce in clear.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.settimeout(1.0)
        got = b""
        try:
            while len(got) < 64:
                data = s.recv(64)
                if not data:
                    break
                got += data
        except socket.timeout:
            pass
    assert got == _tls.TLS_GREETING
    # What the head sent to the joiner: that greeting, then TLS records
    # (handshake 0x16 or application data 0x17, TLS 1.2+ version bytes).
    down = bytes(proxy.streams[0][1])
    rest = down[len(_tls.TLS_GREETING):]
    assert down.startswith(_tls.TLS_GREETING) and rest[:1] == b"\x16" and rest[1:2] == b"\x03"
    up = bytes(proxy.streams[0][0])
    assert up[:1] == b"\x16" and up[1:2] == b"\x03"     # the joiner's ClientHello
    # A client with the cluster's certificate and token passes both
    # handshakes over TCP (the welcome arrives, inside TLS)...
    token = (head.dir / "token").read_text().strip().encode()
    tls = _tls.settings(*certs["cluster"])
    sock, welcome, fds, _, _ = connect_client(addr, token, (M.HELLO, "driver", 0, None, None),
                                              tls=tls)
    sock.close()
    assert welcome["node_id"] == head.info()["node_id"] and fds == []
    # ...while a certificate the cluster does not trust is refused.
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="certificate"):
        connect_client(addr, token, (M.HELLO, "driver", 0, None, None),
                       tls=_tls.settings(*certs["stranger"]))
    assert time.monotonic() - t0 < 10
    assert _wait_log(head, "certificate (TLSV1_ALERT")     # the head says why, too


def _wait_log(host, text, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in host.log():
            return True
        time.sleep(0.05)
    return text in host.log()


def test_plain_driver_and_plain_node_against_tls_fail_clearly(tls_cluster, tmp_path):
    head, joiner, proxy = tls_cluster
    addr = head.info()["peer_address"]
    token = (head.dir / "token").read_text().strip().encode()
    # A plain client (no TLS settings) over TCP: refused at once, saying why.
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        connect_client(addr, token, (M.HELLO, "driver", 0, None, None), tls=None)
    assert time.monotonic() - t0 < 5
    assert "requires TLS" in str(err.value) and "--tls-cert" in str(err.value)
    assert "MINIRAY_TLS_CERT" in str(err.value)
    assert _wait_log(head, "it does not use TLS and this node requires it")
    # A plain node: `miniray start` fails within seconds, the reason on its stderr.
    plain = Host(tmp_path / "plain")
    t0 = time.monotonic()
    out = plain.cli("start", "--address", addr, "--num-cpus", "1", "--object-store-memory",
                    STORE, env={"MINIRAY_AUTH_TOKEN_PATH": str(head.dir / "token")},
                    check=False)
    assert out.returncode != 0 and time.monotonic() - t0 < 30
    assert "requires TLS" in out.stderr and "--tls-cert" in out.stderr, out.stderr
    assert plain.info() is None
    # The TLS cluster keeps serving.
    status = head.cli("status").stdout
    assert "2 node(s) alive" in status
    driver = run_driver("""
        import miniray
        miniray.init(address="auto")
        @miniray.remote(resources={"B": 1})
        def f(x):
            return x + 1
        print("ok", miniray.get(f.remote(1), timeout=60))
        miniray.shutdown()
    """, env=head.env)
    assert driver.returncode == 0 and "ok 2" in driver.stdout, driver.stderr


def test_tls_node_against_a_plain_head_fails_clearly(cluster, tmp_path, certs):
    cli, env, info = cluster
    addr = info["peer_address"]
    joiner = Host(tmp_path / "tls-joiner")
    t0 = time.monotonic()
    out = joiner.cli("start", "--address", addr, "--num-cpus", "1", "--object-store-memory",
                     STORE, "--tls-cert", certs["cluster"][0], "--tls-key", certs["cluster"][1],
                     env={"MINIRAY_AUTH_TOKEN_PATH": os.path.join(env["MINIRAY_CLUSTER_DIR"],
                                                                 "token")},
                     check=False)
    assert out.returncode != 0 and time.monotonic() - t0 < 30
    assert "does not use TLS" in out.stderr and "--tls-cert" in out.stderr, out.stderr
    assert joiner.info() is None
    log = open(os.path.join(env["MINIRAY_CLUSTER_DIR"], "node.log")).read()
    assert "it uses TLS and this node does not" in log
    assert "1 node(s) alive" in cli("status").stdout


@pytest.mark.skipif(not shutil.which("openssl"), reason="the openssl CLI makes the CA here")
def test_nodes_with_certificates_of_one_ca(tmp_path, certs):
    """--tls-ca: each node has its own certificate, signed by the CA."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60,
                       cwd=tmp_path)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=miniray-test-ca")
    for n in ("a", "b"):
        run("req", *ec, "-keyout", f"{n}.key", "-out", f"{n}.csr", "-subj", f"/CN=node-{n}")
        run("x509", "-req", "-in", f"{n}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{n}.pem", "-days", "2")
    ca = str(tmp_path / "ca.pem")
    head, joiner, stranger = Host(tmp_path / "h"), Host(tmp_path / "j"), Host(tmp_path / "s")
    try:
        head.cli("start", "--head", "--port", "0", "--num-cpus", "1", "--object-store-memory",
                 STORE, "--tls-cert", str(tmp_path / "a.pem"), "--tls-key",
                 str(tmp_path / "a.key"), "--tls-ca", ca)
        addr = head.info()["peer_address"]
        token = {"MINIRAY_AUTH_TOKEN_PATH": str(head.dir / "token")}
        # Ray's variable names work too.
        joiner.cli("start", "--address", addr, "--num-cpus", "1", "--resources", '{"B": 1}',
                   "--object-store-memory", STORE,
                   env={**token, "RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": str(tmp_path / "b.pem"),
                        "RAY_TLS_SERVER_KEY": str(tmp_path / "b.key"), "RAY_TLS_CA_CERT": ca})
        driver = run_driver("""
            import miniray
            miniray.init(address="auto")
            @miniray.remote(resources={"B": 1})
            def f():
                return "on-b"
            print(miniray.get(f.remote(), timeout=60))
            miniray.shutdown()
        """, env=head.env)
        assert driver.returncode == 0 and "on-b" in driver.stdout, driver.stderr
        # A certificate the CA did not sign cannot join.
        out = stranger.cli("start", "--address", addr, "--num-cpus", "1",
                           "--object-store-memory", STORE, "--tls-cert", certs["stranger"][0],
                           "--tls-key", certs["stranger"][1], "--tls-ca", ca, env=token,
                           check=False)
        assert out.returncode != 0 and "TLS with" in out.stderr, out.stderr
        assert stranger.info() is None
        assert "2 node(s) alive" in head.cli("status").stdout
    finally:
        pids = joiner.stop() | head.stop() | stranger.stop()
        assert not wait_gone(pids, timeout=20)
    assert_clean(set())


def test_tls_settings_from_flags_and_environment(tmp_path):
    cert, key, ca = (str(tmp_path / n) for n in ("c.pem", "k.pem", "ca.pem"))
    assert _tls.settings(environ={}) is None
    assert _tls.settings(cert, key, environ={}) == {"cert": cert, "key": key, "ca": None}
    assert _tls.settings(environ={"MINIRAY_TLS_CERT": cert, "MINIRAY_TLS_KEY": key,
                                  "MINIRAY_TLS_CA": ca})["ca"] == ca
    ray = {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": cert, "RAY_TLS_SERVER_KEY": key,
           "RAY_TLS_CA_CERT": ca}
    assert _tls.settings(environ=ray) == {"cert": cert, "key": key, "ca": ca}
    assert _tls.settings(environ={**ray, "RAY_USE_TLS": "0"}) is None
    with pytest.raises(ValueError, match="both"):
        _tls.settings(cert, None, environ={})
    with pytest.raises(ValueError, match="RAY_TLS_SERVER_KEY"):
        _tls.settings(environ={"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": cert})
    with pytest.raises(ValueError, match="cannot load"):
        _tls.contexts({"cert": cert, "key": key, "ca": None})
    # The CLI refuses a missing file before starting anything.
    out = Host(tmp_path / "h").cli("start", "--head", "--port", "0", "--tls-cert", cert,
                                   "--tls-key", key, check=False)
    assert out.returncode == 2 and "cannot load" in out.stderr
