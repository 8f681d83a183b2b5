"""Tables, checkpoints and weights live in the artifact store, local or S3 (moto's server).

Every test runs once with a local directory and once with an S3 bucket, on whichever database
the suite runs against; the store never holds an object a row lacks for long, and no row
ever names an object the store lacks.
"""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.torch import load
from sqlalchemy import text

from app.artifacts.store import ArtifactStore, open_store
from app.config import Settings
from app.database import make_engine
from app.main import create_app
from tests.helpers import (
    S3_BUCKET,
    ApiServer,
    LocalWorkers,
    post_run,
    storage_env,
    wait_for,
    wait_until,
)

FITSERVE = Path(sys.executable).with_name("fitserve")


@dataclass
class Stack:
    """An API and workers on one store."""

    client: httpx.Client
    settings: Settings
    store: ArtifactStore
    workers: LocalWorkers


@pytest.fixture(params=["local", "s3"])
def stack(
    request: pytest.FixtureRequest,
    settings: Settings,
    semaphore: object,
    worker_server: None,
    tmp_path: Path,
) -> Iterator[Stack]:
    """The API and local workers configured with a local store or an S3 prefix."""
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    else:
        url = str(tmp_path / "store")
    configured = settings.model_copy(update={"artifacts": url})
    app = create_app(configured, wakeup=semaphore.release)  # type: ignore[attr-defined]
    workers = LocalWorkers(configured, semaphore, tmp_path / "worker-logs")
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        try:
            yield Stack(client, configured, open_store(configured), workers)
        finally:
            workers.stop_all()


def _csv(rows: int = 300) -> bytes:
    generator = np.random.default_rng(0)
    x = generator.normal(size=(rows, 2))
    y = x @ np.array([2.0, -3.4]) + 4.2
    lines = ["x1,x2,y"] + [f"{a:.6f},{b:.6f},{c:.6f}" for (a, b), c in zip(x, y, strict=True)]
    return "\n".join(lines).encode()


def _recorded(settings: Settings) -> dict[str, str]:
    """Every artifact row: digest to URI."""
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT sha256, uri FROM artifacts")).all())
    finally:
        engine.dispose()


def _stored(store: ArtifactStore) -> dict[str, str]:
    """Every object under the store's root: digest to URI."""
    return {found.sha256: found.uri for found in store.objects()}


def _assert_no_row_lacks_its_object(stack: Stack) -> None:
    recorded = _recorded(stack.settings)
    assert recorded.items() <= _stored(stack.store).items()


