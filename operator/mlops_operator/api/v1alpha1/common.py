"""Types shared by all four kinds: the base model, CEL rules, references, conditions.

Every rule the apiserver enforces through CEL (`x-kubernetes-validations`) is declared once, as a
`CelRule`, next to the model it guards. The CRD generator emits its CEL expression; the model's own
validator runs its Python twin, so a manifest that `kubectl apply` would refuse is refused by
`mlopsctl validate` and the unit tests with the same message.

Values the operator copies into Pods, Jobs and labels (quantities, label keys and values, Secret
keys, images, URLs) have types of their own below, built from Kubernetes' own rules (kubevalues.py):
a pattern where a regex says it all, else a field-level `CelRule` (used as `Annotated` metadata).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from . import kubevalues as kv
from .kubevalues import DNS_LABEL, DNS_SUBDOMAIN

GROUP = "mlops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

S3_URI = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
SHA256_FINGERPRINT = r"^sha256:[0-9a-f]{64}$"


_ACRONYMS = re.compile(r"(Uri|Url|Id)(?=[A-Z]|$)")


def k8s_camel(name: str) -> str:
    """snake_case to the API's camelCase, with acronyms upper-cased as Kubernetes does (endpointURL)."""
    return _ACRONYMS.sub(lambda m: m.group(1).upper(), to_camel(name))


