"""Run life cycle on the API side: create, read, list, cancel, resume, delete."""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.config import Limits
from app.database import rows_matched, utcnow
from app.datasets.ingest import DatasetInputError
from app.datasets.models import Dataset
from app.errors import ConflictError, LimitExceededError, Loc, NotFoundError
from app.pagination import newest_first
from app.projects import service as projects
from app.projects.models import Project
from app.runs import lifecycle
from app.runs.models import (
    FINAL_STATUSES,
    Checkpoint,
    Epoch,
    Run,
    RunStatus,
    RunTag,
    Weights,
)
from app.training.data import label_order
from app.training.modules import count_parameters
from app.training.spec import (
    DatasetRef,
    InlineDataset,
    MLPModel,
    RunSpec,
    SyntheticClassificationDataset,
    SyntheticLinearDataset,
)


class RunNotFoundError(NotFoundError):
    """No run has that id."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id} not found")


class RunStateError(ConflictError):
    """The run is not in a state that allows the operation."""


class SpecLimitError(LimitExceededError):
    """A spec field is over one of the server's limits; `loc` is relative to the body."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message, loc=("body", *loc))


def dataset_shape(spec: RunSpec) -> tuple[int, int, int]:
    """Rows, features and outputs a generated or inline dataset will have."""
    dataset = spec.dataset
    match dataset:
        case SyntheticLinearDataset():
            return dataset.n_samples, len(dataset.true_w), 1
        case SyntheticClassificationDataset():
            return dataset.n_samples, dataset.n_features, dataset.n_classes
        case InlineDataset():
            outputs = (
                len(label_order(list(dataset.targets))) if spec.task == "classification" else 1
            )
            return len(dataset.features), len(dataset.features[0]), outputs
    # A stored dataset's shape comes from the datasets service.
    raise TypeError(f"no shape for a {type(dataset).__name__} here")


def check_limits(*, spec: RunSpec, limits: Limits, shape: tuple[int, int, int]) -> None:
    """Refuse a spec that asks for more than the server allows, naming the field.

    `shape` is the rows, features and outputs of the run's dataset.
    """
    rows, features, outputs = shape
    rows_field = {"inline": "features", "dataset": "id"}.get(spec.dataset.type, "n_samples")
    checks: list[tuple[bool, tuple[str | int, ...], str]] = [
        (spec.epochs > limits.max_epochs, ("epochs",), f"epochs is at most {limits.max_epochs}"),
        (
            spec.batch_size > limits.max_batch_size,
            ("batch_size",),
            f"batch_size is at most {limits.max_batch_size}",
        ),
        (rows > limits.max_rows, ("dataset", rows_field), f"at most {limits.max_rows} rows"),
        (
            features > limits.max_features,
            ("dataset",),
            f"{features} features; at most {limits.max_features}",
        ),
        (
            rows * features > limits.max_cells,
            ("dataset",),
            f"rows x features is {rows * features}; at most {limits.max_cells}",
        ),
        (
            spec.task == "classification" and outputs > limits.max_classes,
            ("dataset",),
            f"{outputs} classes; at most {limits.max_classes}",
        ),
        (
            spec.task == "classification" and outputs < 2,
            ("dataset", "targets"),
            "classification needs at least 2 distinct labels",
        ),
    ]
    if isinstance(spec.model, MLPModel):
        checks.append(
            (
                len(spec.model.hidden) > limits.max_hidden_layers,
                ("model", "hidden"),
                f"at most {limits.max_hidden_layers} hidden layers",
            )
        )
        checks.extend(
            (
                width > limits.max_hidden_width,
                ("model", "hidden", index),
                f"hidden width {width} is over the limit of {limits.max_hidden_width}",
            )
            for index, width in enumerate(spec.model.hidden)
        )
    parameters = count_parameters(n_features=features, n_outputs=outputs, model=spec.model)
    checks.append(
        (
            parameters > limits.max_parameters,
            ("model",),
            f"the model has {parameters} parameters; at most {limits.max_parameters}",
        )
    )
    for failed, loc, message in checks:
        if failed:
            raise SpecLimitError(loc, message)


def runs_using_dataset(*, session: Session, dataset_id: int) -> list[int]:
    """Ids of the runs that train on a stored dataset, in order."""
    return list(
        session.scalars(select(Run.id).where(Run.dataset_id == dataset_id).order_by(Run.id))
    )


def check_run_quota(*, session: Session, project: Project, rows: int, epochs: int) -> None:
    """Refuse a run that would put the project over its queued-runs or run-size quota."""
    projects.check_quota(
        used=0,
        adding=rows * epochs,
        limit=project.max_rows_x_epochs,
        what="max_rows_x_epochs",
        project=project.name,
        retry_after=projects.RETRY_AFTER_STORAGE_SECONDS,
    )
    queued = session.scalar(
        select(func.count(Run.id)).where(
            Run.project == project.name, Run.status == RunStatus.QUEUED
        )
    )
    projects.check_quota(
        used=queued or 0,
        adding=1,
        limit=project.max_queued_runs,
        what="max_queued_runs",
        project=project.name,
        retry_after=projects.RETRY_AFTER_RUNS_SECONDS,
    )


