"""Sweep use cases: create, cancel, keep a sweep going, and the pruner's word on a trial.

The API creates a sweep and queues its first trials; after that the workers drive it: each
queues the next trials when one ends (and every poll, whatever ended a trial), and asks the
pruner after each epoch of a trial. All of it reads and writes the sweep's rows under the
sweep's row lock, so any process may die at any point and another carries on.
"""

import logging
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.config import Settings
from app.database import Database, unit_of_work
from app.errors import FitserveError, InvalidInputError, QuotaExceededError
from app.principal import Principal, Role
from app.registry import service as registry
from app.runs import flows as run_flows
from app.runs import service as runs
from app.sweeps import service
from app.sweeps.models import Sweep, SweepStatus
from app.sweeps.schemas import FloatRange, IntRange, SweepRequest
from app.sweeps.search import Search, choices, direction, grid_size, set_path
from app.training.spec import RunRequest, metric_misfit

logger = logging.getLogger("fitserve.sweeps")


def create_sweep(
    *,
    database: Database,
    request: SweepRequest,
    settings: Settings,
    queued: Callable[[], None],
    principal: Principal,
) -> Sweep:
    """Check the space against the base spec, store the sweep and queue its first trials."""
    with unit_of_work(database.sessions) as session:
        total = _check(session=session, request=request, settings=settings, principal=principal)
        sweep = service.create_sweep(
            session=session, project=principal.project, request=request, total=total
        )
        audit.record(
            session=session, principal=principal, action="sweep.create", object_id=sweep.id
        )
        started = _advance(session=session, sweep=sweep, settings=settings)
    if started:
        queued()
    return sweep


def cancel_sweep(*, database: Database, sweep_id: int, principal: Principal) -> Sweep:
    """Stop a sweep: no new trials, and its queued or running trials are cancelled."""
    with unit_of_work(database.sessions) as session:
        sweep = service.get_sweep(
            session=session, sweep_id=sweep_id, project=principal.project, lock=True
        )
        if sweep.status != SweepStatus.RUNNING:
            raise service.SweepStateError(f"sweep {sweep_id} is {sweep.status}")
        for trial in service.trials(session=session, sweep=sweep):
            if trial.run_id is not None and trial.status in service.OPEN_STATUSES:
                runs.cancel_run(session=session, run_id=trial.run_id, project=sweep.project)
        best = _best(session, sweep)
        service.finish(
            session=session,
            sweep=sweep,
            status=SweepStatus.CANCELLED,
            best_run_id=best,
            error=None,
        )
        audit.record(
            session=session, principal=principal, action="sweep.cancel", object_id=sweep_id
        )
    return sweep


def advance_sweeps(*, database: Database, settings: Settings) -> int:
    """Queue the next trials of every running sweep with room, and end finished sweeps.

    Returns how many runs it queued. Each sweep goes in a transaction of its own, so one
    sweep's trouble does not hold up the others.
    """
    with database.read_sessions() as session:
        running = service.running_sweeps(session=session)
    started = 0
    for sweep_id, project in running:
        try:
            with unit_of_work(database.sessions) as session:
                sweep = service.get_sweep(
                    session=session, sweep_id=sweep_id, project=project, lock=True
                )
                started += _advance(session=session, sweep=sweep, settings=settings)
        except QuotaExceededError:
            # The project is at a quota: the trial waits for room, like a person would.
            continue
        except DBAPIError:
            raise
        except Exception:
            # One sweep's fault must not stop a worker from training, nor the other sweeps.
            logger.exception("advancing sweep %s failed; trying again at the next poll", sweep_id)
    return started


def pruning_check(*, database: Database, run_id: int) -> Callable[[int], bool] | None:
    """For a trial of a sweep with a pruner, a check to call after each epoch; else None."""
    with database.read_sessions() as session:
        found = service.trial_of_run(session=session, run_id=run_id)
    if found is None or found[0].spec["pruner"]["type"] == "none":
        return None
    sweep_id, number = found[0].id, found[1].number

    def should_prune(_epoch: int) -> bool:
        with unit_of_work(database.sessions) as session:
            sweep = session.get(Sweep, sweep_id, with_for_update=True)
            if sweep is None or sweep.status != SweepStatus.RUNNING:
                return False
            search = Search(SweepRequest.model_validate(sweep.spec))
            decision, attrs = search.should_prune(
                service.records(session=session, sweep=sweep), number
            )
            service.store_system_attrs(
                session=session, sweep_id=sweep_id, number=number, system_attrs=attrs
            )
        return decision

    return should_prune


