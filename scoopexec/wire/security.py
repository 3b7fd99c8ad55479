"""ZeroMQ CURVE for every endpoint that leaves this machine.

::

   client / worker                                   broker (ROUTER, CURVE_SERVER)
   CURVE_SERVERKEY = broker's public key  ──TCP──►   ZAP handler: is the peer's public
   CURVE_PUBLICKEY / SECRETKEY = its pair            key among the accepted ones?

A private ipc socket (in a 0700 directory) needs no keys.  Every TCP endpoint,
loopback included, is encrypted and authenticated: the broker has a key pair
(made when it starts, or read from a file), and accepts only the public keys it
was given (the pairs it made for the workers it launched itself, the one it
wrote to a key file for peers started by hand, and an authorized-keys file's).
Clients and workers pin the broker's public key: a process that took the port
cannot prove it holds the secret key, and gets nothing.  Keys travel to
remote workers on their standard input (a short framed header, see
:func:`encode_frame`) or in a 0600 file (:func:`write_key_file`), never on a
command line or in the environment.

A broker on a TCP port of this machine also writes its key for this user's own
clients and workers into the user's private runtime directory
(:func:`runtime_dir`, 0700: ``$XDG_RUNTIME_DIR/scoopexec`` or
``/tmp/scoopexec-UID``), named after the port (:func:`local_key_path`): a client
of ``tcp://127.0.0.1:PORT`` given no key uses that one
(:func:`resolve_credentials`), other users cannot read it.  The file names the
broker's process; the next broker to publish a key removes those of brokers
that ended without removing theirs (:func:`prune_local_keys`).

libzmq reports no error to a peer whose handshake fails: it retries every
~100 ms forever.  zmqsock.HandshakeWatch reads the socket monitor's events so
that clients and workers give up within seconds with a clear reason.

This module loads zmq only where it calls libzmq (:func:`_curve`: making, checking and
applying keys): a local worker imports it, for its types, but never touches a key, and
its start is cheaper without zmq (deploy/forkstart.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import select
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import zmq

__all__ = [
    "AuthorizedKeys",
    "Credentials",
    "KeyPair",
    "check_endpoint",
    "is_loopback",
    "local_key_path",
    "parse_authorized_keys",
    "private_socket_dir",
    "prune_local_keys",
    "publish_local_key",
    "read_frame",
    "read_key_file",
    "read_launch_frame",
    "resolve_credentials",
    "runtime_dir",
    "valid_public_key",
    "write_key_file",
]

log = logging.getLogger("scoopexec.broker")

KEY_FORMAT = "scoopexec-key-1"
FRAME_MAGIC = b"SCOOPEXEC-KEYS"


def _curve() -> ModuleType:
    """zmq, once it is known to have CURVE (loaded here, on first use: see the module's text)."""
    import zmq  # third-party, lazy: a local worker's start needs no zmq

    if not zmq.has("curve"):  # pragma: no cover - every pyzmq wheel has it
        raise RuntimeError(
            "this libzmq was built without CURVE support, which scoopexec needs for endpoints that "
            "leave this machine; install pyzmq from its wheels"
        )
    return zmq


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, Z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes

    @classmethod
    def new(cls) -> KeyPair:
        public, secret = _curve().curve_keypair()
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

    def to_json(self, **extra: Any) -> bytes:
        """``extra``: more fields (readers ignore what they do not know)."""
        d: dict[str, Any] = {"format": KEY_FORMAT, "server_public": self.server.decode()}
        if not self.server:
            del d["server_public"]
        d.update(public=self.public.decode(), secret=self.secret.decode(), **extra)
        return json.dumps(d, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Credentials:
        """Read :meth:`to_json`'s text.  A key pair made by ``python -m scoopexec keygen`` without
        ``--server`` has no broker key yet: its ``server`` is empty (it cannot connect)."""
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != KEY_FORMAT:
                raise ValueError(f"not a {KEY_FORMAT} key")
            keys = [d.get("server_public", "").encode(), d["public"].encode(), d["secret"].encode()]
        except (ValueError, KeyError, AttributeError, UnicodeError) as exc:
            raise ValueError(f"{source} does not hold scoopexec keys: {exc}") from None
        for k in keys[1:] if not keys[0] else keys:
            if len(k) != 40 or not _is_z85_key(k):
                raise ValueError(f"{source}: a CURVE key must be 40 Z85 characters")
        if _curve().curve_public(keys[2]) != keys[1]:
            raise ValueError(f"{source}: its public key is not the one of its secret key")
        return cls(*keys)

    def pair(self) -> KeyPair:
        return KeyPair(self.public, self.secret)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` (a DEALER about to connect) a CURVE client with these keys."""
        z = _curve()
        if not self.server:
            raise ValueError(
                "this key file holds no broker key to check the broker against: add it with "
                "`python -m scoopexec keygen --server BROKER-PUBLIC-KEY FILE` (the broker prints its key)"
            )
        sock.setsockopt(z.CURVE_SERVERKEY, self.server)
        sock.setsockopt(z.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(z.CURVE_SECRETKEY, self.secret)

    def __repr__(self) -> str:
        return f"Credentials(server={self.server.decode()!r}, public={self.public.decode()!r})"


def valid_public_key(key: bytes) -> bool:
    """Whether ``key`` is a Z85-encoded CURVE key (40 characters)."""
    return len(key) == 40 and _is_z85_key(key)


def _is_z85_key(key: bytes) -> bool:
    from zmq.utils import z85  # third-party, lazy: as _curve()

    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError, struct.error):
        return False


# ---------------------------------------------------------- authorized keys
class AuthorizedKeys:
    """The public keys of an authorized-keys file: one per line, with an optional name after it.

    ::

        # users of the shared broker on node7
        rq:A8yT...40 Z85 characters...    alice
        Wc!1=...                         team-b workers

    Empty lines and lines starting with ``#`` are ignored.  The file is read
    again (at most once a second, when it changed), so that adding or removing
    a line takes effect for new connections without restarting the broker; a
    file that became unreadable or malformed keeps the keys read last, and says so.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.keys: dict[bytes, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.problem = ""
        self.reload()
        if self.problem:
            raise ValueError(self.problem)

    def reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            if st.st_size > 4 << 20:
                raise ValueError("it is larger than 4 MiB")
            with open(self.path, "rb") as fh:
                self.keys = parse_authorized_keys(fh.read(), self.path)
            self._stamp = stamp
            self.problem = ""
        except (OSError, ValueError) as exc:
            problem = f"cannot read the authorized keys {self.path!r}: {exc}"
            if problem != self.problem and self._stamp is not None:
                log.warning("%s; the %d key(s) read before stay accepted", problem, len(self.keys))
            self.problem = problem

    def __contains__(self, public: bytes) -> bool:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            self.reload()
        return public in self.keys

    def name(self, public: bytes) -> str:
        return self.keys.get(public, "")


def parse_authorized_keys(data: bytes, source: str) -> dict[bytes, str]:
    """{public key: its name} from an authorized-keys file's bytes (ValueError naming a bad line)."""
    out: dict[bytes, str] = {}
    for n, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        key, *rest = line.split(None, 1)
        name = rest[0] if rest else b""
        if not valid_public_key(key):
            if line.startswith(b"#"):  # a comment (no key starts with '#': it would exceed 32 bits)
                continue
            raise ValueError(
                f"{source}, line {n}: not a CURVE public key (40 Z85 characters, then an optional "
                "name); `python -m scoopexec keygen FILE` makes a key pair and prints its public key"
            )
        out[key] = name.strip().decode("utf-8", "replace")
    return out


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
    """ipc://, inproc:// and loopback TCP: endpoints that never leave this machine.

    Only literal loopback addresses count (127.0.0.0/8 and ::1, parsed), and
    ``localhost`` when every address it resolves to is one: never a name that
    merely starts with "127.".
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint_host(endpoint)
    if host is None:
        return False
    if host.lower() == "localhost":
        return _localhost_is_loopback()
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _localhost_is_loopback() -> bool:
    try:
        infos = socket.getaddrinfo("localhost", None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addrs = {str(info[4][0]) for info in infos}
    try:
        return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)
    except ValueError:
        return False


def check_endpoint(endpoint: str, *, secure: bool, what: str = "endpoint") -> None:
    """Refuse unsupported transports, and TCP without CURVE (with the reason)."""
    if endpoint.startswith("ipc://@"):
        raise ValueError(
            f"{what} {endpoint!r} is an abstract unix socket, which has no file permissions: any "
            "process of this machine could connect. Use ipc://PATH (a path) or tcp:// with CURVE"
        )
    if endpoint.startswith(("ipc://", "inproc://")):
        return
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"unsupported {what} {endpoint!r}: use ipc://PATH or tcp://HOST:PORT")
    if secure:
        return
    if is_loopback(endpoint):
        raise ValueError(
            f"{what} {endpoint!r}: every TCP endpoint, loopback included, is authenticated with CURVE, "
            "and there is no key for it: give the pool's key file (key=... / --key FILE), or start "
            "the broker as this user on this machine (it writes its key where this user's clients "
            f"find it: {local_key_path(_port_of(endpoint) or 0)})"
        )
    raise ValueError(
        f"{what} {endpoint!r} is not on this machine: anyone who can reach it could run code as "
        "you, so scoopexec only uses it with CURVE encryption and authentication. Give the pool's "
        "key file (key=... / --key FILE, written by `python -m scoopexec broker --key-file FILE` or "
        "ScoopExecutor.write_key_file()), or use loopback (127.0.0.1) or ipc://"
    )


def _port_of(endpoint: str) -> int | None:
    if not endpoint.startswith("tcp://"):
        return None
    tail = endpoint.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


# ------------------------------------------------ this user's private directory
def _runtime_path() -> str:
    path = os.environ.get("SCOOPEXEC_RUNTIME_DIR")
    if path:
        return path
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "scoopexec")
    return f"/tmp/scoopexec-{os.getuid()}"


def runtime_dir(create: bool = True) -> str:
    """This user's private directory for sockets and keys of this machine (0700, ours).

    ``$SCOOPEXEC_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/scoopexec``, else
    ``/tmp/scoopexec-UID``.  Refuses (ValueError) a directory that another user
    owns or others may enter: someone else could read our keys or take our sockets.
    """
    path = _runtime_path()
    if create:
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # mkdir's mode is cut by the umask; set it whole
        except FileExistsError:
            pass
        except OSError as exc:
            raise ValueError(f"cannot create the private directory {path!r}: {exc.strerror or exc}") from exc
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ValueError(f"cannot use the private directory {path!r}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ValueError(
            f"the private directory {path!r} is not a directory of this user with mode 0700 "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); remove it, or set "
            "SCOOPEXEC_RUNTIME_DIR to a directory only you can enter"
        )
    return path


UNIX_PATH_MAX = 100  # a unix socket path longer than this may not fit sockaddr_un (108 on Linux)


def private_socket_dir(name: str = "broker") -> tuple[str, str] | None:
    """A new 0700 directory for a private ipc socket, and the socket's endpoint in it.

    Tried in the temporary directory (``$TMPDIR``), then in :func:`runtime_dir`;
    None when both paths are too long for a unix socket (the caller then uses
    TCP with CURVE, never an unauthenticated transport).
    """
    for parent in (None, "runtime"):
        try:
            where = runtime_dir() if parent else None
        except ValueError:
            continue
        base = where if where is not None else tempfile.gettempdir()
        if len(os.path.join(base, "scoopexec-XXXXXXXX", name)) > UNIX_PATH_MAX:
            continue
        directory = tempfile.mkdtemp(prefix="scoopexec-", dir=base)  # mode 0700
        return directory, f"ipc://{directory}/{name}"
    return None


def local_key_path(port: int) -> str:
    """Where a broker listening on TCP ``port`` of this machine keeps its key for this user."""
    return os.path.join(_runtime_path(), f"tcp-{port}.key")


def publish_local_key(endpoint: str, creds: Credentials) -> str | None:
    """Write ``creds`` where this user's clients of ``endpoint`` (a bound tcp:// endpoint on a
    loopback or wildcard address) find it; return the path (None for other endpoints)."""
    port = _port_of(endpoint)
    host = endpoint_host(endpoint)
    if port is None or host is None or not (is_loopback(endpoint) or host in ("0.0.0.0", "::", "*")):
        return None
    directory = runtime_dir()
    owner = _owner()
    prune_local_keys(directory, owner)
    return write_key_file(local_key_path(port), creds, **owner)


def _owner() -> dict[str, Any]:
    """Who writes a local key: this process, its pid namespace (a /tmp shared by containers must
    not make another namespace's live broker look dead) and this boot of this machine (a runtime
    directory on a shared file system: the first pid namespace has the same name on every host);
    empty where that is unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return {"pid": os.getpid(), "pid_ns": os.readlink("/proc/self/ns/pid"), "boot_id": boot}
    except OSError:
        return {}


PID_MAX = 1 << 22  # Linux's largest pid_max


def prune_local_keys(directory: str, owner: dict[str, Any]) -> list[str]:
    """Remove the local keys (``tcp-PORT.key``) in ``directory`` whose broker process has ended
    (killed brokers cannot remove their own); return their paths.  A key is kept unless it is a
    regular file of ours naming its writer's pid, pid namespace and boot, the same as ``owner``'s,
    and no process has that pid; keys written before keys named their writer are kept.  Nothing
    in the directory can make this fail or block (a FIFO, a link, a file that is not JSON)."""
    gone: list[str] = []
    if not owner.get("pid_ns") or not owner.get("boot_id"):
        return gone
    try:
        names = [n for n in os.listdir(directory) if n.startswith("tcp-") and n.endswith(".key")]
    except OSError:
        return gone
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, flags)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                    continue
                d = json.loads(os.read(fd, 65537))
            finally:
                os.close(fd)
            if not isinstance(d, dict) or any(d.get(k) != owner[k] for k in ("pid_ns", "boot_id")):
                continue
            pid = d.get("pid")
            if not isinstance(pid, int) or not 0 < pid <= PID_MAX or pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # alive (or another user's process that reuses the pid): kept
            except ProcessLookupError:
                pass
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue  # replaced meanwhile (a broker restarted on that port): its key now
            os.unlink(path)
            gone.append(path)
        except Exception:  # unreadable, half written, not JSON, gone meanwhile: not ours to judge
            continue
    return gone


def resolve_credentials(endpoint: str, creds: Credentials | None, what: str) -> Credentials | None:
    """The keys to reach the broker at ``endpoint``: ``creds`` if given; for loopback TCP without
    them, the key its broker wrote for this user (:func:`publish_local_key`).  Raises ValueError
    (with the reason) when a TCP endpoint would be used without keys."""
    if creds is None and endpoint.startswith("tcp://") and is_loopback(endpoint):
        port = _port_of(endpoint)
        path = local_key_path(port) if port else ""
        if path and os.path.exists(path):
            runtime_dir(create=False)  # refuses a directory that others could write in
            creds = read_key_file(path)
    check_endpoint(endpoint, secure=creds is not None, what=what)
    return creds


# --------------------------------------------------------------- key files
def write_key_file(path: str | os.PathLike[str], creds: Credentials, **extra: Any) -> str:
    """Write ``creds`` (and ``extra`` fields) to ``path`` with mode 0600 (atomically); return the path."""
    path = os.path.expanduser(os.fspath(path))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".scoopexec-key-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(creds.to_json(**extra))
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
    path = os.path.expanduser(os.fspath(path))
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
def encode_frame(creds: Credentials, env: Mapping[str, str] | None = None) -> bytes:
    """The header a launcher writes first on a remote worker's standard input: its keys, and the
    environment variables its workers get (``env=``: kept off every command line)."""
    body = creds.to_json()
    if env:
        d = json.loads(body)
        d["env"] = dict(env)
        body = json.dumps(d).encode()
    return FRAME_MAGIC + b" %d\n" % len(body) + body


def read_frame(fd: int, timeout: float = 60.0) -> Credentials:
    """Read the key header from ``fd`` (a worker's stdin) without reading past it."""
    return read_launch_frame(fd, timeout)[0]


def read_launch_frame(fd: int, timeout: float = 60.0) -> tuple[Credentials, dict[str, str]]:
    """Read the header from ``fd`` without reading past it: the keys, and the workers' environment."""
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
    if magic != FRAME_MAGIC or not size.isdigit() or int(size) > 1 << 20:
        raise ValueError("standard input does not start with a scoopexec key header")
    body = read(int(size))
    creds = Credentials.from_json(body, "the key header on standard input")
    env = json.loads(body).get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ValueError("the key header on standard input has a malformed environment")
    return creds, env
