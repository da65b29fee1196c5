"""This process's runtime: its connection to a node, and the node it owns.

One ``Runtime`` per process, held here and nowhere else.  A driver makes it
with ``init_driver`` (the body of ``miniray.init``: start a node daemon it
owns, or connect to a running one); a worker makes it at start from its
environment (``connect_worker``).  Everything above (``api``, ``_submit``,
``remote_function``, ``actor``) reaches it through ``current()`` or
``current_or_init()``; this module imports nothing from them.

``init`` returns a ``RayContext`` (Ray's dict-like context manager).  A
second driver joins a node with ``init(address=...)`` when it has the
node's token, found in this order (Ray's token auth, with our names):
MINIRAY_AUTH_TOKEN (the token as text), the file MINIRAY_AUTH_TOKEN_PATH
names, then the file a driver that started a node with a token of its own
writes for its user (``<cluster dir>/node-<session>.json``, mode 0600,
removed at its shutdown).  ``init()`` starts its node with the token the
user set, if any.  "auto" and a cluster's HEAD:PORT go to the host's
cluster files (``_cluster_file``, written by ``miniray start``).

Jobs: the node numbers drivers as they connect: ``(node index << 16) |
counter``, unique in a cluster without a round trip (the head, and a node
of its own, is node 0: its first driver is job 1).  A task carries its job
in its spec's EXTRA only when it is not job 1, the common case of one
driver, so that costs nothing; a worker reads it back from the running
task (``job_of``), and sends what the task prints to that job's driver
(``_task_output``; the node finds the job's node from its index).
"""
from __future__ import annotations

import atexit
import glob
import json
import numbers
import os
import select
import subprocess
import sys
import threading
import time

from collections.abc import Mapping

from . import _serialization as ser
from . import _task_spec as S
from ._cluster_file import cluster_dir, read_cluster_file
from ._core import CoreClient
from ._options import plain_str
from ._protocol import M
from ._task_kind import TaskKind, kind_of
from .exceptions import (DEFAULT_NODE_IP, RaySystemError, RuntimeNotInitializedError,
                         set_cause_check)

INLINE_THRESHOLD = 100 * 1024
NODE_START_TIMEOUT = 30.0
FIRST_JOB = 1               # the job the head (or a lone node) gives its first driver
TOKEN_ENV = "MINIRAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "MINIRAY_AUTH_TOKEN_PATH"

# A task error's cause must survive our own serializer (which knows the
# user's custom serializers), not only plain cloudpickle.
set_cause_check(lambda obj: ser.loads_from(ser.dumps(obj)))

# Serializes init and shutdown: one runtime per process, never half made.
_init_lock = threading.Lock()
_current = None


class Runtime:
    """This process's connection to its node; ``address`` and ``session``
    name the node.  In a worker, ``worker_state`` is what it is running."""

    def __init__(self, client: CoreClient, mode: str, *, node_proc=None, namespace=None,
                 worker_state=None, session=None, job_config=None):
        self.client = client
        self.mode = mode
        self.node_proc = node_proc
        self.namespace = namespace
        self.worker_state = worker_state
        self.session = session
        self.job_config = job_config
        self.address = client.address
        self.token_file = None      # the file this driver wrote for other drivers

    @property
    def job_id(self) -> int:
        """The job this process works for now: a driver's own; in a worker,
        the job of the task running on this thread."""
        st = self.worker_state
        if st is None:
            return self.client.job_id
        return job_of(st.current_spec(), getattr(st, "actor_spec", None))

    @property
    def node_ip(self) -> str:
        return self.client.welcome.get("node_ip") or DEFAULT_NODE_IP


def job_of(spec, actor_spec=None) -> int:
    """The job of a running task: from its spec's EXTRA (absent: job 1); an
    actor call runs in the job of its actor's creation spec, which the worker
    keeps as ``WorkerState.actor_spec``."""
    if spec is not None and kind_of(spec) is TaskKind.ACTOR_CALL:
        spec = actor_spec
    extra = spec[S.EXTRA] if spec is not None else None
    if extra:
        return extra.get("job_id", FIRST_JOB)
    return FIRST_JOB