def create_run(
    *,
    session: Session,
    project: str,
    spec: RunSpec,
    default_max_attempts: int,
    idempotency_key: str | None = None,
) -> tuple[Run, bool]:
    """Add a queued run; with an idempotency key already used, return that run instead.

    Returns the run and whether it was created now.
    """
    stored_spec = spec.model_dump(mode="json")
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, project, idempotency_key, stored_spec)
        if existing is not None:
            return existing, False
    run = Run(
        project=project,
        spec=stored_spec,
        dataset_id=spec.dataset.id if isinstance(spec.dataset, DatasetRef) else None,
        task=spec.task,
        device_request=spec.device,
        epochs_total=spec.epochs,
        max_attempts=spec.max_attempts or default_max_attempts,
        idempotency_key=idempotency_key,
        name=spec.name,
    )
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
            session.add_all(RunTag(run_id=run.id, tag=tag) for tag in spec.tags)
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its run.
        if idempotency_key is not None:
            existing = _by_idempotency_key(session, project, idempotency_key, stored_spec)
            if existing is not None:
                return existing, False
        # Or the stored dataset was deleted since it was checked (its foreign key failed).
        dataset_id = run.dataset_id
        if dataset_id is not None and not session.scalar(
            select(exists().where(Dataset.id == dataset_id))
        ):
            raise DatasetInputError(
                ("dataset", "id"), f"dataset {dataset_id} was deleted while the run was queued"
            ) from None
        raise
    return run, True


def run_for_idempotency_key(
    *, session: Session, project: str, key: str, spec: RunSpec
) -> Run | None:
    """The run an earlier request with this key made; a RunStateError if its spec differs."""
    return _by_idempotency_key(session, project, key, spec.model_dump(mode="json"))


def _by_idempotency_key(
    session: Session, project: str, key: str, stored_spec: dict[str, Any]
) -> Run | None:
    run = session.scalars(
        select(Run).where(Run.project == project, Run.idempotency_key == key)
    ).one_or_none()
    if run is not None and run.spec != stored_spec:
        raise RunStateError(
            f"Idempotency-Key {key!r} was already used for run {run.id} with a different spec"
        )
    return run


def get_run(*, session: Session, run_id: int, project: str) -> Run:
    """The project's run with that id; another project's run is not found either."""
    run = session.get(Run, run_id)
    if run is None or run.project != project:
        raise RunNotFoundError(run_id)
    return run


class RunSort(StrEnum):
    """Orders a run listing can take besides a final metric."""

    NEWEST = "-created_at"
    OLDEST = "created_at"
    NAME = "name"
    NAME_DESCENDING = "-name"


SORT_PATTERN = r"^(-?created_at|-?name|-?metrics\.[A-Za-z0-9_]{1,64})$"


def list_runs(
    *,
    session: Session,
    project: str,
    status: RunStatus | None,
    limit: int,
    cursor: int | None,
    name: str | None = None,
    tags: Sequence[str] = (),
    sort: str = RunSort.NEWEST,
) -> tuple[Sequence[Run], int | None]:
    """A page of the project's runs and the cursor of the next page (None: the end).

    `name` matches a part of the name, any case; every tag in `tags` must be on the run.
    `sort` is one of `RunSort` or `[-]metrics.NAME` (runs without that metric last); newest
    first pages by id, any other order by position.
    """
    query = select(Run).where(Run.project == project)
    if status is not None:
        query = query.where(Run.status == status)
    if name:
        pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Run.name.ilike(f"%{pattern}%", escape="\\"))
    for tag in tags:
        query = query.where(Run.id.in_(select(RunTag.run_id).where(RunTag.tag == tag)))
    if sort == RunSort.NEWEST:
        return newest_first(
            session=session, query=query, id_column=Run.id, limit=limit, before_id=cursor
        )
    offset = cursor or 0
    rows = session.scalars(
        query.order_by(_sort_key(sort), Run.id.desc()).offset(offset).limit(limit + 1)
    ).all()
    if len(rows) > limit:
        return rows[:limit], offset + limit
    return rows, None


def _sort_key(sort: str) -> ColumnElement[Any]:
    descending = sort.startswith("-")
    field = sort.removeprefix("-")
    column: ColumnElement[Any] | InstrumentedAttribute[Any]
    if field == "created_at":
        column = Run.id
    elif field == "name":
        column = Run.name
    else:
        column = Run.metrics[field.removeprefix("metrics.")].as_float()
    return (column.desc() if descending else column.asc()).nulls_last()


@dataclass(frozen=True)
class RunComparison:
    """Runs side by side: the spec fields where they differ and each final metric."""

    runs: list[Run]
    spec_differences: dict[str, list[Any]]
    metrics: dict[str, list[Any]]


