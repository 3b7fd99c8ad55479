"""ZeroMQ CURVE for every endpoint that leaves this machine.

::

   client / worker                                   broker (ROUTER, CURVE_SERVER)
   CURVE_SERVERKEY = broker's public key  ──TCP──►   ZAP handler: is the peer's public
   CURVE_PUBLICKEY / SECRETKEY = its pair            key among the accepted ones?

A private ipc socket (in a 0700 directory) and loopback TCP need no keys.
Anything else is encrypted and authenticated: the broker has a key pair made
when it starts, and accepts only the public keys it was given (the pairs it
made for the workers it launched itself, and the one it wrote to a key file
for peers started by hand).  Keys travel to remote workers on their standard
input (a short framed header, see :func:`encode_frame`) or in a 0600 file
(:func:`write_key_file`), never on a command line or in the environment.

libzmq reports no error to a peer whose handshake fails: it retries every
~100 ms forever.  :class:`HandshakeWatch` reads the socket monitor's events so
that clients and workers give up within seconds with a clear reason.
"""

from __future__ import annotations

import json
import os
import select
import stat
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import zmq

__all__ = [
    "Credentials",
    "HandshakeWatch",
    "KeyPair",
    "check_endpoint",
    "is_loopback",
    "read_frame",
    "read_key_file",
    "write_key_file",
]

KEY_FORMAT = "scoopexec-key-1"
FRAME_MAGIC = b"SCOOPEXEC-KEYS"
MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def _require_curve() -> None:
    if not zmq.has("curve"):  # pragma: no cover - every pyzmq wheel has it
        raise RuntimeError(
            "this libzmq was built without CURVE support, which scoopexec needs for endpoints that "
            "leave this machine; install pyzmq from its wheels"
        )


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, Z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes

    @classmethod
    def new(cls) -> KeyPair:
        _require_curve()
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    def __repr__(self) -> str:  # never print a secret key
        return f"KeyPair(public={self.public.decode()!r})"


