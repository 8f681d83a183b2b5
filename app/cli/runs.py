"""User commands on training runs (`fitserve runs ...`), over HTTP through `fitserve_client`."""

import json
from typing import Annotated, Any, NoReturn

import typer
from httpx_sse import SSEError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from app.cli import common
from fitserve_client import Client, FitserveAPIError, Run
from fitserve_client._api import events_unavailable

runs_app = typer.Typer(help="Training runs (over HTTP).", no_args_is_help=True)


def _outcome(run: Run) -> str:
    line = f"run {run.id} {run.status}"
    if run.status == "failed":
        line += f" ({run.failure_kind}): {run.error}"
    return line


def _exit_for(run: Run) -> NoReturn:
    raise typer.Exit(0 if run.status == "succeeded" else 1)


def _loss_text(data: dict[str, Any]) -> str:
    text = f"loss {common.number(data.get('train_loss'))}"
    if data.get("val_loss") is not None:
        text += f" val {common.number(data['val_loss'])}"
    return text


def _follow(client: Client, run: Run) -> Run:
    """Show a progress bar, one step per epoch, until the run is final; the final run."""
    progress = Progress(
        TextColumn(f"run {run.id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=common.stderr,
    )
    with progress:
        bar = progress.add_task(
            "train",
            total=run.progress.epochs,
            completed=run.progress.epoch,
            loss="",
            status=run.status,
        )
        try:
            for event in client.runs.events(run.id):
                if event.type == "epoch":
                    progress.update(bar, completed=event.data["epoch"], loss=_loss_text(event.data))
                elif event.type == "status":
                    done = event.data.get("progress") or {}
                    progress.update(
                        bar,
                        total=done.get("epochs"),
                        completed=done.get("epoch"),
                        status=event.data.get("status", ""),
                    )
        except (FitserveAPIError, SSEError) as error:
            if not events_unavailable(error):
                raise
            # A server without the event stream: poll instead, without live losses.
            final = client.runs.wait(run.id)
            progress.update(bar, total=final.progress.epochs, completed=final.progress.epoch)
            return final
    return client.runs.get(run.id)


def _run_table(runs: list[Run]) -> Table:
    table = common.table("id", "name", "status", "epochs", "task", "device", "loss", "created")
    for run in runs:
        loss = (run.metrics or {}).get("train_loss")
        table.add_row(
            str(run.id),
            run.name or "",
            run.status,
            f"{run.progress.epoch}/{run.progress.epochs}",
            run.task,
            run.device or "",
            common.number(loss),
            common.when(run.created_at),
        )
    return table


@runs_app.command("create")
def runs_create(
    ctx: typer.Context,
    spec: common.BodyFile,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show progress until the run finishes.")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retries with the same key return the same run.")
    ] = None,
    as_json: common.JsonOption = False,
) -> None:
    """Queue a run; with --follow, exit 0 once it succeeded and 1 if it did not."""
    body = common.read_body(spec)
    with common.client(ctx) as client:
        run = client.runs.create(body, idempotency_key=idempotency_key)
        if not follow:
            common.say(as_json, run, _outcome(run))
            return
        final = client.runs.wait(run.id) if as_json else _follow(client, run)
    common.say(as_json, final, _outcome(final))
    _exit_for(final)


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only runs in this status.")] = None,
    name: Annotated[str | None, typer.Option(help="Only runs with this name.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only runs with this tag.")] = None,
    sort: Annotated[str | None, typer.Option(help="Sort order, as the API takes it.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs.")] = 20,
    as_json: common.JsonOption = False,
) -> None:
    """Runs, newest first."""
    with common.client(ctx) as client:
        runs = list(client.runs.list(status=status, name=name, tag=tag, sort=sort, limit=limit))
    if as_json:
        common.print_json(runs)
    else:
        common.stdout.print(_run_table(runs))


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: common.JsonOption = False,
) -> None:
    """One run, with its epochs."""
    with common.client(ctx) as client:
        run = client.runs.get(run_id)
        epochs = client.runs.epochs(run_id)
    if as_json:
        common.print_json({**run.model_dump(mode="json"), "epochs": epochs})
        return
    details = Table.grid(padding=(0, 2))
    rows = {
        "id": run.id,
        "name": run.name or "",
        "tags": ", ".join(run.tags),
        "status": run.status,
        "task": run.task,
        "device": run.device or run.device_request,
        "executor": run.executor or "",
        "progress": f"{run.progress.epoch}/{run.progress.epochs} epochs",
        "attempt": f"{run.attempt} of at most {run.max_attempts}",
        "created": common.when(run.created_at),
        "started": common.when(run.started_at),
        "finished": common.when(run.finished_at),
        "failure": f"{run.failure_kind}: {run.error}" if run.failure_kind else "",
    }
    rows |= {name: common.number(value) for name, value in (run.metrics or {}).items()}
    for label, value in rows.items():
        if value != "":
            details.add_row(label, str(value))
    common.stdout.print(details)
    if epochs:
        table = common.table("epoch", "train_loss", "val_loss", "seconds")
        for epoch in epochs:
            table.add_row(
                str(epoch.epoch),
                common.number(epoch.train_loss),
                common.number(epoch.val_loss),
                f"{epoch.seconds:.3f}",
            )
        common.stdout.print(table)


@runs_app.command("cancel")
def runs_cancel(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: common.JsonOption = False,
) -> None:
    """Cancel a queued run, or stop a running one at its next batch."""
    with common.client(ctx) as client:
        run = client.runs.cancel(run_id)
    common.say(as_json, run, _outcome(run))


@runs_app.command("resume")
def runs_resume(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="ID")],
    epochs: Annotated[int | None, typer.Option(min=1, help="New total number of epochs.")] = None,
    as_json: common.JsonOption = False,
) -> None:
    """Continue a cancelled or failed run from its last checkpoint."""
    with common.client(ctx) as client:
        run = client.runs.resume(run_id, epochs)
    common.say(as_json, run, _outcome(run))


@runs_app.command("delete")
def runs_delete(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: common.JsonOption = False,
) -> None:
    """Delete a run that is not executing, with its epochs and weights."""
    with common.client(ctx) as client:
        client.runs.delete(run_id)
    common.say(as_json, {"deleted": run_id}, f"run {run_id} deleted")


@runs_app.command("compare")
def runs_compare(
    ctx: typer.Context,
    run_ids: Annotated[list[int], typer.Argument(metavar="ID...", help="Two or more runs.")],
    as_json: common.JsonOption = False,
) -> None:
    """Runs side by side: the spec values that differ, and the final metrics."""
    with common.client(ctx) as client:
        comparison = client.runs.compare(run_ids)
    if as_json:
        common.print_json(comparison)
        return
    runs = comparison.runs
    table = common.table("", *(f"run {run.id}" for run in runs))
    table.add_row("status", *(run.status for run in runs))
    for path, values in comparison.spec_differences.items():
        table.add_row(path, *(json.dumps(value) for value in values))
    names = sorted({name for run in runs for name in run.metrics or {}})
    for name in names:
        table.add_row(name, *(common.number((run.metrics or {}).get(name)) for run in runs))
    common.stdout.print(table)
