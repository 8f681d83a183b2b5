"""HTTP endpoints of datasets: upload (multipart or JSON), built-ins, list, read, delete."""

import tempfile
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import ImmutableMultiDict

from app.access import TrainAccess
from app.artifacts.dependencies import ArtifactStoreDep
from app.body_limit import BodyTooLargeError
from app.datasets import flows, service
from app.datasets.dependencies import DatasetUsersDep
from app.datasets.ingest import DatasetInputError, IngestOptions
from app.datasets.models import Dataset
from app.datasets.schemas import (
    BuiltinPage,
    BuiltinRead,
    DatasetJSON,
    DatasetOptions,
    DatasetPage,
    DatasetRead,
    DatasetSummary,
)
from app.datasets.uploads import MultipartForm, Spool
from app.dependencies import DatabaseDep, ReadSessionDep, SettingsDep
from app.error_handlers import ERROR_RESPONSES
from app.ids import Id

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)
Options = TypeVar("Options", bound=DatasetOptions)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "target"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **DatasetOptions.model_json_schema()["properties"],
                        "features": {
                            "type": "string",
                            "description": "Repeat the field, or separate names with commas.",
                        },
                    },
                }
            },
            "application/json": {"schema": DatasetJSON.model_json_schema()},
        },
    }
}


def _validated(model: type[Options], value: object) -> Options:
    """The body as a model; errors become the usual 422 with `body` in their location."""
    try:
        if isinstance(value, str | bytes):
            return model.model_validate_json(value)
        return model.model_validate(value)
    except ValidationError as error:
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in error.errors()]
        ) from None


def _form_options(form: ImmutableMultiDict[str, Any]) -> DatasetOptions:
    """Options from form fields or query parameters; `features` may repeat or hold commas."""
    values: dict[str, object] = {key: form[key] for key in form if key not in ("file", "features")}
    features = [name.strip() for item in form.getlist("features") for name in str(item).split(",")]
    if features:
        values["features"] = [name for name in features if name]
    return _validated(DatasetOptions, values)


def _ingest_options(options: DatasetOptions) -> IngestOptions:
    return IngestOptions(
        target=options.target,
        features=options.features,
        missing=options.missing,
        task=options.task,
        delimiter=options.delimiter,
    )


async def _capped_body(request: Request, max_bytes: int) -> bytes:
    # JSON becomes Python objects many times its size, so it keeps the general body limit.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLargeError(max_bytes)
    return bytes(body)


def _answer(dataset: Dataset, created: bool, response: Response) -> DatasetRead:
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return DatasetRead.model_validate(dataset)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"description": "The same bytes with the same options were already stored"},
        413: {
            "description": "The upload is over max_dataset_bytes, or decodes to more than the "
            "limits allow (max_rows, max_features, max_cells, max_dataset_columns, "
            "max_decoded_bytes)"
        },
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    database: DatabaseDep,
    store: ArtifactStoreDep,
    settings: SettingsDep,
    principal: TrainAccess,
) -> DatasetRead:
    """Upload a CSV or Parquet file (multipart, or the whole body), or JSON records or columns."""
    # Multipart carries the options as fields; a raw body (e.g. text/csv) as query parameters.
    content_type = request.headers.get("content-type", "")
    limits = settings.limits
    if content_type.startswith("application/json"):
        raw = await _capped_body(request, settings.max_body_bytes)

        def store_json() -> tuple[Dataset, bool]:
            # Validating up to max_body_bytes of JSON would stall the event loop.
            body = _validated(DatasetJSON, raw)
            return flows.store_json(
                database=database,
                store=store,
                name=body.name or "upload",
                options=_ingest_options(body),
                records=body.records,
                columns=body.columns,
                limits=limits,
                principal=principal,
            )

        return _answer(*await run_in_threadpool(store_json), response)
    with tempfile.TemporaryFile() as file:
        # The file goes to disk as it arrives, hashed on the way, so it is read once here
        # and once by the parser; the writes land in the page cache and barely hold up the
        # event loop.
        spool = Spool(file)
        name: str | None
        if content_type.startswith("multipart/form-data"):
            form = MultipartForm(spool)
            await form.read(request, content_type)
            if form.filename is None:
                raise DatasetInputError(("file",), "the multipart field `file` is missing")
            options = _form_options(ImmutableMultiDict(form.fields))
            name = options.name or form.filename
        else:
            # The body is the file itself and the options are query parameters.
            options = _form_options(request.query_params)
            name = options.name
            async for chunk in request.stream():
                spool.write(chunk)
        stored = await run_in_threadpool(
            lambda: flows.store_file(
                database=database,
                store=store,
                stream=file,
                name=name or "upload",
                options=_ingest_options(options),
                limits=limits,
                principal=principal,
                sha256=spool.sha256(),
            )
        )
    return _answer(*stored, response)


@router.post(
    "/builtin/{name}",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "The built-in dataset was already stored"}},
)
def store_builtin(
    name: str,
    response: Response,
    database: DatabaseDep,
    store: ArtifactStoreDep,
    settings: SettingsDep,
    principal: TrainAccess,
) -> DatasetRead:
    """Store a dataset shipped with fitserve (see `GET /datasets?builtin=true`)."""
    stored = flows.store_builtin(
        database=database, store=store, name=name, limits=settings.limits, principal=principal
    )
    return _answer(*stored, response)


@router.get("")
def list_datasets(
    session: ReadSessionDep,
    principal: TrainAccess,
    builtin: Annotated[bool, Query(description="List the built-in datasets instead.")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Id | None, Query(description="next_cursor of a page")] = None,
) -> DatasetPage | BuiltinPage:
    """Stored datasets, newest first, one page at a time; or the built-in ones."""
    if builtin:
        return BuiltinPage(
            items=[
                BuiltinRead(
                    name=name, description=item.description, target=item.target, task=item.task
                )
                for name, item in service.BUILTINS.items()
            ]
        )
    datasets, next_id = service.list_datasets(
        session=session,
        project=principal.project,
        limit=limit,
        before_id=cursor,
    )
    return DatasetPage(
        items=[DatasetSummary.model_validate(dataset) for dataset in datasets],
        next_cursor=str(next_id) if next_id is not None else None,
    )


@router.get("/{dataset_id}")
def get_dataset(dataset_id: Id, session: ReadSessionDep, principal: TrainAccess) -> DatasetRead:
    """One dataset: schema, per-column statistics and the first 10 rows."""
    dataset = service.get_dataset(session=session, dataset_id=dataset_id, project=principal.project)
    return DatasetRead.model_validate(dataset)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: Id,
    database: DatabaseDep,
    store: ArtifactStoreDep,
    users: DatasetUsersDep,
    principal: TrainAccess,
    force: Annotated[bool, Query(description="Delete even while runs refer to it.")] = False,
) -> None:
    """Delete a dataset; 409 while runs refer to it unless `force=true`."""
    flows.delete_dataset(
        database=database,
        store=store,
        dataset_id=dataset_id,
        force=force,
        users=users,
        principal=principal,
    )
