"""Predictions from stored weights, through the model cache."""

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.runs.models import Run, Weights
from app.runs.service import RunNotFoundError, RunStateError
from app.serving.cache import LoadedModel, ModelCache
from app.training.artifacts import import_weights, read_architecture


class InputShapeError(ValueError):
    """The rows do not fit the model."""


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
    )


def cached_model(*, cache: ModelCache, session: Session, run_id: int, device: str) -> LoadedModel:
    """The run's model from the cache, loading it on a miss."""
    model = cache.get(run_id)
    if model is None:
        model = load_model(session=session, run_id=run_id, device=device)
        cache.put(model)
    return model


def records_as_rows(
    records: list[dict[str, float]], feature_names: list[str] | None
) -> list[list[float]]:
    """Records keyed by feature name as rows in the model's feature order."""
    if feature_names is None:
        raise InputShapeError(
            "this model was trained without column names; send inputs in feature order"
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
                f"records[{index}] {problem}; the model takes {', '.join(feature_names)}"
            )
    return [[record[name] for name in feature_names] for record in records]


def predict(
    *,
    model: LoadedModel,
    inputs: list[list[float]] | None = None,
    records: list[dict[str, float]] | None = None,
    max_rows: int,
) -> dict[str, object]:
    """Run the model on rows or records; labels and probabilities for classification."""
    expected = model.architecture.n_features
    rows = len(inputs if inputs is not None else records or [])
    if rows > max_rows:
        raise InputShapeError(f"the request has {rows} rows; at most {max_rows} per call")
    if inputs is None:
        inputs = records_as_rows(records or [], model.architecture.feature_names)
    for index, row in enumerate(inputs):
        if len(row) != expected:
            raise InputShapeError(
                f"inputs row {index} has {len(row)} values; the model takes {expected} features"
            )
    device = next(model.module.parameters()).device
    with torch.inference_mode():
        outputs = model.module(torch.tensor(inputs, dtype=torch.float32, device=device))
        classes = model.architecture.classes
        if classes is None:
            return {"predictions": outputs.tolist()}
        probabilities = torch.softmax(outputs, dim=1)
        indices = probabilities.argmax(dim=1).tolist()
        return {
            "predictions": [classes[i] for i in indices],
            "classes": classes,
            "probabilities": probabilities.tolist(),
        }
