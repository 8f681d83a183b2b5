"""What the user commands share: the connection, the consoles, `--json` and formatting."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table

from fitserve_client import Client
from fitserve_client._api import load_spec

# Names, errors and spec values are shown as they are, never read as rich markup.
stdout = Console(highlight=False, markup=False)
stderr = Console(stderr=True, highlight=False, markup=False)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Machine output: one JSON document on stdout.")
]
BodyFile = Annotated[
    Path,
    typer.Argument(
        exists=True, dir_okay=False, readable=True, metavar="SPEC", help="JSON or YAML."
    ),
]


def read_body(path: Path) -> dict[str, Any]:
    """A request body from a JSON or YAML file; an unreadable one is a usage error (2)."""
    try:
        return load_spec(path)
    except (ValueError, ImportError) as error:
        raise typer.BadParameter(f"cannot read {path}: {error}", param_hint="SPEC") from None


@dataclass(frozen=True)
class Connection:
    """Where the API is and the key to use, from the global options."""

    url: str
    key: str | None

    def client(self) -> Client:
        """A client for the API; close it (or use it as a context manager)."""
        return Client(self.url, self.key, timeout=60.0)


def client(ctx: typer.Context) -> Client:
    """A client for the API the global `--url` and `--key` name."""
    connection: Connection = ctx.find_root().obj
    return connection.client()


def print_json(value: Any) -> None:
    """Print one JSON document (models, lists of them, or plain data) on stdout."""

    def plain(item: Any) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if isinstance(item, list):
            return [plain(element) for element in item]
        if isinstance(item, dict):
            return {key: plain(element) for key, element in item.items()}
        return item

    typer.echo(json.dumps(plain(value)))


def say(as_json: bool, value: Any, text: str) -> None:
    """The value as JSON for scripts, or a line for people."""
    if as_json:
        print_json(value)
    else:
        stdout.print(text)


def table(*headers: str) -> Table:
    """A table with light borders, so that more columns fit in 80 characters."""
    return Table(*headers, box=box.SIMPLE_HEAD)


def number(value: Any) -> str:
    """A number for a table cell: floats to six significant digits, None as empty."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def when(value: Any) -> str:
    """A time for a table cell, to the minute; None as empty."""
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else ""