def job_hex(job: int) -> str:
    """A job id as Ray prints it: 4 bytes, little-endian, in hex (job 1 is
    '01000000')."""
    return job.to_bytes(4, "little").hex()


class RayContext(Mapping):
    """What ``init()`` returns (Ray's context): ``address_info`` describes
    the node, ``ctx["address"]`` reads it like a dict, and ``with
    init(...):`` shuts the runtime down at the end of the block."""

    def __init__(self, rt: Runtime):
        self._rt = rt
        welcome = rt.client.welcome
        self.dashboard_url = None        # miniray has no dashboard
        self.python_version = "{}.{}.{}".format(*sys.version_info[:3])
        # The package is imported by now (an attribute read, not an import).
        self.ray_version = getattr(sys.modules.get(__package__), "__version__", None)
        self.ray_commit = None
        self.address_info = {
            "address": rt.address, "gcs_address": rt.address,
            "node_ip_address": rt.node_ip, "raylet_ip_address": rt.node_ip,
            "node_id": rt.client.node_id, "session_name": welcome.get("session"),
            "object_store_address": rt.address, "raylet_socket_name": rt.address,
            "webui_url": None, "session_dir": None, "metrics_export_port": None,
        }

    @property
    def address(self) -> str:
        return self._rt.address

    @property
    def session(self):
        return self._rt.session

    def __getitem__(self, key):
        return self.address_info[key]

    def __iter__(self):
        return iter(self.address_info)

    def __len__(self):
        return len(self.address_info)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.disconnect()

    def disconnect(self) -> None:
        """Shut this process's runtime down (Ray's name)."""
        if _current is self._rt:
            shutdown_driver()

    def __repr__(self):
        return f"RayContext(address={self.address!r}, node_id={self.address_info['node_id']!r})"


def current() -> Runtime:
    rt = _current
    if rt is None:
        raise RuntimeNotInitializedError(
            "miniray is not initialized in this process: call miniray.init() first")
    return rt


def current_or_none():
    """This process's runtime, or None before ``init``."""
    return _current


def current_or_init() -> Runtime:
    """Like Ray, the first remote call or put starts a local node."""
    rt = _current
    if rt is not None:
        return rt
    # Two threads may get here at once: the second gets the first's runtime.
    return init_driver(ignore_reinit_error=True)


def is_initialized() -> bool:
    return _current is not None


def set_current(rt) -> None:
    global _current
    _current = rt


# -- init / shutdown (the bodies of miniray.init and miniray.shutdown) ----------------------

def init_driver(address=None, *, num_cpus=None, num_gpus=None, resources=None,
                object_store_memory=None, ignore_reinit_error=False, namespace=None,
                huge_pages=False, plasma_directory=None, prefault_bytes=None,
                job_config=None, log_to_driver=True, object_spilling_directory=None,
                object_spilling_threshold=None) -> Runtime:
    """Start a local node (or connect to ``address``); make this process's runtime.
    ``log_to_driver=False``: what this driver's tasks print stays in the
    logs of the nodes (for a node it starts itself: its stderr, where the
    node's own messages go)."""
    with _init_lock:
        if _current is not None:
            if ignore_reinit_error:
                return _current
            raise RuntimeError("miniray.init() was already called in this process. Call "
                               "miniray.shutdown() first, or pass ignore_reinit_error=True.")
        object_store_memory = _check_init_args(num_cpus, resources, object_store_memory,
                                               huge_pages, plasma_directory)
        spilling = check_spilling(object_spilling_directory, object_spilling_threshold)
        namespace = plain_str(namespace, "namespace", none_ok=True)
        if namespace is None and job_config is not None:
            namespace = job_config.ray_namespace
        if address is None:
            address = os.environ.get("RAY_ADDRESS") or os.environ.get("MINIRAY_CLUSTER")
        if address not in (None, "local"):
            given = [k for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus),
                                    ("resources", resources),
                                    ("object_store_memory", object_store_memory),
                                    ("object_spilling_directory", object_spilling_directory),
                                    ("object_spilling_threshold", object_spilling_threshold))
                     if v is not None]
            if given:
                raise ValueError(
                    f"When connecting to an existing cluster, {', '.join(given)} must not be "
                    f"provided: the node at {address!r} already has its resources. Drop "
                    f"them, or call init() without an address to start a node of your own.")
            addr, token = token_for(address)
            return connect_driver(addr, token, namespace=namespace, job_config=job_config,
                                  log_to_driver=log_to_driver)
        cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
        store = object_store_memory or _default_store_size()
        user_token = configured_token()
        addr, token, proc, session = start_node(
            cpus, resources, store, num_gpus=num_gpus, plasma_directory=plasma_directory,
            huge_pages=huge_pages, prefault_bytes=prefault_bytes, token=user_token,
            spilling=spilling)
        try:
            rt = connect_driver(addr, token, node_proc=proc, namespace=namespace,
                                session=session, job_config=job_config,
                                log_to_driver=log_to_driver)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if user_token is None:
            # Only a token this driver made: one the user set, they have.
            rt.token_file = write_node_token_file(session, addr, token)
        return rt


