"""This process's runtime: its connection to a node, and the node it owns.

One ``Runtime`` per process, held here and nowhere else.  A driver makes it
with ``init()`` (starting a node daemon it owns, or connecting to a running
one); a worker makes it at start from its environment.  The public API
(``api``, ``remote_function``, ``actor``) reaches it through ``current()``.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

from . import _serialization as ser
from ._core import CoreClient
from ._protocol import M
from ._ids import ObjectRef, new_task_id, object_id_for
from .exceptions import RaySystemError, RuntimeNotInitializedError, SerializationError

INLINE_THRESHOLD = 100 * 1024
NODE_START_TIMEOUT = 30.0

_lock = threading.RLock()
_current = None


class Runtime:
    def __init__(self, client: CoreClient, mode: str, *, node_proc=None, namespace=None,
                 worker_state=None, session=None):
        self.client = client
        self.mode = mode
        self.node_proc = node_proc
        self.namespace = namespace
        self.worker_state = worker_state
        self.session = session
        self.address = client.address


def current() -> Runtime:
    rt = _current
    if rt is None:
        raise RuntimeNotInitializedError(
            "miniray is not initialized in this process: call miniray.init() first")
    return rt


def current_or_init() -> Runtime:
    """Like Ray, the first remote call or put starts a local node."""
    rt = _current
    if rt is not None:
        return rt
    from .api import init
    init()
    return _current


def is_initialized() -> bool:
    return _current is not None


def _default_store_size() -> int:
    import psutil
    total = psutil.virtual_memory().total
    return int(min(total * 0.3, 200 * 2**30))


def default_prefault(store_size: int) -> int:
    """How much of the arena the node reserves up front (see _node.Prefault)."""
    import psutil
    return int(min(store_size, 2**30 + 2**26, psutil.virtual_memory().total * 0.1))


def start_node(num_cpus, resources, object_store_memory, *, num_gpus=None,
               plasma_directory=None, huge_pages=False, prefault_bytes=None, owner=True,
               address=None, env_extra=None):
    """Start a node daemon; returns (address, token, process)."""
    session = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
    token = os.urandom(32)
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
    }
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
        raise RaySystemError(
            f"the miniray node daemon failed to start (exit code {proc.returncode}); its "
            f"error is printed above. Check that /dev/shm is writable and that "
            f"object_store_memory ({object_store_memory} bytes) is sensible.")
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


def set_current(rt) -> None:
    global _current
    _current = rt


def connect_driver(address, token, *, node_proc=None, namespace=None, session=None) -> Runtime:
    info = {"sys_path": driver_sys_path()}
    client = CoreClient(address, token, "driver", info=info)
    if client.welcome.get("store_warning"):
        import warnings
        warnings.warn(client.welcome["store_warning"], RuntimeWarning, stacklevel=3)
    rt = Runtime(client, "driver", node_proc=node_proc, namespace=namespace, session=session)
    set_current(rt)
    return rt


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


# -- packing task arguments ---------------------------------------------------------------

_EMPTY_ARGS = None


def pack_args(rt: Runtime, args, kwargs, describe, bind=None):
    """Serialize call arguments.  Top-level ObjectRefs become dependencies
    (their values replace them before the call); nested refs stay refs.

    Returns (inline_payload | None, args_oid | None, deps, pins).
    """
    global _EMPTY_ARGS
    if not args and not kwargs:
        if _EMPTY_ARGS is None:
            _EMPTY_ARGS = ser.dumps(([], {}, []))
        return _EMPTY_ARGS, None, [], None
    deps = []
    positions = []
    args_list = list(args)
    for i, a in enumerate(args_list):
        if type(a) is ObjectRef:
            deps.append(a._id)
            positions.append(i)
            args_list[i] = None
    if kwargs:
        kwargs = dict(kwargs)
        for k, v in kwargs.items():
            if type(v) is ObjectRef:
                deps.append(v._id)
                positions.append(k)
                kwargs[k] = None
    client = rt.client
    client.check_serializers()
    try:
        sobj = ser.serialize((args_list, kwargs, positions), where=f"the arguments of {describe}")
    except SerializationError as exc:
        raise _name_bad_argument(args, kwargs, describe, bind) or exc from None
    pins = sobj.contained_refs or None
    size = ser.encoded_size(sobj)
    if size <= client.inline_threshold:
        return ser.to_bytes(sobj), None, deps, pins
    oid = object_id_for(new_task_id(), 0)
    client.store(oid, sobj, hold=False)
    return None, oid, deps, pins


def _name_bad_argument(args, kwargs, describe, bind):
    """Re-serialize argument by argument to name the one that fails."""
    named = []
    if bind is not None:
        try:
            bound = bind(*args, **kwargs)
            named = list(bound.arguments.items())
        except TypeError:
            named = []
    if not named:
        named = [(f"#{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    for name, value in named:
        try:
            ser.serialize(value, where=f"arg '{name}' of {describe}")
        except SerializationError as exc:
            return exc
    return None
