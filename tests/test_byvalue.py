"""A script's function submitted again is pickled again only when what it was made from changed
(wire/byvalue.py).  The script test runs a real pool from a real script; the others look at the
kept pickles directly, against a pickle made afresh."""

from __future__ import annotations

import builtins
import gc
import linecache
import sys
import textwrap
import time
import types
import weakref

import cloudpickle
import pytest

from scoopexec.wire import byvalue, serialize
from tests.conftest import run_script

SCRIPT = """
    K = 1
    M = 2
    def helper(x):
        return x * M
    def f(x, d=0):
        return helper(x) + K + d + abs(-100)
    def make(step):
        def g(x):
            return x + step
        def set_step(v):
            nonlocal step
            step = v
        return g, set_step
    g, set_step = make(1)
"""


def _script(extra: str = "") -> dict:
    """A namespace as a script's (its functions belong to __main__, so they travel by value)."""
    ns: dict = {"__name__": "__main__"}
    exec(textwrap.dedent(SCRIPT) + extra, ns)
    return ns


def _pickled_twice(fn) -> bytes:
    """``fn`` pickled twice: kept, from the second pickle, when it can be."""
    serialize.dumps_function(fn)
    return serialize.dumps_function(fn)


def _fresh(fn) -> bytes:
    """``fn`` pickled now, nothing kept."""
    byvalue.clear()
    try:
        return serialize.dumps_function(fn)
    finally:
        byvalue.clear()


@pytest.fixture(autouse=True)
def _nothing_kept():
    byvalue.clear()
    yield
    byvalue.clear()


def test_a_script_function_is_kept_and_its_pickle_is_what_cloudpickle_makes():
    ns = _script()
    f = ns["f"]
    first = serialize.dumps_function(f)
    assert byvalue.lookup(f) is None  # (pickled once: maybe made for one submit)
    second = serialize.dumps_function(f)
    assert second == first
    assert byvalue.lookup(f) is second
    assert serialize.dumps_function(f) is second  # (the kept bytes, not made again)
    assert _fresh(f) == first
    assert cloudpickle.loads(first)(1) == 2 + 1 + 0 + 100


def _rebind_global(ns):
    ns["K"] = 7


def _rebind_helper(ns):
    ns["helper"] = lambda x: x * 3


def _rebind_helpers_global(ns):
    ns["M"] = 5


def _shadow_a_builtin(ns):
    ns["abs"] = lambda x: 0


def _new_defaults(ns):
    ns["f"].__defaults__ = (1000,)


def _new_code(ns):
    ns["f"].__code__ = (lambda x, d=0: -x).__code__


def _new_name(ns):
    ns["f"].__qualname__ = "other"


def _an_attribute(ns):
    ns["f"].tag = 1


def _delete_a_global(ns):
    del ns["K"]


CHANGES = [
    _rebind_global, _rebind_helper, _rebind_helpers_global, _shadow_a_builtin, _new_defaults,
    _new_code, _new_name, _an_attribute, _delete_a_global,
]  # fmt: skip


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__.strip("_"))
def test_any_change_to_what_the_pickle_was_made_from_makes_it_anew(change):
    ns = _script()
    f = ns["f"]
    before = _pickled_twice(f)
    change(ns)
    assert byvalue.lookup(f) is None
    after = serialize.dumps_function(f)
    assert after != before
    assert after == _fresh(f)


def test_a_closure_whose_cell_changes_is_made_anew():
    ns = _script()
    g, set_step = ns["g"], ns["set_step"]
    before = _pickled_twice(g)
    assert byvalue.lookup(g) == before
    set_step(10)
    assert byvalue.lookup(g) is None
    assert cloudpickle.loads(serialize.dumps_function(g))(1) == 11


def test_an_import_since_makes_it_anew():
    ns = _script()
    f = ns["f"]
    _pickled_twice(f)
    sys.modules["_scoopexec_test_byvalue_new"] = types.ModuleType("_scoopexec_test_byvalue_new")
    try:
        assert byvalue.lookup(f) is None  # (cloudpickle lists a package's submodules imported)
    finally:
        del sys.modules["_scoopexec_test_byvalue_new"]


