"""Physical limits of this machine, measured beside the runtimes.

* memcpy of 1 GiB (numpy.copyto, which releases the GIL, on 1 or 2 slices
  in 1 or 2 threads) into a /dev/shm file mapping that is pre-faulted (every
  page written before the timed copy), fresh (just ftruncate'd: the copy
  pays the tmpfs page allocation, zeroing and mapping faults) or
  fallocate'd (pages allocated, not yet mapped: the copy pays minor faults),
  and into fresh private memory (np.empty);
* the rate at which a fresh /dev/shm GiB can be allocated and mapped ahead
  of use (MADV_POPULATE_WRITE), what pre-faulting an arena costs;
* a 1-byte pipe round trip between two Python processes;
* the time to spawn a Python process (bare, and one that imports numpy).

A limit is what the machine can do, and noise only makes things slower, so
each process reports the best of its samples (fastest copy, shortest round
trip); the runner reports the median and the best over repetitions.
"""
from __future__ import annotations

import mmap
import os
import subprocess
import tempfile
import time
import sys
import threading

import numpy as np

from .common import GiB, now

SHM_DIR = "/dev/shm"


MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14


class _ShmArray:
    """A /dev/shm file of `size` bytes, mapped and viewed as uint8.
    prefault: write every page (timed copies then pay no fault at all);
    fallocate: allocate the file's pages first (copies pay minor faults only);
    populate: allocate and map every page with MADV_POPULATE_WRITE (or
    MAP_POPULATE), timing it in self.populate_s."""

    def __init__(self, size, prefault=False, fallocate=False, populate=False):
        self.path = os.path.join(SHM_DIR, f"miniray-bench-limits-{os.getpid()}-{id(self)}")
        self.populate_s = None
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            if fallocate:
                os.posix_fallocate(fd, 0, size)
            t0 = now()
            self.mm = mmap.mmap(fd, size)
            if populate:
                try:
                    self.mm.madvise(MADV_POPULATE_WRITE)
                except OSError:
                    self.mm.close()
                    self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
                self.populate_s = now() - t0
        finally:
            os.close(fd)
        self.a = np.frombuffer(self.mm, dtype=np.uint8)
        if prefault:
            self.a.fill(1)

    def close(self):
        self.a = None
        try:
            self.mm.close()
        finally:
            os.unlink(self.path)


def _copy(dst, src, nthreads):
    if nthreads == 1:
        np.copyto(dst, src)
        return
    bounds = np.linspace(0, len(src), nthreads + 1).astype(np.int64)
    ts = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b]))
          for a, b in zip(bounds[:-1], bounds[1:])]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def memcpy(quick=False):
    n = GiB
    src = np.ones(n, dtype=np.uint8)  # written, so pre-faulted
    out = {}
    reps = 3
    dst = _ShmArray(n, prefault=True)
    try:
        for nt in (1, 2):
            ts = []
            for _ in range(reps):
                t0 = now()
                _copy(dst.a, src, nt)
                ts.append(now() - t0)
            out[f"memcpy_prefaulted_{nt}t_gbps"] = n / min(ts) / 1e9
    finally:
        dst.close()
    for key, kwargs in (("fresh", {"prefault": False}), ("fallocated", {"fallocate": True})):
        for nt in (1, 2):
            ts = []
            for _ in range(2 if quick else reps):
                dst = _ShmArray(n, **kwargs)      # a new mapping for every sample
                try:
                    t0 = now()
                    _copy(dst.a, src, nt)
                    ts.append(now() - t0)
                finally:
                    dst.close()
            out[f"memcpy_{key}_{nt}t_gbps"] = n / min(ts) / 1e9
    ts = []
    for _ in range(2):
        dst = _ShmArray(n, populate=True)
        ts.append(dst.populate_s)
        dst.close()
    out["shm_populate_gbps"] = n / min(ts) / 1e9
    ts = []
    for _ in range(2 if quick else reps):
        dst = np.empty(n, dtype=np.uint8)
        t0 = now()
        np.copyto(dst, src)
        ts.append(now() - t0)
        del dst
    out["memcpy_anon_fresh_1t_gbps"] = n / min(ts) / 1e9
    return out