def shutdown_driver() -> None:
    """Stop this process's runtime; stops the node too if it owns it."""
    with _init_lock:
        rt = _current
        if rt is None:
            return
        set_current(None)
        stop(rt)


def _check_init_args(num_cpus, resources, object_store_memory, huge_pages, plasma_directory):
    """Refuse bad init arguments before anything starts; returns
    ``object_store_memory`` as an int (Ray takes a float such as 2e9)."""
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int)
                                 or num_cpus < 0):
        raise ValueError(f"num_cpus must be a non-negative int, got {num_cpus!r}")
    if resources is not None:
        if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                for k, v in resources.items()):
            raise TypeError("resources must be a dict of name -> non-negative amount")
        for k in ("CPU", "GPU"):
            if k in resources:
                raise ValueError(f"use num_cpus/num_gpus instead of resources={{'{k}': ...}}")
    if object_store_memory is not None:
        if isinstance(object_store_memory, bool) or not isinstance(
                object_store_memory, numbers.Real) or object_store_memory < 1 << 20:
            raise ValueError(f"object_store_memory must be a number of bytes, at least 1 MiB "
                             f"(e.g. 2e9), got {object_store_memory!r}")
        object_store_memory = int(object_store_memory)
    if huge_pages and plasma_directory is None:
        raise ValueError("huge_pages=True needs plasma_directory= set to a hugetlbfs mount")
    return object_store_memory


def check_spilling(directory, threshold) -> dict:
    """The spilling options, checked (for ``init`` and ``miniray start``):
    where spilled objects go (a directory made at the first spill, default
    the temp dir; its parents are made too) and the fraction of the store
    above which objects are spilled ahead of need."""
    out = {}
    if directory is not None:
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(f"object_spilling_directory must be a path (str), got "
                             f"{directory!r}")
        out["object_spilling_directory"] = os.path.abspath(os.fspath(directory))
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or \
                not 0 < threshold <= 1:
            raise ValueError(f"object_spilling_threshold must be a fraction of the object "
                             f"store in (0, 1] (objects are spilled to disk once the store is "
                             f"that full; default 0.8), got {threshold!r}")
        out["object_spilling_threshold"] = float(threshold)
    return out


def _default_store_size() -> int:
    import psutil
    total = psutil.virtual_memory().total
    return int(min(total * 0.3, 200 * 2**30))


def default_prefault(store_size: int) -> int:
    """How much of the arena the node reserves up front (see _node.Prefault)."""
    import psutil
    return int(min(store_size, 2**30 + 2**26, psutil.virtual_memory().total * 0.1))


def default_memory(object_store_memory) -> int:
    """The ``memory`` resource a node offers tasks unless told: the memory
    available now minus the store's (as Ray does)."""
    import psutil
    return max(0, int(psutil.virtual_memory().available - object_store_memory))


