"""Queue bookkeeping against the real database, without worker processes."""

from datetime import timedelta

from app.config import Settings
from app.database import make_engine, make_session_factory, unit_of_work, utcnow
from app.worker import queue
from app.worker.models import WorkerRecord


def test_a_worker_retired_during_an_outage_is_live_again_at_its_next_heartbeat(
    settings: Settings,
):
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        with unit_of_work(sessions) as session:
            queue.register_worker(
                session=session,
                record=WorkerRecord(id="w1", pid=1, host="h", device="cuda:0", stopped_at=None),
            )
        with unit_of_work(sessions) as session:
            # Another worker saw no heartbeat from w1 for a lease (the database was away).
            queue.retire_silent_workers(session=session, silent_since=utcnow() + timedelta(1))
            assert queue.live_worker_devices(session=session, since=utcnow()) == set()
        with unit_of_work(sessions) as session:
            assert queue.worker_heartbeat(session=session, worker_id="w1", current_run_id=None)
        with unit_of_work(sessions) as session:
            since = utcnow() - timedelta(seconds=5)
            assert queue.live_worker_devices(session=session, since=since) == {"cuda:0"}
            assert not queue.worker_heartbeat(
                session=session, worker_id="gone", current_run_id=None
            )
    finally:
        engine.dispose()
