"""The run life cycle in one place: which status may follow which, and how the end of an
attempt moves a run (after Prefect's orchestration/core_policy.py).

The API's service (cancel, resume, delete), the queue gateway (claim, finish, hand back,
retry, reap) and an attempt take their statuses from here, and
tests/service/test_lifecycle.py drives every transition below through them.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, false, literal
from sqlalchemy.orm import InstrumentedAttribute

from app.database import UTCDateTime
from app.runs.models import ACTIVE_STATUSES, FailureKind, Run, RunStatus

QUEUED, RUNNING, CANCELLING = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.CANCELLING
SUCCEEDED, FAILED = RunStatus.SUCCEEDED, RunStatus.FAILED
CANCELLED, PRUNED = RunStatus.CANCELLED, RunStatus.PRUNED

# Every move a run can make, and what makes it.
TRANSITIONS: dict[tuple[RunStatus, RunStatus], str] = {
    (QUEUED, RUNNING): "a worker claims it",
    (QUEUED, CANCELLED): "a cancel before any worker claimed it",
    (QUEUED, FAILED): "no live worker can serve the device it asks for",
    (RUNNING, CANCELLING): "a cancel while it trains: it stops at the next batch",
    (RUNNING, SUCCEEDED): "its attempt completes",
    (RUNNING, FAILED): "its attempt fails, or the last attempt it may lose is lost",
    (RUNNING, PRUNED): "its sweep's pruner stops it at an epoch boundary",
    (RUNNING, QUEUED): "its worker hands it back at a stop, or its attempt is lost",
    (CANCELLING, CANCELLED): "its attempt ends short of completing, however it ends",
    (CANCELLING, SUCCEEDED): "its attempt completed before it heard of the cancel",
    (CANCELLING, FAILED): "its attempt failed before it heard of the cancel",
    (CANCELLED, QUEUED): "resume",
    (FAILED, QUEUED): "resume",
    (PRUNED, QUEUED): "resume",
}

# What a cancel does to a run in each status a cancel applies to.
CANCEL: dict[RunStatus, RunStatus] = {QUEUED: CANCELLED, RUNNING: CANCELLING}
# The statuses a resume queues a run again from (it continues from its checkpoint).
RESUMABLE = (CANCELLED, FAILED, PRUNED)
# No worker executes a run in any other status, so it may be deleted.
DELETABLE = tuple(status for status in RunStatus if status not in ACTIVE_STATUSES)


def end_of_attempt(
    *,
    now: datetime,
    then: RunStatus = QUEUED,
    lost: FailureKind | None = None,
    error: ColumnElement[Any] | InstrumentedAttribute[Any] | str | None = None,
    error_if_failed: ColumnElement[Any] | str | None = None,
) -> dict[str, Any]:
    """The column values that end an attempt short of completing.

    The run moves to `then`: queued again (a hand-back) or pruned. A run being cancelled
    ends cancelled instead, whatever stopped the attempt. When the attempt counts as lost,
    `lost` is the failure kind the run ends with once it has lost all the attempts it may;
    it shows `error_if_failed` then (by default `error`), and `error` when queued again.
    """
    at = literal(now, UTCDateTime)
    cancelling = Run.status == CANCELLING
    values: dict[str, Any] = {"worker_id": None, "lease_expires_at": None}
    if lost is None:
        exhausted: ColumnElement[bool] = false()
    else:
        exhausted = Run.lost_attempts + 1 >= Run.max_attempts
        values["lost_attempts"] = Run.lost_attempts + 1
    ends = cancelling | exhausted if then == QUEUED else literal(True)
    failed_error = error if error_if_failed is None else error_if_failed
    return values | {
        "status": case((cancelling, CANCELLED), (exhausted, FAILED), else_=then.value),
        "failure_kind": case((exhausted & ~cancelling, lost and lost.value), else_=None),
        "error": case((cancelling, None), (exhausted, failed_error), else_=error),
        "finished_at": case((ends, at), else_=None),
        "queued_at": case((ends, Run.queued_at), else_=at),
    }
