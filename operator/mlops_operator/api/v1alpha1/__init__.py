"""mlops.dev/v1alpha1: the API of the four kinds, as pydantic models (the one source of the CRDs)."""

from .common import API_VERSION, GROUP, VERSION, Condition, LocalObjectReference, SecretKeyReference
from .dataset import DatasetSpec, DatasetStatus
from .driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from .inferencedeployment import InferenceDeploymentSpec, InferenceDeploymentStatus
from .kinds import KINDS, KindInfo, PrinterColumn, kind_by_name
from .modelpipeline import ModelPipelineSpec, ModelPipelineStatus
from .modelversion import ModelVersionSpec, ModelVersionStatus
from .trainingrun import TrainingRunSpec, TrainingRunStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "DatasetSpec",
    "DatasetStatus",
    "DriftMonitorSpec",
    "DriftMonitorStatus",
    "InferenceDeploymentSpec",
    "InferenceDeploymentStatus",
    "KindInfo",
    "LocalObjectReference",
    "ModelPipelineSpec",
    "ModelPipelineStatus",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "PrinterColumn",
    "SecretKeyReference",
    "TrainingRunSpec",
    "TrainingRunStatus",
    "kind_by_name",
]