@dataclass(frozen=True)
class CelRule:
    """One rule: the CEL the apiserver runs, and the same rule in Python.

    In a model's `cel_rules` it is a cross-field rule and `check` gets the model. As `Annotated`
    metadata of a field's type it guards that one value (a string, a map) and `check` gets the value.
    `check` is None only for transition rules (they need the old object, which only the apiserver has).
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        check, message = self.check, self.message

        def validate(value: Any) -> Any:
            if check is not None and not check(value):
                raise ValueError(message)
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out.setdefault("x-kubernetes-validations", []).append(_cel_to_schema(self))
        return out


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


# --- Kubernetes values copied into children (see kubevalues.py) ---------------------------------

# The name of a Secret, ServiceAccount or PriorityClass (a DNS-1123 subdomain).
ObjectName = Annotated[str, Field(min_length=1, max_length=kv.DNS_SUBDOMAIN_MAX, pattern=DNS_SUBDOMAIN)]

# A key in a Secret (the ConfigMap/Secret key rule), as a Pod's secretKeyRef.key needs it.
SecretKey = Annotated[str, Field(min_length=1, max_length=kv.CONFIG_MAP_KEY_MAX, pattern=kv.CONFIG_MAP_KEY)]

# A resource quantity for a Pod's requests/limits: "500m", "4", "1e3", "16Gi"; never negative.
Quantity = Annotated[
    str,
    Field(min_length=1, max_length=kv.QUANTITY_MAX),
    CelRule(
        rule=kv.QUANTITY_CEL,
        message="must be a non-negative Kubernetes quantity such as 500m, 4, 1e3 or 16Gi",
        check=kv.is_nonnegative_quantity,
    ),
]

# A label value, e.g. the nvidia.com/gpu.product a pod is pinned to.
LabelValue = Annotated[str, Field(max_length=kv.LABEL_VALUE_MAX, pattern=kv.LABEL_VALUE)]

_LABEL_KEY_MESSAGE = (
    "must be a valid label key: an optional DNS subdomain prefix and '/', then a name of at most "
    "63 alphanumeric characters, '-', '_' or '.' that starts and ends alphanumeric "
    "(e.g. example.com/MyName)"
)

# A label key (Kubernetes' "qualified name"), e.g. a toleration's taint key; empty allowed, it means
# "every key" where Kubernetes allows that.
OptionalLabelKey = Annotated[
    str,
    Field(max_length=kv.LABEL_KEY_MAX),
    CelRule(
        rule=f"size(self) == 0 || {kv.LABEL_KEY_CEL}",
        message=_LABEL_KEY_MESSAGE,
        check=lambda v: not v or kv.is_label_key(v),
    ),
]

# A container image reference: printable ASCII, no whitespace anywhere.
Image = Annotated[str, Field(min_length=1, max_length=kv.IMAGE_MAX, pattern=kv.IMAGE)]

# An http(s) URL with a host, as the workloads' and the operator's clients need it.
HttpURL = Annotated[str, Field(max_length=kv.HTTP_URL_MAX, pattern=kv.HTTP_URL)]

NODE_SELECTOR_MAX = 32


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

    name: ObjectName = Field(description="Name of the Secret, in the same namespace.")
    key: SecretKey = Field(
        description="Key within the Secret: letters, digits, '-', '_' or '.' (not '.', not '..' first)."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, copied onto the workload's pods; Kubernetes' own rules apply."""

    cel_rules = (
        CelRule(
            rule="self.operator != 'Exists' || !has(self.value) || size(self.value) == 0",
            message="value must be empty when operator is Exists",
            check=lambda t: t.operator != "Exists" or not t.value,
        ),
        CelRule(
            rule="(has(self.key) && size(self.key) > 0) || self.operator == 'Exists'",
            message="operator must be Exists when key is empty (which matches all keys and values)",
            check=lambda t: bool(t.key) or t.operator == "Exists",
        ),
        CelRule(
            rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="effect must be NoExecute when tolerationSeconds is set",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )

    key: OptionalLabelKey | None = Field(
        default=None,
        description="Taint key the toleration applies to (a label key); unset, with Exists, matches all.",
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: LabelValue | None = Field(
        default=None, description="Taint value to match when operator is Equal (a label value)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="Only with effect NoExecute: how long the pod stays bound after the taint appears.",
    )


class PodScheduling(ApiModel):
    """Where and with what priority the pods are scheduled."""

    priority_class_name: ObjectName | None = Field(default=None, description="PriorityClass of the pods.")
    node_selector: Annotated[
        dict[str, LabelValue],
        CelRule(
            rule=f"self.all(k, {kv.LABEL_KEY_CEL.replace('(self)', '(k)')})",
            message=f"every key {_LABEL_KEY_MESSAGE}",
            check=lambda selector: all(kv.is_label_key(k) for k in selector),
        ),
    ] = Field(
        default_factory=dict,
        description="Extra node labels the pods must match: label keys to label values.",
        max_length=NODE_SELECTOR_MAX,
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations added to the pods.", max_length=32
    )


class Scheduling(PodScheduling):
    """Where and with what priority a batch workload's pods are scheduled, the Kueue queue it waits in,
    and how long it may take to start or wait."""

    cel_rules = (
        CelRule(
            rule="!has(self.workloadPriorityClassName) || has(self.queueName)",
            message="workloadPriorityClassName needs queueName (it is Kueue's priority within a queue)",
            check=lambda s: s.workload_priority_class_name is None or s.queue_name is not None,
        ),
    )

    queue_name: str | None = Field(
        default=None,
        description="Kueue LocalQueue to submit the workload to (sets the kueue.x-k8s.io/queue-name label).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    workload_priority_class_name: ObjectName | None = Field(
        default=None,
        description=(
            "Kueue WorkloadPriorityClass (sets the kueue.x-k8s.io/priority-class label): the order in its "
            "queue and who may preempt whom. A preempted workload is Queued again, not failed, and resumes "
            "from its last checkpoint when admitted. Needs queueName."
        ),
    )
    start_deadline_seconds: int | None = Field(
        default=None,
        ge=10,
        le=604800,
        description=(
            "How long an attempt's pods may take to start running (scheduling, image pull, container "
            "creation) before the attempt fails with StartDeadlineExceeded; empty uses the operator's "
            "default (MLOPS_START_DEADLINE_SECONDS, 600). The failure is retryable, except for an image "
            "name Kubernetes cannot parse. It counts from when the pods were admitted (Kueue) and "
            "scheduled: waiting for capacity is Queued, never a failure (see queueTimeoutSeconds)."
        ),
    )
    queue_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=31536000,
        description=(
            "Give up when the workload has waited this long in one stretch for capacity (Queued: "
            "unschedulable pods, or a Job Kueue has not admitted): it then fails with "
            "QueueTimeoutExceeded, not retried. Empty (the default) waits as long as it takes."
        ),
    )


class QueueStatus(ApiModel):
    """Why a workload waits for capacity: the scheduler cannot place its pods, or Kueue has not
    admitted (or has evicted) its Job."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    reason: Literal["Unschedulable", "NoNodeFits", "WaitingForAdmission", "Preempted"] = Field(
        description=(
            "Unschedulable: no room now (the scheduler's message); NoNodeFits: no node could take the "
            "pods even empty (it stays pending until such a node joins); WaitingForAdmission: Kueue "
            "holds the Job suspended in its queue; Preempted: Kueue evicted it and it waits again."
        )
    )
    message: str = Field(default="", description="The scheduler's or Kueue's own words.", max_length=1024)
    since: str | None = Field(default=None, description="When this stretch of waiting began.")
    local_queue: str | None = Field(default=None, description="The Kueue LocalQueue it waits in.")
    cluster_queue: str | None = Field(default=None, description="The Kueue ClusterQueue, once known.")


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

    # Numbers in status are finite: a NaN from a workload is refused here, not by the apiserver.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

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
