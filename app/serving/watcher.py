"""A thread per API process that polls the registry generation and drops what changed."""

import logging
import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from app.registry import service as registry
from app.serving import service
from app.serving.cache import ModelCache, NameCache

logger = logging.getLogger("fitserve.serving")


class RegistryWatcher:
    """Every `interval` seconds, one small query; more only when the generation moved."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        models: ModelCache,
        names: NameCache,
        interval: float,
    ) -> None:
        self._sessions = sessions
        self._models = models
        self._names = names
        self._interval = interval
        self._seen_generation: int | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="fitserve-registry-watcher", daemon=True
        )

    def start(self) -> None:
        """Poll in the background until `stop`."""
        self._thread.start()

    def stop(self) -> None:
        """End the polling thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def poll(self) -> None:
        """Read the generation; on a change, also forget cached modules of deleted runs."""
        read_at = time.monotonic()
        with self._sessions() as session:
            generation = registry.current_generation(session=session)
            # Advance before the sweep: a load read at an older generation either is cached
            # already, and swept, or is refused when it arrives.
            self._models.advance(generation)
            if generation != self._seen_generation:
                cached = self._models.run_ids()
                alive = service.existing_run_ids(session=session, run_ids=cached)
                for run_id in set(cached) - alive:
                    self._models.invalidate(run_id)
        self._seen_generation = generation
        self._names.confirm(generation=generation, read_at=read_at)

    def _loop(self) -> None:
        while True:
            try:
                self.poll()
                self._failing = False
            except Exception:
                # Unconfirmed names expire by themselves and the predict path reads the
                # database instead; log once per outage rather than every interval.
                if not self._failing:
                    logger.exception("registry poll failed; name lookups go to the database")
                self._failing = True
            if self._stop.wait(self._interval):
                return