IN_PLACE = {
    "list": ("DATA = [1]\ndef h(x=0):\n    return DATA[0] + x\n", "ns['DATA'][0] = 2"),
    "dict": ("DATA = {'k': 1}\ndef h(x=0):\n    return DATA['k'] + x\n", "ns['DATA']['k'] = 2"),
    "set": ("DATA = {1}\ndef h(x=0):\n    return max(DATA) + x\n", "ns['DATA'].add(2)"),
    "list-default": ("def h(x=0, acc=[1]):\n    return acc[0] + x\n", "ns['h'].__defaults__[1][0] = 2"),
    "script-class": ("class C:\n    v = 1\ndef h(x=0):\n    return C.v + x\n", "ns['C'].v = 2"),
    "class-method": (
        "class C:\n    def v(self):\n        return 1\ndef h(x=0):\n    return C().v() + x\n",
        "ns['C'].v = lambda self: 2",
    ),
    "dataclass": (
        "import dataclasses\n@dataclasses.dataclass\nclass P:\n    a: int = 1\n"
        "def h(x=0):\n    return P().a + x\n",
        "ns['P'].__dataclass_fields__['a'].default = 2; ns['P'].__init__.__defaults__ = (2,)",
    ),
    "attribute": ("def h(x=0):\n    return h.tag + x\nh.tag = 1\n", "ns['h'].tag = 2"),
    "keyword-default": ("def h(x=0, *, k=1):\n    return k + x\n", "ns['h'].__kwdefaults__['k'] = 2"),
    "keyword-default-list": (
        "def h(x=0, *, k=[1]):\n    return k[0] + x\n",
        "ns['h'].__kwdefaults__['k'][0] = 2",
    ),
    "kw-only-dataclass": (
        "import dataclasses\n@dataclasses.dataclass(kw_only=True)\nclass P:\n    a: int = 1\n"
        "def h(x=0):\n    return P().a + x\n",
        "ns['P'].__init__.__kwdefaults__['a'] = 2",
    ),
    "doc": ("def h(x=0):\n    return len(h.__doc__) + x\nh.__doc__ = ['v1']\n", "ns['h'].__doc__.append(2)"),
}


@pytest.mark.parametrize("case", IN_PLACE)
def test_what_can_change_in_place_is_looked_at_again_and_a_change_makes_a_new_pickle(case):
    extra, change = IN_PLACE[case]
    ns = _script(extra)
    h = ns["h"]
    before = _pickled_twice(h)
    assert byvalue.lookup(h) is before  # (kept, its containers' items compared at each look-up)
    exec(change, {"ns": ns})
    assert byvalue.lookup(h) is None
    after = serialize.dumps_function(h)
    assert after == _fresh(h)
    # Loaded last: loading a script class's pickle in this process sets that class's namespace
    # from it (cloudpickle's class tracker), which would drop a kept pickle by itself.
    assert cloudpickle.loads(before)() == 1
    assert cloudpickle.loads(after)() == 2


def _kept_or_fresh(fn) -> None:
    """What lookup() gives now is nothing, or what a fresh pickle would be."""
    got = byvalue.lookup(fn)
    assert got is None or got == _fresh(fn)


