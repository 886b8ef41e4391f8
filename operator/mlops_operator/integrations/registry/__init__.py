"""The model registry interface (base.py) and its providers: mlflow.py, wandb.py (imported when used)."""

from .base import (
    ARCHIVED_TAG,
    UID_TAG,
    ModelRegistry,
    ObjectReader,
    PackageFile,
    RegisteredVersion,
    RegistryBusyError,
    RegistryError,
    RegistryRejectedError,
    RegistryTarget,
    RegistryUnavailableError,
    RegistryVersionNotFoundError,
    VersionRequest,
    open_registry,
)

__all__ = [
    "ARCHIVED_TAG",
    "UID_TAG",
    "ModelRegistry",
    "ObjectReader",
    "PackageFile",
    "RegisteredVersion",
    "RegistryBusyError",
    "RegistryError",
    "RegistryRejectedError",
    "RegistryTarget",
    "RegistryUnavailableError",
    "RegistryVersionNotFoundError",
    "VersionRequest",
    "open_registry",
]