def start_node(num_cpus, resources, object_store_memory, *, num_gpus=None,
               plasma_directory=None, huge_pages=False, prefault_bytes=None, owner=True,
               address=None, env_extra=None, cluster=None, token=None, memory=None,
               spilling=None):
    """Start a node daemon; returns (address, token, process, session).  Its
    token is ``token`` if given, else a new random one; ``spilling``: what
    ``check_spilling`` returned."""
    session = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    token = token or os.urandom(32)
    address = address or f"unix:@miniray-{session}"
    sys_path = driver_sys_path()
    config = {
        "session": session, "node_id": os.urandom(14).hex(), "address": address,
        "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or {},
        "object_store_memory": int(object_store_memory), "owner_pid": os.getpid() if owner else None,
        "inline_threshold": INLINE_THRESHOLD, "plasma_directory": plasma_directory,
        "huge_pages": huge_pages,
        "prefault_bytes": default_prefault(object_store_memory) if prefault_bytes is None
        else prefault_bytes,
        "sys_path": sys_path,
        "memory": default_memory(object_store_memory) if memory is None else int(memory),
    }
    config.update(spilling or {})
    if cluster:
        # is_head, peer_listen "ip:port", head_address, node_ip (see _node_cluster)
        config.update(cluster)
    r, w = os.pipe()
    config["ready_fd"] = w
    env = dict(os.environ)
    env["MINIRAY_TOKEN"] = token.hex()
    # Workers import the driver's modules as the driver does.
    env["PYTHONPATH"] = os.pathsep.join([p for p in (_script_dir(), os.getcwd()) if p] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if env_extra:
        env.update(env_extra)
    proc = subprocess.Popen([sys.executable, "-m", "miniray._node", json.dumps(config)],
                            env=env, pass_fds=(w,), stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=os.getcwd())
    os.close(w)
    try:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                break
            # poll, not select: select fails for descriptors >= 1024.
            poller = select.poll()
            poller.register(r, select.POLLIN)
            if poller.poll(min(left, 0.5) * 1000):
                chunk = os.read(r, 64)
                if not chunk:
                    break
                buf += chunk
    finally:
        os.close(r)
    if not buf.startswith(b"ready"):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if cluster is not None and cluster.get("head_address"):
            hint = (f"Check that the head at {cluster['head_address']} is up and reachable from "
                    f"here, that this node has the cluster's token (and its TLS settings, if "
                    f"the head uses TLS), and that object_store_memory ({object_store_memory} "
                    f"bytes) is sensible.")
        else:
            hint = (f"Check that /dev/shm is writable and that object_store_memory "
                    f"({object_store_memory} bytes) is sensible.")
        raise RaySystemError(
            f"the miniray node daemon failed to start (exit code {proc.returncode}); its "
            f"error is printed above. {hint}")
    if cluster is not None:
        # "ready <ip:port>": where other nodes reach this one.
        cluster["peer_address"] = buf.split(b"\n")[0].decode().partition(" ")[2] or None
        cluster["node_id"] = config["node_id"]
    return address, token, proc, session


def driver_sys_path() -> list:
    """The driver's import path, for workers to import user code the same way
    (a test runner or notebook may have added entries at run time)."""
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


def _script_dir():
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path:
        return os.path.dirname(os.path.abspath(path))
    return None


def connect_driver(address, token, *, node_proc=None, namespace=None, session=None,
                   job_config=None, log_to_driver=True) -> Runtime:
    info = {"sys_path": driver_sys_path()}
    if os.environ.get("MINIRAY_DIRECT_CALLS", "1") != "0":
        info["leases"] = True       # its tasks may go straight to a leased worker
    if not log_to_driver:
        info["log_to_driver"] = False       # the node keeps this job's task output in its log
    client = CoreClient(address, token, "driver", info=info)
    if client.welcome.get("store_warning"):
        import warnings
        warnings.warn(client.welcome["store_warning"], RuntimeWarning,
                      stacklevel=user_stacklevel())
    rt = Runtime(client, "driver", node_proc=node_proc, namespace=namespace,
                 session=session or client.welcome.get("session"), job_config=job_config)
    set_current(rt)
    return rt


# -- tokens: what a driver needs to join a node ----------------------------------------------

def configured_token():
    """The token the user set (bytes of its text), or None: MINIRAY_AUTH_TOKEN,
    else the file MINIRAY_AUTH_TOKEN_PATH names.  A path that cannot be read
    is an error, not a fallback (as in Ray): a typo would otherwise make a
    node with a token nobody has."""
    text = os.environ.get(TOKEN_ENV)
    if text and text.strip():
        return text.strip().encode()
    path = os.environ.get(TOKEN_PATH_ENV)
    if not path:
        return None
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as exc:
        raise RuntimeError(f"cannot read the token file {path!r} named by {TOKEN_PATH_ENV} "
                           f"({exc.strerror}): fix the path, or unset {TOKEN_PATH_ENV}") from None
    if not text:
        raise RuntimeError(f"the token file {path!r} named by {TOKEN_PATH_ENV} is empty: write "
                           f"the cluster token in it, or unset {TOKEN_PATH_ENV}")
    return text.encode()


def token_for(address: str):
    """(address to connect to, token) for ``init(address=...)``.  A node
    started by ``init()`` (a ``unix:`` address): the token the user set,
    else the file its driver wrote for this user.  Anything else ("auto", a
    cluster's HEAD:PORT): the host's cluster files (``_cluster_file``)."""
    if address.startswith("unix:"):
        token = configured_token() or _token_from_node_files(address)
        if token is not None:
            return address, token
    try:
        return read_cluster_file(address)
    except ConnectionError as exc:
        if not address.startswith("unix:"):
            raise
        raise ConnectionError(
            f"{exc}. A node started by init() in another process can be joined by the same "
            f"user (its token is in {cluster_dir()}, while its driver runs), or by anyone "
            f"given its token in {TOKEN_ENV} or in a file named by {TOKEN_PATH_ENV}.") from None


def _node_files():
    return glob.glob(os.path.join(cluster_dir(), "node-*.json"))


def write_node_token_file(session, address, token) -> str:
    """Write the token of the node this driver started, for other drivers of
    this user (mode 0600 in the 0700 cluster directory); prune files left by
    drivers that died without shutting down."""
    for path in _node_files():
        _read_node_file(path)            # removes it if its driver is gone
    path = os.path.join(cluster_dir(), f"node-{session}.json")
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"address": address, "token": token.hex(), "pid": os.getpid()}, f)
    os.replace(path + ".tmp", path)
    return path


