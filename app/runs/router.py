"""HTTP endpoints of runs: create, read, list, epochs, weights, cancel, resume, delete."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from app.access import TrainAccess
from app.artifacts.dependencies import ArtifactStoreDep
from app.dependencies import DatabaseDep, ReadSessionDep, SettingsDep
from app.error_handlers import ERROR_RESPONSES
from app.errors import InvalidInputError
from app.ids import MAX_ID, Id
from app.runs import flows, service
from app.runs.dependencies import RunHooksDep
from app.runs.models import Run, RunStatus
from app.runs.schemas import (
    EpochRead,
    ResumeRequest,
    RunComparison,
    RunPage,
    RunRead,
    WeightsRead,
)
from app.training.serialization import tensors_as_json
from app.training.spec import MAX_TAGS, RunRequest, Tag

router = APIRouter(prefix="/runs", tags=["runs"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "An earlier request with this Idempotency-Key made the run"}},
)
def create_run(
    spec: RunRequest,
    response: Response,
    database: DatabaseDep,
    settings: SettingsDep,
    hooks: RunHooksDep,
    principal: TrainAccess,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="Retries with the same key return the same run."),
    ] = None,
) -> RunRead:
    """Queue a training run."""
    run, created = flows.submit_run(
        database=database,
        request=spec,
        settings=settings,
        hooks=hooks,
        principal=principal,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/runs/{run.id}"
    return RunRead.model_validate(run)


@router.get("")
def list_runs(
    session: ReadSessionDep,
    principal: TrainAccess,
    status_filter: Annotated[RunStatus | None, Query(alias="status")] = None,
    name: Annotated[
        str | None, Query(max_length=200, description="A part of the run's name, any case.")
    ] = None,
    tag: Annotated[
        list[Tag] | None,
        Query(
            max_length=MAX_TAGS, description="Runs carrying this tag; repeat for all of several."
        ),
    ] = None,
    sort: Annotated[
        str,
        Query(
            pattern=service.SORT_PATTERN,
            description="`-created_at` (default), `created_at`, `name`, `-name`, or "
            "`metrics.NAME` / `-metrics.NAME` by a final metric (runs without it last).",
        ),
    ] = service.RunSort.NEWEST,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Id | None, Query(description="next_cursor of a page")] = None,
) -> RunPage:
    """Runs, newest first unless sorted, one page at a time (inline dataset rows left out)."""
    runs, next_cursor = service.list_runs(
        session=session,
        project=principal.project,
        status=status_filter,
        name=name,
        tags=tag or (),
        sort=sort,
        limit=limit,
        cursor=cursor,
    )
    return RunPage(
        items=[listing(run) for run in runs],
        next_cursor=str(next_cursor) if next_cursor is not None else None,
    )


@router.get("/compare")
def compare_runs(
    session: ReadSessionDep,
    principal: TrainAccess,
    ids: Annotated[
        str,
        Query(
            pattern=r"^\d{1,10}(,\d{1,10}){1,4}$",
            description="2 to 5 run ids, comma-separated.",
            examples=["3,4"],
        ),
    ],
) -> RunComparison:
    """Runs side by side: the spec fields where they differ, and their final metrics."""
    run_ids = [int(part) for part in ids.split(",")]
    if len(set(run_ids)) != len(run_ids) or max(run_ids) > MAX_ID:
        raise InvalidInputError("ids must be distinct run ids", loc=("query", "ids"))
    comparison = service.compare_runs(session=session, run_ids=run_ids, project=principal.project)
    return RunComparison(
        runs=[listing(run) for run in comparison.runs],
        spec_differences=comparison.spec_differences,
        metrics=comparison.metrics,
    )


def listing(run: Run) -> RunRead:
    """A run as listings show it, inline dataset rows left out."""
    return RunRead.model_validate(run).model_copy(
        update={"spec": service.listing_spec(spec=run.spec)}
    )


@router.get("/{run_id}")
def get_run(run_id: Id, session: ReadSessionDep, principal: TrainAccess) -> RunRead:
    """One run: status, progress, device, times, metrics, error."""
    run = service.get_run(session=session, run_id=run_id, project=principal.project)
    return RunRead.model_validate(run)


@router.get("/{run_id}/epochs")
def list_epochs(run_id: Id, session: ReadSessionDep, principal: TrainAccess) -> list[EpochRead]:
    """One row per finished epoch."""
    return [
        EpochRead.model_validate(epoch)
        for epoch in service.list_epochs(session=session, run_id=run_id, project=principal.project)
    ]


@router.get(
    "/{run_id}/weights",
    response_model=WeightsRead,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_weights(
    run_id: Id,
    session: ReadSessionDep,
    store: ArtifactStoreDep,
    principal: TrainAccess,
    format: Annotated[str, Query(pattern="^(json|safetensors)$")] = "json",
) -> WeightsRead | Response:
    """The learned weights as JSON, or `?format=safetensors` for the file."""
    weights = service.get_weights(session=session, run_id=run_id, project=principal.project)
    data = store.read_bytes(weights.artifact.uri)
    if format == "safetensors":
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "Content-Disposition": f'attachment; filename="run-{run_id}.safetensors"',
                "X-Weights-SHA256": weights.sha256,
            },
        )
    return WeightsRead(
        run_id=run_id,
        sha256=weights.sha256,
        size_bytes=weights.size_bytes,
        tensors=tensors_as_json(data),
    )


@router.post("/{run_id}/cancel")
def cancel_run(run_id: Id, database: DatabaseDep, principal: TrainAccess) -> RunRead:
    """Cancel a queued run, or stop a running one at its next batch (it keeps a checkpoint)."""
    run = flows.cancel_run(database=database, run_id=run_id, principal=principal)
    return RunRead.model_validate(run)


@router.post("/{run_id}/resume")
def resume_run(
    run_id: Id,
    database: DatabaseDep,
    settings: SettingsDep,
    hooks: RunHooksDep,
    principal: TrainAccess,
    request: ResumeRequest | None = None,
) -> RunRead:
    """Continue a cancelled or failed run from its last checkpoint, optionally with more epochs."""
    run = flows.resume_run(
        database=database,
        run_id=run_id,
        epochs=request.epochs if request else None,
        settings=settings,
        hooks=hooks,
        principal=principal,
    )
    return RunRead.model_validate(run)


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_run(
    run_id: Id,
    database: DatabaseDep,
    store: ArtifactStoreDep,
    hooks: RunHooksDep,
    principal: TrainAccess,
) -> None:
    """Delete a run that is not executing nor a registered model version, with its data."""
    flows.delete_run(
        database=database, store=store, run_id=run_id, hooks=hooks, principal=principal
    )
