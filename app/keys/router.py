"""HTTP endpoints of API keys, for admins: create, list, revoke."""

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.access import AdminAccess
from app.dependencies import DatabaseDep, ReadSessionDep
from app.error_handlers import ERROR_RESPONSES
from app.ids import Id
from app.keys import flows, service
from app.keys.schemas import KeyCreated, KeyRead, KeyRequest
from app.principal import ProjectName

router = APIRouter(prefix="/keys", tags=["keys"], responses=ERROR_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_key(
    request: KeyRequest, response: Response, database: DatabaseDep, principal: AdminAccess
) -> KeyCreated:
    """Create a key for a project (created if new); the response is the only time it is shown."""
    row, key = flows.create_key(
        database=database,
        project=request.project,
        role=request.role,
        label=request.label,
        principal=principal,
    )
    response.headers["Location"] = f"/keys/{row.id}"
    return KeyCreated(**KeyRead.model_validate(row).model_dump(), key=key)


@router.get("")
def list_keys(
    session: ReadSessionDep,
    _principal: AdminAccess,
    project: Annotated[ProjectName | None, Query(description="Only this project's.")] = None,
) -> list[KeyRead]:
    """Every key, revoked ones included, without secrets."""
    return [
        KeyRead.model_validate(row) for row in service.list_keys(session=session, project=project)
    ]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(key_id: Id, database: DatabaseDep, principal: AdminAccess) -> None:
    """Revoke a key; every API process refuses it within a second."""
    flows.revoke_key(database=database, key_id=key_id, principal=principal)
