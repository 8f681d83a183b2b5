"""The FastAPI application factory."""

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.body_limit import BodySizeLimitMiddleware
from app.config import Settings
from app.database import Database
from app.datasets.router import router as datasets_router
from app.error_handlers import install_error_handlers
from app.registry import service as registry_service
from app.registry.flows import RegistryEvents
from app.registry.router import router as registry_router
from app.runs import service as runs_service
from app.runs.flows import RunEvents
from app.runs.router import router as runs_router
from app.serving.cache import ModelCache, NameCache
from app.serving.fast_path import PredictFastPath
from app.serving.router import router as serving_router
from app.serving.service import Serving
from app.serving.watcher import RegistryWatcher
from app.system.router import router as system_router

DESCRIPTION = """
Upload a CSV, Parquet or JSON dataset to `/datasets` once, or post rows with the run.
Post a dataset and hyperparameters to `/runs`; a worker process trains the model on its
device; read the per-epoch losses and weights back, register runs as versions of named
models, and predict from any trained run or `name@alias`.
"""


def _no_wakeup() -> None:
    """Nothing to wake: workers run elsewhere and learn of new runs by NOTIFY or polling."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    watcher: RegistryWatcher = app.state.registry_watcher
    watcher.start()
    # Everything imported and built so far lives as long as the process: keeping it out
    # of the collector's generations makes each collection on the predict path cheaper.
    gc.freeze()
    try:
        yield
    finally:
        watcher.stop()


def create_app(
    settings: Settings | None = None, *, wakeup: Callable[[], None] | None = None
) -> FastAPI:
    """Build the API around one engine, its caches and the given settings."""
    settings = settings or Settings()
    database = Database.connect(
        settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
    )
    app = FastAPI(title="fitserve", version="0.1.0", description=DESCRIPTION, lifespan=_lifespan)
    app.state.settings = settings
    app.state.database = database
    serving = Serving(
        models=ModelCache(
            max_entries=settings.model_cache_entries, max_bytes=settings.model_cache_bytes
        ),
        names=NameCache(max_staleness=settings.registry_max_staleness_seconds),
        sessions=database.read_sessions,
        settings=settings,
    )
    app.state.serving = serving
    app.state.registry_watcher = RegistryWatcher(
        sessions=database.read_sessions,
        models=serving.models,
        names=serving.names,
        interval=settings.registry_poll_seconds,
    )
    # The packages react to each other only through these, so none imports another upward:
    # a deleted run is refused while registered and then leaves the model cache; a
    # registry change empties this process's name cache at once; a queued run wakes a
    # local worker (other workers hear PostgreSQL's NOTIFY, or poll).
    app.state.run_events = RunEvents(
        queued=wakeup or _no_wakeup,
        deleting=registry_service.release_run,
        deleted=serving.models.invalidate,
    )
    app.state.registry_events = RegistryEvents(changed=serving.names.advance)
    app.state.dataset_users = runs_service.runs_using_dataset
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_limits={"/datasets": settings.max_dataset_bytes},
    )
    # Added last, so it runs first: warm predictions never reach routing or the other layers.
    app.add_middleware(PredictFastPath, serving=app.state.serving)
    install_error_handlers(app)
    # The predict routes go on the app's own route list, first: FastAPI matches an
    # included router's routes through a further layer per request (~10 us, measured).
    app.router.routes.extend(serving_router.routes)
    app.include_router(datasets_router)
    app.include_router(runs_router)
    app.include_router(registry_router)
    app.include_router(system_router)
    return app
