"""The few requests the engine makes, as plain JSON in and out.

The generated client turns every response into model classes and back; at thousands of objects that
costs more CPU than the request itself. These calls send and return plain dicts (the shape the watch
cache holds), and raise the client's own `ApiException` on an error status, so callers handle errors
as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from kubernetes.client.exceptions import ApiException

from ..api.v1alpha1 import GROUP, VERSION

APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the apiserver takes a JSON body
MERGE_PATCH = "application/merge-patch+json"

_PATHS = {
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "Event": "/api/v1/namespaces/{namespace}/events",
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers",
    "Rollout": "/apis/argoproj.io/v1alpha1/namespaces/{namespace}/rollouts",
    "AnalysisTemplate": "/apis/argoproj.io/v1alpha1/namespaces/{namespace}/analysistemplates",
    "AnalysisRun": "/apis/argoproj.io/v1alpha1/namespaces/{namespace}/analysisruns",
}
# Argo Rollouts' API group: its kinds exist only where its CRDs are installed (discovery decides).
ROLLOUTS_GROUP_PATH = "/apis/argoproj.io/v1alpha1"


def resource_path(kind: str, namespace: str, name: str | None = None) -> str:
    if kind not in _PATHS:
        raise ValueError(f"no path for kind {kind}")
    base = _PATHS[kind].format(namespace=quote(namespace))
    return f"{base}/{quote(name)}" if name else base


def custom_path(plural: str, namespace: str, name: str, subresource: str = "") -> str:
    """The path of one of our objects (group mlops.dev, the served version)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{plural}/{quote(name)}"
    return f"{path}/{subresource}" if subresource else path


class RawApi:
    """JSON requests through a kubernetes `ApiClient` (its auth, TLS and connection pool)."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def open(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = 30,
        accept: str = "application/json",
    ) -> Any:
        """Send a request; the urllib3 response, unread (`.data` or `.stream()`), or ApiException."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, _, _ = self._api.param_serialize(
            method, path, query_params=list(query), header_params=headers, auth_settings=["BearerToken"]
        )
        # The client serializes a dict body as JSON for JSON and structured-YAML content types.
        payload = dict(body) if body is not None else None
        response = self._api.call_api(
            method, url, header_params=headers, body=payload, _request_timeout=timeout
        )
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason, body=response.read())
        return response.response

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> dict[str, Any]:
        data = self.open(
            method, path, body=body, query=query, content_type=content_type, timeout=timeout
        ).data
        result: dict[str, Any] = json.loads(data) if data else {}
        return result

    def apply(self, manifest: Mapping[str, Any], field_manager: str, *, force: bool = True) -> dict[str, Any]:
        """Server-side apply; `force` takes over fields another manager last set (we own these);
        without it, a field another manager set to another value is a 409 Conflict."""
        meta = manifest["metadata"]
        path = resource_path(str(manifest["kind"]), meta["namespace"], meta["name"])
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        return self.request("PATCH", path, body=manifest, query=query, content_type=APPLY_PATCH)

    def patch_status(
        self, plural: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        path = custom_path(plural, namespace, name, "status")
        return self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    def patch_object(
        self, plural: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch one of our objects (the operator only ever patches its own finalizer)."""
        return self.request(
            "PATCH", custom_path(plural, namespace, name), body=patch, content_type=MERGE_PATCH
        )

    def has_resource(self, group_version_path: str, plural: str) -> bool:
        """Whether the apiserver serves `plural` in that group/version (discovery; any user may ask)."""
        try:
            listing = self.request("GET", group_version_path)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in listing.get("resources", []))

    def create(self, kind: str, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", resource_path(kind, namespace), body=manifest)

    def delete(self, kind: str, namespace: str, name: str, *, propagation: str = "Background") -> None:
        """Delete; a 404 (already gone) is success."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        try:
            self.request("DELETE", resource_path(kind, namespace, name), body=body)
        except ApiException as error:
            if error.status != 404:
                raise
