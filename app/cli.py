"""The `fitserve` command: serve, api, worker, db upgrade and downgrade, keys, projects."""

import argparse
import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from app.config import Settings
from app.logs import configure_logging

logger = logging.getLogger("fitserve")
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _alembic_config(settings: Settings) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = settings.database_url
    return config


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Apply the Alembic migrations to the configured database."""
    from alembic import command

    command.upgrade(_alembic_config(settings), revision)


def downgrade_database(settings: Settings, revision: str) -> None:
    """Undo the Alembic migrations down to `revision` (`base`: an empty schema)."""
    from alembic import command

    command.downgrade(_alembic_config(settings), revision)


def run_api(settings: Settings, semaphore: Any = None) -> None:
    """Serve the HTTP API in this process (no training happens here)."""
    import uvicorn

    from app.main import create_app
    from app.worker.worker import Wakeup

    configure_logging(settings)
    wakeup = Wakeup(semaphore) if semaphore is not None else None
    app = create_app(settings, wakeup=wakeup.notify if wakeup else None)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


def _stop_event() -> threading.Event:
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return stop


def serve(settings: Settings, *, with_api: bool, with_workers: bool) -> int:
    """Run the API and/or the local worker pool until SIGTERM or SIGINT."""
    from app.worker.pool import SPAWN, WorkerPool

    stop = _stop_event()
    semaphore = SPAWN.Semaphore(0) if with_api and with_workers else None
    pool = WorkerPool(settings, semaphore=semaphore) if with_workers else None
    api = (
        SPAWN.Process(target=run_api, args=(settings, semaphore), name="fitserve-api")
        if with_api
        else None
    )
    if pool is not None:
        pool.start()
        logger.info("worker pool on devices %s", ", ".join(pool.devices))
    if api is not None:
        api.start()
        logger.info("API on http://%s:%s (docs at /docs)", settings.host, settings.port)
    exit_code = 0
    while not stop.wait(0.5):
        if api is not None and not api.is_alive():
            logger.error("API process exited with %s", api.exitcode)
            exit_code = 1
            break
        if pool is not None:
            pool.replace_dead()
    if api is not None and api.is_alive():
        api.terminate()
    if pool is not None:
        pool.stop()
    if api is not None:
        api.join(settings.shutdown_grace_seconds)
    return exit_code


def _cli_principal(project: str) -> Any:
    from app.principal import Principal, Role

    # Whoever can run this command on the server's database acts as an operator.
    return Principal(project=project, role=Role.ADMIN, address="cli")


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    """`fitserve keys create|list|revoke`: the new key is alone on the last line of stdout."""
    from app.database import Database
    from app.keys import flows, service
    from app.keys.schemas import KeyRead, KeyRequest
    from app.principal import Role

    database = Database.connect(settings.database_url)
    try:
        if args.action == "create":
            request = KeyRequest(project=args.project, role=Role(args.role), label=args.label)
            row, key = flows.create_key(
                database=database,
                project=request.project,
                role=request.role,
                label=request.label,
                principal=_cli_principal(request.project),
            )
            print(f"key {row.id} for project {row.project!r}, role {row.role}; shown once:")
            print(key)
        elif args.action == "list":
            with database.read_sessions() as session:
                rows = service.list_keys(session=session, project=args.project)
                keys = [KeyRead.model_validate(row).model_dump(mode="json") for row in rows]
            for item in keys:
                print(json.dumps(item))
        else:
            row = flows.revoke_key(
                database=database, key_id=args.id, principal=_cli_principal("default")
            )
            print(f"key {row.id} revoked at {row.revoked_at}")
    finally:
        database.dispose()
    return 0


def projects_command(settings: Settings, args: argparse.Namespace) -> int:
    """`fitserve projects list|quota`: quota flags replace the quota; none shows it."""
    from app.database import Database
    from app.projects import flows, service
    from app.projects.schemas import Quota

    database = Database.connect(settings.database_url)
    try:
        if args.action == "list":
            with database.read_sessions() as session:
                for project in service.list_projects(session=session):
                    quota = service.quota_of(project).model_dump()
                    print(json.dumps({"name": project.name, "quota": quota}))
            return 0
        fields = {name: getattr(args, name) for name in Quota.model_fields}
        if any(value is not None for value in fields.values()):
            project = flows.set_quota(
                database=database,
                name=args.name,
                quota=Quota(**fields),
                principal=_cli_principal(args.name),
            )
            print(json.dumps(service.quota_of(project).model_dump()))
        else:
            with database.read_sessions() as session:
                project = service.get_project(session=session, name=args.name)
                print(json.dumps(service.quota_of(project).model_dump()))
    finally:
        database.dispose()
    return 0


def _add_admin_commands(commands: Any) -> None:
    from app.principal import Role
    from app.projects.schemas import Quota

    keys = commands.add_parser("keys", help="API keys (admin, on the configured database)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="make a key; it is printed once")
    create.add_argument("--project", required=True)
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--label")
    listing = key_actions.add_parser("list", help="keys without their secrets, as JSON lines")
    listing.add_argument("--project")
    revoke = key_actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=int)

    projects = commands.add_parser("projects", help="projects and their quotas (admin)")
    project_actions = projects.add_subparsers(dest="action", required=True)
    project_actions.add_parser("list", help="projects with their quotas, as JSON lines")
    quota = project_actions.add_parser(
        "quota", help="show a project's quota, or replace it with the flags given"
    )
    quota.add_argument("name")
    for name, field in Quota.model_fields.items():
        quota.add_argument(f"--{name.replace('_', '-')}", type=int, help=field.description)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="fitserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="API and local workers (one per device slot)")
    commands.add_parser("api", help="the API alone; workers run elsewhere")
    worker = commands.add_parser("worker", help="workers alone, against the configured database")
    worker.add_argument(
        "--devices", help="comma-separated device slots (default: FITSERVE_DEVICES)"
    )
    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", help="target revision (upgrade: head by default)")
    _add_admin_commands(commands)
    args = parser.parse_args(argv)

    settings = Settings()
    configure_logging(settings)
    if args.command == "db":
        if args.action == "upgrade":
            upgrade_database(settings, args.revision or "head")
        elif args.revision is None:
            parser.error("db downgrade needs a revision, e.g. 0003 or base")
        else:
            downgrade_database(settings, args.revision)
        return 0
    if args.command == "keys":
        return keys_command(settings, args)
    if args.command == "projects":
        return projects_command(settings, args)
    if args.command == "worker" and args.devices:
        settings = settings.model_copy(update={"devices": Settings(devices=args.devices).devices})
    return serve(
        settings,
        with_api=args.command in ("serve", "api"),
        with_workers=args.command in ("serve", "worker"),
    )
