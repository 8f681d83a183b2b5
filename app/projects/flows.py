"""Project use cases: set a quota, audited in the same transaction."""

from app.audit import service as audit
from app.database import Database, unit_of_work
from app.principal import Principal
from app.projects import service
from app.projects.models import Project
from app.projects.schemas import Quota


def set_quota(*, database: Database, name: str, quota: Quota, principal: Principal) -> Project:
    """Replace a project's quota, creating the project if it is new."""
    with unit_of_work(database.sessions) as session:
        project = service.set_quota(session=session, name=name, quota=quota)
        audit.record(
            session=session,
            principal=principal,
            action="project.quota",
            object_id=name,
            **quota.model_dump(),
        )
    return project
