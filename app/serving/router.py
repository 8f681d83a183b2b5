"""Predict endpoints: by run, by registered model in the path, or by either in the body.

The handlers are `async` and read the raw body themselves: after a model's first call the
answer comes from the caches without a thread hop or any database I/O. Bodies over
`predict_inline_max_bytes` are parsed and run in the thread pool so that a big batch
does not hold up small requests.
"""

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from app.access import PredictAccess
from app.error_handlers import ERROR_RESPONSES
from app.ids import MAX_ID, Id
from app.registry.schemas import ALIAS_PATTERN
from app.registry.service import ModelRef, Resolution, parse_model_ref
from app.runs.service import RunNotFoundError
from app.serving import service
from app.serving.cache import LoadedModel
from app.serving.dependencies import serving_state
from app.serving.schemas import PredictInputs, PredictRequest, PredictResponse
from app.serving.service import Rows, Serving

router = APIRouter(tags=["predict"], responses=ERROR_RESPONSES)

Body = TypeVar("Body", bound=BaseModel)
Result = TypeVar("Result")

CSV_EXAMPLE = "x0,x1\n1.0,1.0\n2.0,0.5\n"


def _request_body(schema: type[BaseModel], *, csv: bool) -> dict[str, Any]:
    """OpenAPI for a body the handler parses itself."""
    content: dict[str, Any] = {
        "application/json": {
            "schema": schema.model_json_schema(ref_template="#/components/schemas/{model}")
        }
    }
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}, "example": CSV_EXAMPLE}
    return {"requestBody": {"required": True, "content": content}}


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"example": "prediction\n2.8\n"}}}
}


async def _maybe_offload(big: bool, function: Callable[..., Result], *args: Any) -> Result:
    if big:
        return await run_in_threadpool(function, *args)
    return function(*args)


def _parse_json(body: bytes, schema: type[Body]) -> Body:
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)]
        ) from None


def _parse_rows(body: bytes, as_csv: bool) -> Rows:
    if as_csv:
        return service.parse_csv(body=body)
    parsed = _parse_json(body, PredictInputs)
    return Rows.of(parsed)


async def _run_model(
    serving: Serving, run_id: int, project: str, sha256: str | None = None
) -> LoadedModel:
    model = serving.models.get(run_id, sha256)
    if model is not None and model.project != project:
        raise RunNotFoundError(run_id)
    if model is None:
        # Only a cache miss touches the database, off the event loop.
        model = await run_in_threadpool(
            lambda: service.cache_model(serving=serving, run_id=run_id, project=project)
        )
    return model


async def _resolve(serving: Serving, ref: ModelRef) -> Resolution:
    resolution = serving.names.get(ref)
    if resolution is None:

        def read() -> Resolution:
            with serving.sessions() as session:
                return service.resolved(names=serving.names, session=session, ref=ref)

        resolution = await run_in_threadpool(read)
    return resolution


def _answer(
    model: LoadedModel,
    resolution: Resolution | None,
    rows: Rows,
    max_rows: int,
    as_csv: bool,
) -> Response:
    prediction = service.predict(model=model, rows=rows, max_rows=max_rows)
    if as_csv:
        headers = {"X-Run-Id": str(model.run_id), "X-Weights-SHA256": model.sha256}
        if resolution is not None:
            headers |= {"X-Model": resolution.name, "X-Model-Version": str(resolution.version)}
        return Response(
            service.format_csv(prediction=prediction), media_type="text/csv", headers=headers
        )
    return Response(
        service.answer_json(model=model, resolution=resolution, prediction=prediction),
        media_type="application/json",
    )


async def _serve(
    serving: Serving,
    *,
    project: str,
    run_id: int | None,
    ref: ModelRef | None,
    rows: Rows,
    big: bool,
    as_csv: bool,
) -> Response:
    resolution = None
    if ref is not None:
        resolution = await _resolve(serving, ref)
        model = await _run_model(serving, resolution.run_id, project, resolution.weights_sha256)
    else:
        assert run_id is not None
        model = await _run_model(serving, run_id, project)
    max_rows = serving.settings.limits.max_predict_rows
    return await _maybe_offload(big, _answer, model, resolution, rows, max_rows, as_csv)


def _is_csv(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("text/csv")


async def _serve_rows(
    request: Request,
    serving: Serving,
    *,
    project: str,
    run_id: int | None,
    ref: ModelRef | None,
) -> Response:
    body = await request.body()
    big = len(body) > serving.settings.predict_inline_max_bytes
    as_csv = _is_csv(request)
    rows = await _maybe_offload(big, _parse_rows, body, as_csv)
    return await _serve(
        serving, project=project, run_id=run_id, ref=ref, rows=rows, big=big, as_csv=as_csv
    )


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra=_request_body(PredictRequest, csv=False),
)
async def predict(request: Request, principal: PredictAccess) -> Response:
    """Predict with the run or registered model (`name@alias`, `name:3`) named in the body."""
    serving = serving_state(request)
    body = await request.body()
    big = len(body) > serving.settings.predict_inline_max_bytes
    parsed = await _maybe_offload(big, _parse_json, body, PredictRequest)
    project = principal.project
    ref = None if parsed.model is None else parse_model_ref(text=parsed.model, project=project)
    rows = Rows.of(parsed)
    return await _serve(
        serving,
        project=project,
        run_id=parsed.run_id,
        ref=ref,
        rows=rows,
        big=big,
        as_csv=False,
    )


@router.post(
    "/runs/{run_id}/predict",
    response_model=PredictResponse,
    responses=CSV_RESPONSE,
    openapi_extra=_request_body(PredictInputs, csv=True),
)
async def predict_run(run_id: Id, request: Request, principal: PredictAccess) -> Response:
    """Predict with a run's weights; JSON rows, or `text/csv` in and out."""
    return await _serve_rows(
        request, serving_state(request), project=principal.project, run_id=run_id, ref=None
    )


@router.post(
    "/models/{name}/predict",
    response_model=PredictResponse,
    responses=CSV_RESPONSE,
    openapi_extra=_request_body(PredictInputs, csv=True),
)
async def predict_model(
    name: str,
    request: Request,
    principal: PredictAccess,
    version: Annotated[int | None, Query(ge=1, le=MAX_ID, description="A version number.")] = None,
    alias: Annotated[
        str | None, Query(pattern=f"^{ALIAS_PATTERN}$", description="An alias, e.g. production.")
    ] = None,
) -> Response:
    """Predict with a registered model's version, alias, or by default its latest version."""
    if version is not None and alias is not None:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "alias"),
                    "msg": "give version or alias, not both",
                    "type": "value_error",
                }
            ]
        )
    ref = ModelRef(project=principal.project, name=name, version=version, alias=alias)
    return await _serve_rows(
        request, serving_state(request), project=principal.project, run_id=None, ref=ref
    )
