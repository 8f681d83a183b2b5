"""Server commands: `serve`, `api`, `worker` and `db`, on the configured database.

Heavy modules (uvicorn, the app factory, the worker pool, Alembic) are imported inside the
functions that need them.
"""

import logging
import os
import signal
import threading
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from app.config import Settings

logger = logging.getLogger("fitserve")
MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "migrations"

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


def _alembic_config(settings: Settings) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = settings.database_url
    # Migrations that move stored objects need the artifact store too.
    config.attributes["settings"] = settings
    return config


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Apply the Alembic migrations to the configured database."""
    from alembic import command

    command.upgrade(_alembic_config(settings), revision)


def downgrade_database(settings: Settings, revision: str) -> None:
    """Undo the Alembic migrations down to `revision` (`base`: an empty schema)."""
    from alembic import command

    command.downgrade(_alembic_config(settings), revision)


def configured_settings() -> Settings:
    """The settings from the environment, with logging configured from them."""
    from app.logs import configure_logging

    settings = Settings()
    configure_logging(settings)
    return settings


def run_api(settings: Settings, semaphore: Any = None, parent_pid: int | None = None) -> None:
    """Serve the HTTP API in this process (no training happens here).

    With `parent_pid`, the process stops when that one dies.
    """
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app
    from app.processes import exit_with_parent
    from app.worker.wakeups import Wakeup

    if parent_pid is not None:
        exit_with_parent(parent_pid)
    configure_logging(settings)
    wakeup = Wakeup(semaphore) if semaphore is not None else None
    api = create_app(settings, wakeup=wakeup.notify if wakeup else None)
    # log_config=None: uvicorn's lines go through fitserve's handler (text or JSON) too.
    uvicorn.run(
        api,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,
        access_log=False,
    )


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return stop


def serve(settings: Settings, *, with_api: bool, with_workers: bool) -> int:
    """Run the API and/or the executor (local workers or Ray) until SIGTERM or SIGINT."""
    from app.worker.pool import SPAWN, WorkerPool

    stop = _stop_event()
    semaphore = SPAWN.Semaphore(0) if with_api and with_workers else None
    on_ray = with_workers and settings.executor == "ray"
    pool = WorkerPool(settings, semaphore=semaphore) if with_workers and not on_ray else None
    children = []
    if on_ray:
        children.append(
            SPAWN.Process(
                target=_run_ray_executor,
                args=(settings, semaphore, os.getpid()),
                name="fitserve-ray-executor",
            )
        )
    if with_api:
        children.append(
            SPAWN.Process(
                target=run_api, args=(settings, semaphore, os.getpid()), name="fitserve-api"
            )
        )
    if pool is not None:
        pool.start()
        logger.info("worker pool on devices %s", ", ".join(pool.devices))
    for child in children:
        child.start()
    if with_api:
        logger.info("API on http://%s:%s (docs at /docs)", settings.host, settings.port)
    exit_code = 0
    while not stop.wait(0.5):
        dead = [child for child in children if not child.is_alive()]
        if dead:
            logger.error("%s exited with %s", dead[0].name, dead[0].exitcode)
            exit_code = 1
            break
        if pool is not None:
            pool.replace_dead()
    for child in children:
        if child.is_alive():
            child.terminate()
    if pool is not None:
        pool.stop()
    for child in children:
        # The Ray executor first gives its tasks the grace period to hand their runs back.
        child.join(settings.shutdown_grace_seconds * 2)
    return exit_code


def _run_ray_executor(settings: Settings, semaphore: Any, parent_pid: int) -> None:
    from app.worker.ray_executor import run_ray_executor

    run_ray_executor(settings, semaphore, parent_pid)


class Executor(StrEnum):
    """What trains the runs: local worker processes or the Ray executor."""

    LOCAL = "local"
    RAY = "ray"


ExecutorOption = Annotated[
    Executor | None,
    typer.Option(help="`local` worker processes or `ray` (default: FITSERVE_EXECUTOR)."),
]


def _with_executor(settings: Settings, executor: Executor | None) -> Settings:
    if executor is None:
        return settings
    return settings.model_copy(update={"executor": executor.value})


def serve_command(executor: ExecutorOption = None) -> None:
    """API and workers: local ones (one per device slot) or the Ray executor."""
    settings = _with_executor(configured_settings(), executor)
    raise typer.Exit(serve(settings, with_api=True, with_workers=True))


def api_command() -> None:
    """The API alone; workers run elsewhere."""
    raise typer.Exit(serve(configured_settings(), with_api=True, with_workers=False))


def worker_command(
    devices: Annotated[
        str | None,
        typer.Option(help="Comma-separated device slots (default: FITSERVE_DEVICES)."),
    ] = None,
    executor: ExecutorOption = None,
) -> None:
    """Workers alone (local ones or the Ray executor), against the configured database."""
    settings = _with_executor(configured_settings(), executor)
    if devices:
        settings = settings.model_copy(update={"devices": Settings(devices=devices).devices})
    raise typer.Exit(serve(settings, with_api=False, with_workers=True))


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the migrations up to a revision (head by default)."""
    upgrade_database(configured_settings(), revision)


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0003 or base.")],
) -> None:
    """Undo the migrations down to a revision."""
    downgrade_database(configured_settings(), revision)
