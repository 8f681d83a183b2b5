"""/metrics end to end: runs, queue, epochs and workers from the database, predict counts of
the fast path and the app, admin only; and a quiet `fitserve db upgrade`."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, inspect
from sqlalchemy.orm import sessionmaker

from app.config import Settings
from app.database import Database
from app.keys import flows as key_flows
from app.main import create_app
from app.metrics.collectors import DatabaseCollector
from app.metrics.predict import LATENCY_BUCKETS, PredictRecorder
from app.principal import OPEN_ACCESS, Role
from tests.helpers import D2L_SPEC, ApiProcess, ApiServer, LocalWorkers, post_run, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: httpx.Client) -> Samples:
    """Every sample of /metrics by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return _samples(response.text)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (key, have), value in samples.items() if key == name and wanted <= have)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much `total` grew between two scrapes."""
    return total(after, name, **labels) - total(before, name, **labels)


def _trained_run(client: httpx.Client) -> int:
    run = wait_for(client, post_run(client, D2L_SPEC)["id"])
    assert run["status"] == "succeeded", run
    return run["id"]


def test_a_finished_run_shows_in_runs_epochs_and_workers(
    client: httpx.Client, workers: LocalWorkers, settings: Settings
):
    before = scrape(client)
    workers.start()
    _trained_run(client)
    after = scrape(client)

    assert total(after, "fitserve_runs", status="succeeded") >= 1
    assert total(after, "fitserve_runs", project="default", status="succeeded") == 1
    # Every status is there, zeros included, so no series appears out of nowhere.
    for status in ("queued", "running", "cancelling", "failed", "cancelled"):
        labels = frozenset({"project": "default", "status": status}.items())
        assert ("fitserve_runs", labels) in after
    count = "fitserve_epoch_duration_seconds_count"
    assert grown(before, after, count) == D2L_SPEC["epochs"]
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in after.items()
        if name == "fitserve_epoch_duration_seconds_bucket"
    )
    assert [value for _, value in buckets] == sorted(value for _, value in buckets)
    assert buckets[-1] == (float("inf"), total(after, count))
    assert total(after, "fitserve_epoch_duration_seconds_sum") > 0
    assert total(after, "fitserve_live_workers") >= 1
    assert total(after, "fitserve_database_up") == 1

    # Another API process, with its own engine, reads the same database and says the same.
    with (
        ApiProcess(settings, FITSERVE_AUTH="off") as other,
        httpx.Client(base_url=other.url, timeout=30) as other_client,
    ):
        elsewhere = scrape(other_client)
    for name in (count, "fitserve_epoch_duration_seconds_sum"):
        assert total(elsewhere, name) == pytest.approx(total(after, name))
    assert total(elsewhere, "fitserve_runs", status="succeeded") == total(
        after, "fitserve_runs", status="succeeded"
    )


def test_queued_runs_show_as_queue_depth_and_age(client: httpx.Client):
    # No worker runs in this test: the runs stay queued.
    first = post_run(client, D2L_SPEC)
    post_run(client, D2L_SPEC)
    samples = scrape(client)
    assert total(samples, "fitserve_queue_depth") == 2
    assert total(samples, "fitserve_runs", status="queued") == 2
    age = total(samples, "fitserve_oldest_queued_run_age_seconds")
    assert 0 <= age < 60
    time.sleep(0.3)
    later = scrape(client)
    assert total(later, "fitserve_oldest_queued_run_age_seconds") >= age + 0.25
    assert total(later, "fitserve_live_workers") == 0

    client.post(f"/runs/{first['id']}/cancel").raise_for_status()
    assert total(scrape(client), "fitserve_queue_depth") == 1


def test_predict_counts_grow_by_the_requests_made(client: httpx.Client, workers: LocalWorkers):
    workers.start()
    run_id = _trained_run(client)
    row = {"inputs": [[1.0, 1.0]]}
    before = scrape(client)
    # The first call loads the model through the app; the same call again is answered by
    # the fast path, as is a JSON call by path. CSV and every error are the app's.
    requests = [
        ("app", "200", client.post("/predict", json={"run_id": run_id, **row})),
        ("fast_path", "200", client.post("/predict", json={"run_id": run_id, **row})),
        ("fast_path", "200", client.post(f"/runs/{run_id}/predict", json=row)),
        (
            "app",
            "200",
            client.post(
                f"/runs/{run_id}/predict", content=b"1,1\n", headers={"content-type": "text/csv"}
            ),
        ),
        ("app", "422", client.post("/predict", json={"run_id": run_id, "inputs": [[1.0]]})),
        ("app", "404", client.post("/predict", json={"run_id": 999_999, **row})),
        ("app", "404", client.post("/models/nothing/predict", json=row)),
    ]
    after = scrape(client)

    for handler, status, response in requests:
        assert str(response.status_code) == status, (handler, response.text)
    counter = "fitserve_predict_requests_total"
    latencies = "fitserve_predict_latency_seconds_count"
    for handler in ("fast_path", "app"):
        made = [status for made_by, status, _ in requests if made_by == handler]
        assert grown(before, after, latencies, handler=handler) == len(made)
        for status in ("200", "404", "422"):
            assert grown(before, after, counter, handler=handler, status=status) == made.count(
                status
            ), (handler, status)
    assert grown(before, after, counter) == len(requests)


@pytest.fixture
def keys(settings: Settings) -> Iterator:
    """Make a key for a project and role, as `fitserve keys create` does."""
    database = Database.connect(settings.database_url)

    def make(role: str) -> str:
        _row, key = key_flows.create_key(
            database=database, project="default", role=Role(role), label=None, principal=OPEN_ACCESS
        )
        return key

    yield make
    database.dispose()


def test_metrics_are_for_admins(settings: Settings, keys):
    secured_settings = settings.model_copy(update={"auth": "required"})
    with (
        ApiServer(create_app(secured_settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert http.get("/metrics").status_code == 401
        for role in ("predict", "train"):
            refused = http.get("/metrics", headers={"Authorization": f"Bearer {keys(role)}"})
            assert refused.status_code == 403, refused.text
        admin = http.get("/metrics", headers={"Authorization": f"Bearer {keys('admin')}"})
        assert admin.status_code == 200
        assert total(_samples(admin.text), "fitserve_database_up") == 1


@pytest.mark.once
def test_metrics_can_be_turned_off(settings: Settings):
    with (
        ApiServer(create_app(settings.model_copy(update={"metrics": False}))) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert http.get("/metrics").status_code == 404


@pytest.mark.once
def test_an_unreachable_database_leaves_the_predict_metrics(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'no.db'}")
    collector = DatabaseCollector(sessions=sessionmaker(engine), silent_after_seconds=3)
    families = list(collector.collect())
    assert [family.name for family in families] == ["fitserve_database_up"]
    assert families[0].samples[0].value == 0
    engine.dispose()


@pytest.mark.once
def test_latencies_fall_in_the_first_bucket_they_fit():
    recorder = PredictRecorder()
    for seconds in (LATENCY_BUCKETS[0], LATENCY_BUCKETS[0] * 1.01, 0.0, 60.0):
        recorder.observe("fast_path", 200, seconds)
    histogram, counter = recorder.collect()
    buckets = {
        sample.labels["le"]: sample.value
        for sample in histogram.samples
        if sample.name.endswith("_bucket") and sample.labels["handler"] == "fast_path"
    }
    assert buckets["0.0001"] == 2
    assert buckets["0.00025"] == 3
    assert buckets["10.0"] == 3
    assert buckets["+Inf"] == 4
    assert [
        (sample.labels, sample.value) for sample in counter.samples if "total" in sample.name
    ] == [({"handler": "fast_path", "status": "200"}, 4)]


@pytest.mark.once
def test_db_upgrade_prints_no_alembic_chatter(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "FITSERVE_DATABASE_URL": url, "FITSERVE_LOG_LEVEL": "INFO"}
    fitserve = Path(sys.executable).with_name("fitserve")
    done = subprocess.run(
        [str(fitserve), "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "alembic" not in output
    assert " INFO " not in output
    engine = create_engine(url)
    try:
        assert "alembic_version" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