def _read_node_file(path):
    """A node file's contents, or None (and the file removed) if the driver
    that wrote it is gone: its node went with it."""
    try:
        with open(path) as f:
            info = json.load(f)
        os.kill(info["pid"], 0)
        return info
    except PermissionError:
        return info
    except (OSError, ValueError, KeyError, TypeError):
        _remove_quietly(path)
        return None


def _token_from_node_files(address):
    for path in _node_files():
        info = _read_node_file(path)
        if info is not None and info.get("address") == address:
            return bytes.fromhex(info["token"])
    return None


def _remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def user_stacklevel() -> int:
    """``stacklevel`` for a warning issued by the calling function that
    points at the user's line: the first frame outside miniray (a node may
    be started by ``init()``, ``f.remote()`` or ``put()``)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def connect_worker(worker_state, on_push) -> Runtime:
    address = os.environ.pop("MINIRAY_ADDRESS")
    token = bytes.fromhex(os.environ.pop("MINIRAY_TOKEN"))
    wid = int(os.environ.pop("MINIRAY_WORKER_ID"))
    client = CoreClient(address, token, "worker", worker_id=wid, on_push=on_push)
    missing = [p for p in client.welcome.get("sys_path") or [] if p not in sys.path]
    sys.path[0:0] = missing
    rt = Runtime(client, "worker", worker_state=worker_state)
    set_current(rt)
    return rt


def stop(rt: Runtime) -> None:
    """Disconnect; stop the node too if this process owns it."""
    client = rt.client
    proc = rt.node_proc
    if rt.token_file is not None:
        _remove_quietly(rt.token_file)
        rt.token_file = None
    if proc is not None:
        try:
            client.send((M.SHUTDOWN,))
        except Exception:
            pass
    client.close()
    ser.shutdown_copy_pool()
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@atexit.register
def _shutdown_at_exit():
    rt = _current
    if rt is not None and rt.mode == "driver":
        set_current(None)
        try:
            stop(rt)
        except Exception:
            pass
