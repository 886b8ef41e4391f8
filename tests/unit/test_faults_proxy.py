"""The fault suite's TCP proxy (mlops_operator.dev.faults) against a real echo server on loopback,
and the control plane's readiness check of one node (issue 15: one node never became Ready)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlops_operator.dev.controlplane import GpuNodePool, all_conditions_true, gpu_node_manifest, listed_items
from mlops_operator.dev.faults import TcpProxy, kubeconfig_through


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server: each connection sends back what it receives."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stopping = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy resets connections: that is the test
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stopping.set()
    thread.join()
    server.close()


@pytest.fixture
def proxy(echo: int) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo) as running:
        yield running


def _connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=3)


def _roundtrip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    return sock.recv(4096)


def _is_cut(sock: socket.socket) -> bool:
    """The peer reset or closed the connection."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def _refused(proxy: TcpProxy) -> bool:
    """A new connection is reset (while connecting, or at its first bytes)."""
    try:
        with _connect(proxy) as sock:
            return _is_cut(sock)
    except ConnectionResetError:
        return True


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"ping"
        assert _roundtrip(sock, b"x" * 1000).startswith(b"x")
    assert proxy.accepted == 1


def test_cut_resets_open_connections_and_refuses_new_ones_until_healed(proxy: TcpProxy) -> None:
    sock = _connect(proxy)
    assert _roundtrip(sock) == b"ping"
    assert proxy.cut() == 1
    assert _is_cut(sock)
    sock.close()
    assert _refused(proxy)  # accepted by the kernel, then reset by the proxy
    assert proxy.refused >= 1
    proxy.heal()
    with _connect(proxy) as after:
        assert _roundtrip(after) == b"ping"


def test_cut_resets_an_idle_connection_at_once(proxy: TcpProxy) -> None:
    """A watch waits on an idle connection: the cut must reach it (an RST) without the client
    sending anything, as when a NAT entry or a load balancer drops the connection."""
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"ping"
        time.sleep(0.3)  # the proxy's threads are blocked reading both sides now, as under a watch
        proxy.cut()
        sock.settimeout(2)
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_blackhole_stalls_then_delivers_after_heal(proxy: TcpProxy) -> None:
    open_before = _connect(proxy)
    assert _roundtrip(open_before) == b"ping"
    proxy.cut("blackhole")
    open_before.settimeout(0.5)
    open_before.sendall(b"held")
    with pytest.raises(TimeoutError):
        open_before.recv(10)
    new = _connect(proxy)
    new.settimeout(0.5)
    new.sendall(b"new")
    with pytest.raises(TimeoutError):
        new.recv(10)
    proxy.heal()
    open_before.settimeout(3)
    new.settimeout(3)
    assert open_before.recv(10) == b"held"
    assert new.recv(10) == b"new"
    open_before.close()
    new.close()


def test_cut_for_heals_even_when_the_body_fails(proxy: TcpProxy) -> None:
    started = time.monotonic()

    def fail_while_cut() -> None:
        with proxy.cut_for(5):
            assert proxy.cut_now
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_while_cut()
    assert not proxy.cut_now
    assert time.monotonic() - started < 2  # a failing body does not wait out the cut
    with _connect(proxy) as sock:
        assert _roundtrip(sock) == b"ping"


def test_a_server_that_is_down_looks_like_one_without_a_proxy() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = int(placeholder.getsockname()[1])
    with TcpProxy("127.0.0.1", port) as proxy:
        assert _refused(proxy)
        assert proxy.open_connections() == 0


def test_kubeconfig_through_the_proxy_keeps_the_user_and_ca(tmp_path: Path) -> None:
    source = tmp_path / "kubeconfig"
    source.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": "/ca"},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    proxy = TcpProxy.to_url("https://127.0.0.1:6443/")
    assert (proxy.upstream_host, proxy.upstream_port) == ("127.0.0.1", 6443)
    proxy.port = 4321
    written = yaml.safe_load(kubeconfig_through(source, proxy, tmp_path / "through").read_text())
    assert written["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:4321",
        "certificate-authority": "/ca",
    }
    assert written["users"] == [{"name": "u", "user": {"token": "t"}}]


def _ready_node(name: str, ready: str = "True") -> dict[str, object]:
    node = gpu_node_manifest(GpuNodePool(), 0)
    node["metadata"] = {"name": name}
    node["status"] = {"conditions": [{"type": "Ready", "status": ready}]}
    return node


def test_one_node_is_read_as_one_node() -> None:
    """`kubectl get nodes NAME -o json` prints the Node itself, not a List: the old jsonpath over
    `.items` saw nothing, and a ControlPlane with one node never started."""
    one = _ready_node("gpu-node-0")
    assert listed_items(one) == [one]
    assert all_conditions_true(one, ["gpu-node-0"], "Ready")
    assert not all_conditions_true(_ready_node("gpu-node-0", "False"), ["gpu-node-0"], "Ready")


def test_several_nodes_must_all_be_ready() -> None:
    listing = {"kind": "List", "items": [_ready_node("a"), _ready_node("b", "Unknown")]}
    assert not all_conditions_true(listing, ["a", "b"], "Ready")
    assert not all_conditions_true({"kind": "List", "items": [_ready_node("a")]}, ["a", "b"], "Ready")
    listing["items"] = [_ready_node("a"), _ready_node("b")]
    assert all_conditions_true(listing, ["a", "b"], "Ready")
    assert listed_items({"kind": "List", "items": []}) == []
