"""HTTP endpoints of runs: create, read, list, epochs, weights, cancel, resume, delete."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from app.access import TrainAccess
from app.dependencies import DatabaseDep, ReadSessionDep, SettingsDep
from app.error_handlers import ERROR_RESPONSES
from app.ids import Id
from app.runs import flows, service
from app.runs.dependencies import RunEventsDep
from app.runs.models import RunStatus
from app.runs.schemas import EpochRead, ResumeRequest, RunPage, RunRead, WeightsRead
from app.training.artifacts import tensors_as_json
from app.training.spec import RunRequest

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
    events: RunEventsDep,
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
        events=events,
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
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Id | None, Query(description="next_cursor of a page")] = None,
) -> RunPage:
    """Runs, newest first, one page at a time (inline dataset rows left out)."""
    runs, next_id = service.list_runs(
        session=session,
        project=principal.project,
        status=status_filter,
        limit=limit,
        before_id=cursor,
    )
    return RunPage(
        items=[
            RunRead.model_validate(run).model_copy(
                update={"spec": service.listing_spec(spec=run.spec)}
            )
            for run in runs
        ],
        next_cursor=str(next_id) if next_id is not None else None,
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
    principal: TrainAccess,
    format: Annotated[str, Query(pattern="^(json|safetensors)$")] = "json",
) -> WeightsRead | Response:
    """The learned weights as JSON, or `?format=safetensors` for the file."""
    weights = service.get_weights(session=session, run_id=run_id, project=principal.project)
    if format == "safetensors":
        return Response(
            weights.data,
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
        tensors=tensors_as_json(weights.data),
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
    events: RunEventsDep,
    principal: TrainAccess,
    request: ResumeRequest | None = None,
) -> RunRead:
    """Continue a cancelled or failed run from its last checkpoint, optionally with more epochs."""
    run = flows.resume_run(
        database=database,
        run_id=run_id,
        epochs=request.epochs if request else None,
        settings=settings,
        events=events,
        principal=principal,
    )
    return RunRead.model_validate(run)


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_run(
    run_id: Id, database: DatabaseDep, events: RunEventsDep, principal: TrainAccess
) -> None:
    """Delete a run that is not executing nor a registered model version, with its data."""
    flows.delete_run(database=database, run_id=run_id, events=events, principal=principal)
