"""Predictions from stored weights: loading modules, resolving names, running rows."""

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.models import Artifact
from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.errors import InvalidInputError, Loc
from app.registry import service as registry
from app.registry.service import ModelRef, Resolution
from app.runs.models import Run, Weights
from app.runs.service import RunNotFoundError, RunStateError
from app.serving.cache import LoadedModel, ModelCache, NameCache
from app.serving.schemas import PredictInputs
from app.training.data import Label
from app.training.serialization import import_weights, read_architecture


class InputShapeError(InvalidInputError):
    """The rows do not fit the model; `loc` names the part of the body at fault."""

    type = "shape_mismatch"

    def __init__(self, message: str, loc: Loc = ("body", "inputs")) -> None:
        super().__init__(message, loc=loc)


@dataclass(frozen=True)
class Rows:
    """Rows to predict: lists in feature order, or records keyed by feature name.

    `header` names the columns of `inputs` when they came from a CSV with a header line.
    """

    inputs: list[list[float]] | None = None
    records: list[dict[str, float]] | None = None
    header: list[str] | None = None

    @classmethod
    def of(cls, body: PredictInputs) -> "Rows":
        """The rows of a parsed JSON body."""
        return cls(inputs=body.inputs, records=body.records)

    def __len__(self) -> int:
        return len(self.inputs if self.inputs is not None else self.records or [])


@dataclass(frozen=True)
class Serving:
    """What the predict path needs: the process's caches, read sessions and settings."""

    models: ModelCache
    names: NameCache
    sessions: sessionmaker[Session]
    store: ArtifactStore
    settings: Settings


@dataclass(frozen=True)
class Prediction:
    """Model outputs for some rows: values, or labels with probabilities in `classes` order."""

    predictions: list[float] | list[Label]
    classes: list[Label] | None = None
    probabilities: list[list[float]] | None = None


def load_model(
    *, session: Session, store: ArtifactStore, run_id: int, project: str, device: str
) -> LoadedModel:
    """Read the project's run's weights from the artifact store and build its module."""
    row = session.execute(
        select(Run.status, Weights.sha256, Artifact.uri)
        .outerjoin(Weights, Weights.run_id == Run.id)
        .outerjoin(Artifact, Artifact.sha256 == Weights.sha256)
        .where(Run.id == run_id, Run.project == project)
    ).one_or_none()
    if row is None:
        raise RunNotFoundError(run_id)
    if row.uri is None:
        raise RunStateError(f"run {run_id} has no weights yet (status {row.status})")
    data = store.read_bytes(row.uri)
    return LoadedModel(
        run_id=run_id,
        project=project,
        sha256=row.sha256,
        module=import_weights(data, device=device),
        architecture=read_architecture(data),
        size_bytes=len(data),
        device=device,
    )


def cache_model(*, serving: Serving, run_id: int, project: str) -> LoadedModel:
    """Load the project's run's model from the database into the cache (the cold path)."""
    with serving.sessions() as session:
        # Read before the weights, so a deletion in between shows as a newer generation.
        generation = registry.current_generation(session=session)
        model = load_model(
            session=session,
            store=serving.store,
            run_id=run_id,
            project=project,
            device=serving.settings.predict_device,
        )
    serving.models.put(model, generation=generation)
    return model


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


def records_as_rows(
    *, records: list[dict[str, float]], feature_names: list[str] | None
) -> list[list[float]]:
    """Records keyed by feature name as rows in the model's feature order."""
    if feature_names is None:
        raise InputShapeError(
            "this model was trained without column names; send inputs in feature order",
            ("body", "records"),
        )
    expected = set(feature_names)
    for index, record in enumerate(records):
        if record.keys() != expected:
            missing = [name for name in feature_names if name not in record]
            problem = (
                f"lacks column {missing[0]!r}"
                if missing
                else f"has column {sorted(record.keys() - expected)[0]!r}, which is no feature"
            )
            raise InputShapeError(
                f"records[{index}] {problem}; the model takes {', '.join(feature_names)}",
                ("body", "records", index),
            )
    return [[record[name] for name in feature_names] for record in records]


def predict(*, model: LoadedModel, rows: Rows, max_rows: int) -> Prediction:
    """Run the model on rows or records; labels and probabilities for classification."""
    if len(rows) > max_rows:
        raise InputShapeError(f"the request has {len(rows)} rows; at most {max_rows} per call")
    inputs, records = rows.inputs, rows.records
    feature_names = model.architecture.feature_names
    if inputs is not None and rows.header is not None and feature_names is not None:
        records = [dict(zip(rows.header, row, strict=True)) for row in inputs]
        inputs = None
    if inputs is None:
        inputs = records_as_rows(records=records or [], feature_names=feature_names)
    expected = model.architecture.n_features
    for index, row in enumerate(inputs):
        if len(row) != expected:
            raise InputShapeError(
                f"inputs row {index} has {len(row)} values; the model takes {expected} features",
                ("body", "inputs", index),
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


def answer_json(model: LoadedModel, resolution: Resolution | None, prediction: Prediction) -> bytes:
    """The JSON answer: what answered (run, weights, and model version by name), then outputs."""
    answer: dict[str, Any] = {"run_id": model.run_id, "weights_sha256": model.sha256}
    if resolution is not None:
        answer |= {"model": resolution.name, "version": resolution.version}
    answer["predictions"] = prediction.predictions
    if prediction.classes is not None:
        answer |= {"classes": prediction.classes, "probabilities": prediction.probabilities}
    # Serialised here rather than through a response model: the values are plain floats
    # and labels, and skipping the re-validation is most of a small call's cost.
    return json.dumps(answer, separators=(",", ":")).encode()


def parse_csv(*, body: bytes) -> Rows:
    """Rows of a CSV body; a first line that is not all numbers is a header."""
    # For a model that knows its feature names the header maps the columns (any order);
    # otherwise the columns are taken in feature order.
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputShapeError("the CSV body is not UTF-8") from error
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise InputShapeError(f"the CSV body cannot be read: {error}") from None
    header: list[str] | None = None
    rows: list[list[float]] = []
    for line, cells in enumerate(lines, start=1):
        if not cells:
            continue
        try:
            values = [float(cell) for cell in cells]
        except ValueError:
            if not rows and line == 1:
                header = [cell.strip() for cell in cells]
                continue
            raise InputShapeError(f"CSV line {line} has a value that is not a number") from None
        if not all(math.isfinite(value) for value in values):
            raise InputShapeError(f"CSV line {line} has a value that is not finite")
        rows.append(values)
    if not rows:
        raise InputShapeError("the CSV body has no rows")
    for line, row in enumerate(rows, start=2):
        if header is not None and len(row) != len(header):
            raise InputShapeError(
                f"CSV line {line} has {len(row)} values but the header has {len(header)}"
            )
    return Rows(inputs=rows, header=header)


def format_csv(*, prediction: Prediction) -> str:
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
