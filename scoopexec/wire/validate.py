"""What a received message may hold, beyond its shape: types, sizes, finite numbers.

protocol.decode checks a message's structure (header, entries, frame counts, JSON that
parses).  The checks here look at the values a role reads out of a message before it uses
them: a HELLO's JSON, above all, whose fields the broker turns into numbers and keeps for
as long as the peer stays.  Each check raises ProtocolError naming the problem; the role's
table drops the message (see broker/loop.py ``Broker._take``).

The size limit every socket and link enforces is defined here too: ``max_message_size``
(bytes in one frame, the unit ZeroMQ's ZMQ_MAXMSGSIZE counts), with a default large enough
for the 64 MiB arrays of the benchmarks and a good margin, and :func:`frame_limit`, the hard
guard a receiving socket applies (the limit plus room for headers).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ProtocolError
from . import protocol as P
from .framing import HEADROOM

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HEADROOM",
    "MAX_FIELD",
    "MAX_ID",
    "check_hello",
    "frame_limit",
]

DEFAULT_MAX_MESSAGE_SIZE = 1 << 30  # bytes in one frame (1 GiB): max_message_size's default
MAX_FIELD = 4096  # characters in one string field of a HELLO (a host, a name, a tag)
MAX_ID = (1 << 64) - 1  # task ids are u64 on the wire
_ROLES = frozenset({P.CLIENT, P.WORKER, P.OBSERVER})
_STRINGS = ("host", "name", "tag", "python")  # HELLO fields that must be strings when present


def frame_limit(max_message_size: int) -> int:
    """What a receiving socket accepts in one frame (-1: no limit): the limit plus headroom.

    Senders check ``max_message_size`` themselves and fail the one task with a clear
    error; this is the guard against a peer that does not (ZeroMQ disconnects it, a
    local link is closed)."""
    return max_message_size + HEADROOM if max_message_size > 0 else -1


def _scalar(key: str, value: Any) -> Any:
    """A JSON value a HELLO may carry in a field the broker does not read: kept if small."""
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ID:
            raise ProtocolError(f"HELLO field {key!r}: a number too large")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"HELLO field {key!r}: {value!r} is not a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_FIELD:
            raise ProtocolError(
                f"HELLO field {key!r}: a string of {len(value)} characters (at most {MAX_FIELD})"
            )
        return value
    raise ProtocolError(f"HELLO field {key!r}: a {type(value).__name__} where a number or string belongs")


MAX_RETRIES = 1000  # a client's max_retries, at most (each retry is a worker lost)
MAX_HELLO_CREDIT = 64  # the most tasks a worker asks for at once (worker._prefetch)
MAX_HELLO_FIELDS = 32  # a HELLO has fewer than 12 today: room for new ones, not for a flood


def check_hello(info: dict[str, Any]) -> dict[str, Any]:
    """A HELLO's JSON, checked: the role, the worker's ``held`` task ids (a list of u64),
    ``pid`` (an int), string fields no longer than MAX_FIELD; other fields must be small
    scalars.  Returns the fields as the broker keeps them (``held`` as a set of ints)."""
    role = info.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise ProtocolError(f"HELLO with unknown role {str(role)[:40]!r}")
    if len(info) > MAX_HELLO_FIELDS:  # a peer saying HELLO again must not grow what is kept of it
        raise ProtocolError(f"HELLO with {len(info)} fields (at most {MAX_HELLO_FIELDS})")
    out: dict[str, Any] = {}
    for key, value in info.items():
        if not isinstance(key, str) or len(key) > 64:
            raise ProtocolError("HELLO with a field name that is not a short string")
        if key == "held":
            out[key] = _held(value)
        elif key == "pid":
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32
            ):
                raise ProtocolError(f"HELLO field 'pid': {str(value)[:40]!r} is not a process id")
            out[key] = value
        elif key == "credit":  # a worker's first tasks, asked for with its HELLO
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_HELLO_CREDIT:
                what = str(value)[:40]
                raise ProtocolError(f"HELLO field 'credit': {what!r} is not an int in 0..{MAX_HELLO_CREDIT}")
            out[key] = value
        elif key == "max_retries":  # a client's: it applies to its tasks (broker/ledger.py)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETRIES:
                what = str(value)[:40]
                raise ProtocolError(f"HELLO field 'max_retries': {what!r} is not an int in 0..{MAX_RETRIES}")
            out[key] = value
        elif key in _STRINGS:
            if value is not None and not isinstance(value, str):
                raise ProtocolError(f"HELLO field {key!r}: a {type(value).__name__} where a string belongs")
            out[key] = _scalar(key, value)
        else:
            out[key] = _scalar(key, value)
    return out


def _held(value: Any) -> set[int]:
    if not isinstance(value, list):
        raise ProtocolError(f"HELLO field 'held': a {type(value).__name__} where a list of task ids belongs")
    if len(value) > P.MAX_ENTRIES:
        raise ProtocolError(f"HELLO field 'held': {len(value)} task ids (at most {P.MAX_ENTRIES})")
    for x in value:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_ID:
            raise ProtocolError(f"HELLO field 'held': {str(x)[:40]!r} is not a task id")
    return set(value)
