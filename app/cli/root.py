"""The root `fitserve` app: the global `--url/--key` options, the command groups, `main()`.

Operator commands work on the configured database and processes (`serve`, `api`, `worker`,
`db`, `keys`, `projects`); user commands go through `fitserve_client` over HTTP (`runs`,
`sweeps`, `datasets`, `models`, `predict`). Heavy modules are imported inside the commands that need
them, so `fitserve runs list` starts without torch, SQLAlchemy or FastAPI.
"""

import sys
from typing import Annotated

import httpx
import typer

from app.cli import admin, datasets, models, predict, runs, server, sweeps
from app.cli.common import Connection, stderr
from fitserve_client import FitserveAPIError, FitserveStreamError
from fitserve_client._http import DEFAULT_URL

app = typer.Typer(
    name="fitserve",
    help="Training as a service: run the server, or use it over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(runs.runs_app, name="runs")
app.add_typer(sweeps.sweeps_app, name="sweeps")
app.add_typer(datasets.datasets_app, name="datasets")
app.add_typer(models.models_app, name="models")
app.add_typer(admin.keys_app, name="keys")
app.add_typer(admin.projects_app, name="projects")
app.add_typer(admin.artifacts_app, name="artifacts")
app.add_typer(server.db_app, name="db")
app.command("serve")(server.serve_command)
app.command("api")(server.api_command)
app.command("worker")(server.worker_command)
app.command("predict")(predict.predict_command)


@app.callback()
def connection(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="FITSERVE_URL", help="The API of user commands.")
    ] = DEFAULT_URL,
    key: Annotated[
        str | None,
        typer.Option(envvar="FITSERVE_KEY", help="API key for user commands.", show_default=False),
    ] = None,
) -> None:
    """Training as a service: run the server, or use it over HTTP."""
    ctx.obj = Connection(url, key)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit status (API errors print `error: ...` and give 1)."""
    try:
        app(args=argv, prog_name="fitserve")
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except FitserveAPIError as error:
        stderr.print(f"error: {error.message}", soft_wrap=True)
        return 1
    except httpx.RequestError as error:
        stderr.print(f"error: cannot reach {error.request.url}: {error}", soft_wrap=True)
        return 1
    except (httpx.HTTPError, FitserveStreamError, TimeoutError) as error:
        stderr.print(f"error: {error}", soft_wrap=True)
        return 1
    return 0
