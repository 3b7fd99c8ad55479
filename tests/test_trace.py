"""The timeline: ScoopExecutor(trace=...), the broker's --trace, and `python -m scoopexec report`."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoopexec import ScoopExecutor
from scoopexec import trace as trace_mod
from scoopexec.broker.ledger import Task, WorkerState
from scoopexec.report import format_summary, load, percentile, render_png, summarize
from scoopexec.trace import TraceRecorder, function_name
from tests import helpers
from tests.conftest import ROOT

TASK_ARGS = {"task", "parent", "worker", "host", "submitted_us", "dispatched_us", "finished_us",
             "bytes_in", "bytes_out", "retries", "status"}  # fmt: skip
SLACK_US = 3000  # clocks read in different processes on one machine


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _cli(*args):
    """Run `python -m scoopexec ARGS` in a fresh interpreter."""
    cmd = [sys.executable, "-m", "scoopexec", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, env=_env(), timeout=60, check=False)


def _events(path):
    with open(path) as fh:
        doc = json.load(fh)
    return doc, doc["traceEvents"]


def _check_nesting(slices):
    """Slices on one row must nest or follow each other: what Chrome's viewers require."""
    rows = {}
    for ev in slices:
        rows.setdefault((ev["pid"], ev["tid"]), []).append((ev["ts"], ev["ts"] + ev["dur"]))
    for spans in rows.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        open_ends = []
        for s, e in spans:
            while open_ends and open_ends[-1] <= s:
                open_ends.pop()
            assert not open_ends or e <= open_ends[-1], f"slice {s}-{e} overlaps its row without nesting"
            open_ends.append(e)


def _raise_in_task():
    raise ValueError("recorded failure")


def _reading(blob):
    return lambda i: len(blob) + i  # (a closure: pickled by value, its frame holds the blob)


def test_bytes_in_counts_a_large_function_frame_where_it_went_whole(tmp_path):
    # A function frame of 256 KiB and more goes whole once to each worker, then as its 17-byte
    # head (wire/fnframes.py): a task's bytes in is what went for it, not the frame each time.
    path = tmp_path / "run.json"
    big = 400_000
    fn = _reading(b"x" * big)
    with ScoopExecutor(2, trace=path) as ex:
        assert list(ex.map(fn, range(24))) == [big + i for i in range(24)]
        assert ex.submit(fn, 1).result(timeout=60) == big + 1
        used = set(ex.worker_pids)
    _, events = _events(path)
    tasks = [e for e in events if e["ph"] == "X"]
    assert len(tasks) == 25
    whole = [e for e in tasks if e["args"]["bytes_in"] >= big]
    assert 1 <= len(whole) <= len(used)  # once per worker that ran one
    assert len({e["pid"] for e in whole}) == len(whole)
    assert all(e["args"]["bytes_in"] < 1_000 for e in tasks if e not in whole)
    s = summarize(load(str(path)))
    assert s.bytes_in == sum(e["args"]["bytes_in"] for e in tasks) < (len(used) + 1) * big


def _sleeping_reader(blob):
    def nap(seconds):
        time.sleep(seconds)
        return len(blob)

    return nap


def test_a_large_frame_task_that_never_answers_leaves_the_fast_path_on(tmp_path):
    # A task cancelled while it runs sends no result: what its large frame took stayed in the
    # recorder, and turned off the bulk path (tiny tasks' results, a message at a time) for good.
    with ScoopExecutor(2, trace=tmp_path / "run.json") as ex:
        rec = ex._session.trace
        fut = ex.submit(_sleeping_reader(b"x" * 400_000), 60)
        deadline = time.monotonic() + 60
        while not fut.running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert ex.cancel(fut, force=True)
        bulk = rec._bulk
        calls = []
        rec._bulk = lambda *a: calls.append(1) or bulk(*a)
        assert list(ex.map(abs, range(-20_000, 0))) == list(range(20_000, 0, -1))
    assert calls, "no message of tiny tasks' results went through the bulk path"


def test_past_its_limit_the_recorder_keeps_no_frame_sizes(tmp_path):
    import pickle

    from scoopexec.broker.ledger import Ledger, task_entries
    from scoopexec.wire import fnframes
    from scoopexec.wire import protocol as P

    ledger = Ledger(3)
    ledger.add_client(b"C", {"role": "client"}, [b"{}", b""])
    w = ledger.add_worker(b"E" * 12, {"name": "e", "pid": 4, "host": "h"})
    ledger.grant(w, 10**6)
    fn = fnframes.mark([pickle.dumps(bytes(300_000))])
    ledger.submit(b"C", [((i, 0, 2), [fn, b"a"]) for i in range(5)], ledger.clients[b"C"])
    rec = TraceRecorder(tmp_path / "t.json", limit=2)
    batch = [ledger.tasks[b] for b in list(ledger.queue)]
    ledger.queue.clear()
    for t in batch:
        t.worker = w.key
        w.assigned.add(t.btid)
    frames, sent = [b""], []
    flat = task_entries(batch, frames, w, sent)
    assert [n for _, n in sent] == [len(fn), 17, 17, 17, 17]  # whole once, then its head
    rec.on_dispatch(w, batch, flat, P.pack_flat(P.TASKS, len(batch), flat), sent)
    entries = [(t.btid, 0, 1, 1.7e9, 0.5) for t in batch]
    results = [P.pack(P.RESULT, entries)] + [b"r"] * 5
    done: list = []
    ledger.finish(w, zip(entries, [[f] for f in results[1:]]), None, done)
    rec.on_finished(w, entries, results, done)
    assert rec.recorded == 2 and rec.dropped == 3
    assert [r[9] for r in rec.records] == [len(fn) + 1, 17 + 1]
    assert rec._fn_sent == {}


