"""The one place errors become HTTP answers, and where the OpenAPI document lists them."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.errors import FitserveError


class ErrorItem(BaseModel):
    """One error in the request: where (`loc`), what (`msg`), and its stable `type`."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: a sentence, or the list of errors in the request."""

    detail: str | list[ErrorItem]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# What any operation may answer besides its success: documented on every route, so that
# clients (and the schema fuzzing in CI) know each status and its body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not valid JSON or not UTF-8"),
    401: _error("No API key, or one that is unknown or revoked"),
    403: _error("The key's role does not allow this"),
    404: _error("No object with that id or name in the key's project"),
    409: _error("The object's state does not allow this"),
    413: _error("The body, or what it decodes to, is over a limit"),
    422: _error("A field, parameter or row is invalid; `loc` names it"),
    429: _error("A project quota is reached; see Retry-After"),
}


async def _fitserve_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FitserveError)
    headers = error.headers()
    if error.loc is None:
        return JSONResponse({"detail": error.message}, status_code=error.status, headers=headers)
    detail = [{"loc": list(error.loc), "msg": error.message, "type": error.type}]
    return JSONResponse({"detail": detail}, status_code=error.status, headers=headers)


async def _invalid_request(_request: Request, error: Exception) -> JSONResponse:
    # The default answer echoes the offending input, which for an inline dataset is the
    # whole upload; the location and message are what a caller needs.
    assert isinstance(error, RequestValidationError)
    errors = [
        {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
        for item in error.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every FitserveError with its status, and validation errors without echoed input."""
    app.add_exception_handler(FitserveError, _fitserve_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
