"""Fair claims across projects, the running-runs quota at claim time, an append-only audit log."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.projects import service as projects
from app.projects.schemas import Quota
from app.runs import service as runs
from app.training.spec import RunRequest, resolve_spec
from app.worker import queue
from tests.helpers import D2L_SPEC


def _queue(session: Session, project: str, count: int) -> list[int]:
    projects.ensure_project(session=session, name=project)
    spec = resolve_spec(RunRequest.model_validate(D2L_SPEC))
    return [
        runs.create_run(session=session, project=project, spec=spec, default_max_attempts=1)[0].id
        for _ in range(count)
    ]


def _claim(session: Session) -> int | None:
    claim = queue.claim_next(session=session, worker_id="w", device="cpu", lease_seconds=30)
    return claim.run_id if claim else None


def test_no_project_waits_behind_another_projects_backlog(session: Session):
    backlog = _queue(session, "busy", 20)
    late = _queue(session, "quiet", 1)
    # Oldest first while no project runs anything; then the project running least goes next.
    assert _claim(session) == backlog[0]
    assert _claim(session) == late[0]
    assert [_claim(session) for _ in range(3)] == backlog[1:4]


def test_a_project_at_its_running_quota_waits_while_others_are_claimed(session: Session):
    limited = _queue(session, "limited", 3)
    projects.set_quota(session=session, name="limited", quota=Quota(max_running_runs=1))
    assert _claim(session) == limited[0]
    assert _claim(session) is None
    free = _queue(session, "free", 1)
    assert _claim(session) == free[0]


def test_the_database_refuses_to_change_or_delete_audit_events(session: Session):
    session.execute(
        text(
            "INSERT INTO audit_events (at, project, action, object_type, object_id) "
            "VALUES (CURRENT_TIMESTAMP, 'default', 'run.create', 'run', '1')"
        )
    )
    statements = ["UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events"]
    if session.get_bind().dialect.name == "postgresql":
        statements.append("TRUNCATE audit_events")
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), session.begin_nested():
            session.execute(text(statement))