def test_a_dataclass_is_kept_and_its_docstring_read_or_its_field_metadata_changed_makes_a_new_pickle():
    # Python 3.15: the class's __doc__ is dataclasses' _AutoDocstring until first read, a Field's
    # default metadata a frozendict, MISSING a sentinel (pickled by name); earlier, a str, a
    # mappingproxy and a _MISSING_TYPE.  Each is looked at, so the function is kept on every Python.
    extra = (
        "import dataclasses\n@dataclasses.dataclass\nclass P:\n    a: int = 1\n"
        "    b: list = dataclasses.field(default_factory=list, metadata={'unit': ['m']})\n"
        "def h(x=0):\n    return (P().a + x, P.__dataclass_fields__['b'].metadata['unit'][0])\n"
    )
    ns = _script(extra)
    h = ns["h"]
    kept = _pickled_twice(h)
    assert byvalue.lookup(h) is kept
    assert serialize.dumps_function(h) is kept
    assert kept == _fresh(h)
    kept = _pickled_twice(h)  # (_fresh() let go of it)
    assert byvalue.lookup(h) is kept
    assert ns["P"].__doc__.startswith("P(")  # (3.15: replaces the _AutoDocstring with the text)
    _kept_or_fresh(h)  # (3.15: a new pickle, the class's namespace changed; earlier: the same)
    kept = _pickled_twice(h)
    assert byvalue.lookup(h) is kept
    ns["P"].__dataclass_fields__["b"].metadata["unit"][0] = "km"  # (a list inside the metadata)
    assert byvalue.lookup(h) is None
    assert cloudpickle.loads(serialize.dumps_function(h))() == (1, "km")


def test_the_default_factory_marker_is_looked_at_as_its_class_and_attributes():
    # dataclasses._HAS_DEFAULT_FACTORY, __init__'s default for a default_factory field, pickles
    # as its class (by name) and its attributes: a change of either makes a new pickle.
    import dataclasses

    extra = (
        "import dataclasses\n@dataclasses.dataclass\nclass P:\n"
        "    b: list = dataclasses.field(default_factory=list)\n"
        "def h(x=0):\n    return len(P().b) + x\n"
    )
    ns = _script(extra)
    h = ns["h"]
    marker = dataclasses._HAS_DEFAULT_FACTORY
    kind = type(marker)
    kept = _pickled_twice(h)
    assert byvalue.lookup(h) is kept
    try:
        marker.seen = 1
        assert byvalue.lookup(h) is None
        assert serialize.dumps_function(h) == _fresh(h)
    finally:
        del marker.seen
    kept = _pickled_twice(h)
    assert byvalue.lookup(h) is kept

    class Other(kind):  # (a class of another name: pickled under that one)
        pass

    try:
        marker.__class__ = Other
        assert byvalue.lookup(h) is None
    finally:
        marker.__class__ = kind
    assert cloudpickle.loads(serialize.dumps_function(h))() == 0


@pytest.mark.skipif(not hasattr(builtins, "frozendict"), reason="builtins.frozendict: Python 3.15+")
def test_a_frozendict_is_walked_and_what_it_holds_that_can_change_is_compared():
    ns = _script("FD = frozendict({'k': [1]})\ndef h(x=0):\n    return FD['k'][0] + x\n")
    h = ns["h"]
    kept = _pickled_twice(h)
    assert byvalue.lookup(h) is kept
    ns["FD"]["k"][0] = 2  # (the list it holds, in place)
    assert byvalue.lookup(h) is None
    assert cloudpickle.loads(serialize.dumps_function(h))() == 2


@pytest.mark.skipif(not hasattr(builtins, "sentinel"), reason="builtins.sentinel: Python 3.15+")
def test_a_sentinel_is_kept_while_its_module_still_has_it_under_its_name():
    module = types.ModuleType("_scoopexec_test_byvalue_sentinel")
    module.S = builtins.sentinel("S")
    module.S.__module__ = module.__name__
    sys.modules[module.__name__] = module
    try:
        ns = _script("import _scoopexec_test_byvalue_sentinel as m\nSENT = m.S\ndef h():\n    return SENT\n")
        h = ns["h"]
        kept = _pickled_twice(h)
        assert byvalue.lookup(h) is kept
        assert cloudpickle.loads(kept)() is module.S
        module.S = builtins.sentinel("S")  # (another under its name: the old one no longer pickles)
        module.S.__module__ = module.__name__
        assert byvalue.lookup(h) is None
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize(
    "extra",
    [
        "import collections\nCOUNT = collections.Counter()\ndef h(x):\n    return COUNT[x]\n",  # an object
        "import numpy\nA = numpy.zeros(3)\ndef h(x):\n    return A[x]\n",
        "class S:\n    __slots__ = ('a',)\ndef h(x):\n    return S\n",  # a class with slots
        "import enum\nclass E(enum.Enum):\n    A = 1\ndef h(x):\n    return E.A\n",  # another metaclass
        "DATA = list(range(5000))\ndef h(x):\n    return DATA[x]\n",  # more items than looked at
    ],
    ids=["instance", "array", "slots-class", "enum", "long-list"],
)
def test_a_function_that_reads_what_is_not_looked_at_is_pickled_each_time(extra):
    ns = _script(extra)
    h = ns["h"]
    _pickled_twice(h)
    assert byvalue.lookup(h) is None
    assert byvalue._once[id(h)][1]  # (refused: not looked at again while it lives)


