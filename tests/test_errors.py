"""Errors people can act on: each says what happened, where (host, worker, task) and what to do."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading

import pytest

from scoopexec import (
    BrokenScoopExecutor,
    InitializerError,
    ScoopExecutor,
    SerializationError,
    WorkerLostError,
)
from scoopexec.launch import describe_returncode


def _kill_my_worker():
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_task_that_kills_its_worker_names_the_task_the_worker_the_signal_and_the_remedy():
    host = socket.gethostname()
    with ScoopExecutor(2, max_retries=0) as ex:  # two workers: the pool survives the loss
        pids = ex.worker_pids
        with pytest.raises(WorkerLostError) as info:
            ex.submit(_kill_my_worker).result(timeout=60)
    text = str(info.value)
    assert "_kill_my_worker(): task" in text  # the task, named by the client
    assert "was lost 1 time with its worker, more than max_retries=0 allows" in text
    where = re.search(rf"last: worker \S+ \(pid (\d+) on {re.escape(host)}\)", text)
    assert where and int(where.group(1)) in pids, text
    assert "was killed by signal 9 (SIGKILL) - often the out-of-memory killer" in text
    assert f"see `dmesg` on {host}" in text
    assert "raise max_retries" in text


def test_exit_descriptions():
    assert describe_returncode(-9, "node2") == (
        "was killed by signal 9 (SIGKILL) - often the out-of-memory killer (see `dmesg` on node2) "
        "or a kill -9"
    )
    assert "segmentation fault in native code" in describe_returncode(-11)
    assert describe_returncode(3) == "exited with code 3"  # maybe a task's os._exit(3)
    assert describe_returncode(3, own=True) == "exited with code 3 (it lost its broker)"
    assert describe_returncode(1) == "exited with code 1"


def test_unpicklable_arguments_say_what_cannot_travel(one_worker):
    with pytest.raises(SerializationError) as info:
        one_worker.submit(abs, threading.Lock()).result(timeout=60)
    text = str(info.value)
    assert text.startswith("cannot send the arguments to a worker: TypeError:")
    assert "lock" in text and "pass what is needed to recreate them instead" in text


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def _return_unpicklable():
    return _Unpicklable()


def test_unpicklable_result_names_its_type_and_worker(one_worker):
    with pytest.raises(SerializationError) as info:
        one_worker.submit(_return_unpicklable).result(timeout=60)
    text = str(info.value)
    pid = one_worker.worker_pids[0]
    assert f"_Unpicklable cannot be pickled on worker {socket.gethostname()}:{pid} (pid {pid} on " in text
    assert "TypeError: this object refuses to be pickled (return plain data" in text


def _bad_init():
    raise OSError("no licence server")


def test_initializer_failure_says_where_and_what_to_do():
    with ScoopExecutor(1, initializer=_bad_init) as ex:
        with pytest.raises(InitializerError) as info:
            ex.submit(abs, 1).result(timeout=60)
    text = str(info.value)
    assert "fix the initializer (its traceback follows) and start a new executor" in text
    assert "OSError: no licence server" in text and f"on {socket.gethostname()})" in text


def test_tasks_left_at_shutdown_say_why():
    ex = ScoopExecutor(1)
    fut = ex.submit(__import__("time").sleep, 30)
    ex._link.request_stop()  # the pool goes away under the future
    ex.shutdown(wait=True)
    with pytest.raises(BrokenScoopExecutor, match=r"shut down before this task completed .*wait=True"):
        fut.result(timeout=60)


def test_bad_heartbeat_settings_show_the_values():
    with pytest.raises(ValueError, match=r"got heartbeat=2 and heartbeat_timeout=1"):
        ScoopExecutor(1, heartbeat=2, heartbeat_timeout=1)
