"""The FastAPI application factory."""

from collections.abc import Callable

from fastapi import FastAPI

from app.body_limit import BodySizeLimitMiddleware
from app.config import Settings
from app.database import make_engine, make_session_factory, read_only_engine
from app.datasets.router import router as datasets_router
from app.errors import install_error_handlers
from app.runs.router import router as runs_router
from app.serving.cache import ModelCache
from app.serving.router import router as serving_router
from app.system.router import router as system_router

DESCRIPTION = """
Upload a CSV, Parquet or JSON dataset to `/datasets` once, or post rows with the run.
Post a dataset and hyperparameters to `/runs`; a worker process trains the model on its
device; read the per-epoch losses and weights back, and predict from any trained run.
"""


def _no_wakeup() -> None:
    """Nothing to wake: workers run elsewhere and learn of new runs by NOTIFY or polling."""


def create_app(
    settings: Settings | None = None, *, wakeup: Callable[[], None] | None = None
) -> FastAPI:
    """Build the API around one engine, one model cache and the given settings."""
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    app = FastAPI(title="fitserve", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_session_factory(engine)
    app.state.read_sessions = make_session_factory(read_only_engine(engine))
    app.state.model_cache = ModelCache(
        max_entries=settings.model_cache_entries, max_bytes=settings.model_cache_bytes
    )
    app.state.wakeup = wakeup or _no_wakeup
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        path_limits={"/datasets": settings.max_dataset_bytes},
    )
    install_error_handlers(app)
    app.include_router(datasets_router)
    app.include_router(runs_router)
    app.include_router(serving_router)
    app.include_router(system_router)
    return app
