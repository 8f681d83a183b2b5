"""`fitserve sweeps`: hyperparameter sweeps over HTTP."""

import json
from typing import Annotated

import typer
from rich.table import Table

from app.cli import common
from fitserve_client import Sweep

sweeps_app = typer.Typer(help="Hyperparameter sweeps (over HTTP).", no_args_is_help=True)


def _outcome(sweep: Sweep) -> str:
    line = f"sweep {sweep.id} {sweep.status}"
    if sweep.best_run_id is not None:
        line += f": best run {sweep.best_run_id}"
    if sweep.error:
        line += f" ({sweep.error})"
    return line


def _trial_table(sweep: Sweep) -> Table:
    metric = sweep.spec.get("objective", {}).get("metric", "objective")
    table = common.table("trial", "run", "status", metric, "params")
    for trial in sweep.trials:
        best = " *" if trial.run_id is not None and trial.run_id == sweep.best_run_id else ""
        table.add_row(
            str(trial.number),
            f"{trial.run_id or ''}{best}",
            trial.status,
            common.number(trial.objective),
            json.dumps(trial.params),
        )
    return table


@sweeps_app.command("create")
def sweeps_create(
    ctx: typer.Context,
    spec: common.BodyFile,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait until the sweep ends, then show it.")
    ] = False,
    as_json: common.JsonOption = False,
) -> None:
    """Start a sweep; with --wait, exit 0 once it succeeded and 1 if it did not."""
    body = common.read_body(spec)
    with common.client(ctx) as client:
        sweep = client.sweeps.create(body)
        if wait:
            sweep = client.sweeps.wait(sweep.id)
    if as_json:
        common.print_json(sweep)
    else:
        if wait:
            common.stdout.print(_trial_table(sweep))
        common.stdout.print(_outcome(sweep))
    if wait and sweep.status != "succeeded":
        raise typer.Exit(1)


@sweeps_app.command("list")
def sweeps_list(ctx: typer.Context, as_json: common.JsonOption = False) -> None:
    """Sweeps, newest first."""
    with common.client(ctx) as client:
        sweeps = list(client.sweeps.list())
    if as_json:
        common.print_json(sweeps)
        return
    table = common.table("id", "status", "trials", "best run", "created")
    for sweep in sweeps:
        table.add_row(
            str(sweep.id),
            sweep.status,
            str(sweep.total_trials),
            str(sweep.best_run_id or ""),
            common.when(sweep.created_at),
        )
    common.stdout.print(table)


@sweeps_app.command("show")
def sweeps_show(
    ctx: typer.Context,
    sweep_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: common.JsonOption = False,
) -> None:
    """One sweep and its trials (the best marked *)."""
    with common.client(ctx) as client:
        sweep = client.sweeps.get(sweep_id)
    if as_json:
        common.print_json(sweep)
        return
    common.stdout.print(_trial_table(sweep))
    common.stdout.print(_outcome(sweep))


@sweeps_app.command("cancel")
def sweeps_cancel(
    ctx: typer.Context,
    sweep_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: common.JsonOption = False,
) -> None:
    """Stop a sweep; its queued and running trials are cancelled."""
    with common.client(ctx) as client:
        sweep = client.sweeps.cancel(sweep_id)
    common.say(as_json, sweep, _outcome(sweep))
