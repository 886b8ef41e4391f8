"""The fault hooks of the local control plane on a control plane of its own (one simulated node: the
size that never started before, issue 15 "Shape"): etcd and the apiserver restarted keep the data and
answer again; a proxy cut breaks a client's watch and heals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config, watch

from mlops_operator.dev.controlplane import ControlPlane, GpuNodePool
from mlops_operator.dev.faults import TcpProxy, kubeconfig_through
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def small_plane() -> Iterator[ControlPlane]:
    """One node. Old code: `_create_nodes` read `kubectl get nodes gpu-node-0` (one Node, not a
    List) with a `.items[*]` jsonpath, saw no Ready node and timed out: start() raised."""
    plane = ControlPlane(node_pools=(GpuNodePool(count=1, gpus_per_node=1),), startup_timeout=60)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def _core(kubeconfig: Path) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))


def test_a_control_plane_with_one_node_starts(small_plane: ControlPlane) -> None:
    nodes = _core(small_plane.kubeconfig).list_node().items
    assert [n.metadata.name for n in nodes] == ["gpu-node-0"]


def test_etcd_and_apiserver_restarts_keep_the_data(small_plane: ControlPlane) -> None:
    core = _core(small_plane.kubeconfig)
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata={"name": "kept"}, data={"a": "1"})
    )
    etcd = small_plane.restart_etcd(kill=True, down_for=1)
    assert core.read_namespaced_config_map("kept", "default").data == {"a": "1"}
    apiserver = small_plane.restart_apiserver(down_for=1)
    assert core.read_namespaced_config_map("kept", "default").data == {"a": "1"}
    assert small_plane.stopped == []
    print(f"etcd back (apiserver ready) in {etcd:.1f}s, apiserver in {apiserver:.1f}s")
    # The rest of the control plane follows: the controller-manager still makes Jobs' pods.
    small_plane.kubectl("create", "job", "after-restarts", "--image=busybox", "-n", "default")
    wait_for(
        lambda: core.list_namespaced_pod("default", label_selector="job-name=after-restarts").items,
        "the Job controller to make a pod after the restarts",
        60,
    )


def test_a_cut_breaks_a_watch_through_the_proxy_and_heal_lets_it_back(
    small_plane: ControlPlane, tmp_path: Path
) -> None:
    with TcpProxy.to_url(small_plane.url) as proxy:
        core = _core(kubeconfig_through(small_plane.kubeconfig, proxy, tmp_path / "through"))
        assert core.list_namespace().items
        ended: list[BaseException | None] = []

        def watch_config_maps() -> None:
            try:
                for _ in watch.Watch().stream(core.list_namespaced_config_map, "default", timeout_seconds=60):
                    pass
                ended.append(None)
            except BaseException as error:
                ended.append(error)

        thread = threading.Thread(target=watch_config_maps, daemon=True)
        thread.start()
        wait_for(lambda: proxy.open_connections() >= 1, "the watch to connect through the proxy", 10)
        started = time.monotonic()
        proxy.cut()
        thread.join(timeout=10)
        assert ended, "the watch ended when the proxy cut it"
        assert time.monotonic() - started < 10
        with pytest.raises(Exception):  # noqa: B017, PT011 - urllib3's retries end in one of several errors
            core.list_namespace(_request_timeout=3)
        proxy.heal()
        assert core.list_namespace().items