def test_what_pickles_by_name_or_cannot_change_counts_as_unchanged():
    extra = (
        "import math, os.path\nfrom math import sqrt\nfrom collections import OrderedDict\n"
        "T = (1, 2.5, 'a', b'b', None, frozenset({3}), (True, ...))\n"
        "def h(x: int) -> float:\n"
        "    return sqrt(x) + math.pi + len(T) + len(OrderedDict()) + len(os.path.sep)\n"
    )
    ns = _script(extra)
    h = ns["h"]
    data = _pickled_twice(h)
    assert byvalue.lookup(h) == data
    assert cloudpickle.loads(data)(4) == pytest.approx(2 + 3.141592653589793 + 7 + 0 + 1)


def test_nothing_is_kept_while_a_module_is_pickled_by_value():
    ns = _script()
    f = ns["f"]
    mod = types.ModuleType("_scoopexec_test_byvalue_mod")
    sys.modules[mod.__name__] = mod
    try:
        cloudpickle.register_pickle_by_value(mod)
        try:
            _pickled_twice(f)
            assert byvalue.lookup(f) is None
        finally:
            cloudpickle.unregister_pickle_by_value(mod)
    finally:
        del sys.modules[mod.__name__]


def test_a_function_that_dies_is_forgotten():
    ns = _script()
    _pickled_twice(ns["f"])
    serialize.dumps_function(ns["g"])  # (once: remembered, not kept)
    assert len(byvalue._kept) == 1 and len(byvalue._once) == 1
    ns.clear()
    gc.collect()
    assert len(byvalue._kept) == 0 and len(byvalue._once) == 0


def test_a_script_sees_each_change_between_submits_of_its_function():
    code = """
        from scoopexec import ScoopExecutor
        from scoopexec.wire import byvalue

        K = 1
        M = 2
        TABLE = [0]

        def helper(x):
            return x * M

        def f(x):
            return helper(x) + K + TABLE[0]

        def g(x):
            return helper(x) + K

        if __name__ == "__main__":
            with ScoopExecutor(2) as ex:
                out = [ex.submit(g, 1).result(timeout=60), ex.submit(g, 1).result(timeout=60)]
                kept = byvalue.lookup(g) is not None
                K = 10
                out.append(ex.submit(g, 1).result(timeout=60))
                M = 3
                out.append(ex.submit(g, 1).result(timeout=60))
                def helper(x):
                    return -x
                out.append(ex.submit(g, 1).result(timeout=60))
                out.append(ex.submit(f, 1).result(timeout=60))
                TABLE[0] = 100
                out.append(ex.submit(f, 1).result(timeout=60))
                out.append(list(ex.map(g, [1, 2])))
            print(kept, out)
    """
    r = run_script(code)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split("\n")[0] == "True [3, 3, 12, 13, 9, 9, 109, [9, 8]]"


# What a cold review found (each failed on the first version of byvalue.py).


