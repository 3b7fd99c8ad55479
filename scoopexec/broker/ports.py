"""The broker's transports, behind one small interface: a port delivers and takes messages.

::

    RouterPort     one ROUTER socket on ipc/tcp endpoints (CURVE on every TCP one, its
                   ZAP handler in the same poll): remote clients, standalone and remote
                   workers, status queries
    LinkPort       a socketpair per local worker of an embedded broker (wire/framing.Link)
    InProcessPort  the ScoopExecutor that embeds the broker: no socket, calls

Every port hands what it receives to the loop as ``on_message(key, frames, ident)``
(``ident`` is the ROUTER's routing frame, None elsewhere) and tells it of a peer that
went away with ``on_gone(key, why)``; the loop sends with ``port.send(key, frames)``,
which returns True when the port needs the loop's attention for that message (it waits
in a queue, or a ZeroMQ socket was used and its edge-triggered FD must be looked at).
Each port watches its file descriptors through the loop's :class:`Poll`.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

import zmq
import zmq.utils.z85

from ..deploy.local import process_state
from ..errors import ProtocolError
from ..wire import protocol as P
from ..wire.framing import POOL, PUSH_WAIT, Link, WakePipe
from ..wire.security import AuthorizedKeys, KeyPair
from ..wire.validate import frame_limit
from ..wire.zmqsock import MONITOR_EVENTS, ZMQ_EVENTS, ZMQ_POLLIN, monitor_event, zmq_receive, zmq_send
from .ledger import LOCAL, Ledger, Task, submit_local
from .limits import Connections, Limits

__all__ = ["Authenticator", "InProcessPort", "LinkPort", "LocalClient", "Poll", "RouterPort"]

log = logging.getLogger("scoopexec.broker")

LINK_CLOSED = "its connection closed"  # why a local worker on a link is lost when it closes it

SEND_HWM = 100_000
_MORE_NOW = int(zmq.SNDMORE | zmq.NOBLOCK)  # a routing id, first frame of a message that must not block
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
POLLIN = select.POLLIN

OnMessage = Callable[[bytes, list[Any], "zmq.Frame | None"], None]
OnGone = Callable[[bytes, str], None]


MAX_REFUSED_FROM = 1000  # addresses whose refused handshakes are counted one by one

class Poll:
    """One wait over every file descriptor the broker watches, each with its handler.

    An epoll where there is one (Linux): a change (``modify``, ``pause``) applies to a wait
    in progress, so a thread waiting on a result can take the link of the worker that runs
    its task out of the loop's set and read that link itself (leader.py); else a
    select.poll, whose waits see changes only from the next one (and nothing is paused).
    """

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = select.poll() if self._epoll is None else None
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.events: dict[int, int] = {}  # what each descriptor is watched for
        self.paused: dict[int, int] = {}  # out of the wait for now: descriptor -> the thread reading it

    def watch(self, fd: int, handler: Callable[[int], None], events: int = POLLIN) -> None:
        self.handlers[fd] = handler
        self.events[fd] = events
        self.paused.pop(fd, None)
        if self._epoll is None:
            assert self._poll is not None
            self._poll.register(fd, events)
            return
        try:
            self._epoll.register(fd, events)
        except FileExistsError:
            self._epoll.modify(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self.events[fd] = events
        if fd in self.paused:
            return  # applied by resume()
        if self._epoll is not None:
            self._epoll.modify(fd, events)
        else:
            assert self._poll is not None
            self._poll.modify(fd, events)

    def forget(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        self.events.pop(fd, None)
        self.paused.pop(fd, None)
        try:
            if self._epoll is not None:
                self._epoll.unregister(fd)
            elif self._poll is not None:
                self._poll.unregister(fd)
        except (KeyError, OSError, ValueError):
            pass

    def wait(self, ms: int) -> list[tuple[int, int]]:
        """Wait at most ``ms`` milliseconds; the ready descriptors and their events."""
        if self._epoll is not None:
            return self._epoll.poll(ms / 1000)
        assert self._poll is not None
        return self._poll.poll(ms)

    def pause(self, fd: int) -> bool:
        """Leave ``fd`` out of every wait, one in progress included, until resume(): this thread
        reads it meanwhile.  False if that cannot be done (no epoll, not watched, paused already)."""
        if self._epoll is None or fd not in self.events or fd in self.paused:
            return False
        try:
            self._epoll.modify(fd, 0)
        except (OSError, ValueError):  # closed meanwhile (the loop ending): nothing to read
            return False
        self.paused[fd] = threading.get_ident()
        return True

    def resume(self, fd: int) -> None:
        if self.paused.pop(fd, None) is not None and self._epoll is not None and fd in self.events:
            try:
                self._epoll.modify(fd, self.events[fd])
            except (OSError, ValueError):
                pass  # the descriptor or the epoll closed meanwhile (the loop ending)

    def read_elsewhere(self, fd: int) -> bool:
        """Another thread paused ``fd`` to read it: a readiness seen before the pause is stale here."""
        reader = self.paused.get(fd)
        return reader is not None and reader != threading.get_ident()

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


class Authenticator:
    """A ZAP handler for one context: accepts CURVE peers whose public key it knows.

    The broker polls :attr:`socket` in its own loop and calls :meth:`handle`;
    no extra thread.  Bind it before any CURVE listener of the context exists,
    so that no handshake can happen without it.
    """

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.allowed: set[bytes] = set()
        self.authorized: AuthorizedKeys | None = None  # an authorized-keys file (standalone brokers)
        self.refused = 0
        self.refused_from: dict[str, int] = {}
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)

    def allow(self, public: bytes) -> None:
        self.allowed.add(public)

    def revoke(self, public: bytes) -> None:
        self.allowed.discard(public)

    def handle(self) -> None:
        """Answer every pending ZAP request."""
        s = self.socket
        while True:
            try:
                req = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(req) < 6:  # libzmq never sends these; a REP socket must answer anyway
                s.send_multipart([req[0] if req else b"1.0", req[1] if len(req) > 1 else b"",
                                  b"400", b"malformed", b"", b""])
                continue
            version, request_id, _domain, address, _identity, mechanism = req[:6]
            ok = False
            user = b""
            if mechanism == b"CURVE" and len(req) >= 7 and len(req[6]) == 32:
                user = zmq.utils.z85.encode(req[6])
                ok = user in self.allowed or (self.authorized is not None and user in self.authorized)
            if not ok:
                self.refused += 1
                where = address.decode("utf-8", "replace") or "?"
                if where in self.refused_from or len(self.refused_from) < MAX_REFUSED_FROM:
                    self.refused_from[where] = self.refused_from.get(where, 0) + 1
                else:  # bounded: many addresses (IPv6) must not grow it; the total still counts
                    self.refused_from["(other addresses)"] = self.refused_from.get("(other addresses)", 0) + 1
            s.send_multipart(
                [
                    version,
                    request_id,
                    b"200" if ok else b"400",
                    b"OK" if ok else b"unknown key",
                    user if ok else b"",
                    b"",
                ]
            )

    def close(self) -> None:
        self.socket.close(linger=0)


class RouterPort:
    """The ROUTER socket and what goes with it: endpoints, CURVE keys, the disconnect monitor.

    A peer whose connection closes (the monitor says so) is probed with a PING: the
    ROUTER learns that a connection's pipe is gone a little after the monitor reports
    it, so a probe that gets through is tried again on the next ticks (until a new
    HELLO, or heartbeat_timeout): a remote worker has no process here whose exit would
    tell.  A message the socket cannot take now waits in the peer's backlog.
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        *,
        heartbeat: float,
        heartbeat_timeout: float,
        max_message_size: int,
        curve: KeyPair | None,
        on_message: OnMessage,
        on_gone: OnGone,
        dropped: collections.Counter[str],
        limits: Limits | None = None,
    ) -> None:
        self.ctx = ctx
        # Connections are followed (ACCEPTED, CLOSED) only when a limit needs them.
        watched = limits is not None and (limits.max_connections > 0 or limits.handshake_timeout > 0)
        self.conns = Connections(limits, dropped) if limits is not None and watched else None
        track = zmq.EVENT_ACCEPTED | zmq.EVENT_CLOSED if self.conns is not None else 0
        self.heartbeat_timeout = heartbeat_timeout
        self.on_message = on_message
        self.on_gone = on_gone
        self.dropped = dropped
        r = self.sock = ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.SNDHWM, SEND_HWM)
        r.setsockopt(zmq.RCVHWM, SEND_HWM)
        r.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat * 1000))
        r.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat_timeout * 1000))
        r.setsockopt(zmq.HEARTBEAT_TTL, int(heartbeat_timeout * 1000))
        if max_message_size > 0:
            # Peers check sizes themselves and fail the one task; this is the
            # hard guard against a peer that does not (it gets disconnected).
            r.setsockopt(zmq.MAXMSGSIZE, frame_limit(max_message_size))
        self.curve = curve
        self.auth: Authenticator | None = None
        self.endpoints: list[tuple[str, bool]] = []  # (endpoint, secured with CURVE)
        # (EVENT_ACCEPT_FAILED: out of file descriptors, say; ZeroMQ goes on, the status counts it)
        self.monitor = r.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED | MONITOR_EVENTS | track
        )
        self.fds: dict[int, bytes] = {}  # a connection's fd (SRCFD of its HELLO) -> its peer
        self.backlog: dict[bytes, collections.deque[list[Any]]] = {}
        self._suspects: dict[bytes, tuple[float, str]] = {}  # peers whose connection closed
        self._next_sweep = time.monotonic() + heartbeat_timeout  # (sweep())
        self._poll: Poll | None = None
        self._polled_auth: Authenticator | None = None
        self._dirty = True  # the sockets were used since their EVENTS were last read
        self._take_router = self._take_monitor = self._take_auth = False

    # ------------------------------------------------------------- endpoints
    def add_endpoint(self, endpoint: str, *, secure: bool) -> str:
        """Listen on one more endpoint (CURVE when ``secure``); return it as bound."""
        r = self.sock
        if secure:
            if self.curve is None:
                self.curve = KeyPair.new()
            if self.auth is None:
                self.auth = Authenticator(self.ctx)  # before the listener exists
                if self._poll is not None:
                    self._watch_auth()
            r.setsockopt(zmq.CURVE_SERVER, 1)
            r.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
        elif not endpoint.startswith(("ipc://", "inproc://")):
            raise ValueError(f"refusing to listen on {endpoint!r} without CURVE security")
        else:
            r.setsockopt(zmq.CURVE_SERVER, 0)
        try:
            bind_private(r, endpoint)
            self._dirty = True
        finally:
            r.setsockopt(zmq.CURVE_SERVER, 0)  # later listeners choose again
        bound = str(r.getsockopt_string(zmq.LAST_ENDPOINT))
        self.endpoints.append((bound, secure))
        return bound

    def allow(self, public: bytes) -> None:
        if self.auth is None:
            raise RuntimeError("this broker has no secured endpoint")
        self.auth.allow(public)

    def authorize(self, keys: AuthorizedKeys) -> None:
        """Also accept the public keys of an authorized-keys file (read again when it changes)."""
        if self.auth is None:
            raise RuntimeError("this broker has no secured endpoint")
        self.auth.authorized = keys

    def revoke(self, public: bytes) -> None:
        if self.auth is not None:
            self.auth.revoke(public)

    # --------------------------------------------------------------- polling
    def watch(self, poll: Poll) -> None:
        """Register the sockets' FDs (select.poll, not zmq.Poller: zmq_poll asks every socket
        for its EVENTS around every wait, which matter only after the socket was used)."""
        self._poll = poll
        poll.watch(int(self.sock.getsockopt(zmq.FD)), self._flag_router)  # type: ignore[call-overload]
        poll.watch(int(self.monitor.getsockopt(zmq.FD)), self._flag_monitor)  # type: ignore[call-overload]
        if self.auth is not None:
            self._watch_auth()

    def _watch_auth(self) -> None:
        assert self._poll is not None and self.auth is not None
        if self._polled_auth is not self.auth:
            self._polled_auth = self.auth
            self._poll.watch(int(self.auth.socket.getsockopt(zmq.FD)), self._flag_auth)  # type: ignore[call-overload]

    def _flag_router(self, events: int) -> None:
        self._take_router = True

    def _flag_monitor(self, events: int) -> None:
        self._take_monitor = True

    def _flag_auth(self, events: int) -> None:
        self._take_auth = True

    def input_waiting(self) -> bool:
        """Whether input waits already: a ZeroMQ FD signals only changes, so input that was
        there when the socket was last used must be asked for (EVENTS) before sleeping."""
        if self._dirty:
            self._dirty = False
            self._take_router = bool(self.sock.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN)  # type: ignore[operator]
            self._take_monitor = bool(self.monitor.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN)  # type: ignore[operator]
        if self.auth is not None:
            self._take_auth = bool(self.auth.socket.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN)  # type: ignore[operator]
        return self._take_router or self._take_monitor or self._take_auth

    def take(self) -> None:
        """After a poll: read what the sockets flagged hold."""
        if self._take_router:
            self._take_router = False
            self._receive()
        if self._take_monitor:
            self._take_monitor = False
            self._drain_monitor()
        if self._take_auth and self.auth is not None:
            self._take_auth = False
            self.auth.handle()

    def _receive(self, limit: int = 2000) -> None:
        msgs = zmq_receive(self.sock, limit)
        # Fewer than the limit: EVENTS said there is no more; else look again before sleeping.
        self._dirty = len(msgs) >= limit
        on_message = self.on_message
        for frames in msgs:
            ident = frames[0]
            if len(frames) < 2:
                self.dropped["empty"] += 1
                continue
            on_message(ident.bytes, frames[1:], ident)

    def remember(self, ident: zmq.Frame, key: bytes) -> None:
        """A peer said HELLO on this connection: its closing is that peer's (see the monitor)."""
        try:
            fd = int(ident.get(zmq.SRCFD))
        except (zmq.ZMQError, AttributeError, TypeError):
            return
        if fd >= 0:
            self.fds[fd] = key
            if self.conns is not None:
                self.conns.hello(fd)

    def forget(self, key: bytes) -> None:
        for fd, k in list(self.fds.items()):
            if k == key:
                del self.fds[fd]
        self.backlog.pop(key, None)

    def _drain_monitor(self) -> None:
        mon = self.monitor
        while mon.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN:  # type: ignore[operator]
            msg = mon.recv_multipart()
            try:
                event = monitor_event(msg)
            except Exception:
                continue
            if event["event"] & MONITOR_EVENTS:
                self.dropped["failed handshake"] += 1
            elif event["event"] == zmq.EVENT_ACCEPT_FAILED:
                self.dropped["accept failed"] += 1
            elif event["event"] == zmq.EVENT_ACCEPTED and self.conns is not None:
                self.conns.accepted(int(event["value"]))
            elif event["event"] in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                if self.conns is not None:
                    self.conns.closed(int(event["value"]))
                key = self.fds.pop(int(event["value"]), None)
                if key is not None and event["event"] == zmq.EVENT_DISCONNECTED:
                    self._probe(key, "its connection closed")

    def _probe(self, key: bytes, why: str, until: float | None = None) -> None:
        """A peer's connection closed: is the routing id still reachable?"""
        self._dirty = True
        try:
            self.sock.send(key, _MORE_NOW)
            self.sock.send(P.header(P.PING))
        except zmq.Again:
            return  # alive (a newer connection exists), just busy
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._suspects.pop(key, None)
                self.on_gone(key, why)
            return
        if until is None:
            until = time.monotonic() + self.heartbeat_timeout
        self._suspects[key] = (until, why)

    @property
    def probing(self) -> bool:
        """Peers whose connection closed are being probed (reprobe() on each tick)."""
        return bool(self._suspects)

    def reprobe(self, known: Callable[[bytes], bool]) -> None:
        """On a tick: probe again the peers whose connection closed (``known``: still a peer);
        cut the connections that said no HELLO in time."""
        if self.conns is not None:
            self.conns.expire(time.monotonic())
        if not self._suspects:
            return
        now = time.monotonic()
        registered = set(self.fds.values())
        for key, (until, why) in list(self._suspects.items()):
            del self._suspects[key]
            if now > until or key in registered or not known(key):
                continue  # reconnected (it said HELLO again), still answering, or already gone
            self._probe(key, why, until)

    def sweep(self, keys: Iterable[bytes]) -> None:
        """Every heartbeat_timeout: a PING to each of ``keys`` (peers over this socket) that is
        not sending already; a routing id that is gone is that peer gone.

        The monitor and its probes miss a peer whose connection closed while what it had sent
        still waited in the socket, read after the probes gave up (its HELLO among it, even):
        ZMTP heartbeats end a dead connection, but only a send tells that its routing id is
        gone.  Such a peer would stay for ever: a client with its set-up and shares, an idle
        worker counted in the pool (a task sent to it finds it gone).  This is the backstop;
        peers ignore PING."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.heartbeat_timeout
        backlog = self.backlog
        for key in list(keys):
            if key not in backlog and key not in self._suspects:
                self._probe(key, "it is no longer connected", now)

    # --------------------------------------------------------------- sending
    def send(self, key: bytes, frames: Sequence[Any]) -> bool:
        """Send one message; keep it for later if the peer is slow, drop it if gone."""
        waiting = self.backlog.get(key)
        if waiting is not None:
            waiting.append(list(frames))
            return True
        self._send_now(key, frames, True)
        return True

    def _send_now(self, key: bytes, frames: Sequence[Any], keep: bool) -> bool:
        r = self.sock
        self._dirty = True  # sending can take in the commands that signal input
        try:
            r.send(key, _MORE_NOW)
        except zmq.Again:
            if keep:
                self.backlog.setdefault(key, collections.deque()).append(list(frames))
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.backlog.pop(key, None)
                self.on_gone(key, "it is no longer connected")
                return False
            raise
        zmq_send(r, frames)
        return True

    def retry_backlog(self, known: Callable[[bytes], bool]) -> None:
        for key in list(self.backlog):
            waiting = self.backlog[key]
            if not known(key):
                del self.backlog[key]
                continue
            while waiting:
                frames = waiting.popleft()
                if not self._send_now(key, frames, False):
                    if key in self.backlog:
                        waiting.appendleft(frames)
                    break
            else:
                self.backlog.pop(key, None)

    def close(self) -> None:
        if self.sock.closed:
            return
        # Stop the monitor while its socket can still take the MONITOR_STOPPED
        # event: disabling it after closing that socket can block forever.
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=200)
        if self.auth is not None:
            self.auth.close()


def bind_private(sock: zmq.Socket[Any], endpoint: str) -> None:
    """Bind ``sock``; an ipc socket is made reachable by this user only, whatever the umask.

    Its directory is created with mode 0700 when missing; in a directory that
    others may enter, the socket file itself is created 0600 (umask 077 while
    binding, then chmod).  Abstract sockets (``ipc://@name``) have no
    permissions and are refused by check_endpoint.
    """
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        sock.bind(endpoint)
        return
    path = endpoint[len("ipc://") :]
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.mkdir(parent, 0o700)
        os.chmod(parent, 0o700)
    st = os.stat(parent)
    if st.st_uid == os.getuid() and not st.st_mode & 0o077:
        sock.bind(endpoint)  # a private directory: nobody else reaches the socket
        return
    old = os.umask(0o077)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


# ---------------------------------------------------------------------- links
class LinkPort:
    """The local workers of an embedded broker, each on one end of a socketpair.

    Liveness needs no heartbeat here: end of file is the process gone, and a
    process stopped (SIGSTOP, a debugger) for heartbeat_timeout is lost, as an
    unanswered heartbeat would make it.  A task holding the GIL is not.
    """

    def __init__(self, poll: Poll, wake: WakePipe, on_message: OnMessage, on_gone: OnGone,
                 dropped: collections.Counter[str], heartbeat_timeout: float, max_message_size: int = -1,
                 ) -> None:  # fmt: skip
        self.max_frame = frame_limit(max_message_size)  # a link announcing a longer frame is closed
        self.poll = poll
        self.wake = wake
        self.on_message = on_message
        self.on_gone = on_gone
        self.dropped = dropped
        self.heartbeat_timeout = heartbeat_timeout
        self.links: dict[bytes, Link] = {}
        self.new: collections.deque[tuple[bytes, Link]] = collections.deque()  # added, not yet watched
        self.dead: list[bytes] = []  # links found broken while sending: closed after the turn
        self._stopped: dict[bytes, float] = {}  # workers seen stopped (SIGSTOP), since when
        self.closed = False  # close_all() ran: a link added now is closed at once

    def __contains__(self, key: bytes) -> bool:
        return key in self.links

    def add(self, sock: socket.socket) -> bytes:
        """Serve a local worker on one end of a socketpair (thread-safe); returns its key."""
        key = b"W" + os.urandom(11)
        self.new.append((key, Link(sock, max_frame=self.max_frame)))
        if self.closed:  # the loop has ended (a replacement started as it stopped): nobody serves it
            self._close_new()
            return key
        self.wake.wake()  # the loop registers it (register_new)
        return key

    def register_new(self) -> None:
        while self.new:
            key, link = self.new.popleft()
            self.links[key] = link
            self.poll.watch(link.fd, functools.partial(self._on_ready, key))

    def _on_ready(self, key: bytes, events: int) -> None:
        link = self.links.get(key)
        if link is None or (self.poll.paused and self.poll.read_elsewhere(link.fd)):
            return
        if events & select.POLLOUT:
            try:
                done = link.flush(PUSH_WAIT)
            except OSError:
                done, link.eof = True, True
            if done:
                self.poll.modify(link.fd, POLLIN)
        if events & (POLLIN | select.POLLERR | select.POLLHUP) or link.eof:
            try:
                msgs = link.receive(2000)
            except ProtocolError as exc:
                msgs, link.eof = [], True
                self.dropped["malformed"] += 1
                log.warning("closed the link to a local worker: %s", exc)
            for frames in msgs:
                self.on_message(key, frames, None)
            if link.eof:
                self.close_link(key, LINK_CLOSED)

    def read_now(self, key: bytes) -> None:
        """Take in what a local worker wrote before its process ended, when the exit is seen
        first (a worker that stops itself sends its last result just before: worker/limits.py)."""
        link = self.links.get(key)
        if link is None:
            return
        try:
            msgs = link.receive(2000)
        except ProtocolError:
            return  # its end of file, or this, closes it on the next turn
        for frames in msgs:
            self.on_message(key, frames, None)

    def send(self, key: bytes, frames: Sequence[Any]) -> bool:
        link = self.links[key]
        try:
            if not link.send(frames):
                self.poll.modify(link.fd, POLLIN | select.POLLOUT)
                return True
        except OSError:
            link.eof = True
            self.dead.append(key)
        return False

    def close_dead(self) -> None:
        while self.dead:
            self.close_link(self.dead.pop(), LINK_CLOSED)

    def close_link(self, key: bytes, why: str) -> None:
        link = self.links.pop(key, None)
        if link is None:
            return
        self._stopped.pop(key, None)
        self.poll.forget(link.fd)
        link.close()
        self.on_gone(key, why)

    def check_stopped(self, now: float, pid_of: Callable[[bytes], Any]) -> None:
        """Close the links of workers whose process has been stopped for heartbeat_timeout."""
        for key in list(self.links):
            pid = pid_of(key)
            if not isinstance(pid, int):
                continue
            state = process_state(pid)
            if state is None:
                continue
            if state not in (b"T", b"t"):
                self._stopped.pop(key, None)
                continue
            since = self._stopped.setdefault(key, now)
            if now - since >= self.heartbeat_timeout:
                self.close_link(key, f"its process was stopped for {now - since:.1f} s")

    def settle(self, now: float) -> None:
        """Each link's segments (wire/segments.py): those of its worker the client dropped go
        back to it, ours free too long are let go of; and the large receive buffers of the
        process unused too long (wire/framing.py): the broker's tick."""
        POOL.expire()
        for key, link in list(self.links.items()):
            if link.seg is None:
                continue
            try:
                link.settle(now)
            except OSError:
                link.eof = True
                self.dead.append(key)
                continue
            if link.wants_write:
                self.poll.modify(link.fd, POLLIN | select.POLLOUT)

    def close_all(self, drain: float) -> None:
        """Close every link, those added since the loop's last turn too (their worker sees end of
        file and exits); set before they are taken, ``closed`` makes add() close a later one."""
        self.closed = True
        for link in self.links.values():
            link.close(drain=drain)
        self.links.clear()
        self._close_new()

    def _close_new(self) -> None:
        while self.new:
            try:
                _, link = self.new.popleft()
            except IndexError:  # another thread took the last one
                break
            link.close()


# ------------------------------------------------------------------ in process
class LocalClient(Protocol):
    """What the in-process client offers (client/session.py): its queues and its message table."""

    outbox: collections.deque[tuple[int, list[Any]]]  # submissions: (its task id, the task's frames)
    inbox: collections.deque[list[Any]]  # other messages for the broker (SHARE)
    wake: WakePipe  # written when either gains something

    def setup_frames(self) -> list[bytes]: ...
    def started_all(self, tids: list[int]) -> Collection[int]: ...  # those cancelled: drop their tasks
    def handle(self, frames: list[Any]) -> None: ...  # a message from the broker
    def results(self, items: Iterable[tuple[int, int, Sequence[Any]]]) -> None: ...  # (tid, status, frames)
    def dispatched(self) -> None: ...  # what was submitted so far was taken in


class InProcessPort:
    """The client that embeds the broker, as a port: its submissions come from a queue, and the
    messages for it are handed to its table (``client.handle``) by the loop's thread once the
    broker's lock is released, so that no future's callback runs under that lock."""

    def __init__(self, client: LocalClient) -> None:
        self.client = client
        self.outbox, self.inbox = client.outbox, client.inbox  # what it queued for the broker
        self.pending: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        self._delivering = threading.Lock()  # held by the thread handing messages over (deliver)

    def claim(self, tasks: list[Task]) -> tuple[list[Task], Collection[Task]]:
        """Tasks about to go to a worker: the client marks its own running, all in one call.
        Returns the others, and those of its own it no longer wants (cancelled: dropped)."""
        mine = [t.tid for t in tasks if t.owner == LOCAL]
        others = [t for t in tasks if t.owner != LOCAL] if len(mine) < len(tasks) else []
        gone = self.client.started_all(mine) if mine else ()
        return others, [t for t in tasks if t.owner == LOCAL and t.tid in gone] if gone else ()

    def send(self, key: bytes, frames: Sequence[Any]) -> bool:
        self.pending.append((self.client.handle, list(frames)))
        return True

    def results(self, items: list[tuple[int, int, Sequence[Any]]]) -> None:
        """RESULTS for the client, as (its task id, status, frames) for each (the one message on
        every round trip: no header to pack here and parse there)."""
        self.pending.append((self.client.results, items))

    def deliver(self) -> bool:
        """Hand the messages for the client over, in order (not holding the broker's lock).

        The loop's thread and a thread reading its own result (leader.py) both deliver: one
        at a time, else one could print a task's output after another delivered its result.
        The guard is only ever tried, never waited on (a thread that finds it taken returns
        False: the other delivers what is queued, this one's included), so no thread blocks
        while another runs a done-callback.
        """
        pending = self.pending
        guard = self._delivering
        while pending:
            if not guard.acquire(False):
                return False
            try:
                while pending:
                    take, what = pending.popleft()
                    take(what)
            finally:
                guard.release()
        return True  # (looked again after letting go: what came meanwhile is handed over too)

    def take(self, on_message: OnMessage, ledger: Ledger) -> list[int]:
        """What the client queued: its messages (``on_message``), then its submissions, straight
        into the ledger (no SUBMIT message is made for what is already in hand).  Returns the
        ids of the tasks the ledger refused (see Ledger.submit)."""
        inbox = self.inbox
        while inbox:
            on_message(LOCAL, inbox.popleft(), None)
        if not self.outbox:
            return []
        return submit_local(ledger, self.outbox, ledger.clients[LOCAL])
