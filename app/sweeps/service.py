"""Sweeps on a session the caller gives: create, read, list, and the trials' states."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.database import utcnow
from app.errors import ConflictError, NotFoundError
from app.pagination import newest_first
from app.runs.models import ACTIVE_STATUSES, Epoch, Run, RunStatus
from app.sweeps.models import Sweep, SweepStatus, SweepTrial
from app.sweeps.schemas import SweepRequest
from app.sweeps.search import Proposal, TrialOutcome, TrialRecord

OPEN_STATUSES = (RunStatus.QUEUED, *ACTIVE_STATUSES)


class SweepNotFoundError(NotFoundError):
    """No sweep has that id in the project."""

    def __init__(self, sweep_id: int) -> None:
        super().__init__(f"sweep {sweep_id} not found")


class SweepStateError(ConflictError):
    """The sweep is not in a state that allows the operation."""


@dataclass(frozen=True)
class Trial:
    """A trial with its run's status and objective, as the API shows it."""

    number: int
    run_id: int | None
    params: dict[str, Any]
    status: str
    objective: float | None


def trial_tag(sweep_id: int) -> str:
    """The tag every run of the sweep carries, so `GET /runs?tag=` finds them."""
    return f"sweep:{sweep_id}"


def create_sweep(*, session: Session, project: str, request: SweepRequest, total: int) -> Sweep:
    """Add a running sweep with no trials yet."""
    sweep = Sweep(
        project=project,
        spec=request.model_dump(mode="json"),
        total_trials=total,
        status=SweepStatus.RUNNING,
    )
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(*, session: Session, sweep_id: int, project: str, lock: bool = False) -> Sweep:
    """The project's sweep with that id (locked for update when asked)."""
    query = select(Sweep).where(Sweep.id == sweep_id, Sweep.project == project)
    if lock:
        query = query.with_for_update()
    sweep = session.scalars(query).one_or_none()
    if sweep is None:
        raise SweepNotFoundError(sweep_id)
    return sweep


def list_sweeps(
    *, session: Session, project: str, limit: int, before_id: int | None
) -> tuple[Sequence[Sweep], int | None]:
    """A page of the project's sweeps, newest first."""
    query = select(Sweep).where(Sweep.project == project)
    return newest_first(
        session=session, query=query, id_column=Sweep.id, limit=limit, before_id=before_id
    )


def running_sweeps(*, session: Session) -> list[tuple[int, str]]:
    """Id and project of every running sweep, oldest first."""
    rows = session.execute(
        select(Sweep.id, Sweep.project)
        .where(Sweep.status == SweepStatus.RUNNING)
        .order_by(Sweep.id)
    )
    return [(row.id, row.project) for row in rows]


def trial_of_run(*, session: Session, run_id: int) -> tuple[Sweep, SweepTrial] | None:
    """The sweep and trial a run belongs to, if any."""
    row = session.execute(
        select(Sweep, SweepTrial)
        .join(SweepTrial, SweepTrial.sweep_id == Sweep.id)
        .where(SweepTrial.run_id == run_id)
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


def objective_value(run: Run | None, metric: str) -> float | None:
    """The run's final value of the metric, when it has succeeded and reported it."""
    if run is None or run.status != RunStatus.SUCCEEDED or not run.metrics:
        return None
    value = run.metrics.get(metric)
    return float(value) if isinstance(value, int | float) else None


def trials(*, session: Session, sweep: Sweep) -> list[Trial]:
    """The sweep's trials in order, each with its run's status and objective."""
    metric = sweep.spec["objective"]["metric"]
    return [
        Trial(
            number=trial.number,
            run_id=trial.run_id,
            params=trial.params,
            status=run.status if run is not None else "deleted",
            objective=objective_value(run, metric),
        )
        for trial, run in _trial_rows(session, sweep)
    ]


def records(*, session: Session, sweep: Sweep) -> list[TrialRecord]:
    """The trials as a study needs them: states, final and per-epoch objective values."""
    metric = sweep.spec["objective"]["metric"]
    rows = _trial_rows(session, sweep)
    run_ids = [trial.run_id for trial, _run in rows if trial.run_id is not None]
    intermediate: dict[int, dict[int, float]] = {run_id: {} for run_id in run_ids}
    for epoch in session.scalars(select(Epoch).where(Epoch.run_id.in_(run_ids))):
        value = _epoch_value(epoch, metric)
        if value is not None:
            intermediate[epoch.run_id][epoch.epoch] = value
    return [
        TrialRecord(
            number=trial.number,
            sampler_params=trial.sampler_params,
            system_attrs=trial.system_attrs,
            outcome=_outcome(run, metric),
            value=objective_value(run, metric),
            intermediate=intermediate.get(trial.run_id or 0, {}),
        )
        for trial, run in rows
    ]


def _trial_rows(session: Session, sweep: Sweep) -> list[tuple[SweepTrial, Run | None]]:
    rows = session.execute(
        select(SweepTrial, Run)
        .outerjoin(Run, Run.id == SweepTrial.run_id)
        .where(SweepTrial.sweep_id == sweep.id)
        .order_by(SweepTrial.number)
    )
    return [(trial, run) for trial, run in rows]


def _epoch_value(epoch: Epoch, metric: str) -> float | None:
    if metric == "train_loss":
        return epoch.train_loss
    if metric == "val_loss":
        return epoch.val_loss
    value = epoch.metrics.get(metric)
    return float(value) if isinstance(value, int | float) else None


def _outcome(run: Run | None, metric: str) -> TrialOutcome:
    if run is None:
        return "failed"
    if run.status in OPEN_STATUSES:
        return "running"
    if run.status == RunStatus.PRUNED:
        return "pruned"
    return "complete" if objective_value(run, metric) is not None else "failed"


def add_trial(
    *, session: Session, sweep: Sweep, number: int, proposal: Proposal, run_id: int
) -> SweepTrial:
    """Record a trial and the run that trains it."""
    trial = SweepTrial(
        sweep_id=sweep.id,
        number=number,
        run_id=run_id,
        params=proposal.params,
        sampler_params=proposal.sampler_params,
        system_attrs=proposal.system_attrs,
    )
    session.add(trial)
    session.flush()
    return trial


def store_system_attrs(
    *, session: Session, sweep_id: int, number: int, system_attrs: dict[str, Any]
) -> None:
    """Keep what the pruner recorded on a trial for the next decisions."""
    trial = session.get(SweepTrial, (sweep_id, number))
    if trial is not None and trial.system_attrs != system_attrs:
        trial.system_attrs = system_attrs
        session.flush()


def finish(
    *,
    session: Session,
    sweep: Sweep,
    status: SweepStatus,
    best_run_id: int | None,
    error: str | None,
) -> None:
    """End the sweep."""
    sweep.status = status
    sweep.best_run_id = best_run_id
    sweep.error = error
    sweep.finished_at = utcnow()
    session.flush()


def best_trial(*, trials: Sequence[Trial], maximize: bool) -> Trial | None:
    """The succeeded trial with the best objective (the earliest among equals)."""
    scored = [trial for trial in trials if trial.objective is not None]
    if not scored:
        return None
    sign = -1.0 if maximize else 1.0
    return min(scored, key=lambda trial: (sign * (trial.objective or 0.0), trial.number))
