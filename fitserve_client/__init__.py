"""The Python client of fitserve: `Client(url, key)` and `AsyncClient`, over httpx.

It needs only httpx, httpx-sse and pydantic (pyarrow only to upload an in-memory table), so it
installs next to any application without the server's dependencies.
"""

from fitserve_client.client import AsyncClient, Client
from fitserve_client.errors import (
    AuthenticationError,
    ConflictError,
    FitserveAPIError,
    FitserveStreamError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ValidationError,
)
from fitserve_client.models import (
    FINAL_STATUSES,
    Alias,
    Comparison,
    Dataset,
    DatasetSummary,
    Epoch,
    Event,
    Model,
    ModelSummary,
    ModelVersion,
    ModelVersionDetail,
    Page,
    Prediction,
    Progress,
    Run,
    StoredTable,
    Sweep,
    Tensor,
    Trial,
    Weights,
)

__all__ = [
    "FINAL_STATUSES",
    "Alias",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Comparison",
    "ConflictError",
    "Dataset",
    "DatasetSummary",
    "Epoch",
    "Event",
    "FitserveAPIError",
    "FitserveStreamError",
    "Model",
    "ModelSummary",
    "ModelVersion",
    "ModelVersionDetail",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Prediction",
    "Progress",
    "RateLimitError",
    "Run",
    "StoredTable",
    "Sweep",
    "Tensor",
    "Trial",
    "ValidationError",
    "Weights",
]
