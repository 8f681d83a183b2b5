"""The one place errors become HTTP answers."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.errors import FitserveError


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
