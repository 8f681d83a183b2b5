"""Predictions from stored weights: loading modules, resolving names, running rows."""

import csv
import io
import math
import time
from dataclasses import dataclass

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.registry import service as registry
from app.registry.service import ModelRef, Resolution
from app.runs.models import Run, Weights
from app.runs.service import RunNotFoundError, RunStateError
from app.serving.cache import LoadedModel, ModelCache, NameCache
from app.training.artifacts import import_weights, read_architecture
from app.training.data import Label


class InputShapeError(ValueError):
    """The rows do not fit the model."""


@dataclass(frozen=True)
class Serving:
    """What the predict path needs: the process's caches, read sessions and settings."""

    models: ModelCache
    names: NameCache
    sessions: sessionmaker[Session]
    settings: Settings


@dataclass(frozen=True)
class Prediction:
    """Model outputs for some rows: values, or labels with probabilities in `classes` order."""

    predictions: list[float] | list[Label]
    classes: list[Label] | None = None
    probabilities: list[list[float]] | None = None


def load_model(*, session: Session, run_id: int, device: str) -> LoadedModel:
    """Read a run's weights from the database and build its module."""
    row = session.execute(
        select(Run.status, Weights.data, Weights.sha256)
        .outerjoin(Weights, Weights.run_id == Run.id)
        .where(Run.id == run_id)
    ).one_or_none()
    if row is None:
        raise RunNotFoundError(run_id)
    if row.data is None:
        raise RunStateError(f"run {run_id} has no weights yet (status {row.status})")
    return LoadedModel(
        run_id=run_id,
        sha256=row.sha256,
        module=import_weights(row.data, device=device),
        architecture=read_architecture(row.data),
        size_bytes=len(row.data),
        device=device,
    )


def resolved(*, names: NameCache, session: Session, ref: ModelRef) -> Resolution:
    """Resolve a reference in the database and cache it at the generation read with it."""
    read_at = time.monotonic()
    # The generation is read first: a change committed between the two reads leaves the
    # entry newer than its generation says, which the next poll only makes us drop.
    generation = registry.current_generation(session=session)
    resolution = registry.resolve(session=session, ref=ref)
    names.put(ref, resolution, generation=generation, read_at=read_at)
    return resolution


def existing_run_ids(*, session: Session, run_ids: list[int]) -> set[int]:
    """Those of the run ids whose runs still exist."""
    if not run_ids:
        return set()
    return set(session.scalars(select(Run.id).where(Run.id.in_(run_ids))))


def predict(*, model: LoadedModel, inputs: list[list[float]], max_rows: int) -> Prediction:
    """Run the model on the rows; labels and probabilities for classification."""
    expected = model.architecture.n_features
    if len(inputs) > max_rows:
        raise InputShapeError(f"inputs has {len(inputs)} rows; at most {max_rows} per call")
    for index, row in enumerate(inputs):
        if len(row) != expected:
            raise InputShapeError(
                f"inputs row {index} has {len(row)} values; the model takes {expected} features"
            )
    with torch.inference_mode():
        outputs = model.module(torch.tensor(inputs, dtype=torch.float32, device=model.device))
        classes = model.architecture.classes
        if classes is None:
            return Prediction(predictions=outputs.tolist())
        probabilities = torch.softmax(outputs, dim=1)
        indices = probabilities.argmax(dim=1).tolist()
        return Prediction(
            predictions=[classes[i] for i in indices],
            classes=classes,
            probabilities=probabilities.tolist(),
        )


def parse_csv(body: bytes) -> list[list[float]]:
    """Rows of a CSV body; a first line that is not all numbers is a header and is skipped."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputShapeError("the CSV body is not UTF-8") from error
    rows: list[list[float]] = []
    for line, cells in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not cells:
            continue
        try:
            values = [float(cell) for cell in cells]
        except ValueError:
            if not rows and line == 1:
                continue
            raise InputShapeError(f"CSV line {line} has a value that is not a number") from None
        if not all(math.isfinite(value) for value in values):
            raise InputShapeError(f"CSV line {line} has a value that is not finite")
        rows.append(values)
    if not rows:
        raise InputShapeError("the CSV body has no rows")
    return rows


def format_csv(prediction: Prediction) -> str:
    """A header and one line per row: the prediction, then one probability column per class."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if prediction.classes is None or prediction.probabilities is None:
        writer.writerow(["prediction"])
        writer.writerows([value] for value in prediction.predictions)
    else:
        writer.writerow(["prediction", *(f"probability_{label}" for label in prediction.classes)])
        writer.writerows(
            [label, *probabilities]
            for label, probabilities in zip(
                prediction.predictions, prediction.probabilities, strict=True
            )
        )
    return out.getvalue()