def _advance(*, session: Session, sweep: Sweep, settings: Settings) -> int:
    """Queue trials up to max_concurrent and total_trials; end the sweep once all are final."""
    if sweep.status != SweepStatus.RUNNING:
        return 0
    request = SweepRequest.model_validate(sweep.spec)
    search = Search(request)
    records = service.records(session=session, sweep=sweep)
    open_trials = sum(record.outcome == "running" for record in records)
    started = 0
    principal = Principal(project=sweep.project, role=Role.TRAIN, address=f"sweep {sweep.id}")
    while len(records) < sweep.total_trials and open_trials < request.max_concurrent:
        number = len(records)
        proposal = search.propose(records, number)
        try:
            run, _created = run_flows.queue_run(
                session=session,
                request=trial_request(request, proposal.params, sweep.id),
                settings=settings,
                principal=principal,
            )
        except QuotaExceededError:
            if started:
                break
            raise
        except InvalidInputError as error:
            # A value inside a checked range can still break a limit (a wide layer, say).
            service.finish(
                session=session,
                sweep=sweep,
                status=SweepStatus.FAILED,
                best_run_id=_best(session, sweep),
                error=f"trial {number} ({proposal.params}): {error.message}",
            )
            return started
        service.add_trial(
            session=session, sweep=sweep, number=number, proposal=proposal, run_id=run.id
        )
        records = service.records(session=session, sweep=sweep)
        open_trials += 1
        started += 1
    if open_trials == 0 and len(records) >= sweep.total_trials:
        _conclude(session=session, sweep=sweep, request=request)
    return started


def _conclude(*, session: Session, sweep: Sweep, request: SweepRequest) -> None:
    best = _best(session, sweep)
    error = None if best is not None else "no trial succeeded with a value of the objective"
    if best is not None and request.register_best is not None:
        target = request.register_best
        version = registry.register_version(
            session=session, project=sweep.project, name=target.model, run_id=best
        )
        if target.alias is not None:
            registry.set_alias(
                session=session,
                project=sweep.project,
                name=target.model,
                alias=target.alias,
                version=version.version,
            )
    service.finish(
        session=session,
        sweep=sweep,
        status=SweepStatus.SUCCEEDED if best is not None else SweepStatus.FAILED,
        best_run_id=best,
        error=error,
    )


def _best(session: Session, sweep: Sweep) -> int | None:
    request = SweepRequest.model_validate(sweep.spec)
    best = service.best_trial(
        trials=service.trials(session=session, sweep=sweep),
        maximize=direction(request) == "maximize",
    )
    return best.run_id if best is not None else None


def trial_request(request: SweepRequest, params: dict[str, object], sweep_id: int) -> RunRequest:
    """The run spec of one trial: the base with the params put in, tagged with the sweep."""
    spec = request.base.model_dump(mode="json")
    for path, value in params.items():
        spec = set_path(spec, path, value)
    tag = service.trial_tag(sweep_id)
    tags = spec.get("tags") or []
    spec["tags"] = tags if tag in tags else [*tags, tag]
    return RunRequest.model_validate(spec)


def _check(
    *, session: Session, request: SweepRequest, settings: Settings, principal: Principal
) -> int:
    """Refuse a space the base spec cannot take (422 naming the entry); the trial count."""
    base = request.base
    objective = request.objective.metric
    resolved, _shape = run_flows.resolved_spec(
        session=session, request=base, project=principal.project
    )
    misfit = metric_misfit(
        objective, task=resolved.task, validation_split=resolved.validation_split
    )
    if misfit is not None:
        raise InvalidInputError(misfit, loc=("body", "objective", "metric"))
    if (
        request.register_best is not None
        and request.register_best.alias in registry.RESERVED_ALIASES
    ):
        raise InvalidInputError(
            f"alias {request.register_best.alias!r} is reserved",
            loc=("body", "register_best", "alias"),
        )
    for path, entry in request.space.items():
        values = choices(entry)
        if request.strategy.type == "grid" and values is None:
            raise InvalidInputError(
                "the grid strategy takes a list of values or a choice, not a range",
                loc=("body", "space", path),
            )
        candidates = values if values is not None else _ends(entry)
        for value in candidates:
            _check_value(session, request, settings, principal, path, value)
    total = request.max_runs
    if request.strategy.type == "grid":
        total = min(total, grid_size(request))
    return total


def _ends(entry: object) -> list[object]:
    assert isinstance(entry, FloatRange | IntRange)
    return [entry.low, entry.high]


def _check_value(
    session: Session,
    request: SweepRequest,
    settings: Settings,
    principal: Principal,
    path: str,
    value: object,
) -> None:
    loc = ("body", "space", path)
    try:
        trial = trial_request(request, {path: value}, sweep_id=0)
        spec, shape = run_flows.resolved_spec(
            session=session, request=trial, project=principal.project
        )
        runs.check_limits(spec=spec, limits=settings.limits, shape=shape)
    except KeyError as error:
        raise InvalidInputError(
            f"{path} is not in the run spec: {error.args[0]}", loc=loc
        ) from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInputError(
            f"{value!r} is refused by the run spec at {where}: {first['msg']}", loc=loc
        ) from None
    except FitserveError as error:
        raise InvalidInputError(f"{value!r} is refused: {error.message}", loc=loc) from None
