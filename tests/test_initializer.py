"""initializer/initargs run in every worker; a failing one breaks the executor clearly."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time

import pytest

from scoopexec import InitializerError, ScoopExecutor
from tests import helpers


def test_initializer_runs_in_every_worker():
    with ScoopExecutor(max_workers=2, initializer=helpers.init, initargs=("initialized",)) as ex:
        futures = [ex.submit(helpers.get_init_status) for _ in range(8)]
        assert [f.result() for f in futures] == ["initialized"] * 8


def test_failing_initializer_breaks_the_executor(caplog):
    ex = ScoopExecutor(max_workers=2, initializer=helpers.init_fail)
    try:
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            try:
                fut = ex.submit(helpers.get_init_status)
            except cf.BrokenExecutor:
                pass
            else:
                with pytest.raises(cf.BrokenExecutor):
                    fut.result(timeout=30)
            deadline = time.monotonic() + 30
            while not ex._broken and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ex._broken
            with pytest.raises(InitializerError, match="initializer"):
                ex.submit(helpers.get_init_status)
        assert any("ValueError: error in initializer" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
    finally:
        ex.shutdown(wait=True)


def test_initializer_must_be_callable_and_picklable():
    import threading

    with pytest.raises(TypeError):
        ScoopExecutor(max_workers=1, initializer=42)  # type: ignore[arg-type]
    lock = threading.Lock()
    with pytest.raises(Exception, match="initializer"):
        ScoopExecutor(max_workers=1, initializer=helpers.init, initargs=(lock,))


def test_lambda_initializer():
    with ScoopExecutor(max_workers=1, initializer=lambda: helpers.init("from lambda")) as ex:
        assert ex.submit(helpers.get_init_status).result() == "from lambda"


def test_process_pool_executor_arguments_in_its_order():
    # ScoopExecutor(max_workers, mp_context, initializer, initargs), as ProcessPoolExecutor.
    import multiprocessing

    with ScoopExecutor(1, multiprocessing.get_context("spawn"), helpers.init, ("positional",)) as ex:
        assert ex.submit(helpers.get_init_status).result(timeout=60) == "positional"


def test_mp_context_that_cannot_be_honoured_is_refused():
    import multiprocessing

    with pytest.raises(ValueError, match="'fork' start method cannot be honoured"):
        ScoopExecutor(1, mp_context=multiprocessing.get_context("fork"))
    with pytest.raises(TypeError, match="mp_context must be a multiprocessing context"):
        ScoopExecutor(1, mp_context="spawn")
