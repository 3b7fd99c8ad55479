"""Module-level functions for tests: workers import them by name."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import scoopexec


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def sleep_and_return(t, value=None):
    time.sleep(t)
    return value


def sleep_and_print(t, msg):
    time.sleep(t)
    print(msg)
    sys.stdout.flush()


def getpid(_=None):
    return os.getpid()


def sleep_and_raise(t, msg="failed after sleeping"):
    time.sleep(t)
    raise ValueError(msg)


def raise_value_error(msg="boom"):
    raise ValueError(msg)  # the line tests look for


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


def fib(n):
    if n < 2:
        return n
    a = scoopexec.submit(fib, n - 1)
    b = scoopexec.submit(fib, n - 2)
    return a.result() + b.result()


def chain(n):
    if n == 0:
        return 0
    return scoopexec.submit(chain, n - 1).result() + 1


INIT_STATUS = "uninitialized"


def init(x):
    global INIT_STATUS
    INIT_STATUS = x


def get_init_status():
    return INIT_STATUS


def init_fail():
    time.sleep(0.1)
    raise ValueError("error in initializer")


def put_status(x):
    """Put (pid, x) in the queue, lock or array INIT_STATUS holds (a multiprocessing object)."""
    import os

    INIT_STATUS.put((os.getpid(), x))
    return x


def put_payload(x):
    """Put (x, 20 KB) in the queue INIT_STATUS holds: more than a pipe holds, a few at a time."""
    INIT_STATUS.put((x, b"x" * 20_000))
    return x


def init_fail_logging(q):
    """As CPython's init_fail: the worker's concurrent.futures records go to ``q``, then it fails."""
    import logging
    from logging.handlers import QueueHandler

    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(QueueHandler(q))
    logger.setLevel("CRITICAL")
    logger.propagate = False
    raise ValueError("error in initializer")


def status_sum(_=None):
    return float(INIT_STATUS.sum())


def where_am_i(_=None):
    """(pid, SSH_CONNECTION, cwd, SCOOPEXEC_TEST_MARK, SLURMD_NODENAME) of the worker running this."""
    import os

    return (
        os.getpid(),
        os.environ.get("SSH_CONNECTION", ""),
        os.getcwd(),
        os.environ.get("SCOOPEXEC_TEST_MARK", ""),
        os.environ.get("SLURMD_NODENAME", ""),
    )


def slow_where(seconds):
    import time

    time.sleep(seconds)
    return where_am_i()


def crash_worker(code=1):
    """End the worker process running this task at once."""
    import os

    os._exit(code)


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def wait_for_file(path=None, value=None):
    """Returns at once without a path; with one, waits until the test creates that file."""
    if path is not None:
        while not os.path.exists(path):
            time.sleep(0.01)
    return value


def touch_then_wait(started, gate):
    """Creates `started`, then waits until the test creates `gate` (a task that runs until told)."""
    open(started, "w").close()
    while not os.path.exists(gate):
        time.sleep(0.01)
    return started


def rendezvous(directory, name, n, limit=20.0):
    """Arrive at a meeting of ``n`` tasks and wait (blocking, like real work) until all have arrived.

    Only tasks that run at the same time can all arrive: on too few workers,
    the first to arrive raises TimeoutError after ``limit`` seconds.
    """
    open(os.path.join(directory, f"arrived-{name}"), "w").close()
    end = time.monotonic() + limit
    while sum(1 for f in os.listdir(directory) if f.startswith("arrived-")) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"task {name!r} met only some of the {n} tasks in {limit:g} s")
        time.sleep(0.01)
    return name


def print_then_wait(path):
    print("started", flush=True)
    wait_for_file(path)
    return "done"


class Tally:
    """A stateful callable: each task that receives it must get its own copy."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return self.calls


def loaded_modules(_=None):
    """The names of the modules loaded in this process (a worker's, in a task)."""
    return sorted(sys.modules)


def other_threads_wakeups(seconds):
    """Burn ``seconds`` of CPU in this thread; return how often each other thread of this
    process went to sleep meanwhile (voluntary context switches, from /proc), by name."""
    me = threading.get_native_id()

    def switches():
        out = {}
        for tid in os.listdir("/proc/self/task"):
            if int(tid) != me:
                try:
                    with open(f"/proc/self/task/{tid}/status") as f:
                        text = f.read()
                    with open(f"/proc/self/task/{tid}/comm") as f:
                        name = f.read().strip()
                except OSError:
                    continue  # it ended
                count = int(text.split("voluntary_ctxt_switches:")[1].split()[0])
                out[f"{tid}:{name}"] = count
        return out

    before = switches()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    after = switches()
    return {k: v - before.get(k, 0) for k, v in after.items()}


