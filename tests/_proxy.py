"""A loopback TCP proxy whose connections a test can cut, to inject network faults."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`cut` drops every connection and
    :meth:`refuse` makes new ones fail until :meth:`accept` (a broker outage, seen from the
    client).  One selector thread; :meth:`close` stops and joins it.

    :meth:`trickle` passes what the broker sends in small pieces with pauses between them,
    so that a client reads frames in parts.

    Counters, for a test to assert that its fault really happened: :attr:`connections`
    (client connections forwarded), :attr:`cut_connections` (forwarded connections that
    :meth:`cut` or :meth:`refuse` dropped), :attr:`refused` (connections turned away
    while refusing), :attr:`pauses` (pauses made while trickling) and :attr:`held` (reads
    put off while holding).  Only the proxy's thread writes them."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672):
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._refusing = False
        self._cut_requested = False
        self._upstreams: set[socket.socket] = set()
        self._trickle: tuple[int, float] | None = None
        self._holding = False
        self._stop = threading.Event()
        self.connections = 0
        self.cut_connections = 0
        self.refused = 0
        self.pauses = 0
        self.held = 0
        self._thread = threading.Thread(target=self._run, name="test-fault-proxy", daemon=True)
        self._thread.start()

    def url(self, broker_url: str) -> str:
        """``broker_url`` with its host and port replaced by the proxy's."""
        scheme, rest = broker_url.split("://", 1)
        credentials, _, path = rest.partition("@")[2].partition("/")
        user = rest.partition("@")[0]
        return f"{scheme}://{user}@127.0.0.1:{self.port}/{path}" if credentials else broker_url

    def cut(self) -> None:
        """Close every proxied connection now (both directions)."""
        with self._lock:
            self._cut_requested = True

    def refuse(self) -> None:
        """Cut everything and refuse new connections until :meth:`accept`."""
        with self._lock:
            self._refusing = True
            self._cut_requested = True

    def accept(self) -> None:
        with self._lock:
            self._refusing = False

    def trickle(self, size: int, pause: float) -> None:
        """From now on, pass the broker's bytes on ``size`` at a time, ``pause`` s apart."""
        with self._lock:
            self._trickle = (size, pause)

    def hold(self) -> None:
        """Stop passing the broker's bytes on (they wait in the socket) until :meth:`release`.

        Nothing is lost or cut: the client just hears nothing, not even confirms."""
        with self._lock:
            self._holding = True

    def release(self) -> None:
        with self._lock:
            self._holding = False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in list(self._peers):
            sock.close()
        self._listener.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                cut, self._cut_requested = self._cut_requested, False
                refusing = self._refusing
            if cut:
                self.cut_connections += sum(self._drop(sock) for sock in list(self._peers))
            for key, _ in self._selector.select(timeout=0.05):
                if key.fileobj is self._listener:
                    self._accept_one(refusing)
                else:
                    self._pump(key.fileobj)

    def _accept_one(self, refusing: bool) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if refusing:
            client.close()
            self.refused += 1
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        self.connections += 1
        for sock in (client, upstream):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, None)
        self._peers[client], self._peers[upstream] = upstream, client
        self._upstreams.add(upstream)

    def _pump(self, sock: socket.socket) -> None:
        other = self._peers.get(sock)
        if other is None:
            return
        with self._lock:
            holding = self._holding and sock in self._upstreams
        if holding:
            self.held += 1
            time.sleep(0.01)  # the bytes stay in the socket; look again soon
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        with self._lock:
            trickle = self._trickle if sock in self._upstreams else None
        size, pause = trickle if trickle is not None else (len(data), 0.0)
        try:
            other.setblocking(True)
            for start in range(0, len(data), size):
                if start:
                    time.sleep(pause)
                    self.pauses += 1
                other.sendall(data[start:start + size])
            other.setblocking(False)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> bool:
        """Close ``sock`` and its peer; return whether that pair was still open."""
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            self._upstreams.discard(s)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        return other is not None