def test_a_real_run_with_nested_tasks_gives_a_valid_chrome_trace(tmp_path):
    path = tmp_path / "run.json"
    with ScoopExecutor(2, trace=path) as ex:
        assert ex.trace_path == str(path)
        assert ex.submit(helpers.fib, 7).result(timeout=60) == 13  # 41 tasks, 6 levels of parents
        assert list(ex.map(helpers.mul, range(30), range(30))) == [i * i for i in range(30)]
        assert ex.submit(len, b"x" * 200_000).result(timeout=60) == 200_000
        assert len(ex.submit(bytes, 300_000).result(timeout=60)) == 300_000
        with pytest.raises(ValueError, match="recorded failure"):
            ex.submit(_raise_in_task).result(timeout=60)
        pids = set(ex.worker_pids)
        assert not path.exists()  # written when the pool stops
    doc, events = _events(path)
    assert doc["displayTimeUnit"] == "ms"
    meta = doc["scoopexec"]
    assert meta["tasks"] == 41 + 30 + 3 and meta["tasks_not_recorded"] == 0

    for ev in events:
        assert {"ph", "pid", "tid", "name"} <= set(ev), ev
    tasks = [e for e in events if e["ph"] == "X"]
    assert len(tasks) == 74
    for ev in tasks:
        assert ev["cat"] == "task" and ev["dur"] >= 0 and ev["ts"] >= 0
        assert TASK_ARGS <= set(ev["args"]), ev
        a = ev["args"]
        assert a["retries"] == 0
        assert a["bytes_in"] > 0
        # submitted <= started, ended <= result received (one machine: one clock)
        assert a["submitted_us"] <= ev["ts"] + SLACK_US
        assert ev["ts"] + ev["dur"] <= a["finished_us"] + SLACK_US

    # One process row per worker, named after it, with its host and OS pid.
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    rows = {w["pid"]: w for w in meta["workers"]}
    assert {e["pid"] for e in tasks} <= set(rows)
    assert {w["os_pid"] for w in rows.values()} <= pids
    for pid, w in rows.items():
        assert names[pid] == f"worker {w['name']}"
        assert w["host"] and w["clock_offset_us"] == 0.0
    _check_nesting(tasks)

    by_name: dict[str, list] = {}
    for ev in tasks:
        by_name.setdefault(ev["name"], []).append(ev)
    assert len(by_name["fib"]) == 41 and len(by_name["mul"]) == 30
    assert by_name["_raise_in_task"][0]["args"]["status"] == "raised"
    assert by_name["len"][0]["args"]["bytes_in"] >= 200_000
    assert by_name["bytes"][0]["args"]["bytes_out"] >= 300_000
    assert all(e["args"]["status"] == "ok" for e in by_name["fib"] + by_name["mul"])

    # Nesting: every fib but the root has a fib parent, linked by a flow arrow.
    by_id = {e["args"]["task"]: e for e in tasks}
    roots = [e for e in by_name["fib"] if e["args"]["parent"] == 0]
    assert len(roots) == 1
    flows = {(e["ph"], e["id"]): e for e in events if e.get("cat") == "nested"}
    for ev in by_name["fib"]:
        if ev is roots[0]:
            continue
        parent = by_id[ev["args"]["parent"]]
        assert parent["name"] == "fib"
        # a parent runs (waiting) for as long as its children do
        assert parent["ts"] <= ev["ts"] + SLACK_US
        assert ev["ts"] + ev["dur"] <= parent["ts"] + parent["dur"] + SLACK_US
        start, finish = flows[("s", ev["args"]["task"])], flows[("f", ev["args"]["task"])]
        assert (start["pid"], start["tid"]) == (parent["pid"], parent["tid"])
        assert parent["ts"] <= start["ts"] <= parent["ts"] + parent["dur"]
        assert (finish["pid"], finish["tid"], finish["ts"]) == (ev["pid"], ev["tid"], ev["ts"])
        assert finish["bp"] == "e"
    assert all(e["args"]["parent"] == 0 for e in by_name["mul"])

    counters = [e for e in events if e["ph"] == "C"]
    assert counters and counters[-1]["args"] == {"waiting": 0, "running": 0}
    assert max(c["args"]["running"] for c in counters) >= 1


def _die_once(marker):
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"


@pytest.mark.timeout(120)
def test_retries_and_lost_attempts_are_recorded(tmp_path):
    path = tmp_path / "run.json"
    # Two workers: the retry runs on the survivor, whether or not a replacement starts.
    with ScoopExecutor(2, trace=path, max_retries=2) as ex:
        assert ex.submit(_die_once, str(tmp_path / "marker")).result(timeout=90) == "second try"
    doc, events = _events(path)
    (task,) = [e for e in events if e["ph"] == "X"]
    assert task["name"] == "_die_once" and task["args"]["retries"] == 1
    (lost,) = [e for e in events if e.get("cat") == "lost"]
    assert lost["args"]["task"] == task["args"]["task"]
    assert "signal 9" in lost["args"]["reason"] and not lost["args"]["given_up"]
    assert doc["scoopexec"]["lost_attempts"] == 1
    s = summarize(load(str(path)))
    assert (s.retries, s.tasks_retried, s.lost_attempts) == (1, 1, 1)


def test_report_numbers_agree_with_the_file(tmp_path):
    path = tmp_path / "run.json"
    with ScoopExecutor(2, trace=path) as ex:
        list(ex.map(helpers.sleep_and_return, [0.02] * 30))
        ex.submit(helpers.fib, 5).result(timeout=60)
    trace = load(str(path))
    s = summarize(trace)
    _, events = _events(path)
    xs = [e for e in events if e["ph"] == "X"]
    durs = sorted(e["dur"] / 1e6 for e in xs)

    assert s.tasks == len(xs) == 30 + 15
    assert sum(w.tasks for w in s.workers) == s.tasks and len(s.workers) == 2 and s.hosts == 1
    assert s.run_median == pytest.approx(percentile(durs, 50))
    assert s.run_p99 == pytest.approx(percentile(durs, 99)) and s.run_p99 >= s.run_median
    assert s.run_total == pytest.approx(sum(durs))
    assert percentile(durs, 50) <= statistics.median(durs) * 1.5 + 1e-3
    assert sorted(e["dur"] for e in xs if e["name"] == "sleep_and_return")[0] >= 19_000  # slept 20 ms
    first = min(e["args"]["submitted_us"] for e in xs) / 1e6
    last = max(max(e["args"]["finished_us"], e["ts"] + e["dur"]) for e in xs) / 1e6
    assert s.span == pytest.approx(last - first)
    for w in s.workers:
        assert 0 < w.busy <= s.span + 1e-6 and 0 < w.busy_pct <= 100.0 + 1e-6
        assert w.busy_pct == pytest.approx(100 * w.busy / s.span)
    # Slept 30 x 20 ms over two workers: each was busy at least part of that.
    assert sum(w.busy for w in s.workers) >= 0.6
    assert 0 <= s.overhead_total <= s.span * 2
    assert s.overhead_per_task == pytest.approx(s.overhead_total / s.tasks)
    assert s.wait_median >= 0 and s.wait_p99 >= s.wait_median
    assert s.bytes_in == sum(e["args"]["bytes_in"] for e in xs)
    assert s.bytes_out == sum(e["args"]["bytes_out"] for e in xs)
    assert s.nested == 14 and s.max_depth == 4
    assert {f[0]: f[1] for f in s.functions} == {"sleep_and_return": 30, "fib": 15}
    assert not s.failed

    text = format_summary(s, str(path))
    assert "45 tasks on 2 workers (1 host)" in text
    for w in s.workers:
        assert w.name in text
    r = _cli("report", str(path))
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "45 tasks on 2 workers" in out and "median" in out and "p99" in out and "BUSY %" in out
    assert "overhead" in out and "per task" in out
    r = _cli("report", "--json", str(path))
    assert r.returncode == 0, r.stderr.decode()
    data = json.loads(r.stdout)
    assert data["tasks"] == 45 and data["run_median"] == pytest.approx(s.run_median)
    assert [w["busy_pct"] for w in data["workers"]] == pytest.approx([w.busy_pct for w in s.workers])


def test_report_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "run.json"
    with ScoopExecutor(2, trace=path) as ex:
        ex.submit(helpers.fib, 6).result(timeout=60)
        list(ex.map(helpers.sleep_and_return, [0.01] * 10))
    png = tmp_path / "timeline.png"
    render_png(load(str(path)), str(png))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_without_matplotlib_says_what_to_install(tmp_path):
    path = tmp_path / "run.json"
    with ScoopExecutor(1, trace=path) as ex:
        ex.submit(abs, -1).result(timeout=60)
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from scoopexec.__main__ import main\n"
        f"sys.exit(main(['report', {str(path)!r}, '--png', {str(tmp_path / 'x.png')!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(), timeout=60, check=False)
    assert r.returncode == 2
    assert "1 task on 1 worker" in r.stdout.decode()
    assert "pip install 'scoopexec[plot]'" in r.stderr.decode()


