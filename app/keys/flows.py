"""Key use cases: create and revoke, each audited in the same transaction."""

from app.audit import service as audit
from app.database import Database, unit_of_work
from app.keys import service
from app.keys.models import ApiKey
from app.principal import Principal, Role


def create_key(
    *, database: Database, project: str, role: Role, label: str | None, principal: Principal
) -> tuple[ApiKey, str]:
    """Create a key (and its project if new); returns the row and the key, shown once."""
    with unit_of_work(database.sessions) as session:
        row, key = service.create_key(session=session, project=project, role=role, label=label)
        audit.record(
            session=session,
            principal=principal,
            action="key.create",
            object_id=row.id,
            project=project,
            role=role,
            prefix=row.prefix,
        )
    return row, key


def revoke_key(*, database: Database, key_id: int, principal: Principal) -> ApiKey:
    """Revoke a key; every API process stops accepting it within its key poll interval."""
    with unit_of_work(database.sessions) as session:
        row = service.revoke_key(session=session, key_id=key_id)
        audit.record(
            session=session,
            principal=principal,
            action="key.revoke",
            object_id=key_id,
            project=row.project,
        )
    return row