def _collect_garbage(settings: Settings) -> dict:
    done = subprocess.run(
        [str(FITSERVE), "artifacts", "gc", "--grace", "0"],
        env={**storage_env(settings), **_aws_environment(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _aws_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}


def _run_on(stack: Stack, dataset_id: int, epochs: int = 3) -> dict:
    spec = {
        "dataset": {"type": "dataset", "id": dataset_id, "target": "y"},
        "model": {"type": "linear"},
        "optimizer": {"type": "sgd", "lr": 0.03},
        "batch_size": 10,
        "epochs": epochs,
    }
    return post_run(stack.client, spec)


def test_upload_train_predict_delete_and_collect(stack: Stack):
    uploaded = stack.client.post(
        "/datasets", files={"file": ("line.csv", _csv())}, data={"target": "y"}
    )
    assert uploaded.status_code == 201, uploaded.text
    table = uploaded.json()["artifact"]
    assert table["uri"] == stack.store.uri_for(table["sha256"])
    assert _stored(stack.store)[table["sha256"]] == table["uri"]

    stack.workers.start()
    run = _run_on(stack, uploaded.json()["id"])
    wait_for(stack.client, run["id"], "succeeded")
    predicted = stack.client.post("/predict", json={"run_id": run["id"], "inputs": [[1.0, 1.0]]})
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["predictions"][0] == pytest.approx(2.8, abs=0.05)
    weights = stack.client.get(f"/runs/{run['id']}/weights").json()
    _assert_no_row_lacks_its_object(stack)
    assert weights["sha256"] in _stored(stack.store)

    # Deleting the run frees its checkpoint and weights; the table stays with its dataset.
    assert stack.client.delete(f"/runs/{run['id']}").status_code == 204
    assert set(_stored(stack.store)) == {table["sha256"]}
    assert stack.client.delete(f"/datasets/{uploaded.json()['id']}").status_code == 204
    assert _stored(stack.store) == {}

    # An object left by a writer that died before its commit is collected; nothing else.
    stack.client.post("/datasets", files={"file": ("line.csv", _csv())}, data={"target": "y"})
    with stack.store.staged_bytes(b"never recorded") as staged:
        orphan = stack.store.publish(staged)
    collected = _collect_garbage(stack.settings)
    assert collected["orphans"] == [orphan]
    assert set(_stored(stack.store)) == {table["sha256"]}
    _assert_no_row_lacks_its_object(stack)


def test_a_worker_killed_between_publishing_and_committing_leaves_no_dangling_row(stack: Stack):
    uploaded = stack.client.post(
        "/datasets", files={"file": ("line.csv", _csv())}, data={"target": "y"}
    )
    run = _run_on(stack, uploaded.json()["id"], epochs=4)
    killed = stack.workers.start(faults={run["id"]: {"kill_before_commit_at_epoch": 2}})
    killed.process.join(60)
    assert killed.process.exitcode == -9
    # Epoch 2's checkpoint object is in the store; the transaction that named it is not.
    orphans = set(_stored(stack.store)) - set(_recorded(stack.settings))
    assert len(orphans) == 1
    _assert_no_row_lacks_its_object(stack)
    assert [row["epoch"] for row in stack.client.get(f"/runs/{run['id']}/epochs").json()] == [1]

    stack.workers.expire(killed)
    stack.workers.start()
    wait_for(stack.client, run["id"], "succeeded", timeout=60)
    epochs = stack.client.get(f"/runs/{run['id']}/epochs").json()
    assert [row["epoch"] for row in epochs] == [1, 2, 3, 4]
    _collect_garbage(stack.settings)
    assert set(_stored(stack.store)) == set(_recorded(stack.settings))
    _assert_no_row_lacks_its_object(stack)
    assert stack.client.get(f"/runs/{run['id']}/weights?format=safetensors").status_code == 200


def test_a_checkpoint_replaced_by_the_next_is_deleted(stack: Stack):
    uploaded = stack.client.post(
        "/datasets", files={"file": ("line.csv", _csv())}, data={"target": "y"}
    )
    stack.workers.start()
    run = _run_on(stack, uploaded.json()["id"], epochs=5)
    wait_for(stack.client, run["id"], "succeeded")
    # The table, the last checkpoint and the weights: four epochs' checkpoints were released,
    # the last of them just after the final commit (it is replaced in that transaction).
    wait_until(lambda: len(_stored(stack.store)) == 3, timeout=10, message="three objects stored")
    assert set(_stored(stack.store)) == set(_recorded(stack.settings))
    engine = make_engine(stack.settings.database_url)
    try:
        with engine.connect() as connection:
            uri = connection.execute(
                text(
                    "SELECT uri FROM checkpoints JOIN artifacts "
                    "ON artifacts.sha256 = checkpoints.tensors_sha256"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    # A safetensors file, read without unpickling anything.
    assert load(stack.store.read_bytes(uri))


def _database_bytes(settings: Settings) -> int:
    """The database's size on disk: the SQLite file and its WAL, or PostgreSQL's tables."""
    if settings.is_sqlite:
        database_file = Path(settings.database_url.split("///", 1)[1])
        files = (database_file, database_file.with_name(database_file.name + "-wal"))
        return sum(path.stat().st_size for path in files if path.exists())
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
    finally:
        engine.dispose()


def test_an_upload_leaves_the_database_small(client: httpx.Client, settings: Settings):
    body = _csv(rows=100_000)
    before = _database_bytes(settings)
    uploaded = client.post("/datasets", files={"file": ("big.csv", body)}, data={"target": "y"})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["artifact"]["size_bytes"] > 1_000_000
    # Statistics, a preview and a few rows' worth of pages: not the table.
    assert _database_bytes(settings) - before < len(body) / 20
