"""Functions and objects that crash, exit or raise at chosen moments (the crash table's cast)."""

from __future__ import annotations

import os
import pickle
import sys
import time


def crash(delay=None):
    """A real segmentation fault."""
    if delay:
        time.sleep(delay)
    import faulthandler

    faulthandler.disable()
    faulthandler._sigsegv()


def exit_one():
    sys.exit(1)


def hard_exit(code=7):
    os._exit(code)


def raise_error(err):
    raise err()


def return_instance(cls):
    return cls()


def identity(x):
    return x


class CrashAtPickle:
    def __reduce__(self):
        crash()


class CrashAtUnpickle:
    def __reduce__(self):
        return crash, ()


class ExitAtPickle:
    def __reduce__(self):
        exit_one()


class ExitAtUnpickle:
    def __reduce__(self):
        return exit_one, ()


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("error in pickle")


class ErrorAtUnpickle:
    def __reduce__(self):
        return raise_error, (pickle.UnpicklingError,)


class UnloadableError(Exception):
    """Pickles, but cannot be rebuilt in the client."""

    def __reduce__(self):
        return raise_error, (pickle.UnpicklingError,)


class UnpicklableError(Exception):
    def __init__(self):
        super().__init__("has a lock")
        import threading

        self.lock = threading.Lock()


def raise_unloadable():
    raise UnloadableError("x")


def raise_unpicklable():
    raise UnpicklableError()


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def hold_the_gil(seconds):
    """A native call that keeps the GIL for `seconds` (libc sleep through PyDLL)."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))
    return os.getpid()


def allocate(mb):
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


def limit_address_space(mb):
    """Let this process map ``mb`` MiB more than it has mapped now (a worker forked from the
    client starts with the client's address space, a fresh one with its own)."""
    import resource

    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + mb * 1024 * 1024, resource.RLIM_INFINITY))


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def wait_for_file(path, timeout):
    """Hold a worker until `path` exists (the test creates it), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not created within {timeout} s")
        time.sleep(0.01)
