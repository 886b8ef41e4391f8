"""The informer against a scripted apiserver: what the first list and a re-list report, and that
Secrets are asked for as metadata only (their data never reaches the operator)."""

from __future__ import annotations

import json
from typing import Any

from mlops_operator.engine.cache import Cache
from mlops_operator.engine.informer import JOBS, METADATA_ONLY, METADATA_ONLY_WATCH, SECRETS, Informer


class _Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()


class _ScriptedApi:
    """Answers each LIST with the next scripted listing; records what was asked."""

    def __init__(self, listings: list[list[dict[str, Any]]]) -> None:
        self.listings = listings
        self.asked: list[tuple[str, str]] = []

    def open(self, method: str, path: str, *, query: Any, timeout: Any, accept: str) -> _Response:
        self.asked.append((path, accept))
        items = self.listings.pop(0)
        return _Response({"metadata": {"resourceVersion": "9"}, "items": items})


def _job(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "resourceVersion": rv}}


def test_the_first_list_is_sync_and_a_relist_reports_what_the_gap_hid() -> None:
    seen: list[tuple[str, str]] = []
    api = _ScriptedApi([[_job("a", "1"), _job("b", "1")], [_job("b", "2"), _job("c", "3")]])
    informer = Informer(
        api,  # type: ignore[arg-type]
        JOBS,
        "ns",
        label_selector="x=y",
        cache=Cache(),
        on_event=lambda kind, type_, obj: seen.append((type_, obj["metadata"]["name"])),
    )
    informer._list()
    assert sorted(seen) == [("SYNC", "a"), ("SYNC", "b")]
    seen.clear()
    informer._list()  # after a cut watch: a is gone, b changed, c appeared
    assert sorted(seen) == [("ADDED", "c"), ("DELETED", "a"), ("MODIFIED", "b")]


def test_secrets_are_listed_and_watched_as_metadata_only() -> None:
    api = _ScriptedApi([[]])
    informer = Informer(api, SECRETS, "ns", label_selector=None, cache=Cache(), on_event=lambda *_: None)  # type: ignore[arg-type]
    informer._list()
    assert api.asked == [("/api/v1/namespaces/ns/secrets", METADATA_ONLY)]
    assert "as=PartialObjectMetadataList" in METADATA_ONLY
    assert "as=PartialObjectMetadata;" in METADATA_ONLY_WATCH
