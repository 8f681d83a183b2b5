"""Admin commands: `keys`, `projects` and `artifacts`, on the configured database (no HTTP)."""

import json
from typing import Annotated, Any

import typer

from app.cli.server import configured_settings
from app.config import Settings
from app.principal import Role

keys_app = typer.Typer(help="API keys (admin, on the configured database).", no_args_is_help=True)
projects_app = typer.Typer(help="Projects and their quotas (admin).", no_args_is_help=True)
artifacts_app = typer.Typer(
    help="The artifact store of datasets, checkpoints and weights (admin).", no_args_is_help=True
)


def _cli_principal(project: str) -> Any:
    from app.principal import Principal

    # Whoever can run this command on the server's database acts as an operator.
    return Principal(project=project, role=Role.ADMIN, address="cli")


def _database(settings: Settings) -> Any:
    from app.database import Database

    return Database.connect(settings.database_url)


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="The key's project (created on first use).")],
    role: Annotated[Role, typer.Option(help="What the key may do.")],
    label: Annotated[str | None, typer.Option(help="A note for people.")] = None,
) -> None:
    """Make a key; it is printed once, alone on the last line."""
    from app.keys import flows
    from app.keys.schemas import KeyRequest

    database = _database(configured_settings())
    try:
        request = KeyRequest(project=project, role=role, label=label)
        row, key = flows.create_key(
            database=database,
            project=request.project,
            role=request.role,
            label=request.label,
            principal=_cli_principal(request.project),
        )
        print(f"key {row.id} for project {row.project!r}, role {row.role}; shown once:")
        print(key)
    finally:
        database.dispose()


@keys_app.command("list")
def keys_list(
    project: Annotated[str | None, typer.Option(help="Only this project's keys.")] = None,
) -> None:
    """Keys without their secrets, as JSON lines."""
    from app.keys import service
    from app.keys.schemas import KeyRead

    database = _database(configured_settings())
    try:
        with database.read_sessions() as session:
            rows = service.list_keys(session=session, project=project)
            keys = [KeyRead.model_validate(row).model_dump(mode="json") for row in rows]
        for item in keys:
            print(json.dumps(item))
    finally:
        database.dispose()


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key by id."""
    from app.keys import flows

    database = _database(configured_settings())
    try:
        row = flows.revoke_key(
            database=database, key_id=key_id, principal=_cli_principal("default")
        )
        print(f"key {row.id} revoked at {row.revoked_at}")
    finally:
        database.dispose()


@projects_app.command("list")
def projects_list() -> None:
    """Projects with their quotas, as JSON lines."""
    from app.projects import service

    database = _database(configured_settings())
    try:
        with database.read_sessions() as session:
            for project in service.list_projects(session=session):
                quota = service.quota_of(project).model_dump()
                print(json.dumps({"name": project.name, "quota": quota}))
    finally:
        database.dispose()


QuotaOption = Annotated[int | None, typer.Option(min=0)]


@projects_app.command("quota")
def projects_quota(
    name: str,
    max_queued_runs: QuotaOption = None,
    max_running_runs: QuotaOption = None,
    max_dataset_bytes: QuotaOption = None,
    max_rows_x_epochs: Annotated[
        int | None, typer.Option(min=0, help="Rows times epochs of any one run.")
    ] = None,
) -> None:
    """Show a project's quota, or replace it with the flags given."""
    from app.projects import flows, service
    from app.projects.schemas import Quota

    fields = {
        "max_queued_runs": max_queued_runs,
        "max_running_runs": max_running_runs,
        "max_dataset_bytes": max_dataset_bytes,
        "max_rows_x_epochs": max_rows_x_epochs,
    }
    database = _database(configured_settings())
    try:
        if any(value is not None for value in fields.values()):
            project = flows.set_quota(
                database=database,
                name=name,
                quota=Quota(**fields),
                principal=_cli_principal(name),
            )
            print(json.dumps(service.quota_of(project).model_dump()))
        else:
            with database.read_sessions() as session:
                project = service.get_project(session=session, name=name)
                print(json.dumps(service.quota_of(project).model_dump()))
    finally:
        database.dispose()


@artifacts_app.command("gc")
def artifacts_gc(
    grace: Annotated[
        float,
        typer.Option(help="Seconds a staging file may be left by a writer still at work."),
    ] = 3600.0,
) -> None:
    """Delete stored objects that no dataset, checkpoint or weights row names."""
    from datetime import timedelta

    from app.artifacts.service import collect_garbage
    from app.artifacts.store import open_store

    settings = configured_settings()
    database = _database(settings)
    try:
        collection = collect_garbage(
            database=database, store=open_store(settings), grace=timedelta(seconds=grace)
        )
    finally:
        database.dispose()
    print(
        json.dumps(
            {
                "released": collection.released,
                "orphans": collection.orphans,
                "staging_files": collection.staging_files,
            }
        )
    )
