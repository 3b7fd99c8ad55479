"""Reproducible randomness for maps: ``ex.map(fn, xs, seed=S)``.

Each item of a seeded map draws from streams that depend only on the seed and the
item's index -- not on the worker that runs it, the number of workers, the order in
which items run, or how many attempts it took -- so its result is the same with 1
worker or 64, after a worker died and the item ran again, and when a journal resume
(journal.py) computes only some of the items.

Deriving an item's state follows the idea of NumPy's ``SeedSequence``: the user's seed
is *entropy* (a non-negative int, or a sequence of them), each item is a child with
the *spawn key* ``(index,)``, and ``generate_state(n)`` hashes entropy and spawn key
into as many 32-bit words as a generator needs.  The hash here is BLAKE2b (domain
separated, every field length-prefixed), so no two (entropy, spawn key) pairs feed
the same input to it; numpy is not needed.

Before an item's call, on the worker:

* ``scoopexec.task_rng()`` returns a ``random.Random`` of its own for this item (the
  way to draw that nothing else can disturb);
* the ``random`` module's global generator is seeded for the item;
* if numpy is imported in the worker at that moment, ``numpy.random``'s legacy
  global generator (``numpy.random.random()`` and friends) is seeded too.

Tasks parked on one worker share the module-level generators: a seeded task that
waits (a nested map, ``future.result()``) lets other tasks run and draw from them.
So when a seeded task parks, the states of ``random`` (and numpy's) are saved, and
restored when it resumes (``suspend``/``resume``, called by the worker around the
switch): each seeded task sees its own stream, nested tasks or not.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

import greenlet

__all__ = ["SeedSequence", "SeededCall", "check_seed", "resume", "suspend", "task_rng"]

_PERSON = b"scoopexec-seed1"  # BLAKE2b personalisation: this scheme, version 1


def _int_bytes(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 7) // 8 or 1, "little")
    return struct.pack("<I", len(raw)) + raw


def check_seed(seed: Any) -> tuple[int, ...]:
    """The entropy of ``seed=``: a non-negative int or a non-empty sequence of them."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        values: tuple[Any, ...] = (seed,)
    elif isinstance(seed, (tuple, list)) and seed:
        values = tuple(seed)
    else:
        raise TypeError(
            f"seed= is a non-negative integer or a non-empty tuple of them (e.g. seed=(1234, generation)), "
            f"not {type(seed).__name__}"
        )
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"seed= takes non-negative integers only, got {v!r}")
    return tuple(int(v) for v in values)


class SeedSequence:
    """Entropy plus a spawn key, hashed into generator states on demand.

    ``SeedSequence(1234).spawn_child(7).generate_state(4)`` is the state of item 7 of
    a map with ``seed=1234``: four 32-bit words, the same in every process.
    """

    __slots__ = ("_pool", "entropy", "spawn_key")

    def __init__(self, entropy: int | Sequence[int], spawn_key: Sequence[int] = ()) -> None:
        self.entropy = check_seed(entropy)
        self.spawn_key = check_seed(tuple(spawn_key)) if spawn_key else ()
        h = _blake2b(b"", 32)
        h.update(struct.pack("<I", len(self.entropy)))
        for v in self.entropy:
            h.update(_int_bytes(v))
        h.update(struct.pack("<I", len(self.spawn_key)))
        for v in self.spawn_key:
            h.update(_int_bytes(v))
        self._pool = h.digest()

    def spawn_child(self, index: int) -> SeedSequence:
        """The child with spawn key ``self.spawn_key + (index,)``."""
        return SeedSequence(self.entropy, (*self.spawn_key, index))

    def generate_state(self, n_words: int) -> list[int]:
        """``n_words`` 32-bit words of state (a stream of hashes of the pool and a counter)."""
        out = bytearray()
        block = 0
        while len(out) < 4 * n_words:
            counter = struct.pack("<Q", block)
            out += _blake2b(self._pool + counter, 64).digest()
            block += 1
        return list(struct.unpack(f"<{n_words}I", bytes(out[: 4 * n_words])))

    def __repr__(self) -> str:
        return f"SeedSequence(entropy={self.entropy!r}, spawn_key={self.spawn_key!r})"


def _blake2b(data: bytes, size: int) -> Any:
    """BLAKE2b with this module's personalisation.  hashlib is imported here, on first use:
    at the top it loaded OpenSSL (about 2 ms) into every worker's start, for seeded maps only."""
    import hashlib  # stdlib, lazy: see above

    return hashlib.blake2b(data, digest_size=size, person=_PERSON)


def _words_int(words: Sequence[int]) -> int:
    return sum(w << (32 * i) for i, w in enumerate(words))


class _ItemState:
    """What one seeded item runs with: its own generator, and what it suspends."""

    __slots__ = ("rng", "saved")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.saved: tuple[Any, Any] | None = None


_running: dict[Any, _ItemState] = {}  # greenlet -> the seeded item it runs (innermost)
_unseeded: random.Random | None = None


def task_rng() -> random.Random:
    """The random generator of the current item of a seeded map (``map(..., seed=S)``).

    Inside a task of a seeded map: a ``random.Random`` seeded from the map's seed and
    the item's index -- the same for that item on any worker, at any attempt, and
    untouched by other tasks (unlike the ``random`` module, which tasks share).
    Anywhere else (the client, a task of an unseeded map): one generator per process,
    seeded from the operating system, so code that calls ``task_rng()`` runs
    everywhere but is reproducible only under ``seed=``.
    """
    state = _running.get(greenlet.getcurrent())
    if state is not None:
        return state.rng
    global _unseeded
    if _unseeded is None:
        _unseeded = random.Random()
    return _unseeded


class SeededCall:
    """The function a seeded map sends: ``call(index, *args)`` seeds, then runs ``fn(*args)``."""

    __slots__ = ("entropy", "fn")

    def __init__(self, fn: Callable[..., Any], entropy: tuple[int, ...]) -> None:
        self.fn = fn
        self.entropy = entropy

    def __reduce__(self) -> tuple[Any, ...]:
        return (SeededCall, (self.fn, self.entropy))

    def __call__(self, index: int, *args: Any) -> Any:
        words = SeedSequence(self.entropy, (index,)).generate_state(12)
        state = _ItemState(random.Random(_words_int(words[0:4])))
        random.seed(_words_int(words[4:8]))
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(words[8:12])
        g = greenlet.getcurrent()
        outer = _running.get(g)
        _running[g] = state
        try:
            return self.fn(*args)
        finally:
            if outer is None:
                del _running[g]
            else:
                _running[g] = outer


def suspend() -> _ItemState | None:
    """The current greenlet is about to park: save its seeded item's global generators."""
    state = _running.get(greenlet.getcurrent())
    if state is None:
        return None
    np = sys.modules.get("numpy")
    state.saved = (random.getstate(), np.random.get_state() if np is not None else None)
    return state


def resume(state: _ItemState | None) -> None:
    """The greenlet that ``suspend`` returned ``state`` for runs again: put its generators back."""
    if state is None or state.saved is None:
        return
    py_state, np_state = state.saved
    state.saved = None
    random.setstate(py_state)
    if np_state is not None:
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.set_state(np_state)
