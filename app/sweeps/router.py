"""HTTP endpoints of sweeps: create, read, list, cancel."""

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sqlalchemy.orm import Session

from app.access import TrainAccess
from app.dependencies import DatabaseDep, ReadSessionDep, SettingsDep
from app.error_handlers import ERROR_RESPONSES
from app.ids import Id
from app.runs.dependencies import RunHooksDep
from app.sweeps import flows, service
from app.sweeps.models import Sweep
from app.sweeps.schemas import SweepPage, SweepRead, SweepRequest, TrialRead

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=ERROR_RESPONSES)


def _read(session: Session, sweep: Sweep, *, with_trials: bool = True) -> SweepRead:
    trials = service.trials(session=session, sweep=sweep) if with_trials else []
    return SweepRead(
        id=sweep.id,
        status=sweep.status,
        spec=sweep.spec,
        total_trials=sweep.total_trials,
        trials=[
            TrialRead(
                number=trial.number,
                run_id=trial.run_id,
                params=trial.params,
                status=trial.status,
                objective=trial.objective,
            )
            for trial in trials
        ],
        best_run_id=sweep.best_run_id,
        error=sweep.error,
        created_at=sweep.created_at,
        finished_at=sweep.finished_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_sweep(
    request: SweepRequest,
    response: Response,
    database: DatabaseDep,
    session: ReadSessionDep,
    settings: SettingsDep,
    hooks: RunHooksDep,
    principal: TrainAccess,
) -> SweepRead:
    """Start a sweep: its first trials are queued as runs at once."""
    sweep = flows.create_sweep(
        database=database,
        request=request,
        settings=settings,
        queued=hooks.queued,
        principal=principal,
    )
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    return _read(
        session, service.get_sweep(session=session, sweep_id=sweep.id, project=sweep.project)
    )


@router.get("")
def list_sweeps(
    session: ReadSessionDep,
    principal: TrainAccess,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[Id | None, Query(description="next_cursor of a page")] = None,
) -> SweepPage:
    """Sweeps, newest first, one page at a time (their trials in GET /sweeps/{id})."""
    sweeps, next_id = service.list_sweeps(
        session=session, project=principal.project, limit=limit, before_id=cursor
    )
    return SweepPage(
        items=[_read(session, sweep, with_trials=False) for sweep in sweeps],
        next_cursor=str(next_id) if next_id is not None else None,
    )


@router.get("/{sweep_id}")
def get_sweep(sweep_id: Id, session: ReadSessionDep, principal: TrainAccess) -> SweepRead:
    """One sweep: status, trials (run, params, status, objective), the best run."""
    return _read(
        session, service.get_sweep(session=session, sweep_id=sweep_id, project=principal.project)
    )


@router.post("/{sweep_id}/cancel")
def cancel_sweep(
    sweep_id: Id, database: DatabaseDep, session: ReadSessionDep, principal: TrainAccess
) -> SweepRead:
    """Stop a sweep: no new trials; its queued and running trials are cancelled."""
    flows.cancel_sweep(database=database, sweep_id=sweep_id, principal=principal)
    return _read(
        session, service.get_sweep(session=session, sweep_id=sweep_id, project=principal.project)
    )
