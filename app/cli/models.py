"""User commands on the model registry (`fitserve models ...`), over HTTP via `fitserve_client`."""

from typing import Annotated

import typer

from app.cli import common

models_app = typer.Typer(help="The model registry (over HTTP).", no_args_is_help=True)


@models_app.command("register")
def models_register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model's name (created on first use).")],
    run_id: Annotated[int, typer.Argument(metavar="RUN_ID", help="A succeeded run.")],
    as_json: common.JsonOption = False,
) -> None:
    """Register a succeeded run as the next version of a model."""
    with common.client(ctx) as client:
        version = client.models.register(name, run_id)
    text = f"model {version.name} version {version.version} (run {version.run_id})"
    common.say(as_json, version, text)


@models_app.command("alias")
def models_alias(
    ctx: typer.Context,
    name: str,
    alias: Annotated[str, typer.Argument(help="e.g. production.")],
    version: int,
    as_json: common.JsonOption = False,
) -> None:
    """Point an alias at a version of a model."""
    with common.client(ctx) as client:
        pointed = client.models.set_alias(name, alias, version)
    text = f"{pointed.name}@{pointed.alias} -> version {pointed.version} (run {pointed.run_id})"
    common.say(as_json, pointed, text)


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: common.JsonOption = False) -> None:
    """Every model with its latest version and aliases."""
    with common.client(ctx) as client:
        models = client.models.list()
    if as_json:
        common.print_json(models)
        return
    table = common.table("name", "latest", "aliases", "created")
    for model in models:
        aliases = ", ".join(f"{alias}={version}" for alias, version in model.aliases.items())
        table.add_row(
            model.name, common.number(model.latest_version), aliases, common.when(model.created_at)
        )
    common.stdout.print(table)


@models_app.command("show")
def models_show(ctx: typer.Context, name: str, as_json: common.JsonOption = False) -> None:
    """A model's versions with their runs, metrics and aliases."""
    with common.client(ctx) as client:
        model = client.models.get(name)
    if as_json:
        common.print_json(model)
        return
    table = common.table("version", "run", "task", "aliases", "created")
    for version in model.versions:
        table.add_row(
            str(version.version),
            str(version.run_id),
            version.task,
            ", ".join(version.aliases),
            common.when(version.created_at),
        )
    common.stdout.print(table)
