"""Projects and their quotas; each domain counts its own usage against them."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import NotFoundError, QuotaExceededError
from app.projects.models import Project
from app.projects.schemas import Quota

# Waiting helps with queued and running runs; the other quotas need an admin or a deletion.
RETRY_AFTER_RUNS_SECONDS = 30
RETRY_AFTER_STORAGE_SECONDS = 3600


class ProjectNotFoundError(NotFoundError):
    """No project has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"project {name!r} not found")


def ensure_project(*, session: Session, name: str) -> Project:
    """The project with that name, created without quotas if it is new."""
    project = session.get(Project, name)
    if project is not None:
        return project
    project = Project(name=name)
    try:
        with session.begin_nested():
            session.add(project)
    except IntegrityError:
        # A concurrent request created it first.
        return get_project(session=session, name=name)
    return project


def get_project(*, session: Session, name: str, lock: bool = False) -> Project:
    """The project with that name; `lock` holds its row until commit, so that concurrent
    requests of one project check its quotas one after the other."""
    project = session.get(Project, name, with_for_update=lock)
    if project is None:
        raise ProjectNotFoundError(name)
    return project


def list_projects(*, session: Session) -> Sequence[Project]:
    """Every project by name."""
    return session.scalars(select(Project).order_by(Project.name)).all()


def quota_of(project: Project) -> Quota:
    """The project's quota as the API shows it."""
    return Quota.model_validate(project)


def set_quota(*, session: Session, name: str, quota: Quota) -> Project:
    """Replace the project's quota (creating the project if it is new)."""
    project = ensure_project(session=session, name=name)
    for field, value in quota.model_dump().items():
        setattr(project, field, value)
    return project


def check_quota(
    *, used: int, adding: int, limit: int | None, what: str, project: str, retry_after: int
) -> None:
    """Raise 429 when `used + adding` goes over `limit` (None: unlimited)."""
    if limit is not None and used + adding > limit:
        raise QuotaExceededError(
            f"quota {what} of project {project!r} is {limit}; "
            f"{used} in use and this request adds {adding}",
            retry_after_seconds=retry_after,
        )