def test_keyword_defaults_emptied_then_filled_in_place_make_a_new_pickle_each_time():
    ns = _script("def h(*, y=None):\n    return y\n")
    h = ns["h"]
    h.__kwdefaults__ = {}
    kept = _pickled_twice(h)
    assert byvalue.lookup(h) is kept
    h.__kwdefaults__["y"] = 3  # (filled in place: the same dict)
    assert byvalue.lookup(h) is None
    assert cloudpickle.loads(serialize.dumps_function(h))() == 3
    h.__kwdefaults__ = None  # (rebound: the function's own facts)
    assert byvalue.lookup(h) is None
    with pytest.raises(TypeError):
        cloudpickle.loads(serialize.dumps_function(h))()


def test_a_global_rebound_while_the_function_is_pickled_is_not_kept():
    ns = _script()
    f = ns["f"]
    serialize.dumps_function(f)  # (its first pickle: marked)
    plan = byvalue.prepare(f)
    assert plan is not None
    data = serialize._cloud_dumps(f)
    ns["K"] = 5  # (another thread, while this one pickled)
    assert not byvalue.keep(f, data, plan)
    assert byvalue.lookup(f) is None
    assert cloudpickle.loads(serialize.dumps_function(f))(1) == 2 + 5 + 100


def test_deep_or_shared_tuples_cost_a_bounded_look_and_no_error():
    deep: tuple = ()
    for i in range(900):
        deep = (i, deep)
    shared: tuple = (1,)
    for _ in range(4):
        shared = (shared,) * 64  # (64**4 items, were shared ones looked at again)
    for value in (deep, shared):
        ns = _script("def h():\n    return V\n")
        ns["V"] = value
        t = time.perf_counter()
        _pickled_twice(ns["h"])
        assert time.perf_counter() - t < 30  # (a hang, not a speed: it took minutes)
        kept = byvalue.lookup(ns["h"])  # (the deep one is refused; the shared one's items are few)
        assert kept is None or kept == _fresh(ns["h"])