def test_report_refuses_files_that_are_not_timelines(tmp_path):
    cases = {
        "missing.json": None,
        "text.json": "not json at all",
        "other.json": json.dumps({"hello": 1}),
        "empty.json": json.dumps({"traceEvents": [{"ph": "X", "name": "x", "ts": 0, "dur": 1}]}),
    }
    for name, content in cases.items():
        p = tmp_path / name
        if content is not None:
            p.write_text(content)
        r = _cli("report", str(p))
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        err = r.stderr.decode()
        assert err.startswith("scoopexec report: ") and str(p) in err and "Traceback" not in err


def test_report_names_what_is_wrong_in_a_crafted_file(tmp_path):
    """A file can say anything: a 'scoopexec' part (binary or JSON) whose fields have the wrong
    kind, or an event with a time that is not a number, gets a TraceError naming the field,
    never a ValueError or TypeError from deep inside the report (which printed a traceback)."""
    from scoopexec.tracefile import TraceError

    metas = {
        "tasks_not_recorded": ({"tasks_not_recorded": "many"}, "'tasks_not_recorded' is 'many'"),
        "negative": ({"tasks_not_recorded": -3}, "'tasks_not_recorded' is -3"),
        "workers": ({"workers": 5}, "'workers' is a int, not a list"),
        "pid": ({"workers": [{"pid": "x", "name": "w"}]}, "a worker's 'pid' (its row) is 'x'"),
        "argv": ({"argv": 7}, "'argv' is a int, not a list"),
    }
    for name, (meta, message) in metas.items():
        rec = _full_recorder(tmp_path / f"{name}.trace")
        rec.meta.update(meta)
        path = rec.write()
        with pytest.raises(TraceError) as info:
            load(path)
        assert f"in its 'scoopexec' part, {message}" in str(info.value), name
    docs = {
        "not an object": ({"traceEvents": [], "scoopexec": [1]}, "'scoopexec' part is a list, not an object"),
        "time": ({"traceEvents": [{"ph": "X", "cat": "task", "ts": "x"}], "scoopexec": {}},
                 "event 0 of traceEvents is damaged (ValueError"),
    }
    for name, (doc, message) in docs.items():
        p = tmp_path / f"{name.replace(' ', '_')}.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(TraceError) as info:
            load(str(p))
        assert message in str(info.value) and str(p) in str(info.value), name
    r = _cli("report", str(tmp_path / "pid.trace"))  # as a user meets it: a message, status 1
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("scoopexec report: ") and "Traceback" not in err, err


