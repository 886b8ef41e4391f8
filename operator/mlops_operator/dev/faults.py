"""Faults a test injects into the local control plane: a TCP proxy it can cut and heal.

`TcpProxy` sits on loopback between a client (the operator) and a server (the kube-apiserver); TLS
passes through untouched, so the client's kubeconfig only names the proxy's address instead of the
server's (`kubeconfig_through`; the apiserver's certificate names 127.0.0.1 whatever the port).

- `cut()` (mode "reset"): every open connection is reset (RST, as a dropped NAT entry or a restarted
  load balancer does) and every new one is reset as soon as it is accepted, until `heal()`.
- `cut(mode="blackhole")`: open connections stall (nothing is forwarded either way) and new ones
  are accepted but not answered, as in a network partition; `heal()` lets the bytes through again,
  so what the kernel buffered meanwhile arrives late: TCP survived, only the client's own timeouts
  could have broken something.

Threads, not asyncio: the tests that use it are synchronous, and a proxy of a few connections costs
two threads each.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .processes import Started

CutMode = Literal["reset", "blackhole"]
_CHUNK = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: the peer sees "connection reset by peer". A pump thread
    may be blocked in recv() on the socket, which keeps it alive past close(): SHUT_RD wakes that
    recv (sending nothing), and the RST goes out when the last reference to the socket is gone."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None = None
    closed: bool = False

    def close(self, *, reset: bool) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@dataclass
class TcpProxy(Started):
    """Forwards 127.0.0.1:`port` to `upstream_host`:`upstream_port` until cut."""

    upstream_host: str
    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0
    connect_timeout: float = 5.0
    _listener: socket.socket | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pairs: set[_Pair] = field(default_factory=set, repr=False)
    _held: list[socket.socket] = field(default_factory=list, repr=False)
    _flowing: threading.Event = field(default_factory=threading.Event, repr=False)
    _mode: CutMode | None = field(default=None, repr=False)
    _stopping: bool = field(default=False, repr=False)
    accepted: int = 0  # connections accepted since start (any mode)
    refused: int = 0  # connections reset while cut

    @classmethod
    def to_url(cls, url: str) -> TcpProxy:
        """A proxy to the host and port of `url` (https://127.0.0.1:6443)."""
        rest = url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        return cls(upstream_host=host.strip("[]"), upstream_port=int(port))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def cut_now(self) -> bool:
        return self._mode is not None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._stopping = False
        self._flowing.set()
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._flowing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._close_all(reset=False)
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            _reset(sock)

    # -- faults ------------------------------------------------------------------------------------

    def cut(self, mode: CutMode = "reset") -> int:
        """Cut the client off; the number of open connections that were cut (reset or stalled)."""
        with self._lock:
            self._mode = mode
            count = len(self._pairs)
        if mode == "reset":
            self._close_all(reset=True)
        else:
            self._flowing.clear()
        return count

    def heal(self) -> None:
        """Forward again. Connections a blackhole held are connected upstream now and carry what their
        clients sent meanwhile."""
        with self._lock:
            self._mode = None
            held, self._held = self._held, []
        self._flowing.set()
        for sock in held:
            self._serve(sock)

    @contextlib.contextmanager
    def cut_for(self, seconds: float, mode: CutMode = "reset") -> Iterator[None]:
        """Cut for at least `seconds`, the body running meanwhile; heal on the way out, always."""
        started = time.monotonic()
        self.cut(mode)
        try:
            yield
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        finally:
            self.heal()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- plumbing ----------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted += 1
                mode = self._mode
                if mode == "blackhole":
                    self._held.append(sock)
                    continue
                if mode == "reset":
                    self.refused += 1
            if mode == "reset":
                _reset(sock)
                continue
            self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        pair = _Pair(sock)
        with self._lock:
            self._pairs.add(pair)
        threading.Thread(target=self._connect_and_pump, args=(pair,), daemon=True).start()

    def _connect_and_pump(self, pair: _Pair) -> None:
        try:
            upstream = socket.create_connection(
                (self.upstream_host, self.upstream_port), self.connect_timeout
            )
        except OSError:
            self._drop(pair, reset=True)  # the server is down: the client sees a reset, as with no proxy
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair.upstream = upstream
        if pair.closed:  # cut while connecting
            _reset(upstream)
            return
        back = threading.Thread(target=self._pump, args=(pair, upstream, pair.client), daemon=True)
        back.start()
        self._pump(pair, pair.client, upstream)
        back.join()
        self._drop(pair, reset=False)

    def _pump(self, pair: _Pair, source: socket.socket, target: socket.socket) -> None:
        while not pair.closed:
            try:
                data = source.recv(_CHUNK)
            except OSError:
                break
            if not data:
                break
            self._flowing.wait()  # a blackhole holds the bytes here until heal()
            if pair.closed:
                break
            try:
                target.sendall(data)
            except OSError:
                break
        # One direction ended: pass the end on (half-close) so the other direction can finish.
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def _drop(self, pair: _Pair, *, reset: bool) -> None:
        with self._lock:
            self._pairs.discard(pair)
        if not pair.closed:
            pair.close(reset=reset)

    def _close_all(self, *, reset: bool) -> None:
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            pair.close(reset=reset)


def kubeconfig_through(source: Path, proxy: TcpProxy, target: Path) -> Path:
    """A copy of kubeconfig `source` whose clusters' server is the proxy: same user, same CA (the
    apiserver's serving certificate names 127.0.0.1, which the proxy's address is too)."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    for cluster in config.get("clusters") or []:
        server = str(cluster["cluster"]["server"])
        scheme = server.split("://", 1)[0] if "://" in server else "https"
        cluster["cluster"]["server"] = f"{scheme}://{proxy.address}"
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o600)
    return target
