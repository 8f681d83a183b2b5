"""Run use cases: submit, cancel, resume, delete. Each commits once, then runs its effects."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from sqlalchemy.orm import Session

from app.artifacts import service as artifacts
from app.artifacts.store import ArtifactStore
from app.audit import service as audit
from app.config import Settings
from app.database import Database, unit_of_work
from app.datasets import service as datasets
from app.principal import Principal
from app.projects import service as projects
from app.runs import service
from app.runs.lifecycle import RESUMABLE
from app.runs.models import Run
from app.training.spec import DatasetRef, RunRequest, RunSpec, Task, resolve_spec


class RunDeletionCheck(Protocol):
    """Runs inside the deleting transaction; raises to refuse, may write alongside."""

    def __call__(self, *, session: Session, run_id: int) -> None:
        """Refuse the deletion of the run, or record it."""
        ...


def _nothing() -> None:
    """No effect."""


def _allow(*, session: Session, run_id: int) -> None:
    """Allow every deletion."""


def _forget(_run_id: int) -> None:
    """Nothing to forget."""


@dataclass(frozen=True)
class RunHooks:
    """How the rest of the service reacts to runs, wired by the app factory.

    Runs import none of the packages that react: the registry refuses to delete a registered
    run (`deleting`), serving drops a deleted run's model (`deleted`), and a local worker
    pool wakes for a queued run (`queued`).
    """

    queued: Callable[[], None] = _nothing
    deleting: RunDeletionCheck = _allow
    deleted: Callable[[int], None] = _forget


def resolved_spec(
    *, session: Session, request: RunRequest, project: str
) -> tuple[RunSpec, tuple[int, int, int]]:
    """The request as a spec to train, and the rows, features and outputs it trains on."""
    ref = request.dataset
    if not isinstance(ref, DatasetRef):
        spec = resolve_spec(request)
        return spec, service.dataset_shape(spec)
    dataset = datasets.stored_for_run(session=session, ref=ref, project=project)
    spec = resolve_spec(request, dataset_task=cast(Task, dataset.task))
    return spec, datasets.shape_for_run(dataset=dataset, ref=ref, task=spec.task)


def submit_run(
    *,
    database: Database,
    request: RunRequest,
    settings: Settings,
    hooks: RunHooks,
    principal: Principal,
    idempotency_key: str | None = None,
) -> tuple[Run, bool]:
    """Queue a run, or find the one an earlier request with the key queued; wake a worker."""
    with unit_of_work(database.sessions) as session:
        run, created = queue_run(
            session=session,
            request=request,
            settings=settings,
            principal=principal,
            idempotency_key=idempotency_key,
        )
    if created:
        hooks.queued()
    return run, created


def queue_run(
    *,
    session: Session,
    request: RunRequest,
    settings: Settings,
    principal: Principal,
    idempotency_key: str | None = None,
) -> tuple[Run, bool]:
    """Check a run against the limits and the project's quotas and queue it, in `session`."""
    spec, shape = resolved_spec(session=session, request=request, project=principal.project)
    service.check_limits(spec=spec, limits=settings.limits, shape=shape)
    if idempotency_key is not None:
        # A retry gets its run back even when the run itself now fills the quota.
        earlier = service.run_for_idempotency_key(
            session=session, project=principal.project, key=idempotency_key, spec=spec
        )
        if earlier is not None:
            return earlier, False
    project = projects.get_project(session=session, name=principal.project, lock=True)
    service.check_run_quota(session=session, project=project, rows=shape[0], epochs=spec.epochs)
    run, created = service.create_run(
        session=session,
        project=principal.project,
        spec=spec,
        default_max_attempts=settings.default_max_attempts,
        idempotency_key=idempotency_key,
    )
    if created:
        audit.record(session=session, principal=principal, action="run.create", object_id=run.id)
    return run, created


def cancel_run(*, database: Database, run_id: int, principal: Principal) -> Run:
    """Cancel a queued run, or ask a running one to stop at its next batch."""
    with unit_of_work(database.sessions) as session:
        run = service.cancel_run(session=session, run_id=run_id, project=principal.project)
        audit.record(session=session, principal=principal, action="run.cancel", object_id=run_id)
    return run


def resume_run(
    *,
    database: Database,
    run_id: int,
    epochs: int | None,
    settings: Settings,
    hooks: RunHooks,
    principal: Principal,
) -> Run:
    """Queue a cancelled or failed run again from its checkpoint; wake a worker."""
    with unit_of_work(database.sessions) as session:
        run = service.get_run(session=session, run_id=run_id, project=principal.project)
        # A run that cannot resume answers 409 from resume_run, not 429 from the quota.
        if run.status in RESUMABLE:
            project = projects.get_project(session=session, name=principal.project, lock=True)
            service.check_run_quota(
                session=session,
                project=project,
                # A stored spec is a resolved request: resolving it again finds its shape.
                rows=resolved_spec(
                    session=session,
                    request=RunRequest.model_validate(run.spec),
                    project=principal.project,
                )[1][0],
                epochs=epochs or run.epochs_total,
            )
        run = service.resume_run(
            session=session,
            run_id=run_id,
            project=principal.project,
            epochs=epochs,
            limits=settings.limits,
        )
        audit.record(
            session=session,
            principal=principal,
            action="run.resume",
            object_id=run_id,
            epochs=run.epochs_total,
        )
    hooks.queued()
    return run


def delete_run(
    *,
    database: Database,
    store: ArtifactStore,
    run_id: int,
    hooks: RunHooks,
    principal: Principal,
) -> None:
    """Delete a run that is not executing, unless another part refuses; then let it forget,
    and free its checkpoint and weights."""
    with unit_of_work(database.sessions) as session:
        service.get_run(session=session, run_id=run_id, project=principal.project)
        hooks.deleting(session=session, run_id=run_id)
        stored = service.delete_run(session=session, run_id=run_id, project=principal.project)
        audit.record(session=session, principal=principal, action="run.delete", object_id=run_id)
    hooks.deleted(run_id)
    artifacts.release(database=database, store=store, sha256s=stored)