def ignore_interrupts(seconds):
    """Sleep ``seconds``, swallowing every KeyboardInterrupt: only ending the process stops it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            pass


def running(pid):
    """Whether ``pid`` is a live process, not a zombie (one that ends while it is asked is not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def touch(path):
    """Creates `path`: the proof that this call ran."""
    open(path, "w").close()
    return path


def stamp_then_spin(path, seconds):
    """Writes the time it starts to `path`, then holds its CPU for `seconds` (no sleep, no wait)."""
    with open(path, "w") as f:
        f.write(repr(time.time()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return path


class SlowToPickle:
    """Pickles as ``value`` after ``delay`` seconds (a feeder thread's write that lags)."""

    def __init__(self, value, delay):
        self.value, self.delay = value, delay

    def __reduce__(self):
        time.sleep(self.delay)
        return (str, (self.value,))


def init_fail_after_slow_put(q):
    """Put an item that takes 0.5 s to pickle in ``q``, log the failure there, then fail."""
    q.put(SlowToPickle("put before failing", 0.5))
    init_fail_logging(q)


def held_function_frames():
    """(pid, {key: id of the buffer}) of the large function frames this worker holds
    (wire/fnframes.py): a frame received once keeps its buffer from task to task."""
    from scoopexec.worker.worker import current_worker

    held = current_worker().fns.entries
    return os.getpid(), {key: id(view.obj) for key, (_, view) in held.items()}


def forget_function_frames(_=None):
    """Make this worker lose the large function frames it holds, as a lost message would."""
    from scoopexec.worker.worker import current_worker

    fns = current_worker().fns
    n = len(fns.entries)
    fns.entries.clear()
    fns.nbytes = 0
    return n


def held_frames_in_receive_pool(_=None):
    """How many of the large function frames this worker holds still sit in the receive
    buffers' pool (wire/framing.py), which would count them against itself for good."""
    from scoopexec.wire.framing import POOL
    from scoopexec.worker.worker import current_worker

    views = [view for _, view in current_worker().fns.entries.values()]
    return sum(1 for entry in POOL._entries for v in views if v.obj is entry[0]), len(views)


def largest_function_keys_kept(_=None):
    """The longest keys this worker keeps for functions: its run-time estimates' and its
    unpickled functions' (a large frame made for one call must not be kept as one)."""
    from scoopexec.wire import serialize
    from scoopexec.worker.worker import current_worker

    def longest(keys):
        return max((len(k[1] if isinstance(k, tuple) else k) for k in keys), default=0)

    return longest(current_worker().fn_avg), longest(serialize._loaded_fns)


def run_installed(code: str, cwd: object, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``code`` in a child that finds scoopexec only as installed (no PYTHONPATH, cwd elsewhere),
    with its interpreter-start hooks on (the .pth of setup.py) unless ``env`` turns them off."""
    import importlib.metadata  # (here: workers import this module)

    import pytest

    try:
        importlib.metadata.distribution("scoopexec")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scoopexec is not installed (pip install -e .): there is no .pth to test")
    hooks_off = ("PYTHONPATH", "SCOOPEXEC_NO_JOBLIB_HOOK", "SCOOPEXEC_NO_FUTURES_HOOK")
    full = {k: v for k, v in os.environ.items() if k not in hooks_off} | env
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, check=False, timeout=90, env=full, cwd=str(cwd),
    )


@contextlib.contextmanager
def link_pair(**kw):
    """Two ends of a real socketpair, each a local link (wire/framing.Link), closed after."""
    from scoopexec.wire.framing import Link

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    la, lb = Link(a, **kw), Link(b, **kw)
    try:
        yield la, lb
    finally:
        la.close()
        lb.close()


def one_message(a, b, frames, timeout: float = 30.0):
    """Send ``frames`` from link ``a``; the message as link ``b`` receives it (``a`` may be
    non-blocking: it is flushed while ``b`` reads)."""
    a.send(frames)
    deadline = time.monotonic() + timeout
    while True:
        msgs = b.receive(1)
        if msgs:
            return msgs[0]
        a.flush()
        assert time.monotonic() < deadline and not b.eof, "the message did not arrive"
