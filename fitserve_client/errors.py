"""Exceptions: every non-2xx answer of the API becomes a `FitserveAPIError`."""

from typing import Any


class FitserveAPIError(Exception):
    """The API answered with an error status; `detail` is its message or list of errors."""

    def __init__(
        self,
        status: int,
        detail: Any,
        *,
        type: str | None = None,
        loc: list[str | int] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.type = type
        self.loc = loc
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """One line for people: the sentence, or each error as `loc: msg`."""
        if isinstance(self.detail, list):
            parts = []
            for item in self.detail:
                if isinstance(item, dict):
                    where = ".".join(str(part) for part in item.get("loc", []))
                    parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return str(self.detail)

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class AuthenticationError(FitserveAPIError):
    """401: no API key, or one that is unknown or revoked."""


class PermissionDeniedError(FitserveAPIError):
    """403: the key's role does not allow this."""


class NotFoundError(FitserveAPIError):
    """404: no such object in the key's project."""


class ConflictError(FitserveAPIError):
    """409: the object's state does not allow this."""


class PayloadTooLargeError(FitserveAPIError):
    """413: the body, or what it decodes to, is over a limit."""


class ValidationError(FitserveAPIError):
    """422: a field, parameter or row is invalid; `loc` names it."""


class RateLimitError(FitserveAPIError):
    """429: a project quota is reached; `retry_after` says when to try again."""


class FitserveStreamError(Exception):
    """The event stream kept ending before the run finished."""


ERRORS_BY_STATUS: dict[int, type[FitserveAPIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
}
