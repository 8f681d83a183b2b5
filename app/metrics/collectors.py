"""What the database says at scrape time: runs, the queue, live workers, epoch durations.

Read through one read session per scrape, so every API process reports the same values and
the epoch histogram is cumulative over all workers, past and present. A run's epochs leave
with the run, so that histogram can shrink; Prometheus reads a drop as a counter reset.
"""

import logging
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.database import utcnow
from app.metrics.predict import PredictRecorder
from app.projects.models import Project
from app.runs.models import Epoch, Run, RunStatus
from app.worker.models import WorkerRecord

logger = logging.getLogger("fitserve.metrics")

# From a few batches of a small model (milliseconds) to an hour-long epoch.
EPOCH_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class DatabaseCollector(Collector):
    """Gauges and the epoch histogram read from the database on each scrape."""

    def __init__(self, *, sessions: sessionmaker[Session], silent_after_seconds: float) -> None:
        self._sessions = sessions
        self._silent_after = timedelta(seconds=silent_after_seconds)

    def collect(self) -> Iterator[Metric]:
        """Every family, then `fitserve_database_up`; only that one when the read fails."""
        try:
            with self._sessions() as session:
                families = [
                    *self._runs(session),
                    self._live_workers(session),
                    self._epochs(session),
                ]
        except SQLAlchemyError:
            # The in-process predict metrics are still worth a scrape while the database is away.
            logger.warning("metrics: the database could not be read", exc_info=True)
            families = []
        yield from families
        yield GaugeMetricFamily(
            "fitserve_database_up",
            "1 when this scrape could read the database, else 0 (and no database metrics).",
            value=1 if families else 0,
        )

    def _runs(self, session: Session) -> Iterator[Metric]:
        counts = {
            (project, status): count
            for project, status, count in session.execute(
                select(Run.project, Run.status, func.count()).group_by(Run.project, Run.status)
            )
        }
        projects = set(session.scalars(select(Project.name))) | {key[0] for key in counts}
        runs = GaugeMetricFamily(
            "fitserve_runs", "Runs by project and status.", labels=["project", "status"]
        )
        # Every status of every project, zeros included, so that no series vanishes.
        for project in sorted(projects):
            for status in RunStatus:
                runs.add_metric([project, status.value], counts.get((project, status.value), 0))
        yield runs
        yield GaugeMetricFamily(
            "fitserve_queue_depth",
            "Runs waiting for a worker.",
            value=sum(count for (_, status), count in counts.items() if status == RunStatus.QUEUED),
        )
        oldest = session.scalar(
            select(func.min(Run.queued_at)).where(Run.status == RunStatus.QUEUED)
        )
        yield GaugeMetricFamily(
            "fitserve_oldest_queued_run_age_seconds",
            "Seconds the longest-waiting queued run has waited; 0 when none waits.",
            value=0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds()),
        )

    def _live_workers(self, session: Session) -> Metric:
        # The workers' own rule (queue.live_worker_devices): not stopped, and heard from
        # within a lease, so a killed worker stops counting before anyone retires its row.
        live = session.scalar(
            select(func.count())
            .select_from(WorkerRecord)
            .where(
                WorkerRecord.stopped_at.is_(None),
                WorkerRecord.heartbeat_at >= utcnow() - self._silent_after,
            )
        )
        return GaugeMetricFamily(
            "fitserve_live_workers", "Worker processes heartbeating within a lease.", value=live
        )

    def _epochs(self, session: Session) -> Metric:
        # One pass over the table: the count, the sum and one cumulative bucket per bound.
        row = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Epoch.seconds), 0.0),
                *(func.sum(case((Epoch.seconds <= bound, 1), else_=0)) for bound in EPOCH_BUCKETS),
            ).select_from(Epoch)
        ).one()
        count, total, *cumulative = row
        buckets = [
            *(
                (floatToGoString(bound), below or 0)
                for bound, below in zip(EPOCH_BUCKETS, cumulative, strict=True)
            ),
            ("+Inf", count),
        ]
        return HistogramMetricFamily(
            "fitserve_epoch_duration_seconds",
            "Seconds each recorded epoch of every stored run took to train.",
            buckets=buckets,
            sum_value=float(total),
        )


def metrics_registry(
    *, sessions: sessionmaker[Session], silent_after_seconds: float, recorder: PredictRecorder
) -> CollectorRegistry:
    """One app's registry: the database's view, this process's predictions and its resources."""
    # Not the global REGISTRY: tests build several apps in one process, each with its own.
    registry = CollectorRegistry()
    registry.register(
        DatabaseCollector(sessions=sessions, silent_after_seconds=silent_after_seconds)
    )
    registry.register(recorder)
    ProcessCollector(registry=registry)
    return registry
