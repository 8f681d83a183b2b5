"""A thread per API process that polls the registry generation and drops what changed."""

import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from app.polling import Poller
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
        self._seen_generation: int | None = None
        # Unconfirmed names expire by themselves and the predict path reads the database
        # instead, so a failing poll only needs saying.
        self.poller = Poller(
            name="fitserve-registry-watcher",
            poll=self.poll,
            interval=interval,
            logger=logger,
            failure_message="registry poll failed; name lookups go to the database",
        )

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