def test_bad_trace_arguments_fail_before_any_process_starts(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ScoopExecutor(1, trace=tmp_path / "no" / "such" / "dir" / "run.json")
    with pytest.raises(ValueError, match="is a directory"):
        ScoopExecutor(1, trace=tmp_path)
    with pytest.raises(ValueError, match="--trace FILE"):
        ScoopExecutor(broker="tcp://127.0.0.1:1", trace=tmp_path / "run.json")


def test_standalone_broker_writes_its_trace_when_stopped(tmp_path):
    from tests.test_standalone import _free_port, _start_workers

    addr = f"tcp://127.0.0.1:{_free_port()}"
    path = tmp_path / "broker.json"
    broker = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", addr, "--trace", str(path)],
        stdout=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    workers = None
    try:
        assert "listening on" in broker.stdout.readline().decode()
        workers = _start_workers(addr, 2)
        with ScoopExecutor(broker=addr) as ex:
            assert sum(ex.map(abs, range(-25, 0))) == sum(range(1, 26))
            assert ex.submit(helpers.fib, 4).result(timeout=60) == 3
    finally:
        if workers is not None:
            workers.terminate()
            workers.wait(10)
        broker.terminate()
        out = broker.communicate(timeout=30)[0].decode()
    assert broker.returncode == 0
    assert f"written to {path}" in out
    s = summarize(load(str(path)))
    assert s.tasks == 25 + 9 and s.nested == 8
    assert {f[0] for f in s.functions} == {"abs", "fib"}
    assert all(t.status == "ok" for t in load(str(path)).tasks)


# ------------------------------------------------------------ pure functions
def test_function_names_are_read_from_pickles_without_unpickling():
    import functools

    from scoopexec.mapping import _run_chunk
    from scoopexec.wire import serialize

    def local(x):
        return x

    cases = {
        helpers.mul: "mul",
        pow: "pow",
        local: "test_function_names_are_read_from_pickles_without_unpickling.<locals>.local",
        functools.partial(_run_chunk, helpers.mul): "mul",
        functools.partial(helpers.capture, 1): "capture",
        helpers.MyObject: "MyObject",
    }
    for fn, name in cases.items():
        assert function_name(serialize.dumps_function(fn)) == name
    lam = function_name(serialize.dumps_function(lambda: 1))
    assert lam == "test_function_names_are_read_from_pickles_without_unpickling.<locals>.<lambda>"
    assert function_name(b"") == "task"
    assert function_name(b"\x80\x05garbage") == "task"


def _record(rec, w, btid, start, run, *, parent=0, submitted=None, skew=0.0, status=0):
    when = submitted if submitted is not None else start - 0.001
    task = Task(btid, b"", btid, parent, b"", 1, [b"\x80\x05fn", b"args"], when)
    task.worker = w.key  # as the broker sets it when it dispatches
    # The recorder reads the broker's clock (trace._time): dispatched a little before the start,
    # and the result received a little after the end.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace_mod, "_time", lambda: start - 0.0005)
        rec.on_dispatch(w, [task])
        mp.setattr(trace_mod, "_time", lambda: start + run + 0.0005)
        rec.on_results(w, [(btid, status, 1, start + skew, run)], [b"header", b"result"], {btid: task})


def test_clock_skew_of_a_worker_is_estimated_and_removed(tmp_path):
    rec = TraceRecorder(tmp_path / "t.json")
    a = WorkerState(b"A", {"host": "node1", "pid": 1, "name": "node1:1"})
    b = WorkerState(b"B", {"host": "node2", "pid": 2, "name": "node2:2"})
    t0 = 1_000_000.0
    for i in range(20):
        _record(rec, a, 2 * i + 1, t0 + i * 0.01, 0.005)
        _record(rec, b, 2 * i + 2, t0 + i * 0.01, 0.005, skew=7.5)  # node2's clock is 7.5 s ahead
    doc = rec.document()
    offsets = {w["host"]: w["clock_offset_us"] for w in doc["scoopexec"]["workers"]}
    assert offsets["node1"] == 0.0
    assert offsets["node2"] == pytest.approx(-7.5e6, abs=1000)
    for ev in doc["traceEvents"]:
        if ev["ph"] == "X":
            a_ = ev["args"]
            assert a_["dispatched_us"] - 1 <= ev["ts"] and ev["ts"] + ev["dur"] <= a_["finished_us"] + 1


def test_overlapping_tasks_get_lanes_where_they_nest_or_follow(tmp_path):
    rec = TraceRecorder(tmp_path / "t.json")
    w = WorkerState(b"W", {"host": "h", "pid": 1, "name": "h:1"})
    t0 = 5000.0
    _record(rec, w, 1, t0, 1.0)  # a parent waiting for its children
    _record(rec, w, 2, t0 + 0.1, 0.2, parent=1)  # nests in 1
    _record(rec, w, 3, t0 + 0.2, 0.5, parent=1)  # overlaps 2 without nesting: another lane
    _record(rec, w, 4, t0 + 0.5, 0.1, parent=1)  # after 2, inside 1 and inside 3
    _record(rec, w, 5, t0 + 2.0, 0.1)  # later on
    doc = rec.document()
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    _check_nesting(xs)
    lane = {e["args"]["task"]: e["tid"] for e in xs}
    assert lane[1] == lane[2] == lane[5] == 0 and lane[3] == 1
    assert doc["scoopexec"]["workers"][0]["lanes"] == 2
    written, _ = _events(rec.write())
    assert written["traceEvents"] == json.loads(json.dumps(doc["traceEvents"]))


def _lanes_as_before(items):
    """trace._assign_lanes as it was (each interval scans the lanes one by one): the reference."""
    lane_of = [0] * len(items)
    stacks = []
    for s, e, i in sorted(items, key=lambda x: (x[0], -x[1])):
        for n, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                lane_of[i] = n
                break
        else:
            stacks.append([e])
            lane_of[i] = len(stacks) - 1
    return lane_of, len(stacks)


def test_lanes_of_many_overlaps_are_the_same_and_found_in_n_log_n():
    """A crafted file can hold thousands of tasks that overlap on one worker without nesting:
    scanning the lanes one by one made that quadratic (3,000 tasks: ~9 million comparisons).
    Beyond a few dozen lanes a tree finds the same lane: the same lanes as the scan for random
    mixes of nesting, following and overlapping tasks (few lanes and many), and the number of
    comparisons stays within a small multiple of n log n."""
    import math
    import random

    rnd = random.Random(7)
    many = 0
    for trial in range(60):
        n = rnd.choice([5, 50, 400])
        items = []
        for i in range(n):
            if trial % 3 == 0:  # anything: nesting, following, overlapping, empty
                s = round(rnd.uniform(0, rnd.choice([0.01, 1.0, 100.0])), 2)
                items.append((s, s + round(rnd.choice([0.0, rnd.uniform(0, 5)]), 2), i))
            elif trial % 3 == 1:  # a staircase, jittered: many lanes, ends on others' starts
                s = float(i // 2 + rnd.randrange(3))
                items.append((s, s + 40 + rnd.randrange(4), i))
            else:  # whole numbers: many ends on starts
                s = float(rnd.randrange(200))
                items.append((s, s + rnd.randrange(trial % 20, 60), i))
        lane_of = [0] * n
        got = trace_mod._assign_lanes(list(items), lane_of)
        assert (lane_of, got) == _lanes_as_before(items), trial
        many += got > trace_mod._LANE_SCAN

    assert many >= 5  # (the tree's part was checked too)
    count = 0

    class Counted(float):
        def __lt__(self, other):
            nonlocal count
            count += 1
            return float.__lt__(self, other)

        def __le__(self, other):
            nonlocal count
            count += 1
            return float.__le__(self, other)

        def __gt__(self, other):
            nonlocal count
            count += 1
            return float.__gt__(self, other)

        def __ge__(self, other):
            nonlocal count
            count += 1
            return float.__ge__(self, other)

    n = 3000
    stairs = [(Counted(i), Counted(i + n), i) for i in range(n)]  # each overlaps all before it
    lane_of = [0] * n
    assert trace_mod._assign_lanes(stairs, lane_of) == n and lane_of == list(range(n))
    assert count < 40 * n * math.log2(n), f"{count:,} comparisons for {n:,} overlapping tasks"


def test_recording_stops_at_its_limit(tmp_path):
    rec = TraceRecorder(tmp_path / "t.json", limit=3)
    w = WorkerState(b"W", {"host": "h", "pid": 1, "name": "h:1"})
    for i in range(1, 6):
        _record(rec, w, i, 100.0 + i, 0.5)
    tasks = {i: Task(i, b"", i, 0, b"", 1, [b"f", b"a"]) for i in (6, 7, 8)}
    for t in tasks.values():
        t.worker = w.key
    tasks[8].worker = b"another worker"  # a result from a worker that never had task 8: dropped
    ents = [(6, 0, 0, 106.0, 0.5), (99, 0, 0, 0.0, 0.0), (7, 0, 0, 107.0, 0.5), (8, 0, 0, 108.0, 0.5)]
    rec.on_results(w, ents, [b"h"], tasks)
    # 99 is unknown (stale) and 8 forged: neither kept nor counted, as the broker drops them
    assert rec.recorded == len(rec.records) == 3 and rec.dropped == 4
    s = summarize(load(rec.write()))
    assert s.tasks == 3 and s.not_recorded == 4
    assert "4 later tasks were not recorded" in format_summary(s)


def test_broker_records_nothing_unless_asked():
    import zmq

    from scoopexec.broker.loop import Broker

    ctx = zmq.Context()  # (its own: the process-wide one would keep its I/O threads, and later
    b = Broker("tcp://127.0.0.1:0", context=ctx)  # tests' pools a fresh-interpreter template)
    try:
        assert b.trace is None
    finally:
        b.close()
        ctx.term()


def test_timing_fields_survive_a_slow_consumer(tmp_path):
    """Results consumed late still carry the worker's own start and run times."""
    path = tmp_path / "run.json"
    with ScoopExecutor(1, trace=path) as ex:
        fut = ex.submit(helpers.sleep_and_return, 0.05, 1)
        time.sleep(0.5)
        assert fut.result(timeout=60) == 1
    (ev,) = [e for e in _events(path)[1] if e["ph"] == "X"]
    assert 50_000 <= ev["dur"] < 450_000


ODD_NAMES = ['say "hi"', "two\nlines", "back\\slash", "tab\tand\x00nul\x1f", "caf\u00e9 \u2603 \U0001f600",
             "</script>", "\u2028sep", "\ud800lone surrogate"]  # fmt: skip


def _pickled_global(module, name):
    """A pickle naming module.name (protocol 4's STACK_GLOBAL), as a task's function frame does."""
    def short(s):
        data = s.encode("utf-8", "surrogatepass")
        return b"\x8c" + bytes([len(data)]) + data

    return b"\x80\x04" + short(module) + short(name) + b"\x93."


def test_odd_function_and_worker_names_survive_the_file(tmp_path):
    """Function, worker and host names are arbitrary text written into the file's JSON by hand
    (trace.py: no dict per event): quotes, backslashes, newlines, control characters and non-ASCII
    must come back from json.load and the report as they were recorded.  Writing them with a bare
    f'"{name}"' template makes the file invalid JSON (the first name's quote ends the string)."""
    rec = TraceRecorder(tmp_path / "t.json")
    odd_worker = WorkerState(b"W", {"host": 'h"ost\n\u00e9', "pid": 7, "name": "w\\ork\ter \u2603"})
    t0 = 2000.0
    for i, name in enumerate(ODD_NAMES, 1):
        assert function_name(_pickled_global("mod", name)) == name
        task = Task(i, b"", i, 0, b"", 1, [_pickled_global("mod", name), b"args"], t0 + i - 0.001)
        task.worker = odd_worker.key
        rec.on_dispatch(odd_worker, [task])
        rec.on_results(odd_worker, [(i, 0, 1, t0 + i, 0.25)], [b"header", b"result"], {i: task})
    path = rec.write()
    doc, events = _events(path)
    xs = sorted((e for e in events if e["ph"] == "X"), key=lambda e: e["args"]["task"])
    assert [e["name"] for e in xs] == ODD_NAMES
    assert {(e["args"]["worker"], e["args"]["host"]) for e in xs} == {("w\\ork\ter \u2603", 'h"ost\n\u00e9')}
    assert [e["dur"] for e in xs] == [pytest.approx(250_000.0, abs=1)] * len(ODD_NAMES)
    assert doc["scoopexec"]["workers"][0]["name"] == "w\\ork\ter \u2603"
    assert sorted(t.name for t in load(path).tasks) == sorted(ODD_NAMES)
    assert rec.document()["traceEvents"] == events


def test_times_are_written_as_json_writes_the_float():
    """trace._thousandths writes k / 1000 (times in ns or us since the first submission) without
    the float's repr, which costs more; the text must be exactly what repr (so json) writes,
    negative times (a worker's clock slightly behind) and traces longer than 11 days included."""
    import random

    from scoopexec.trace import _thousandths

    rnd = random.Random(17)
    ks = [0, 1, 5, 10, 50, 100, 999, 1000, 1001, 1010, 1100, 123_456, 10**15 - 1, 10**15, 10**15 + 1,
          2**53 + 1, 10**19, 10**22 + 7]  # fmt: skip
    ks += [rnd.randrange(10**d) for d in range(1, 19) for _ in range(300)]
    ks += [-k for k in ks]
    bad = [(k, _thousandths(k), repr(k / 1000)) for k in ks if _thousandths(k) != repr(k / 1000)]
    assert not bad


def test_a_recorded_task_costs_the_recorder_under_150_bytes(tmp_path):
    # Issue 17: memory while tracing stays bounded (MAX_TASKS records at most) and small per task.
    # Each task dispatched alone and its result in a message of its own, as round trips go: as a
    # tuple of 13 objects plus a (time, [id]) per dispatch, a task cost the recorder 360 bytes;
    # as a fixed-size binary record plus two array slots, about 110.
    import gc
    import pickle
    import tracemalloc

    rec = TraceRecorder(tmp_path / "t.json")
    w = WorkerState(b"W" * 12, {"host": "h", "pid": 1, "name": "h:1"})
    fn = pickle.dumps(abs, 5)
    n = 20_000
    tasks = {}
    for i in range(1000, 1000 + n):
        tasks[i] = t = Task(i, b"", i, 0, b"", 1, [fn, b"x" * 20], 1.7e9)
        t.worker, t.marked = w.key, True
    results = [[(i, 0, 1, 1.7e9 + i / 1000, (i % 7) / 1000)] for i in tasks]  # as RESULT decodes them
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, entries in zip(tasks, results, strict=True):
            rec.on_dispatch(w, [tasks[i]])
            rec.on_results(w, entries, [b"h", b"r"], {i: tasks[i]})  # (on_finished makes one)
        del results
        gc.collect()
        per_task = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert rec.recorded == n
    assert per_task < 150, f"a recorded task costs the recorder {per_task:.0f} bytes"
    assert summarize(load(rec.write())).tasks == n


# ------------------------------------------------------- the binary file (tracefile.py)
def _full_recorder(path):
    """A recorder holding one of everything a file stores: odd names, two workers (one with a
    skewed clock), nested tasks, a raised error, lost attempts, batch-job events, metadata, and
    tasks beyond its limit."""
    rec = TraceRecorder(path, limit=12)
    a = WorkerState(b"A" * 12, {"host": 'h"ost\n\u00e9', "pid": 7, "name": "w\\ork\ter \u2603"})
    b = WorkerState(b"B" * 12, {"host": "node2", "pid": None, "name": "node2:?"})
    t0 = 1_700_000_000.0
    for i, name in enumerate(ODD_NAMES, 1):
        task = Task(i, b"", i, 0 if i < 3 else 1, b"client-%d" % (i % 2) if i != 5 else None, 1,
                    [_pickled_global("mod", name), b"args" * i], t0 + i - 0.001)  # fmt: skip
        w = a if i % 2 else b
        task.worker = w.key
        rec.on_dispatch(w, [task])
        rec.on_results(w, [(i, 1 if i == 4 else 0, 1, t0 + i + (7.5 if w is b else 0), 0.25)],
                       [b"header", b"result" * i], {i: task})  # fmt: skip
    for i in range(len(ODD_NAMES) + 1, 16):  # beyond the limit: counted
        task = Task(i, b"", i, 0, b"", 1, [b"f", b"a"], t0 + 20)
        task.worker = a.key
        rec.on_results(a, [(i, 0, 0, t0 + 21, 0.1)], [b"h"], {i: task})
    rec.on_lost(Task(3, b"", 3, 0, b"", 1, [b"f", b"a"]), b, "worker died (signal 9)", False)
    rec.on_job("slurm", "1234", "started")
    rec.on_jobs("slurm", [{"state": "running", "workers": 4}, {"state": "draining (walltime)", "workers": 2}])
    rec.meta.update(argv=["prog.py", "--x", "\u2603"], note={"nested": [1, 2.5, None]})
    return rec


def test_binary_file_holds_what_the_json_writer_writes(tmp_path):
    """A binary file read back writes, byte for byte, the JSON the recorder writes directly: every
    field of the recorder survives the file (drop one in raw()/from_raw() and the texts differ)."""
    from scoopexec import tracefile

    rec = _full_recorder(tmp_path / "t.trace")
    assert rec.recorded == 12 and rec.dropped == len(ODD_NAMES) + 7 - 12
    direct = rec.write(str(tmp_path / "direct.json"))
    binary = rec.write()  # the recorder's own path, which does not end in .json: the binary format
    with open(binary, "rb") as fh:
        assert fh.read(8) == tracefile.MAGIC
    with open(direct, "rb") as fh:
        assert fh.read(1) == b"{"
    again = TraceRecorder.from_raw(tracefile.read(binary)).write(str(tmp_path / "again.json"))
    with open(direct, encoding="utf-8") as f1, open(again, encoding="utf-8") as f2:
        assert f1.read() == f2.read()
    doc = json.loads((tmp_path / "direct.json").read_text())
    assert doc["scoopexec"]["tasks_not_recorded"] == rec.dropped and doc["scoopexec"]["lost_attempts"] == 1
    assert {e["cat"] for e in doc["traceEvents"] if "cat" in e} >= {"task", "nested", "lost", "jobs", "pool"}
    # The report reads both, to the same numbers.
    assert summarize(load(binary)) == summarize(load(direct))
    # And the binary file is the smaller by far: the records as kept, about 100 bytes a task.
    assert os.path.getsize(binary) < os.path.getsize(direct) / 2


def test_a_real_run_exported_from_the_binary_file_is_the_json_it_would_have_written(tmp_path):
    """What a user runs: trace='run.trace' (binary), then `python -m scoopexec trace export
    run.trace run.json` in a shell; the export is the JSON the same run's recorder writes itself."""
    path = tmp_path / "run.trace"
    with ScoopExecutor(2, trace=path) as ex:
        assert ex.trace_path == str(path)
        assert ex.submit(helpers.fib, 6).result(timeout=60) == 8  # 25 tasks, nested
        assert list(ex.map(helpers.mul, range(20), range(20))) == [i * i for i in range(20)]
        with pytest.raises(ValueError, match="recorded failure"):
            ex.submit(_raise_in_task).result(timeout=60)
        recorder = ex._session.trace
    direct = recorder.write(str(tmp_path / "direct.json"))
    r = _cli("trace", "export", path, tmp_path / "exported.json")
    assert r.returncode == 0, r.stderr.decode()
    assert "exported.json" in r.stderr.decode()
    exported = (tmp_path / "exported.json").read_text()
    assert exported == (tmp_path / "direct.json").read_text()
    doc = json.loads(exported)
    assert doc["scoopexec"]["tasks"] == 25 + 20 + 1
    assert sum(e["ph"] == "X" for e in doc["traceEvents"]) == 46
    r = _cli("trace", "export", path, "-")  # to standard output
    assert r.returncode == 0 and r.stdout.decode() == exported
    for args in (("report", "--json", path), ("trace", "report", "--json", path)):
        r = _cli(*args)
        assert r.returncode == 0, r.stderr.decode()
        assert json.loads(r.stdout) == json.loads(_cli("report", "--json", direct).stdout)


def _valid_binary(tmp_path_factory=None):
    import tempfile

    from scoopexec import tracefile

    with tempfile.TemporaryDirectory() as tmp:
        rec = _full_recorder(os.path.join(tmp, "t.trace"))
        with open(rec.write(), "rb") as fh:
            data = fh.read()
    tracefile.parse(data)
    return data


def test_damaged_binary_files_get_an_error_naming_the_problem(tmp_path):
    import struct

    from scoopexec import tracefile

    good = _valid_binary()
    head = struct.Struct("<8sHHIQQQ")
    magic, version, rsize, _flags, n, d, j = head.unpack_from(good)
    body = good[head.size :]
    records_end = head.size + n * rsize

    def with_record_field(fmt_offset, value_fmt, value):
        data = bytearray(good)
        struct.pack_into(value_fmt, data, head.size + fmt_offset, value)
        return bytes(data)

    cases = {
        "empty": (b"", "truncated: 0 bytes"),
        "short": (good[:20], "truncated: 20 bytes"),
        "not ours": (b"PK\x03\x04" + b"\0" * 60, "not a scoopexec binary timeline"),
        "newer": (head.pack(magic, 2, rsize, 0, n, d, j) + body, "format version 2"),
        "record size": (head.pack(magic, version, rsize + 1, 0, n, d, j) + body, "task records of"),
        "flags": (head.pack(magic, version, rsize, 4, n, d, j) + body, "unknown flags"),
        "cut in the records": (good[: records_end - 5], "is truncated: the header promises 12 task records"),
        "cut in the JSON": (good[:-3], "is truncated"),
        "trailing": (good + b"\0\0", "2 bytes after the end"),
        "JSON damaged": (good[:-j] + b"{" * (j - 1) + b"]", "JSON part is damaged"),
        "JSON wrong shape": (good[:-j] + json.dumps({"values": 3}).encode().ljust(j), "'values' part"),
        # field offsets in TASK_RECORD "<qqIIddddIqqIB": name index at 20, submitted at 24
        "index out of range": (with_record_field(20, "<I", 10**6), "names function name 1000000"),
        "wrong kind of value": (with_record_field(20, "<I", 0), "function name (value 0) is a bytes"),
        "time not a number": (with_record_field(24, "<d", float("nan")), "not a number of seconds"),
        "time out of range": (with_record_field(24, "<d", -1e13), "not a number of seconds"),
    }
    for name, (data, message) in cases.items():
        p = tmp_path / "bad.trace"
        p.write_bytes(data)
        with pytest.raises(tracefile.TraceError) as info:
            tracefile.read(str(p))
            pytest.fail(f"{name}: read without an error")
        assert str(p) in str(info.value), name
        assert message in str(info.value), (name, str(info.value))
    # A time a little below 0 is no damage: a remote worker's clock, corrected, can give one.
    p.write_bytes(with_record_field(24, "<d", -0.002))
    tracefile.read(str(p))
    # As a user meets it: a message, status 1, no traceback.
    p.write_bytes(good[: len(good) // 2])
    for args in (("trace", "export", p, tmp_path / "out.json"), ("report", p)):
        r = _cli(*args)
        err = r.stderr.decode()
        assert r.returncode == 1 and "is truncated" in err and "Traceback" not in err, err
    assert not (tmp_path / "out.json").exists()
    r = _cli("trace", "export", tmp_path / "missing.trace", tmp_path / "out.json")
    assert r.returncode == 1 and "missing.trace" in r.stderr.decode()


_VALID = _valid_binary()


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_binary_files_are_read_or_refused_never_crash(data):
    """Any bytes -- a valid file cut, with bytes changed, inserted or appended, or noise -- are
    either a TraceError or a trace that writes valid JSON; never another exception."""
    from scoopexec import tracefile

    blob = bytearray(_VALID)
    kind = data.draw(st.sampled_from(["cut", "flip", "insert", "noise", "tail"]))
    if kind == "cut":
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "insert":
        at = data.draw(st.integers(0, len(blob)))
        blob[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "tail":
        blob += data.draw(st.binary(min_size=1, max_size=16))
    else:
        blob = bytearray(tracefile.MAGIC + data.draw(st.binary(max_size=200)))
    try:
        raw = tracefile.parse(bytes(blob), "fuzzed.trace")
    except tracefile.TraceError as exc:
        assert "fuzzed.trace" in str(exc)
        return
    doc = TraceRecorder.from_raw(raw).document()
    assert isinstance(doc["traceEvents"], list)


def test_one_message_of_results_for_several_functions_names_each_task_right(tmp_path):
    """on_results names a task's function once per run of tasks sharing its frame (the usual
    message): a message mixing functions, and a task of more than two frames, keep their names."""
    rec = TraceRecorder(tmp_path / "t.trace")
    w = WorkerState(b"W", {"host": "h", "pid": 1, "name": "h:1"})
    fa, fb = _pickled_global("mod", "alpha"), _pickled_global("mod", "beta")
    frames_of = {1: [fa, b"a"], 2: [fa, b"a"], 3: [fb, b"b"], 4: [fa, b"a"], 5: [fb, b"x", b"y"],
                 6: [fa, b"a"]}  # fmt: skip
    tasks = {}
    for i, frames in frames_of.items():
        tasks[i] = t = Task(i, b"", i, 0, b"", 1, frames, 100.0 + i)
        t.worker = w.key
    rec.on_dispatch(w, list(tasks.values()))
    rec.on_results(w, [(i, 0, 1, 101.0 + i, 0.5) for i in tasks], [b"h"] + [b"r"] * len(tasks), tasks)
    names = {r[0]: r[3] for r in rec.records}
    assert names == {1: "alpha", 2: "alpha", 3: "beta", 4: "alpha", 5: "beta", 6: "alpha"}
    assert {r[0]: r[9] for r in rec.records}[5] == len(fb) + 2  # bytes in: all three frames


def test_the_bulk_path_records_what_the_per_task_loop_recorded(tmp_path, monkeypatch):
    """The broker hands the recorder each RESULT after its ledger took it in (on_finished, with
    the tasks Ledger.finish accepted); messages of tiny tasks go through TraceRecorder._bulk,
    which lays records from templates and copies the entries' bytes in later (tracebulk.Pending).
    Its records, dispatches and value table must be byte for byte those of the per-task loop
    as the broker called it before (on_results with its table, before finish), for messages it
    takes (one and several Sources, statuses, sizes) and those it leaves to the loop (a stale
    result, a task of three frames, a lost attempt, two result frames, another function, a
    message of two, statuses that differ).  Bytes in and out are kept a byte each below 256 and
    as int64s above (a message of each, laid out together and apart).  An offset wrong in
    tracebulk._FROM_ENTRY, or a byte column written to the wrong offset, fails this."""
    from scoopexec.broker import scheduling
    from scoopexec.broker.ledger import Ledger, task_entries
    from scoopexec.wire import protocol as P

    monkeypatch.setattr(trace_mod, "_time", lambda: 1_700_000_123.25)
    ledger = Ledger(3)
    ledger.add_client(b"C", {"role": "client"}, [b"{}", b""])
    a = ledger.add_worker(b"A" * 12, {"name": "a", "pid": 1, "host": "h"})
    ledger.grant(a, 10_000)
    fa, fb = _pickled_global("mod", "alpha"), _pickled_global("mod", "beta")
    tid = 0
    for n in (50, 30, 40):  # three SUBMITs: three Sources
        ledger.submit(b"C", [((tid + i, 0, 2), [fa, b"x" * ((tid + i) % 7)]) for i in range(n)],
                      ledger.clients[b"C"])  # fmt: skip
        tid += n
    odd = [((tid, 0, 2), [fb, b"y"]), ((tid + 1, 0, 3), [fa, b"p", b"q"])]  # another function; three frames
    ledger.submit(b"C", odd, ledger.clients[b"C"])
    big = [((tid + 2 + i, 0, 2), [fa, b"z" * (250 + 3 * i)]) for i in range(12)]  # bytes in: 256 and more
    ledger.submit(b"C", big, ledger.clients[b"C"])
    bulk, loop = TraceRecorder(tmp_path / "a.trace"), TraceRecorder(tmp_path / "b.trace")
    loop._bulk_from = 10**9
    sent = []
    for w, batch in scheduling.dispatch(ledger, lambda tasks: []):
        flat = task_entries(batch, [], w)
        bulk.on_dispatch(w, batch, flat, P.pack_flat(P.TASKS, len(batch), flat))  # (as the broker calls it)
        loop.on_dispatch(w, batch)
        sent += [(t.btid, 1_700_000_123.25) for t in batch]
    by_tid = {t.tid: t for t in ledger.tasks.values()}

    def result(tids, frames_each=1, status_of=lambda i: i % 3, out=lambda i: i % 5):
        entries = [(by_tid[i].btid, status_of(i), frames_each, 1.7e9 + i / 8, i / 1024) for i in tids]
        frames = [P.pack(P.RESULT, entries)]
        for i in tids:
            frames += [b"r" * out(i)] * frames_each
        loop.on_results(a, entries, frames, dict(ledger.tasks))  # (the broker's table, before finish)
        done: list[Task] = []
        bodies = [frames[1 + j * frames_each : 1 + (j + 1) * frames_each] for j in range(len(tids))]
        ledger.finish(a, zip(entries, bodies, strict=True), None, done)
        bulk.on_finished(a, entries, frames, done)

    by_tid[7].lose(b"elsewhere", "lost")  # an attempt lost: its retries are counted (the loop's)
    result(range(0, 10))  # a lost attempt
    result([10, 11, 10, 12, 13])  # a stale result (10 twice): Ledger.finish drops the second
    result(range(14, 20), frames_each=2)  # two frames each
    result([120, 20, 21, 22, 23])  # another function
    result([121, 24, 25, 26])  # a task of three frames
    result([27, 28])  # a message of two
    result(range(29, 33))  # statuses that differ within the message
    assert not bulk._later.count
    result(range(33, 50), status_of=lambda i: 0)  # one Source
    assert bulk._later.count == 17 and bulk.recorded == loop.recorded
    result([122, 123])  # (to the loop, whose records wait after those: Pending.add_done)
    assert bulk._later.count == 17 and bulk._later.pending == 19 and bulk.recorded == loop.recorded
    mixed = [i for pair in zip(range(50, 80), range(80, 110), strict=True) for i in pair]
    result(mixed + list(range(110, 120)), status_of=lambda i: 1)  # two Sources, interleaved, then a third
    result(range(124, 128), status_of=lambda i: 0)  # bytes in of 256 and more
    result(range(128, 134), status_of=lambda i: 0, out=lambda i: 200 + 20 * (i % 4))  # and out
    assert bulk._later.count == 17 + 70 + 4 + 6 and bulk._later.wide == 3, "through _bulk"
    assert bulk.recorded == loop.recorded
    a_raw, b_raw = bulk.raw(), loop.raw()
    # 134 tasks, 10 once though its result came twice in one message (Ledger.finish took one)
    assert not bulk._later.count and bulk.recorded == loop.recorded == 134
    assert [r[0] for r in bulk.records].count(by_tid[10].btid) == 1
    assert a_raw.blocks and not b_raw.blocks  # (records laid out in bulk come in blocks of their own)
    assert b"".join([*a_raw.blocks, a_raw.records]) == bytes(b_raw.records)
    assert bytes(a_raw.sent) == bytes(b_raw.sent)
    assert list(trace_mod.tracefile.DISPATCH.iter_unpack(a_raw.sent)) == sent and len(sent) == 134
    assert a_raw.values == b_raw.values


def test_copy_words_copies_each_field_at_odd_strides():
    """tracebulk.copy_words moves 8-byte fields between layouts of odd record sizes (81-byte
    records, 29-byte RESULT entries) by whole words, eight residues at a time: any count of
    records (fewer than 8 included), any offsets, the bytes around left as they were."""
    import random

    from scoopexec.tracebulk import copy_words

    rnd = random.Random(5)
    for _ in range(300):
        m, dstep, sstep = rnd.randrange(1, 40), rnd.choice([81, 29, 9]), rnd.choice([29, 8, 81])
        at, off, base = rnd.randrange(dstep - 7), rnd.randrange(sstep - 7), rnd.randrange(100)
        dst, src = bytearray(rnd.randbytes(base + m * dstep)), rnd.randbytes(m * sstep)
        want = bytearray(dst)
        for i in range(m):
            d, s = base + at + i * dstep, off + i * sstep
            want[d : d + 8] = src[s : s + 8]
        with memoryview(dst) as dv, memoryview(src) as sv:
            copy_words(dv, base + at, dstep, sv, off, sstep, m)
        assert dst == want, (m, dstep, sstep, at, off, base)


@pytest.mark.parametrize("field", ['"pid": 1e400', '"pid": 1, "args": {"task": Infinity}'])
def test_crafted_trace_infinity_is_a_trace_error(tmp_path, field):
    """JSON allows Infinity and 1e400, whose int() raises OverflowError."""
    from scoopexec import report

    path = tmp_path / "bad.json"
    path.write_text('{"traceEvents": [{"ph": "X", "cat": "task", "ts": 0, "dur": 1, "tid": 0, %s}], '
                    '"scoopexec": {}}' % field)
    with pytest.raises(report.TraceError):
        report.load(str(path))


def dispatch_to_both(ledger, bulk, loop):
    """Hand the ledger's queued tasks out, each batch recorded by ``bulk`` as the broker calls
    it (with the TASKS header) and by ``loop`` as the per-task path sees it."""
    from scoopexec.broker import scheduling
    from scoopexec.broker.ledger import task_entries
    from scoopexec.wire import protocol as P

    for w, batch in scheduling.dispatch(ledger, lambda tasks: []):
        flat = task_entries(batch, [], w)
        bulk.on_dispatch(w, batch, flat, P.pack_flat(P.TASKS, len(batch), flat))
        loop.on_dispatch(w, batch)


def test_the_bulk_paths_bytes_in_cross_256_as_the_loop_counts_them(tmp_path, monkeypatch):
    """_bulk counts a message's shared function frame once and adds it to each task's arguments
    in a byte column (tracebulk.sizes: bytes.translate), falling back to int64s when a sum
    reaches 256.  Messages whose sums all stay under 256 (up to 255 exactly), whose arguments
    are under 256 but sums are not (only the translation can tell), whose function frame alone
    is 256 bytes or more, and of tasks from two Sources, must give the per-task loop's records
    byte for byte.  Dropping the overflow test (``0 in column``), or a table off by one at 256,
    fails this."""
    from scoopexec.broker.ledger import Ledger
    from scoopexec.wire import protocol as P

    monkeypatch.setattr(trace_mod, "_time", lambda: 1_700_000_456.5)
    ledger = Ledger(3)
    ledger.add_client(b"C", {"role": "client"}, [b"{}", b""])
    a = ledger.add_worker(b"B" * 12, {"name": "b", "pid": 2, "host": "h"})
    ledger.grant(a, 10_000)
    fa = _pickled_global("mod", "alpha")  # 19 bytes
    fbig = _pickled_global("mod", "f" * 250)  # 266 bytes: over 255 alone
    n = len(fa)
    under = [255 - n - i for i in range(6)]  # sums 255, 254, ...: one byte each
    over = [255 - n + i for i in range(6)]  # sums 255, 256 ...: arguments under 256, sums not
    groups = [(fa, under), (fa, over), (fbig, [1, 2, 3, 4]), (fa, [7] * 5), (fa, [9] * 5)]
    tid = 0
    for fn, arg_sizes in groups:  # one SUBMIT each: a Source each (more than CLOCK_GRAIN apart)
        time.sleep(0.002)
        ledger.submit(b"C", [((tid + i, 0, 2), [fn, b"a" * s]) for i, s in enumerate(arg_sizes)],
                      ledger.clients[b"C"])  # fmt: skip
        tid += len(arg_sizes)
    bulk, loop = TraceRecorder(tmp_path / "a.trace"), TraceRecorder(tmp_path / "b.trace")
    loop._bulk_from = 10**9
    dispatch_to_both(ledger, bulk, loop)
    by_tid = {t.tid: t for t in ledger.tasks.values()}
    assert by_tid[16].src is not by_tid[21].src

    def result(tids):
        entries = [(by_tid[i].btid, 0, 1, 1.7e9 + i, 0.25) for i in tids]
        frames = [P.pack(P.RESULT, entries)] + [b"r" * (i + 1) for i in tids]
        loop.on_results(a, entries, frames, dict(ledger.tasks))
        done: list[Task] = []
        ledger.finish(a, zip(entries, [[f] for f in frames[1:]], strict=True), None, done)
        bulk.on_finished(a, entries, frames, done)

    result(range(0, 6))  # sums under 256
    assert bulk._later.wide == 0
    result(range(6, 12))  # sums 255 .. 260
    assert bulk._later.wide == 1
    result(range(12, 16))  # a function frame of 266 bytes
    assert bulk._later.wide == 2
    result(range(16, 26))  # two Sources in one message
    assert bulk._later.count == 26 and bulk._later.wide == 2, "every message through _bulk"
    assert sorted({r[9] for r in loop.records}) == sorted(
        {n + s for s in under + over + [7, 9]} | {len(fbig) + s for s in (1, 2, 3, 4)})
    a_raw, b_raw = bulk.raw(), loop.raw()
    assert b"".join([*a_raw.blocks, a_raw.records]) == bytes(b_raw.records)
    assert bytes(a_raw.sent) == bytes(b_raw.sent) and a_raw.values == b_raw.values


def test_the_bulk_path_stops_at_the_limit_where_the_loop_does(tmp_path, monkeypatch):
    """A message of tiny tasks that would take the recorder past its limit goes to the per-task
    loop, which records what fits and counts the rest: the same records and count as a
    recorder that never takes the bulk path."""
    from scoopexec.broker.ledger import Ledger
    from scoopexec.wire import protocol as P

    monkeypatch.setattr(trace_mod, "_time", lambda: 1_700_000_789.75)
    ledger = Ledger(3)
    ledger.add_client(b"C", {"role": "client"}, [b"{}", b""])
    a = ledger.add_worker(b"D" * 12, {"name": "d", "pid": 3, "host": "h"})
    ledger.grant(a, 10_000)
    fa = _pickled_global("mod", "alpha")
    ledger.submit(b"C", [((i, 0, 2), [fa, b"a" * i]) for i in range(24)], ledger.clients[b"C"])
    bulk, loop = (TraceRecorder(tmp_path / name, limit=20) for name in ("a.trace", "b.trace"))
    loop._bulk_from = 10**9
    dispatch_to_both(ledger, bulk, loop)
    by_tid = {t.tid: t for t in ledger.tasks.values()}
    for first in (0, 8, 16):
        entries = [(by_tid[i].btid, 0, 1, 1.7e9 + i, 0.25) for i in range(first, first + 8)]
        frames = [P.pack(P.RESULT, entries)] + [b"r" * i for i in range(first, first + 8)]
        loop.on_results(a, entries, frames, dict(ledger.tasks))
        done: list[Task] = []
        ledger.finish(a, zip(entries, [[f] for f in frames[1:]], strict=True), None, done)
        bulk.on_finished(a, entries, frames, done)
        assert bulk._later.count == min(first + 8, 16), "two messages through _bulk, the third not"
    assert bulk.recorded == loop.recorded == 20 and bulk.dropped == loop.dropped == 4
    a_raw, b_raw = bulk.raw(), loop.raw()
    assert b"".join([*a_raw.blocks, a_raw.records]) == bytes(b_raw.records)
    assert bytes(a_raw.sent) == bytes(b_raw.sent)