def compare_runs(*, session: Session, run_ids: Sequence[int], project: str) -> RunComparison:
    """The runs in the order asked, the spec fields where they differ, and their metrics."""
    runs = [get_run(session=session, run_id=run_id, project=project) for run_id in run_ids]
    specs = [_flatten(listing_spec(spec=run.spec)) for run in runs]
    differences: dict[str, list[Any]] = {}
    for path in sorted({path for spec in specs for path in spec}):
        values = [spec.get(path) for spec in specs]
        if any(value != values[0] for value in values[1:]):
            differences[path] = values
    names = sorted({name for run in runs for name in run.metrics or {}})
    metrics = {name: [(run.metrics or {}).get(name) for run in runs] for name in names}
    return RunComparison(runs=runs, spec_differences=differences, metrics=metrics)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


def listing_spec(*, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as a listing shows it: an inline dataset's rows replaced by their shape."""
    dataset = spec.get("dataset", {})
    if dataset.get("type") != "inline":
        return spec
    # A page of runs could otherwise carry many inline uploads in full.
    summary = {
        "type": "inline",
        "n_rows": len(dataset["features"]),
        "n_features": len(dataset["features"][0]),
        "rows_omitted": "GET /runs/{id} has them",
    }
    return {**spec, "dataset": summary}


def list_epochs(*, session: Session, run_id: int, project: str) -> Sequence[Epoch]:
    """The run's finished epochs in order."""
    get_run(session=session, run_id=run_id, project=project)
    return session.scalars(select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch)).all()


def get_weights(*, session: Session, run_id: int, project: str) -> Weights:
    """The run's final weights; a RunStateError while it has none."""
    run = get_run(session=session, run_id=run_id, project=project)
    weights = session.get(Weights, run_id)
    if weights is None:
        raise RunStateError(f"run {run_id} has no weights yet (status {run.status})")
    return weights


def _conditional_update(
    session: Session, run_id: int, from_statuses: tuple[str, ...], **values: Any
) -> bool:
    # One conditional UPDATE, so a worker changing the status concurrently cannot be overwritten.
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(from_statuses))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return rows_matched(result) == 1


def cancel_run(*, session: Session, run_id: int, project: str) -> Run:
    """Cancel a queued run now; ask a running one to stop at its next batch."""
    get_run(session=session, run_id=run_id, project=project)
    changed = any(
        _conditional_update(
            session,
            run_id,
            (source,),
            status=target,
            **({"finished_at": utcnow()} if target in FINAL_STATUSES else {}),
        )
        for source, target in lifecycle.CANCEL.items()
    )
    run = get_run(session=session, run_id=run_id, project=project)
    session.refresh(run)
    if not changed and run.status not in lifecycle.CANCEL.values():
        raise RunStateError(f"run {run_id} is {run.status} and cannot be cancelled")
    return run


def resume_run(
    *, session: Session, run_id: int, project: str, epochs: int | None, limits: Limits
) -> Run:
    """Queue a cancelled or failed run again; it continues from its last checkpoint."""
    run = get_run(session=session, run_id=run_id, project=project)
    values: dict[str, Any] = {}
    if epochs is not None:
        if epochs > limits.max_epochs:
            raise SpecLimitError(("epochs",), f"epochs is at most {limits.max_epochs}")
        if epochs < run.epochs_done:
            raise SpecLimitError(
                ("epochs",), f"the run has already finished {run.epochs_done} epochs"
            )
        spec = {**run.spec, "epochs": epochs}
        if epochs != run.epochs_total:
            _check_new_length(run.spec, epochs)
        values = {"epochs_total": epochs, "spec": spec}
    resumed = _conditional_update(
        session,
        run_id,
        lifecycle.RESUMABLE,
        status=RunStatus.QUEUED,
        queued_at=utcnow(),
        finished_at=None,
        failure_kind=None,
        error=None,
        lost_attempts=0,
        **values,
    )
    session.refresh(run)
    if not resumed:
        raise RunStateError(
            f"run {run_id} is {run.status}; only cancelled, failed or pruned runs resume"
        )
    return run


def _check_new_length(spec: dict[str, Any], epochs: int) -> None:
    # Refused here rather than by the worker: a direct solve is one pass, and a one-cycle
    # schedule is laid out over the run's length when it starts.
    if spec.get("optimizer", {}).get("type") == "closed_form":
        raise SpecLimitError(("epochs",), "a closed_form run is one pass; it has no more epochs")
    if (spec.get("scheduler") or {}).get("type") == "onecycle":
        raise SpecLimitError(("epochs",), "a onecycle schedule keeps the length it started with")


def delete_run(*, session: Session, run_id: int, project: str) -> list[str]:
    """Delete a run that no worker is executing, with its epochs, checkpoint and weights.

    Returns the digests of its checkpoint and weights, to release once the deletion commits.
    """
    run = get_run(session=session, run_id=run_id, project=project)
    stored = [
        *session.scalars(select(Checkpoint.tensors_sha256).where(Checkpoint.run_id == run_id)),
        *session.scalars(select(Weights.sha256).where(Weights.run_id == run_id)),
    ]
    result = session.execute(
        delete(Run)
        .where(Run.id == run_id, Run.status.in_(lifecycle.DELETABLE))
        .execution_options(synchronize_session=False)
    )
    if rows_matched(result) == 0:
        raise RunStateError(f"run {run_id} is {run.status}; cancel it first")
    session.expunge(run)
    return stored