def test_what_pickled_by_name_is_looked_at_again(tmp_path, monkeypatch):
    (tmp_path / "_scoopexec_byvalue_modx.py").write_text("class C:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    modx = importlib.import_module("_scoopexec_byvalue_modx")
    try:
        ns = _script("from _scoopexec_byvalue_modx import C\nimport time\nfrom time import time as now\n"
                     "def h():\n    return C\ndef k():\n    return now()\n")  # fmt: skip
        _pickled_twice(ns["h"])
        _pickled_twice(ns["k"])
        assert byvalue.lookup(ns["h"]) is not None and byvalue.lookup(ns["k"]) is not None
        importlib.reload(modx)  # (modx.C is another class: the old one now travels by value)
        assert byvalue.lookup(ns["h"]) is None
        assert serialize.dumps_function(ns["h"]) == _fresh(ns["h"])
        _pickled_twice(ns["k"])
        monkeypatch.setattr("time.time", lambda: 0.0)  # (a mock's patch: the old one no longer pickles)
        assert byvalue.lookup(ns["k"]) is None
        with pytest.raises(Exception, match="not the same object"):
            serialize.dumps_function(ns["k"])
    finally:
        sys.modules.pop("_scoopexec_byvalue_modx", None)


def test_a_module_removed_and_another_imported_is_seen():
    ns = _script("import xml\ndef h():\n    return xml.dom\n")
    import xml.dom  # noqa: F401

    _pickled_twice(ns["h"])
    assert byvalue.lookup(ns["h"]) is not None
    saved = sys.modules.pop("xml.dom")
    try:
        sys.modules["_scoopexec_byvalue_other"] = types.ModuleType("_scoopexec_byvalue_other")
        assert byvalue.lookup(ns["h"]) is None  # (as many modules as before, not the same)
    finally:
        sys.modules.pop("_scoopexec_byvalue_other", None)
        sys.modules["xml.dom"] = saved


def test_source_that_travels_with_code_not_on_disk_is_looked_at():
    ns: dict = {"__name__": "__main__"}
    name = "<scoopexec-byvalue-cell>"
    source = "def h():\n    return 1\n"
    exec(compile(source, name, "exec"), ns)
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        _pickled_twice(ns["h"])
        assert byvalue.lookup(ns["h"]) is not None
        del linecache.cache[name]
        assert byvalue.lookup(ns["h"]) is None
        assert serialize.dumps_function(ns["h"]) == _fresh(ns["h"])
    finally:
        linecache.cache.pop(name, None)


def test_a_global_named_as_an_attribute_is_not_held():
    ns = _script("def h(obj):\n    return obj.data\n")
    ns["data"] = big = bytearray(1000)
    _pickled_twice(ns["h"])
    assert byvalue.lookup(ns["h"]) is not None
    assert not any(
        v is big for v in byvalue._kept[id(ns["h"])].held
    )  # (it would be, after the script dropped it)


# A pool with a task_timeout wraps each submit's function in a TimeLimit, made anew each time:
# its pickle is re-used while the function's own is (serialize._limited_parts).


def test_a_time_limit_around_a_function_is_pickled_again_only_when_the_function_is():
    from scoopexec.worker.limits import TimeLimit

    ns = _script()
    f = ns["f"]
    frames = [serialize.encode_function(TimeLimit(f, 30.0)) for _ in range(4)]
    assert frames[3] is frames[2]  # (from the third: its function's pickle is kept from its second)
    assert cloudpickle.loads(frames[3]).fn(1) == 2 + 1 + 100
    assert serialize.encode_function(TimeLimit(f, 30)) != frames[3]  # (an int limit pickles apart)
    assert serialize.encode_function(TimeLimit(f, 31.0)) != frames[3]
    ns["K"] = 50
    again = serialize.encode_function(TimeLimit(f, 30.0))
    assert again is not frames[3]
    assert cloudpickle.loads(again).fn(1) == 2 + 50 + 100
    module_frames = [serialize.encode_function(TimeLimit(textwrap.dedent, 30.0)) for _ in range(2)]
    assert module_frames[1] is module_frames[0]


def test_a_pool_with_a_task_timeout_sees_each_change_and_still_times_out():
    code = """
        import time
        from scoopexec import ScoopExecutor, TaskTimeoutError

        K = 1

        def g(x, pause=0.0):
            time.sleep(pause)
            return x + K

        if __name__ == "__main__":
            with ScoopExecutor(2, task_timeout=2) as ex:
                out = [ex.submit(g, 1).result(timeout=60) for _ in range(4)]
                K = 10
                out += [ex.submit(g, 1).result(timeout=60) for _ in range(3)]
                try:
                    ex.submit(g, 1, 30).result(timeout=60)
                    out.append("no timeout")
                except TaskTimeoutError:
                    out.append("timed out")
            print(out)
    """
    r = run_script(code, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split("\n")[0] == "[2, 2, 2, 2, 11, 11, 11, 'timed out']"


def test_a_method_bound_to_an_object_is_pickled_with_the_object_as_it_is_now():
    from scoopexec.worker.limits import TimeLimit

    config = {"k": "v1"}
    get = config.get
    assert cloudpickle.loads(serialize.dumps_function(get))("k") == "v1"
    limited = [serialize.encode_function(TimeLimit(config.get, 30.0)) for _ in range(3)]
    config["k"] = "v2"
    assert cloudpickle.loads(serialize.dumps_function(config.get))("k") == "v2"
    assert cloudpickle.loads(serialize.encode_function(TimeLimit(config.get, 30.0))).fn("k") == "v2"
    assert len(limited) == 3


def test_a_time_limit_keeps_large_buffers_apart_and_follows_the_by_value_registry():
    import numpy as np

    from scoopexec.worker.limits import TimeLimit

    ns = _script("def h(i):\n    return float(DATA[i])\n")
    ns["DATA"] = np.arange(200_000, dtype=np.float64)  # 1.6 MB: its buffer travels after the pickle
    parts = serialize._function_parts(TimeLimit(ns["h"], 30.0))
    assert len(parts) == 3 and parts[-1].nbytes == 1_600_000  # (head, pickle, buffer)
    mod = types.ModuleType("_scoopexec_test_byvalue_mod2")
    exec("def m(x):\n    return x + 1\n", mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        by_name = [serialize.encode_function(TimeLimit(mod.m, 30.0)) for _ in range(3)]
        assert by_name[2] is by_name[1] and len(by_name[2]) < 200  # (by name, re-used)
        cloudpickle.register_pickle_by_value(mod)
        try:
            by_value = serialize.encode_function(TimeLimit(mod.m, 30.0))
            assert b"_make_function" in by_value  # (its code travels, as the registry asks)
        finally:
            cloudpickle.unregister_pickle_by_value(mod)
    finally:
        del sys.modules[mod.__name__]


def test_a_function_that_cannot_be_kept_is_pickled_once_per_submit_under_a_time_limit(monkeypatch):
    from scoopexec.worker.limits import TimeLimit

    ns = _script("import collections\nDATA = collections.Counter()\ndef h(x):\n    return DATA[0] + x\n")
    calls = []
    real = serialize._cloud_dumps
    monkeypatch.setattr(serialize, "_cloud_dumps", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(4):
        serialize.encode_function(TimeLimit(ns["h"], 30.0))
    assert len(calls) == 4


def test_a_global_rebound_before_each_submit_stops_being_looked_at():
    ns = _script()
    f = ns["f"]
    for k in range(4 * byvalue.STRIKES):
        ns["K"] = k * 1000 + 1  # (a new int object each time)
        assert cloudpickle.loads(serialize.dumps_function(f))(0) == ns["K"] + 100
    assert byvalue._once[id(f)][1]  # (refused: pickled each time, without the look)
    assert id(f) not in byvalue._kept


def test_a_submodule_entry_replaced_in_sys_modules_is_seen():
    import xml.dom.minidom  # noqa: F401

    ns = _script("import xml.dom\ndef h():\n    return xml.dom.minidom\n")
    _pickled_twice(ns["h"])
    assert byvalue.lookup(ns["h"]) is not None
    saved = sys.modules["xml.dom.minidom"]
    sys.modules["xml.dom.minidom"] = None  # (as mock.patch.dict does: same count, same latest)
    try:
        assert byvalue.lookup(ns["h"]) is None
    finally:
        sys.modules["xml.dom.minidom"] = saved


# A class of the script in a task's arguments and results.


def test_a_pool_sees_each_change_to_a_class_of_the_script_its_arguments_hold():
    code = """
        import dataclasses
        from scoopexec import ScoopExecutor

        @dataclasses.dataclass
        class Params:
            a: float
            scale = 1.0

            def value(self):
                return self.a * self.scale

        def run(p):
            return p.value(), Params(p.a + 1)

        if __name__ == "__main__":
            with ScoopExecutor(2) as ex:
                out = [ex.submit(run, Params(1.0)).result(timeout=60)[0] for _ in range(4)]
                Params.scale = 10.0
                out += [ex.submit(run, Params(1.0)).result(timeout=60)[0] for _ in range(3)]
                back = ex.submit(run, Params(2.0)).result(timeout=60)[1]
            print(out, type(back).__name__, back.a)
    """
    r = run_script(code, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split("\n")[0] == "[1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0] Params 3.0"


def test_a_class_that_came_back_in_a_result_is_sent_as_the_client_changes_it():
    code = """
        import dataclasses
        from scoopexec import ScoopExecutor

        @dataclasses.dataclass
        class Params:
            a: float
            scale = 1.0

        def run(p):
            return p.a * p.scale, Params(p.a)

        if __name__ == "__main__":
            with ScoopExecutor(1) as ex:
                first = [ex.submit(run, Params(1.0)).result(timeout=60)[0] for _ in range(3)]
                Params.scale = 10.0
                then = [ex.submit(run, Params(1.0)).result(timeout=60)[0] for _ in range(3)]
            print(first, then)
    """
    r = run_script(code, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split("\n")[0] == "[1.0, 1.0, 1.0] [10.0, 10.0, 10.0]"


def test_a_kept_pickle_dropped_by_the_collector_during_its_look_up_raises_nothing():
    cycle = "def mk():\n    def g():\n        return g\n    return g\n"
    ns = _script(cycle + "g = mk()\ndef h():\n    return g()\n")
    h = ns["h"]
    _pickled_twice(h)
    assert byvalue.lookup(h) is not None
    old = gc.get_threshold()
    gc.disable()
    try:
        ns["g"] = ns["mk"]()  # (the old g: cyclic garbage, whose collection drops h's pickle)
        gc.set_threshold(1, 1, 1)
        gc.enable()  # (so that a collection runs inside the look-up, as it may by chance)
        data = serialize.dumps_function(h)
    finally:
        gc.set_threshold(*old)
        gc.enable()
    assert data == _fresh(h)


def test_descriptors_and_builtin_types_are_not_taken_for_what_they_are_not():
    ns = _script(
        "import types\nclass C:\n    pass\nclass S:\n    __slots__ = ('x',)\n"
        "D = C.__dict__['__dict__']\nM = S.x\nT = types.CodeType\n"
        "def h():\n    return D, M\ndef k():\n    return T\n"
    )
    _pickled_twice(ns["h"])  # (a descriptor pickles as its class's attribute: the class by value)
    assert byvalue.lookup(ns["h"]) is None
    assert byvalue._once[id(ns["h"])][1]
    _pickled_twice(ns["k"])  # (a built-in type: by its name)
    assert byvalue.lookup(ns["k"]) is not None
    assert not any(g[1] == "class" for g in byvalue._kept[id(ns["k"])].groups)


def test_a_class_of_the_script_is_not_kept_alive_by_a_kept_pickle():
    ns = _script("class C:\n    v = 1\ndef h():\n    return C.v\n")
    _pickled_twice(ns["h"])
    assert byvalue.lookup(ns["h"]) is not None
    ref = weakref.ref(ns["C"])
    del ns["C"]
    gc.collect()
    assert ref() is None and id(ns["h"]) not in byvalue._kept  # (its death dropped the pickle)


# What the fourth cold review found.


def test_a_time_limits_pickle_goes_when_its_function_dies():
    from scoopexec.worker.limits import TimeLimit

    ns = _script()
    for _ in range(3):
        serialize.encode_function(TimeLimit(ns["g"], 30.0))
    assert id(ns["g"]) in serialize._limited
    key = id(ns["g"])
    ns.clear()
    gc.collect()
    assert key not in serialize._limited


def test_what_pickled_by_name_and_was_renamed_is_seen():
    mod = types.ModuleType("_scoopexec_test_byvalue_mod3")
    exec("def m(x):\n    return x\n", mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        ns = _script(f"from {mod.__name__} import m\ndef h(x):\n    return m(x)\n")
        _pickled_twice(ns["h"])
        assert byvalue.lookup(ns["h"]) is not None
        mod.m2 = mod.m
        mod.m.__qualname__ = "m2"  # (found under its new name: by name still, another name)
        assert byvalue.lookup(ns["h"]) is None
        assert serialize.dumps_function(ns["h"]) == _fresh(ns["h"])
    finally:
        del sys.modules[mod.__name__]


def test_a_class_without_a_module_name_and_an_odd_sys_modules_key_are_no_trouble():
    ns = _script("class C:\n    pass\nC.__module__ = None\ndef h():\n    return C\n")
    _pickled_twice(ns["h"])
    assert byvalue.lookup(ns["h"]) is None  # (cloudpickle would look for C in every module)
    sys.modules[None] = None  # type: ignore[index]
    try:
        f = _script("import xml\ndef k():\n    return xml\n")["k"]
        _pickled_twice(f)  # (its submodules are looked for among sys.modules' keys)
    finally:
        del sys.modules[None]  # type: ignore[arg-type]
