"""Dataset: a versioned data set in S3 with a data contract."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    DURATION,
    S3_URI,
    SHA256_FINGERPRINT,
    ApiModel,
    CelRule,
    HttpURL,
    LocalObjectReference,
    ObjectName,
    SecretKey,
    StatusBase,
    nested,
)
from .kubevalues import AWS_REGION, AWS_REGION_MAX


class S3Credentials(ApiModel):
    """Secret holding S3 credentials. Mounted into workloads as env vars; never copied."""

    name: ObjectName = Field(description="Secret in the Dataset's namespace.")
    access_key_id_key: SecretKey = Field(
        default="AWS_ACCESS_KEY_ID", description="Key of the access key id in the Secret."
    )
    secret_access_key_key: SecretKey = Field(
        default="AWS_SECRET_ACCESS_KEY", description="Key of the secret access key in the Secret."
    )
    session_token_key: SecretKey | None = Field(
        default=None, description="Key of an optional session token in the Secret."
    )


class DatasetSource(ApiModel):
    """Where the data lives."""

    cel_rules = (
        # No confused deputy: without a Secret the operator would read (and write the manifest into)
        # the bucket with its own cloud identity, i.e. any bucket the operator can reach.
        CelRule(
            rule="has(self.credentialsSecretRef)",
            message=(
                "credentialsSecretRef is required: the operator reads a Dataset only with credentials "
                "from a Secret in its namespace, never with its own identity"
            ),
            check=lambda s: s.credentials_secret_ref is not None,
        ),
    )

    uri: str = Field(
        description="S3 prefix holding the data, e.g. s3://bucket/datasets/digits/v3/.",
        pattern=S3_URI,
        max_length=1024,
    )
    manifest_uri: str | None = Field(
        default=None,
        description=(
            "Optional manifest (JSON lines of key, size, sha256) listing exactly the objects that make "
            "up the data set; when absent the operator lists the prefix and writes the manifest itself."
        ),
        pattern=S3_URI,
        max_length=1024,
    )
    endpoint_url: HttpURL | None = Field(
        default=None,
        description=(
            "S3 endpoint override (MinIO, a VPC endpoint, a test server): an http(s) URL with a host. "
            "Unset means AWS."
        ),
    )
    region: str | None = Field(
        default=None,
        description="S3 region, e.g. us-east-1 (letters, digits and '-', as the AWS SDK accepts).",
        pattern=AWS_REGION,
        max_length=AWS_REGION_MAX,
    )
    credentials_secret_ref: S3Credentials | None = Field(
        default=None,
        description=(
            "Secret with S3 credentials (required): the operator lists and fingerprints the data with "
            "them, and the training pods get them as AWS_* env vars. The operator never falls back "
            "to its own cloud identity."
        ),
    )


class DataContract(ApiModel):
    """What the data must satisfy before training may use it."""

    cel_rules = (
        CelRule(
            rule="!has(self.minBytes) || !has(self.maxBytes) || self.minBytes <= self.maxBytes",
            message="minBytes must not exceed maxBytes",
            check=lambda c: c.min_bytes is None or c.max_bytes is None or c.min_bytes <= c.max_bytes,
        ),
    )

    min_objects: int | None = Field(default=None, ge=0, description="Fewest objects the data set may hold.")
    min_bytes: int | None = Field(default=None, ge=0, description="Smallest total size in bytes.")
    max_bytes: int | None = Field(default=None, ge=0, description="Largest total size in bytes.")
    required_files: list[str] = Field(
        default_factory=list,
        description="Object keys, relative to the source prefix, that must exist (e.g. schema.json).",
        max_length=64,
    )
    required_suffixes: list[str] = Field(
        default_factory=list,
        description="Every object key must end with one of these suffixes (e.g. .npz, .parquet).",
        max_length=32,
    )
    expected_fingerprint: str | None = Field(
        default=None,
        description="Pin the data: Ready only when the fingerprint equals this sha256:<hex> value.",
        pattern=SHA256_FINGERPRINT,
    )


class DatasetSpec(ApiModel):
    """Desired state of a Dataset."""

    source: DatasetSource = Field(description="Where the data lives.")
    format: str | None = Field(
        default=None,
        description="Free-form description of the data layout the trainer expects (e.g. npz-shards).",
        max_length=64,
    )
    contract: DataContract = nested(DataContract, "Data contract checked on every validation.")
    refresh_interval: str | None = Field(
        default=None,
        description="Re-list and re-fingerprint the data this often (e.g. 10m, 1h). Empty: only on change.",
        pattern=DURATION,
        max_length=32,
    )


DatasetPhase = Literal["Pending", "Validating", "Ready", "Failed"]


class DatasetStatus(StatusBase):
    """Observed state of a Dataset."""

    phase: DatasetPhase | None = Field(default=None, description="Pending, Validating, Ready or Failed.")
    object_count: int | None = Field(default=None, description="Number of objects in the data set.")
    total_bytes: int | None = Field(default=None, description="Total size of the objects in bytes.")
    fingerprint: str | None = Field(
        default=None, description="sha256 over the sorted manifest (key, size, checksum)."
    )
    manifest_uri: str | None = Field(default=None, description="Where the manifest was written or read.")
    last_checked_time: str | None = Field(
        default=None, description="When the operator last listed and checked the data (successfully or not)."
    )
    violations: list[str] = Field(
        default_factory=list, description="First contract violations found, if any.", max_length=20
    )
    object_limit: int | None = Field(
        default=None,
        description=(
            "The operator's object limit (MLOPS_DATASET_MAX_OBJECTS) when the listing stopped at it "
            "(Ready=False, TooManyObjects); the Dataset is listed again when the limit or its spec changes."
        ),
    )


__all__ = [
    "DataContract",
    "DatasetSource",
    "DatasetSpec",
    "DatasetStatus",
    "LocalObjectReference",
    "S3Credentials",
]
