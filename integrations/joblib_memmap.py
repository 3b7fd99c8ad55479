"""joblib's memory mapping of NumPy arrays, for the ``"scoop"`` backend's calls on local pools.

joblib's own process backends hand NumPy arrays to their workers as memory maps of files:

* an array that is a memory map of a file, or a view of one (``np.memmap(..., mode="w+")``,
  the output array of joblib's "writing results in shared memory" recipe), is opened again in
  the worker on the same file, with the same mode: what a task writes there, the client sees;
* an array larger than ``max_nbytes`` (joblib's default: 1 MB) is written once per call to a
  file in a folder of its own (``temp_folder``, else ``$JOBLIB_TEMP_FOLDER``, else /dev/shm, else
  the system's temporary folder), and each worker maps that file (``mmap_mode``, default
  ``"r"``: read-only) instead of receiving a copy: n workers reading one large array cost its
  size once, in the page cache, not n times in their memory.

Before this module the backend sent every array as a copy: the shared-output recipe silently lost
what the tasks wrote.  Only a pool whose every worker runs on this host gets maps (no ``hosts=``,
``bind=``, batch jobs or standalone broker: a worker elsewhere could not open the file); other
pools receive copies, as before.  Files are written with mode 0600 in a 0700 folder named after
this process (and its host and pid namespace); the folder is removed when the call (or the
``with Parallel(...)`` block) ends, at interpreter exit, or, if this process was killed, by the
next process of the same user, host and pid namespace that makes one in the same place (a folder
on a file system other hosts share, or a /dev/shm other containers share, may be another's).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import hashlib
import logging
import mmap
import os
import pickle
import shutil
import socket
import stat
import sys
import tempfile
import threading
import uuid
import weakref
from typing import Any

from scoopexec.client.embedded import EmbeddedSession
from scoopexec.wire import serialize

__all__ = ["MapError", "Memmapping", "pool_is_local"]

log = logging.getLogger("scoopexec.joblib")

_PREFIX = "scoopexec-joblib-"
_SHM = "/dev/shm"
_SHM_MIN_FREE = 2 << 30  # joblib's own bar for choosing /dev/shm: 2 GiB free


def pool_is_local(ex: Any) -> bool:
    """Whether every worker of ``ex`` (a ScoopExecutor) runs on this host and no other can join."""
    session = getattr(ex, "_session", None)
    if not isinstance(session, EmbeddedSession) or session.endpoint != session.private:
        return False  # a standalone broker's client, or bind=: workers may join from elsewhere
    workers = session.workers
    return workers is not None and not workers.groups and not workers.job_pools


def _root(temp_folder: str | None) -> str:
    if temp_folder:
        return os.path.abspath(os.path.expanduser(temp_folder))
    env = os.environ.get("JOBLIB_TEMP_FOLDER")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    try:
        st = os.statvfs(_SHM)
        if st.f_bavail * st.f_frsize >= _SHM_MIN_FREE and os.access(_SHM, os.W_OK | os.X_OK):
            return _SHM
    except OSError:
        pass
    return tempfile.gettempdir()


def _here() -> str:
    """This host and pid namespace, in a short name: a folder's pid means something only there
    (a temp_folder on NFS shared by a user's jobs on several nodes, containers sharing a
    /dev/shm with pid namespaces of their own)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            parts.append(fh.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # (not ours to judge: kept)
    return True


def _prune(root: str, here: str) -> None:
    """Remove the folders that processes of this host and pid namespace (``here``) made and did
    not remove as they died (SIGKILL, say): in /dev/shm they hold memory.  Only folders of this
    user's, named as ours are, whose pid no longer runs; a name that is not ours is left alone."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    uid, mine = os.geteuid(), f"{_PREFIX}{here}-"
    for name in names:
        if not name.startswith(mine):
            continue
        pid = name[len(mine) :].split("-", 1)[0]
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
                continue
            if not (pid.isascii() and pid.isdigit() and len(pid) <= 10) or _alive(int(pid)):
                continue
            shutil.rmtree(path, ignore_errors=True)
        except Exception:  # (best effort: a name another user chose must not stop a call)
            log.debug("could not look at %s", path, exc_info=True)


class MapError(OSError):
    """An array could not be written for the workers to map (no room, a folder not writable)."""


class Memmapping:
    """The memory maps of one ``Parallel`` call (or ``with Parallel(...)`` block): its folder,
    the arrays written there so far, and the pickling of its batches."""

    def __init__(self, max_nbytes: int | None, mmap_mode: str | None, temp_folder: str | None) -> None:
        if max_nbytes is not None:
            number = isinstance(max_nbytes, (int, float)) and not isinstance(max_nbytes, bool)
            if not number or not max_nbytes >= 0:
                raise ValueError(f"max_nbytes must be None or a number of bytes >= 0, not {max_nbytes!r}")
            max_nbytes = int(max_nbytes)
        if mmap_mode not in (None, "r", "r+", "w+", "c"):
            raise ValueError(f"mmap_mode must be None, 'r', 'r+', 'w+' or 'c', not {mmap_mode!r}")
        self.max_nbytes = max_nbytes if mmap_mode is not None else None  # None: no files written
        self.mode = "r+" if mmap_mode == "w+" else mmap_mode  # (w+ would empty the file)
        self._temp_folder = temp_folder
        self.folder: str | None = None
        self._written: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._lock = threading.Lock()
        self._exit: Any = None

    def wrap(self, batch: Any) -> Any:
        """``batch`` as it must travel: arrays as maps (when NumPy is loaded here at all)."""
        if "numpy" not in sys.modules:
            return batch
        return _Mapped(batch, self)

    def close(self) -> None:
        """Remove the folder (workers that still map a file keep their pages until they let go)."""
        with self._lock:
            folder, self.folder = self.folder, None
            self._written.clear()
            exit_hook, self._exit = self._exit, None
        if exit_hook is not None:
            atexit.unregister(exit_hook)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------- pickling
    def reduce(self, a: Any) -> tuple[Any, tuple[Any, ...]] | None:
        """How ``a`` (a NumPy array) travels, or None for the usual copy."""
        import numpy as np

        backing = _backing_map(a, np)
        if backing is not None:
            return _reopen(a, backing, np)
        if self.max_nbytes is None or a.dtype.hasobject or a.nbytes <= self.max_nbytes:
            return None
        return (_load, (self._write(a, np), self.mode))

    def _write(self, a: Any, np: Any) -> str:
        with self._lock:
            seen = self._written.get(id(a))
            if seen is not None and seen[0]() is a:
                return seen[1]
            folder = self._folder()
            path = os.path.join(folder, f"{len(self._written)}-{uuid.uuid4().hex[:8]}.npy")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, a, allow_pickle=False)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise MapError(
                    exc.errno,
                    f"cannot write a {a.nbytes}-byte array for the workers to map "
                    f"in {folder} ({exc.strerror}): "
                    "pass temp_folder= a folder with room, or max_nbytes=None to send arrays as copies",
                ) from exc
            try:
                self._written[id(a)] = (weakref.ref(a), path)
            except TypeError:  # (not weakly referable: written again when sent again)
                pass
            return path

    def _folder(self) -> str:
        if self.folder is None:
            root, here = _root(self._temp_folder), _here()
            _prune(root, here)
            folder = os.path.join(root, f"{_PREFIX}{here}-{os.getpid()}-{uuid.uuid4().hex}")
            try:
                os.makedirs(root, exist_ok=True)
                os.mkdir(folder, 0o700)
            except OSError as exc:
                raise MapError(
                    exc.errno or errno.EIO,
                    f"cannot make a folder for arrays the workers map in {root} ({exc.strerror}): "
                    "pass temp_folder= a writable folder, or max_nbytes=None to send arrays as copies",
                ) from exc
            self.folder = folder
            self._exit = functools.partial(shutil.rmtree, folder, ignore_errors=True)
            atexit.register(self._exit)
        return self.folder


def _backing_map(a: Any, np: Any) -> Any:
    """The np.memmap that mapped the file ``a`` is, or is a view of (the one whose base is the
    map itself: a view of an np.memmap is an np.memmap too, with the offset of the whole); None
    if none."""
    m = a
    while isinstance(m.base, np.ndarray):
        m = m.base
    if isinstance(m, np.memmap) and isinstance(m.base, mmap.mmap) and getattr(m, "filename", None):
        return m
    return None


def _reopen(a: Any, m: Any, np: Any) -> tuple[Any, tuple[Any, ...]]:
    """``a``, a view of the file map ``m``, as the same view of the file mapped again."""
    low, high = _bounds(a)
    first = a.__array_interface__["data"][0]
    offset = m.offset + (low - _bounds(m)[0])
    mode = "r+" if m.mode == "w+" else m.mode  # (w+ would empty the file)
    return (_open_view, (m.filename, mode, offset, high - low, first - low, a.dtype, a.shape, a.strides))


def _bounds(a: Any) -> tuple[int, int]:
    """The lowest address of ``a``'s elements and one past its highest byte."""
    first = a.__array_interface__["data"][0]
    if a.size == 0:
        return first, first
    low = high = first
    for n, step in zip(a.shape, a.strides, strict=True):
        reach = (n - 1) * step
        if reach < 0:
            low += reach
        else:
            high += reach
    return low, high + a.itemsize


def _load(path: str, mode: Any) -> Any:
    import numpy as np

    return np.load(path, mmap_mode=mode, allow_pickle=False)


def _open_view(
    path: str, mode: Any, offset: int, span: int, start: int,
    dtype: Any, shape: tuple[int, ...], strides: tuple[int, ...],
) -> Any:  # fmt: skip
    """The array a task receives for a view of a file map: an np.memmap when the view is the
    whole of a contiguous region, else a strided view of the region mapped."""
    import numpy as np

    dtype = np.dtype(dtype)
    if span == 0 or dtype.itemsize == 0:
        return np.empty(shape, dtype)
    if start == 0 and dtype.itemsize * int(np.prod(shape)) == span:
        for order in ("C", "F"):
            if tuple(strides) == _contiguous(shape, dtype.itemsize, order):
                return np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape, order=order)
    whole = np.memmap(path, dtype=np.uint8, mode=mode, offset=offset, shape=(span,))
    first = whole[start : start + dtype.itemsize].view(dtype)
    return np.lib.stride_tricks.as_strided(first, shape=shape, strides=strides)


def _contiguous(shape: tuple[int, ...], itemsize: int, order: str) -> tuple[int, ...]:
    strides: list[int] = []
    step = itemsize
    dims = list(shape) if order == "F" else list(reversed(shape))
    for n in dims:
        strides.append(step)
        step *= n
    return tuple(strides if order == "F" else reversed(strides))


class _Mapped:
    """A joblib batch that pickles its arrays as maps (``Memmapping.reduce``); it unpickles as
    the batch itself.  The rest pickles as scoopexec's serializer does, out-of-band buffers
    included."""

    __slots__ = ("batch", "maps")

    def __init__(self, batch: Any, maps: Memmapping) -> None:
        self.batch = batch
        self.maps = maps

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        buffers: list[pickle.PickleBuffer] = []
        data = serialize.dumps_overriding(self.batch, self._override, buffers.append)
        return (_unpickle, (data, *buffers))

    def _override(self, obj: Any) -> Any:
        np = sys.modules.get("numpy")
        if np is not None and type(obj) in (np.ndarray, np.memmap):
            return self.maps.reduce(obj)
        return None


def _unpickle(data: bytes, *buffers: Any) -> Any:
    return pickle.loads(data, buffers=buffers)