@dataclass(frozen=True)
class Credentials:
    """What a client or worker needs to join a secured broker."""

    server: bytes  # the broker's public key
    public: bytes
    secret: bytes

    @classmethod
    def for_pair(cls, server: bytes, pair: KeyPair) -> Credentials:
        return cls(server, pair.public, pair.secret)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": KEY_FORMAT,
                "server_public": self.server.decode(),
                "public": self.public.decode(),
                "secret": self.secret.decode(),
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Credentials:
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != KEY_FORMAT:
                raise ValueError(f"not a {KEY_FORMAT} key")
            keys = [d["server_public"].encode(), d["public"].encode(), d["secret"].encode()]
        except (ValueError, KeyError, AttributeError, UnicodeError) as exc:
            raise ValueError(f"{source} does not hold scoopexec keys: {exc}") from None
        for k in keys:
            if len(k) != 40:
                raise ValueError(f"{source}: a CURVE key must be 40 Z85 characters")
        return cls(*keys)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` (a DEALER about to connect) a CURVE client with these keys."""
        _require_curve()
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def __repr__(self) -> str:
        return f"Credentials(server={self.server.decode()!r}, public={self.public.decode()!r})"


# --------------------------------------------------------------- endpoints
def endpoint_host(endpoint: str) -> str | None:
    """The host part of a tcp:// endpoint (None for other transports)."""
    if not endpoint.startswith("tcp://"):
        return None
    hostport = endpoint[len("tcp://") :]
    if ";" in hostport:  # "source;destination" form: the destination counts
        hostport = hostport.split(";", 1)[1]
    return hostport.rsplit(":", 1)[0].strip("[]")


def is_loopback(endpoint: str) -> bool:
    """ipc://, inproc:// and loopback TCP: endpoints that never leave this machine."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def check_endpoint(endpoint: str, *, secure: bool, what: str = "endpoint") -> None:
    """Refuse unsupported transports, and non-loopback TCP without CURVE (with the reason)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"unsupported {what} {endpoint!r}: use ipc://PATH or tcp://HOST:PORT")
    if is_loopback(endpoint) or secure:
        return
    raise ValueError(
        f"{what} {endpoint!r} is not on this machine: anyone who can reach it could run code as "
        "you, so scoopexec only uses it with CURVE encryption and authentication. Give the pool's "
        "key file (key=... / --key FILE, written by `python -m scoopexec broker --key-file FILE` or "
        "ScoopExecutor.write_key_file()), or use loopback (127.0.0.1) or ipc://"
    )


# --------------------------------------------------------------- key files
def write_key_file(path: str | os.PathLike[str], creds: Credentials) -> str:
    """Write ``creds`` to ``path`` with mode 0600 (atomically); return the path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".scoopexec-key-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(creds.to_json())
            fh.write(b"\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_key_file(path: str | os.PathLike[str]) -> Credentials:
    """Read a key file; refuse one that others could read or that someone else owns."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ValueError(f"cannot read key file {path!r}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise ValueError(
                f"key file {path!r} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"it holds a secret key: run `chmod 600 {path}`"
            )
        if st.st_uid != os.getuid():
            raise ValueError(f"key file {path!r} belongs to another user (uid {st.st_uid})")
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
            if len(data) > 65536:
                raise ValueError(f"key file {path!r} is too large to be a scoopexec key")
    finally:
        os.close(fd)
    return Credentials.from_json(data, f"key file {path!r}")


# ------------------------------------------------------- keys through stdin
def encode_frame(creds: Credentials) -> bytes:
    """The header a launcher writes first on a remote worker's standard input."""
    body = creds.to_json()
    return FRAME_MAGIC + b" %d\n" % len(body) + body


def read_frame(fd: int, timeout: float = 60.0) -> Credentials:
    """Read the key header from ``fd`` (a worker's stdin) without reading past it."""
    deadline = time.monotonic() + timeout

    def read(n: int) -> bytes:
        out = b""
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ValueError(f"no keys arrived on standard input within {timeout:g} s")
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise ValueError("standard input closed before the keys arrived")
            out += chunk
        return out

    line = b""
    while not line.endswith(b"\n"):
        line += read(1)
        if len(line) > 64:
            raise ValueError("standard input does not start with a scoopexec key header")
    magic, _, size = line.strip().partition(b" ")
    if magic != FRAME_MAGIC or not size.isdigit() or int(size) > 65536:
        raise ValueError("standard input does not start with a scoopexec key header")
    return Credentials.from_json(read(int(size)), "the key header on standard input")


# ------------------------------------------------ client side: handshakes
class HandshakeWatch:
    """Turns a socket monitor's handshake failures into one clear error.

    Feed it every monitor event; :meth:`event` returns the error text once the
    failure is certain: at once for a refused key, after a few repeats for a
    failed CURVE exchange (which is also what a lost connection mid-handshake
    looks like).
    """

    REPEATS = 3

    def __init__(self, endpoint: str, secure: bool) -> None:
        self.endpoint = endpoint
        self.secure = secure
        self.failures = 0

    def event(self, event: int, value: int = 0) -> str | None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.failures = 0
            return None
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"the broker at {self.endpoint} refused this key (status {value}): it is not among "
                "the keys that broker accepts; use the key file it wrote when it last started"
            )
        mismatch = value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and mismatch:
            # Certain at once (and libzmq may not try again): one side uses CURVE, the other not.
            if not self.secure:
                return (
                    f"the broker at {self.endpoint} requires CURVE security: give its key file "
                    "(key=... or --key FILE)"
                )
            return f"the broker at {self.endpoint} does not use CURVE security: connect without a key"
        if event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self.failures += 1
            if self.failures < self.REPEATS:
                return None
            if self.secure:
                return (
                    f"the CURVE handshake with the broker at {self.endpoint} failed "
                    f"{self.failures} times: the server key in the key file is not that broker's "
                    "(was the broker restarted? it makes new keys each time), or no scoopexec "
                    "CURVE broker listens there"
                )
            return (
                f"the handshake with the broker at {self.endpoint} failed {self.failures} times: that "
                "broker most likely requires CURVE security: give its key file (key=... or --key FILE)"
            )
        return None
