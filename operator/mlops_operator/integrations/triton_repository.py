"""Publishing a Triton model repository (built by `builders.triton`) to S3: the operator's side.

Under the content-addressed prefix `repository_uri(base_uri, repository)` it writes the small files,
then `repository.json` last: a prefix that holds the manifest is complete, and since the prefix names
its content, a prefix that holds one already is left alone (a reconcile that publishes an unchanged
repository costs one HEAD request). The engine is never copied: the manifest references it. The
store must be opened with the tenant's credentials (`Boto3ObjectStore`); boto3 is synchronous, so
call this from a worker thread.
"""

from __future__ import annotations

from mlops_contract.modelrepository import MANIFEST_KEY

from ..builders.triton import ModelRepository, repository_uri
from .s3 import ObjectStore, S3Location


def publish_repository(store: ObjectStore, base_uri: str, repository: ModelRepository) -> str:
    """Write the repository under its prefix unless it is there already; its URI (the init
    container's MLOPS_REPOSITORY_URI). S3 failures raise `S3UnavailableError`."""
    uri = repository_uri(base_uri, repository)
    location = S3Location.parse(uri)
    if store.exists(location.bucket, location.prefix + MANIFEST_KEY):
        return uri
    for path, data in sorted(repository.files.items()):
        store.put_bytes(location.bucket, location.prefix + path, data, "text/plain; charset=utf-8")
    store.put_bytes(
        location.bucket, location.prefix + MANIFEST_KEY, repository.manifest_bytes(), "application/json"
    )
    return uri
