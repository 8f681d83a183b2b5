"""Predictions from weights stored in the database, without a server or a worker."""

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.runs.models import Weights
from app.runs.service import RunStateError
from app.serving import service as serving
from app.serving.service import InputShapeError, Rows
from tests.service.conftest import SuccessfulRun


def test_stored_weights_predict_the_d2l_line(
    session: Session, store: ArtifactStore, succeeded_run: SuccessfulRun
):
    run = succeeded_run()
    model = serving.load_model(
        session=session, store=store, run_id=run.id, project="default", device="cpu"
    )
    prediction = serving.predict(model=model, rows=Rows(inputs=[[1.0, 1.0]]), max_rows=10)
    # y = 2 * 1 - 3.4 * 1 + 4.2
    assert prediction.predictions[0] == pytest.approx(2.8, abs=0.01)
    with pytest.raises(InputShapeError) as wrong_width:
        serving.predict(model=model, rows=Rows(inputs=[[1.0, 1.0], [1.0]]), max_rows=10)
    assert wrong_width.value.loc == ("body", "inputs", 1)
    with pytest.raises(InputShapeError, match="at most 1 per call"):
        serving.predict(model=model, rows=Rows(inputs=[[1.0, 1.0]] * 2), max_rows=1)


def test_a_run_without_weights_cannot_serve(
    session: Session, store: ArtifactStore, succeeded_run: SuccessfulRun
):
    run = succeeded_run()
    session.execute(delete(Weights).where(Weights.run_id == run.id))
    with pytest.raises(RunStateError, match="has no weights yet"):
        serving.load_model(
            session=session, store=store, run_id=run.id, project="default", device="cpu"
        )
