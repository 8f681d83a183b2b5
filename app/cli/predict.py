"""`fitserve predict`: a registered model or a run on the rows of a CSV, over HTTP."""

from pathlib import Path
from typing import Annotated

import typer

from app.cli import common


def predict_command(
    ctx: typer.Context,
    csv_file: Annotated[
        Path,
        typer.Option(
            "--csv",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Rows to predict; a header line names the features.",
        ),
    ],
    model: Annotated[
        str | None, typer.Option(help="NAME, NAME@ALIAS or NAME:VERSION.", show_default=False)
    ] = None,
    run_id: Annotated[
        int | None, typer.Option("--run", help="A run id instead of a model.", show_default=False)
    ] = None,
    as_json: common.JsonOption = False,
) -> None:
    """Predict the rows of a CSV with a registered model or a run."""
    if (model is None) == (run_id is None):
        raise typer.BadParameter("give exactly one of --model and --run")
    with common.client(ctx) as client:
        prediction = client.predict_csv(csv_file, model, run_id=run_id)
    if as_json:
        common.print_json(prediction)
        return
    classes = prediction.classes or []
    table = common.table("row", "prediction", *(f"p({label})" for label in classes))
    probabilities = prediction.probabilities or [[] for _ in prediction.predictions]
    for row, (value, probs) in enumerate(
        zip(prediction.predictions, probabilities, strict=True), start=1
    ):
        table.add_row(str(row), common.number(value), *(f"{p:.4f}" for p in probs))
    common.stdout.print(table)
