"""The FastAPI application factory."""

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api_docs.router import STATIC_PATH as DOCS_STATIC_PATH
from app.api_docs.router import router as api_docs_router
from app.api_docs.router import static_files as docs_static_files
from app.artifacts.store import open_store
from app.audit.router import router as audit_router
from app.body_limit import BodySizeLimitMiddleware
from app.config import Settings
from app.database import Database
from app.datasets.router import router as datasets_router
from app.error_handlers import install_error_handlers
from app.events.broker import EventBroker
from app.events.router import router as events_router
from app.keys.auth import Authenticator
from app.keys.router import router as keys_router
from app.metrics.collectors import metrics_registry
from app.metrics.predict import PredictRecorder
from app.metrics.router import router as metrics_router
from app.polling import Poller
from app.projects.router import router as projects_router
from app.registry import service as registry_service
from app.registry.flows import RegistryHooks
from app.registry.router import router as registry_router
from app.request_context import RequestContextMiddleware
from app.runs import service as runs_service
from app.runs.flows import RunHooks
from app.runs.router import router as runs_router
from app.serving.cache import ModelCache, NameCache
from app.serving.fast_path import PredictFastPath
from app.serving.router import router as serving_router
from app.serving.service import Serving
from app.serving.watcher import RegistryWatcher
from app.sweeps.router import router as sweeps_router
from app.system.router import router as system_router
from app.ui.router import STATIC_PATH as UI_STATIC_PATH
from app.ui.router import router as ui_router
from app.ui.router import static_files as ui_static_files

DESCRIPTION = """
Upload a CSV, Parquet or JSON dataset to `/datasets` once, or post rows with the run.
Post a dataset and hyperparameters to `/runs`; a worker process trains the model on its
device; read the per-epoch losses and weights back, register runs as versions of named
models, and predict from any trained run or `name@alias`.

Unless the service runs open (a loopback bind before any key exists), send
`Authorization: Bearer KEY` with a key from `fitserve keys create`.
"""
logger = logging.getLogger("fitserve.api")


def _no_wakeup() -> None:
    """Nothing to wake: workers run elsewhere and learn of new runs by NOTIFY or polling."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    pollers: list[Poller | EventBroker] = [
        app.state.registry_watcher.poller,
        app.state.key_poller,
        app.state.event_broker,
    ]
    authenticator: Authenticator = app.state.authenticator
    try:
        # Read once before the first request, so the auth mode is right from the start.
        authenticator.refresh()
    except Exception:
        logger.exception("could not read the API keys; refusing every key until they load")
    logger.info(authenticator.describe())
    if authenticator.mode == "off" and not authenticator.loopback:
        logger.warning(
            "FITSERVE_AUTH=off on %s: anyone who reaches the port acts as admin",
            app.state.settings.host,
        )
    for poller in pollers:
        poller.start()
    # Everything imported and built so far lives as long as the process: keeping it out
    # of the collector's generations makes each collection on the predict path cheaper.
    gc.freeze()
    try:
        yield
    finally:
        for poller in pollers:
            poller.stop()


def create_app(
    settings: Settings | None = None, *, wakeup: Callable[[], None] | None = None
) -> FastAPI:
    """Build the API around one engine, its caches and the given settings."""
    settings = settings or Settings()
    database = Database.connect(
        settings.database_url, sqlite_busy_timeout=settings.sqlite_busy_timeout_seconds
    )
    app = FastAPI(
        title="fitserve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
        # Served by app.api_docs from vendored assets, so they work offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.artifacts = open_store(settings)
    serving = Serving(
        models=ModelCache(
            max_entries=settings.model_cache_entries, max_bytes=settings.model_cache_bytes
        ),
        names=NameCache(max_staleness=settings.registry_max_staleness_seconds),
        sessions=database.read_sessions,
        store=app.state.artifacts,
        settings=settings,
    )
    app.state.serving = serving
    authenticator = Authenticator(
        mode=settings.auth, host=settings.host, sessions=database.read_sessions
    )
    app.state.authenticator = authenticator
    app.state.key_poller = Poller(
        name="fitserve-key-watcher",
        poll=authenticator.refresh,
        interval=settings.key_poll_seconds,
        logger=logger,
        failure_message="reloading API keys failed; keys already loaded keep working",
    )
    app.state.event_broker = EventBroker(database=database, settings=settings)
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
    app.state.run_hooks = RunHooks(
        queued=wakeup or _no_wakeup,
        deleting=registry_service.release_run,
        deleted=serving.models.invalidate,
    )
    app.state.registry_hooks = RegistryHooks(changed=serving.names.advance)
    app.state.dataset_users = runs_service.runs_using_dataset
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_limits={"/datasets": settings.max_dataset_bytes},
    )
    recorder = PredictRecorder() if settings.metrics else None
    # Warm predictions never reach routing or the layers added before this one.
    app.add_middleware(
        PredictFastPath, serving=app.state.serving, authenticator=authenticator, observer=recorder
    )
    if settings.cors_origins:
        # Outside the fast path, so its answers carry the CORS headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["Location", "Retry-After", "X-Request-ID"],
        )
    # Added last, so it runs first: every answer, the fast path's included, gets its headers.
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    # The predict routes go on the app's own route list, first: FastAPI matches an
    # included router's routes through a further layer per request (~10 us, measured).
    app.router.routes.extend(serving_router.routes)
    app.include_router(datasets_router)
    app.include_router(runs_router)
    app.include_router(events_router)
    app.include_router(sweeps_router)
    app.include_router(registry_router)
    app.include_router(system_router)
    app.include_router(keys_router)
    app.include_router(projects_router)
    app.include_router(audit_router)
    app.include_router(api_docs_router)
    app.mount(DOCS_STATIC_PATH, docs_static_files, name="docs-static")
    app.include_router(ui_router)
    app.mount(UI_STATIC_PATH, ui_static_files, name="ui-static")
    if recorder is not None:
        app.state.metrics_registry = metrics_registry(
            sessions=database.read_sessions,
            silent_after_seconds=settings.lease_seconds,
            recorder=recorder,
        )
        app.include_router(metrics_router)
    return app
