"""HTTP endpoints of projects, for admins: list them, read and set quotas."""

from typing import Annotated

from fastapi import APIRouter, Path

from app.access import AdminAccess
from app.dependencies import DatabaseDep, ReadSessionDep
from app.error_handlers import ERROR_RESPONSES
from app.principal import PROJECT_PATTERN
from app.projects import flows, service
from app.projects.models import Project
from app.projects.schemas import ProjectRead, Quota

router = APIRouter(prefix="/projects", tags=["projects"], responses=ERROR_RESPONSES)

NamePath = Annotated[str, Path(pattern=PROJECT_PATTERN)]


def _read(project: Project) -> ProjectRead:
    return ProjectRead(
        name=project.name, created_at=project.created_at, quota=service.quota_of(project)
    )


@router.get("")
def list_projects(session: ReadSessionDep, _principal: AdminAccess) -> list[ProjectRead]:
    """Every project with its quota."""
    return [_read(project) for project in service.list_projects(session=session)]


@router.get("/{name}/quota")
def get_quota(name: NamePath, session: ReadSessionDep, _principal: AdminAccess) -> Quota:
    """A project's quota; null fields are unlimited."""
    return service.quota_of(service.get_project(session=session, name=name))


@router.put("/{name}/quota")
def set_quota(name: NamePath, quota: Quota, database: DatabaseDep, principal: AdminAccess) -> Quota:
    """Replace a project's quota (creating the project); omitted fields become unlimited."""
    project = flows.set_quota(database=database, name=name, quota=quota, principal=principal)
    return service.quota_of(project)
