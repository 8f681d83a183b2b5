"""The one error root: every refusal fitserve makes carries its HTTP status, a stable type and,
for errors in the request, the `loc` of the part at fault.

Pure Python, so the training engine and the worker raise the same errors as the API; the HTTP
mapping is `app.error_handlers`, and the worker sorts failures by these classes.
"""

from typing import ClassVar

Loc = tuple[str | int, ...]


class FitserveError(Exception):
    """The root of fitserve's own errors."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal"

    def __init__(self, message: str, *, loc: Loc | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the body."""
        return {}


class UnauthorizedError(FitserveError):
    """No API key, or one that is unknown or revoked."""

    status = 401
    type = "unauthorized"

    def headers(self) -> dict[str, str]:
        """Tell the client which scheme to use."""
        return {"WWW-Authenticate": "Bearer"}


class ForbiddenError(FitserveError):
    """The key is valid but its role does not allow the operation."""

    status = 403
    type = "forbidden"


class NotFoundError(FitserveError):
    """No object has that id or name."""

    status = 404
    type = "not_found"


class ConflictError(FitserveError):
    """The object's state does not allow the operation."""

    status = 409
    type = "conflict"


class InvalidInputError(FitserveError):
    """The request (or a run's stored input) cannot be used; `loc` names the part at fault."""

    status = 422
    type = "invalid_input"


class LimitExceededError(InvalidInputError):
    """A field asks for more than the server allows."""

    type = "limit_exceeded"


class PayloadTooLargeError(FitserveError):
    """The upload decodes to more than the server holds; `loc` names the part at fault."""

    status = 413
    type = "too_large"


class QuotaExceededError(FitserveError):
    """The project is at one of its quotas; the message names it."""

    status = 429
    type = "quota_exceeded"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        """When trying again may succeed."""
        return {"Retry-After": str(self.retry_after_seconds)}


class ResourceError(FitserveError):
    """The machine ran out of memory or its device failed: another worker may succeed."""

    status = 503
    type = "resources"
