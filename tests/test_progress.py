"""map(..., progress=True): a bar with completed / total and rate; joblib's verbose through the backend."""

from __future__ import annotations

import io
import re

import pytest

from scoopexec import ScoopExecutor
from scoopexec.progress import MapProgress, PlainBar
from tests import helpers
from tests.conftest import run_script

NO_TQDM = "import sys; sys.modules['tqdm'] = None  # as if tqdm were not installed\n"


def _square(x):
    return x * x


def _fail_at(x, bad):
    if x == bad:
        raise ValueError(f"item {bad} is bad")
    return x


def test_plain_progress_without_tqdm_counts_every_item():
    r = run_script(
        NO_TQDM
        + """
from scoopexec import ScoopExecutor
import scoopexec

def square(x):
    return x * x

def gen(n):
    yield from range(n)

if __name__ == "__main__":
    with ScoopExecutor(2) as ex:
        assert list(ex.map(square, range(37), progress=True)) == [x * x for x in range(37)]
        print("after first map", flush=True)
        assert list(ex.map(square, range(23), chunksize=5, progress="chunked")) == [x * x for x in range(23)]
        assert sorted(ex.map(square, gen(19), buffersize=4, unordered=True, progress=True)) == [
            x * x for x in range(19)
        ]
        assert list(ex.map(square, range(5))) == [x * x for x in range(5)]  # no bar unless asked
    with ScoopExecutor(1, progress=True) as ex:
        assert sum(scoopexec.map(square, range(11))) == sum(x * x for x in range(11))
        assert sum(ex.map(square, range(7), progress=False)) == sum(x * x for x in range(7))
    print("ok")
"""
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["after", "first", "map", "ok"]
    err = r.stderr.decode().splitlines()
    # stderr is a pipe: no redrawing, a final line per map with the count, the total and the rate
    assert [line.split(" (")[0] for line in err] == [
        "square: 37/37", "chunked: 23/23", "square: 19/19", "square: 11/11",
    ]  # fmt: skip
    for line in err:
        assert re.search(r"\(100%\) [\d,.]+ tasks/s, [\d.]+ s$", line), line


def test_plain_bar_lines_and_redraws():
    out = io.StringIO()
    bar = PlainBar("work", file=out)
    assert not bar.tty
    assert bar.line(0, 10, bar.start + 1) == "work: 0/10 (0%) 0.0 tasks/s, 1.0 s"
    assert bar.line(4, 10, bar.start + 2) == "work: 4/10 (40%) 2.0 tasks/s, 3.0 s left"
    assert bar.line(7, None, bar.start + 1) == "work: 7 done, 7.0 tasks/s, 1.0 s"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = MapProgress(3, "t", file=tty, plain=True)
    for _ in range(3):
        p.task_done()
    p.finish()
    text = tty.getvalue()
    assert text.startswith("\rt: 1/3") and text.endswith("\n") and "t: 3/3 (100%)" in text
    assert text.count("\n") == 1  # redrawn in place, one line in the end


def test_early_exit_and_errors_close_the_bar_with_the_count_reached():
    r = run_script(
        NO_TQDM
        + """
import time
from scoopexec import ScoopExecutor

def slow(x):
    time.sleep(0.2)
    return x

def fail_at(x, bad):
    if x == bad:
        raise ValueError(f"item {bad} is bad")
    return x

if __name__ == "__main__":
    with ScoopExecutor(1) as ex:
        it = ex.map(slow, range(10), progress="early")
        assert [next(it), next(it)] == [0, 1]
        it.close()
        try:
            list(ex.map(fail_at, range(6), [3] * 6, progress="failing"))
        except ValueError as exc:
            print(exc)
"""
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "item 3 is bad"
    early, failing = r.stderr.decode().splitlines()
    done = int(re.match(r"early: (\d+)/10 ", early).group(1))
    assert 2 <= done < 10, early
    assert re.match(r"failing: \d/6 ", failing), failing


def test_tqdm_bar_shows_count_total_and_rate(executor, capsys):
    pytest.importorskip("tqdm")
    assert list(executor.map(_square, range(100), progress=True)) == [x * x for x in range(100)]
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("_square: 100%") and "100/100" in final and "task/s" in final


def test_tqdm_bar_learns_the_total_of_a_generator(executor, capsys):
    pytest.importorskip("tqdm")
    out = list(executor.map(_square, (x for x in range(30)), buffersize=5, progress="gen"))
    assert out == [x * x for x in range(30)]
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("gen: 100%") and "30/30" in final


def test_progress_counts_items_that_fail_or_are_cancelled():
    p = MapProgress(4, "x", file=io.StringIO(), plain=True)
    with ScoopExecutor(1) as ex:
        futs = [ex.submit(helpers.sleep_and_return, 1)]
        futs += [ex.submit(abs, -1) for _ in range(3)]
        for f in futs:
            f.add_done_callback(lambda _f: p.task_done())
        futs[-1].cancel()
        for f in futs:
            if not f.cancelled():
                f.result(timeout=60)
    assert p.n == 4
    p.finish()
    assert p.closed


def test_joblib_verbose_reports_progress_through_the_backend(capfd):
    joblib = pytest.importorskip("joblib")
    from joblib.parallel import BACKENDS

    import scoopexec  # registers the backend

    assert scoopexec
    assert "scoop" in BACKENDS, "importing scoopexec and joblib did not register the 'scoop' backend"
    with joblib.parallel_backend("scoop", n_jobs=2):
        out = joblib.Parallel(verbose=10)(joblib.delayed(abs)(-i) for i in range(20))
    assert out == list(range(20))
    err = capfd.readouterr().err
    assert "Using backend ScoopBackend with 2 concurrent workers" in err, err
    # Progress lines come from the backend's completion callbacks.  Not "Done 20 out of 20":
    # joblib prints that last line from the callback of the last task only if it has found its
    # input exhausted by then, and with tasks this short the last one can finish first (CI at
    # 63ca3b0: its last line was "Done 5 tasks", then the batch size growing).
    assert re.search(r"Done\s+\d+ (tasks|out of)", err), err


def test_the_bar_is_complete_before_a_consumer_that_stops_at_the_last_item_goes_on():
    # DEAP's eaSimple zips the population with map's results: zip never asks past the last one.
    r = run_script(
        NO_TQDM
        + """
import sys
sys.stderr = sys.stdout  # one stream, so that the order can be checked
from scoopexec import ScoopExecutor

def square(x):
    return x * x

if __name__ == "__main__":
    with ScoopExecutor(2) as ex:
        for generation in range(3):
            fits = ex.map(square, range(10), progress="gen")
            assert sum(f for _, f in zip(range(10), fits)) == 285
            print(f"generation {generation} done", flush=True)
"""
    )
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    expected = []
    for generation in range(3):
        expected += ["gen: 10/10", f"generation {generation} done"]
    assert [line.split(" (")[0] for line in lines] == expected


def test_a_chunked_map_over_a_generator_learns_its_total():
    r = run_script(
        NO_TQDM
        + """
from scoopexec import ScoopExecutor

def square(x):
    return x * x

if __name__ == "__main__":
    with ScoopExecutor(2) as ex:
        gen = (x for x in range(47))
        assert list(ex.map(square, gen, chunksize=5, progress="chunks")) == [x * x for x in range(47)]
        pairs = ((x, 1) for x in range(13))
        assert list(ex.map(pow, *zip(*pairs), chunksize=4, progress="pairs")) == list(range(13))
"""
    )
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stderr.decode().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["chunks: 47/47", "pairs: 13/13"]
