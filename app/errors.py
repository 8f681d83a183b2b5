"""Domain errors mapped to HTTP answers, and validation errors without the echoed input."""

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.datasets.ingest import DatasetInputError
from app.datasets.service import DatasetInUseError, DatasetNotFoundError
from app.registry.service import RegistryNotFoundError, ReservedAliasError, RunRegisteredError
from app.runs.service import RunNotFoundError, RunStateError, SpecLimitError
from app.serving.service import InputShapeError


def _detail(loc: tuple[str | int, ...], message: str, kind: str) -> list[dict[str, object]]:
    return [{"loc": list(loc), "msg": message, "type": kind}]


async def _not_found(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)


async def _conflict(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=status.HTTP_409_CONFLICT)


async def _over_limit(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, SpecLimitError)
    return JSONResponse(
        {"detail": _detail(("body", *error.loc), str(error), "limit_exceeded")},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _invalid_dataset(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DatasetInputError)
    return JSONResponse(
        {"detail": _detail(("body", *error.loc), str(error), "invalid_dataset")},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _bad_shape(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InputShapeError)
    return JSONResponse(
        {"detail": _detail(error.loc, str(error), "shape_mismatch")},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _reserved_alias(_request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": _detail(("path", "alias"), str(error), "reserved")},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _invalid_request(_request: Request, error: Exception) -> JSONResponse:
    # The default answer echoes the offending input, which for an inline dataset is the
    # whole upload; the location and message are what a caller needs.
    assert isinstance(error, RequestValidationError)
    errors = [
        {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
        for item in error.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors to 404, 409 and 422 answers."""
    app.add_exception_handler(RunNotFoundError, _not_found)
    app.add_exception_handler(RunStateError, _conflict)
    app.add_exception_handler(RegistryNotFoundError, _not_found)
    app.add_exception_handler(RunRegisteredError, _conflict)
    app.add_exception_handler(ReservedAliasError, _reserved_alias)
    app.add_exception_handler(SpecLimitError, _over_limit)
    app.add_exception_handler(InputShapeError, _bad_shape)
    app.add_exception_handler(DatasetNotFoundError, _not_found)
    app.add_exception_handler(DatasetInUseError, _conflict)
    app.add_exception_handler(DatasetInputError, _invalid_dataset)
    app.add_exception_handler(RequestValidationError, _invalid_request)
