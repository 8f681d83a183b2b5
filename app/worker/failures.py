"""Why an attempt failed, from the error it raised: the user's input, the machine, or a bug."""

import torch

from app.errors import InvalidInputError, ResourceError
from app.runs.models import FailureKind

# Out of memory and device failures say nothing about the run: another worker, or the
# same one later, may well succeed, so they cost an attempt rather than fail the run.
RESOURCE_ERRORS: tuple[type[BaseException], ...] = (
    ResourceError,
    MemoryError,
    torch.OutOfMemoryError,
    torch.AcceleratorError,
)


class DeviceUnavailableError(ResourceError):
    """The worker's own device cannot be used."""


# After one of these the device itself is suspect: the worker stops so that its pool starts
# a fresh process (a fresh CUDA context) instead of failing every run it claims.
DEVICE_ERRORS: tuple[type[BaseException], ...] = (DeviceUnavailableError, torch.AcceleratorError)


def failure_kind(error: BaseException) -> FailureKind:
    """The failure kind an error stands for."""
    if isinstance(error, InvalidInputError):
        return FailureKind.INVALID_INPUT
    if isinstance(error, RESOURCE_ERRORS):
        return FailureKind.RESOURCES
    return FailureKind.INTERNAL


def describe(error: BaseException) -> str:
    """The run's `error` text: the user's own problem as is, anything else with its type."""
    if isinstance(error, InvalidInputError):
        return str(error)
    return f"{type(error).__name__}: {error}"