_ECHO = (
    "import os\n"
    "while True:\n"
    "    b = os.read(0, 1)\n"
    "    if not b:\n"
    "        break\n"
    "    os.write(1, b)\n"
)


def pipe_rtt(quick=False):
    p = subprocess.Popen([sys.executable, "-c", _ECHO], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, bufsize=0)
    try:
        w = p.stdin.fileno()
        r = p.stdout.fileno()

        def rt(k):
            for _ in range(k):
                os.write(w, b"x")
                os.read(r, 1)

        rt(2000)
        batch = 5000
        per = []
        for _ in range(5):
            t0 = now()
            rt(batch)
            per.append((now() - t0) / batch * 1e6)
        return {"pipe_rtt_us": min(per)}
    finally:
        p.stdin.close()
        p.wait(timeout=10)
        p.stdout.close()


def spawn(quick=False):
    out = {}
    for key, code in (("spawn_python_s", "pass"), ("spawn_python_numpy_s", "import numpy")):
        subprocess.run([sys.executable, "-c", code], check=True)  # warm the page cache
        ts = []
        for _ in range(5):
            t0 = now()
            subprocess.run([sys.executable, "-c", code], check=True)
            ts.append(now() - t0)
        out[key] = min(ts)
    return out


def hugepages(quick=False):
    """miniray's first 1 GiB put with its arena on hugetlbfs (2 MiB pages) and
    on /dev/shm, prefault off in both.  Needs root; reserves huge pages and
    mounts hugetlbfs for the measurement only, then restores the system's
    settings.  Skipped (with the reason in the results) where not possible."""
    try:
        import miniray
    except ImportError:
        return {"_hugepages_skipped": "miniray is not importable"}
    path = "/proc/sys/vm/nr_hugepages"
    try:
        with open(path) as f:
            old = int(f.read())
    except OSError as exc:
        return {"_hugepages_skipped": f"cannot read {path}: {exc}"}
    store = GiB + 64 * 2**20
    need = old + store // (2 * 2**20) + 8
    mnt = tempfile.mkdtemp(prefix="miniray-huge-")
    mounted = False
    try:
        try:
            with open(path, "w") as f:
                f.write(str(need))
            with open(path) as f:
                got = int(f.read())
        except OSError as exc:
            return {"_hugepages_skipped": f"cannot reserve huge pages: {exc}"}
        if got < need:
            return {"_hugepages_skipped": f"the kernel reserved {got} of {need} huge pages"}
        r = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", mnt],
                           capture_output=True, text=True)
        if r.returncode:
            return {"_hugepages_skipped": f"cannot mount hugetlbfs: {r.stderr.strip()}"}
        mounted = True
        arr = np.ones(GiB // 8)
        out = {}
        for key, kwargs in (("huge_first_put_gbps", dict(huge_pages=True, plasma_directory=mnt)),
                            ("huge_shm_first_put_gbps", {})):
            miniray.init(num_cpus=2, object_store_memory=store, _prefault_bytes=0, **kwargs)
            try:
                miniray.get(miniray.put(np.ones(1024)))
                t0 = now()
                ref = miniray.put(arr)
                out[key] = arr.nbytes / (now() - t0) / 1e9
                del ref
            finally:
                miniray.shutdown()
        return out
    finally:
        # The runtime's processes may hold the arena file for a moment after
        # shutdown(): retry the unmount, and restore the reservation whatever
        # happens (it pins RAM).
        try:
            for _ in range(50):
                if not mounted or subprocess.run(["umount", mnt], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            os.rmdir(mnt)
        except OSError:
            pass
        finally:
            with open(path, "w") as f:
                f.write(str(old))


def bench_limits(quick=False):
    out = {}
    out.update(hugepages(quick))
    out.update(memcpy(quick))
    out.update(pipe_rtt(quick))
    out.update(spawn(quick))
    return out


def bench_transfer_limits(quick=False):
    from .bench_transfer import bench_raw_tcp
    return bench_raw_tcp(quick)


BENCHES = {"limits": bench_limits, "transfer": bench_transfer_limits}
