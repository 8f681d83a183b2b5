"""Stored datasets and the runs that use them, through the dataset_id foreign key."""

import pytest
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.config import Limits
from app.datasets import service as datasets
from app.datasets.ingest import DatasetInputError, IngestOptions
from app.datasets.service import DatasetInUseError
from app.runs import flows
from app.runs import service as runs
from app.training.spec import RunRequest

COLUMNS = {"x": [0.0, 1.0, 2.0, 3.0], "label": ["a", "b", "a", "b"]}


def _stored(session: Session, store: ArtifactStore) -> int:
    dataset, created = datasets.store_json(
        session=session,
        store=store,
        project="default",
        reader=session,
        name="tiny",
        options=IngestOptions(target="label"),
        records=None,
        columns=COLUMNS,
        limits=Limits(),
    )
    assert created
    return dataset.id


def _queued_on(session: Session, dataset_id: int) -> int:
    request = RunRequest.model_validate(
        {"dataset": {"type": "dataset", "id": dataset_id, "target": "label"}}
    )
    spec, shape = flows.resolved_spec(session=session, request=request, project="default")
    # The dataset's task fills in the request's: softmax regression with cross-entropy.
    assert (spec.task, spec.loss, shape) == ("classification", "cross_entropy", (4, 1, 2))
    run, _ = runs.create_run(session=session, project="default", spec=spec, default_max_attempts=3)
    assert run.dataset_id == dataset_id
    return run.id


def test_a_dataset_in_use_is_kept_unless_forced_and_its_runs_let_go(
    session: Session, store: ArtifactStore
):
    dataset_id = _stored(session, store)
    run_ids = [_queued_on(session, dataset_id) for _ in range(2)]
    users = runs.runs_using_dataset
    assert users(session=session, dataset_id=dataset_id) == run_ids
    with pytest.raises(DatasetInUseError, match=r"used by 2 run\(s\)") as refused:
        datasets.delete_dataset(
            session=session, project="default", dataset_id=dataset_id, force=False, users=users
        )
    assert refused.value.status == 409
    datasets.delete_dataset(
        session=session, project="default", dataset_id=dataset_id, force=True, users=users
    )
    session.expire_all()
    # ON DELETE SET NULL: the runs stay, pointing at nothing, and fail if they ever run.
    assert [
        runs.get_run(session=session, run_id=run_id, project="default").dataset_id
        for run_id in run_ids
    ] == [
        None,
        None,
    ]
    assert users(session=session, dataset_id=dataset_id) == []


def test_a_run_names_a_missing_dataset_or_column_by_its_location(
    session: Session, store: ArtifactStore
):
    dataset_id = _stored(session, store)
    cases = [
        ({"id": dataset_id + 1000, "target": "label"}, ("body", "dataset", "id")),
        ({"id": dataset_id, "target": "x"}, ("body", "dataset", "target")),
        (
            {"id": dataset_id, "target": "label", "features": ["y"]},
            ("body", "dataset", "features", 0),
        ),
    ]
    for ref, loc in cases:
        request = RunRequest.model_validate({"dataset": {"type": "dataset", **ref}})
        with pytest.raises(DatasetInputError) as refused:
            flows.resolved_spec(session=session, request=request, project="default")
        assert (refused.value.status, refused.value.loc) == (422, loc)
