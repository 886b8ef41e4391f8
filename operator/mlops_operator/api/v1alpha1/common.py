"""Types shared by all four kinds: the base model, CEL rules, references, conditions.

Every rule the apiserver enforces through CEL (`x-kubernetes-validations`) is declared once, as a
`CelRule`, next to the model it guards. The CRD generator emits its CEL expression; the model's own
validator runs its Python twin, so a manifest that `kubectl apply` would refuse is refused by
`mlopsctl validate` and the unit tests with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "mlops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# RFC 1123 label, the shape of a Kubernetes object name that may be referenced from another object.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# RFC 1123 subdomain, the shape of most Kubernetes object names (Secrets, ServiceAccounts ...).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
S3_URI = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
# A Kubernetes resource quantity such as "500m", "4", "16Gi".
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
SHA256_FINGERPRINT = r"^sha256:[0-9a-f]{64}$"


_ACRONYMS = re.compile(r"(Uri|Url|Id)(?=[A-Z]|$)")


def k8s_camel(name: str) -> str:
    """snake_case to the API's camelCase, with acronyms upper-cased as Kubernetes does (endpointURL)."""
    return _ACRONYMS.sub(lambda m: m.group(1).upper(), to_camel(name))


@dataclass(frozen=True)
class CelRule:
    """One cross-field rule: the CEL the apiserver runs, and the same rule in Python.

    `check` is None only for transition rules (they need the old object, which only the apiserver has).
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, CEL rules attached."""

    model_config = ConfigDict(
        alias_generator=k8s_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            if rule.check is not None and not rule.check(self):
                raise ValueError(rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.cel_rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [_cel_to_schema(r) for r in cls.cel_rules]
        return schema

    def wire(self) -> dict[str, Any]:
        """The model as the apiserver stores it: camelCase keys, unset optionals and empty lists or
        maps left out."""
        wire: dict[str, Any] = prune_empty(self.model_dump(by_alias=True, exclude_none=True, mode="json"))
        return wire


def _cel_to_schema(rule: CelRule) -> dict[str, str]:
    out = {"rule": rule.rule, "message": rule.message}
    if rule.field_path:
        out["fieldPath"] = rule.field_path
    return out


def prune_empty(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: prune_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [prune_empty(v) for v in value]
    return value


def nested(model: type[ApiModel], description: str) -> Any:
    """A sub-object that is always present. Its CRD default is the whole defaulted object, because
    the apiserver checks a default against the CEL rules as it stands, without nested defaults."""
    return Field(
        default_factory=model, description=description, json_schema_extra={"default": model().wire()}
    )


class LocalObjectReference(ApiModel):
    """A reference to another object in the same namespace."""

    name: str = Field(
        description="Name of the referenced object, in the same namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


class SecretKeyReference(ApiModel):
    """A key in a Secret in the same namespace. The value is mounted into workloads, never copied."""

    name: str = Field(
        description="Name of the Secret, in the same namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = Field(description="Key within the Secret.", min_length=1, max_length=253)


class Toleration(ApiModel):
    """A Kubernetes toleration, copied onto the workload's pods."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.", max_length=317)
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class Scheduling(ApiModel):
    """Where and with what priority the workload's pods are scheduled."""

    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of the pods.", max_length=253, pattern=DNS_SUBDOMAIN
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node labels the pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations added to the pods.", max_length=32
    )
    queue_name: str | None = Field(
        default=None,
        description="Kueue LocalQueue to submit the workload to (sets the kueue.x-k8s.io/queue-name label).",
        max_length=63,
        pattern=DNS_LABEL,
    )


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="Type of condition in CamelCase, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="One-word CamelCase reason for the last transition.", max_length=1024)
    message: str = Field(default="", description="Human-readable details.", max_length=32768)
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed for."
    )


def conditions_field() -> Any:
    return Field(
        default_factory=list,
        description="Current state, as conditions. Ready is always present once reconciled.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class StatusBase(ApiModel):
    """Fields every kind's status carries."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(
        default=None, description="metadata.generation last reconciled by the operator."
    )
    phase: str | None = Field(default=None, description="One-word summary of the state, for printer columns.")
    conditions: list[Condition] = conditions_field()


class ObjectMeta(BaseModel):
    """The part of metadata a manifest is checked for; the apiserver owns the rest."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
