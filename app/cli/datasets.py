"""User commands on datasets (`fitserve datasets ...`), over HTTP through `fitserve_client`."""

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app.cli import common

datasets_app = typer.Typer(help="Uploaded tables (over HTTP).", no_args_is_help=True)


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV, Parquet or JSON."),
    ],
    target: Annotated[str, typer.Option(help="The column to predict.")],
    name: Annotated[str | None, typer.Option(help="Default: the file name.")] = None,
    features: Annotated[
        str | None, typer.Option(help="Feature columns in model order, comma-separated.")
    ] = None,
    missing: Annotated[str | None, typer.Option(help="error, drop or mean.")] = None,
    task: Annotated[str | None, typer.Option(help="regression or classification.")] = None,
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter.")] = None,
    as_json: common.JsonOption = False,
) -> None:
    """Upload a table, showing the bytes as they go."""
    columns = [item.strip() for item in features.split(",") if item.strip()] if features else None
    progress = Progress(
        TextColumn(file.name),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=common.stderr,
        disable=as_json,
    )
    bar = progress.add_task("upload", total=None)

    def sent(done: int, total: int | None) -> None:
        progress.update(bar, completed=done, total=total)

    with common.client(ctx) as client, progress:
        dataset = client.datasets.upload(
            file,
            target=target,
            name=name,
            features=columns,
            missing=missing,
            task=task,
            delimiter=delimiter,
            on_progress=sent,
        )
    text = (
        f"dataset {dataset.id} {dataset.name!r}: {dataset.n_rows} rows, "
        f"{dataset.task} of {dataset.target!r} from {len(dataset.features)} features"
    )
    common.say(as_json, dataset, text)


@datasets_app.command("list")
def datasets_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="At most this many datasets.")] = 20,
    as_json: common.JsonOption = False,
) -> None:
    """Datasets, newest first."""
    with common.client(ctx) as client:
        datasets = list(client.datasets.list(limit=limit))
    if as_json:
        common.print_json(datasets)
        return
    table = common.table("id", "name", "format", "rows", "task", "target", "features", "created")
    for dataset in datasets:
        table.add_row(
            str(dataset.id),
            dataset.name,
            dataset.format,
            str(dataset.n_rows),
            dataset.task,
            dataset.target,
            str(len(dataset.features)),
            common.when(dataset.created_at),
        )
    common.stdout.print(table)


@datasets_app.command("show")
def datasets_show(
    ctx: typer.Context,
    dataset_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: common.JsonOption = False,
) -> None:
    """One dataset: its columns and statistics."""
    with common.client(ctx) as client:
        dataset = client.datasets.get(dataset_id)
    if as_json:
        common.print_json(dataset)
        return
    common.stdout.print(
        f"dataset {dataset.id} {dataset.name!r}: {dataset.n_rows} rows, {dataset.task}"
    )
    table = common.table("column", "type", "role", "min", "max", "mean", "missing")
    for column in dataset.columns:
        stats = dataset.stats.get(column.get("name", ""), {})
        table.add_row(
            column.get("name", ""),
            column.get("type", ""),
            column.get("role", ""),
            *(common.number(stats.get(key)) for key in ("min", "max", "mean", "missing")),
        )
    common.stdout.print(table)


@datasets_app.command("delete")
def datasets_delete(
    ctx: typer.Context,
    dataset_id: Annotated[int, typer.Argument(metavar="ID")],
    force: Annotated[bool, typer.Option(help="Delete even while runs refer to it.")] = False,
    as_json: common.JsonOption = False,
) -> None:
    """Delete a dataset."""
    with common.client(ctx) as client:
        client.datasets.delete(dataset_id, force=force)
    common.say(as_json, {"deleted": dataset_id}, f"dataset {dataset_id} deleted")
