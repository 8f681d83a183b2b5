"""The dashboard and the API docs in headless Chromium, with every outside request blocked."""

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Watched
from tests.helpers import (
    D2L_SPEC,
    ApiServer,
    LocalWorkers,
    Pause,
    long_spec,
    post_run,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]
POINTS = "Number(document.querySelector('#loss-chart').dataset.points)"


def _points(page: Watched, chart: str = "#loss-chart") -> int:
    return int(page.page.locator(chart).get_attribute("data-points") or 0)


def test_every_page_loads_without_console_errors(
    api: ApiServer, client: httpx.Client, workers: LocalWorkers, watched: Watched
):
    worker = workers.start()
    run = post_run(client, {**D2L_SPEC, "name": "d2l", "tags": ["linear"]})
    assert wait_for(client, run["id"])["status"] == "succeeded"
    dataset = client.post("/datasets/builtin/iris").json()
    assert client.post("/models", json={"name": "prices", "run_id": run["id"]}).status_code == 201
    assert client.put("/models/prices/aliases/production", json={"version": 1}).status_code == 200
    page = watched.page
    page.goto(f"{api.url}/")
    expect(page).to_have_url(f"{api.url}/ui/")
    expect(page.locator(f"#run-{run['id']} [data-field=status]")).to_have_text("succeeded")
    page.goto(f"{api.url}/ui/datasets")
    expect(page.locator("#datasets")).to_contain_text("iris")
    page.goto(f"{api.url}/ui/datasets/{dataset['id']}")
    expect(page.locator("svg.histogram")).to_have_count(5)
    expect(page.locator("#dataset-preview tbody tr")).to_have_count(10)
    watched.screenshot("datasets")
    page.goto(f"{api.url}/ui/models")
    page.get_by_role("link", name="prices").click()
    expect(page.locator("#versions")).to_contain_text(f"#{run['id']}")
    page.goto(f"{api.url}/ui/workers")
    expect(page.locator("#workers")).to_contain_text(worker.worker_id)
    page.goto(f"{api.url}/ui/login")
    expect(page.locator("main")).to_contain_text("no login is needed")
    watched.assert_clean()


def test_a_posted_run_appears_and_its_page_follows_it_without_a_reload(
    api: ApiServer, client: httpx.Client, workers: LocalWorkers, live: Watched, tmp_path: Path
):
    page = live.page
    page.goto(f"{api.url}/ui/")
    run = post_run(client, {**D2L_SPEC, "epochs": 8, "name": "live d2l", "tags": ["demo"]})
    # The list hears of the new run on the project's event stream.
    row = page.locator(f"#run-{run['id']}")
    expect(row).to_be_visible()
    expect(row.locator("[data-field=status]")).to_have_text("queued")
    row.get_by_role("link", name=f"#{run['id']}").click()
    expect(page).to_have_url(f"{api.url}/ui/runs/{run['id']}")
    expect(page.locator("#run-status")).to_have_text("queued")
    assert _points(live) == 0
    page.evaluate("window.notReloaded = true")

    pause = Pause(tmp_path)
    workers.start(faults={run["id"]: pause.after_epoch(3)})
    expect(page.locator("#run-status")).to_have_text("running")
    # Points arrive while the run trains: held after its third epoch, the chart shows three.
    pause.wait()
    page.wait_for_function(f"() => {POINTS} === 3")
    pause.release()
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", "8")
    expect(page.locator("#epoch-rows tr")).to_have_count(8)
    expect(page.locator("#run-progress-text")).to_have_text("8/8 epochs")
    # The facts and buttons of a finished run were swapped in, the page stayed.
    expect(page.locator("#estimation-error")).to_be_visible()
    expect(page.locator("#register-run")).to_be_visible()
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#loss-chart canvas").count() == 1
    live.screenshot("run")

    page.goto(f"{api.url}/ui/")
    expect(page.locator(f"#run-{run['id']} [data-field=status]")).to_have_text("succeeded")
    live.screenshot("runs")
    live.assert_clean()


def test_cancel_from_the_run_page(
    api: ApiServer, client: httpx.Client, workers: LocalWorkers, live: Watched
):
    run = post_run(client, long_spec(epochs=40, name="to cancel"))
    workers.start(faults={run["id"]: {"epoch_sleep_seconds": 0.5}})
    page = live.page
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    expect(page.locator("#run-status")).to_have_text("running", timeout=30_000)
    page.wait_for_function(f"() => {POINTS} >= 1")
    page.locator("#cancel-run").click()
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#resume-run")).to_be_visible()
    assert client.get(f"/runs/{run['id']}").json()["status"] == "cancelled"
    live.assert_clean()


def test_compare_two_runs_picked_in_the_list(
    api: ApiServer, client: httpx.Client, workers: LocalWorkers, watched: Watched
):
    workers.start()
    runs = [
        post_run(client, {**D2L_SPEC, "name": f"lr {lr}", "optimizer": {"type": "sgd", "lr": lr}})
        for lr in (0.03, 0.1)
    ]
    for run in runs:
        assert wait_for(client, run["id"])["status"] == "succeeded"
    page = watched.page
    page.goto(f"{api.url}/ui/")
    for run in runs:
        page.get_by_label(f"compare run {run['id']}").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page.locator("#compare-runs")).to_contain_text("lr 0.03")
    expect(page.locator("#spec-differences")).to_contain_text("optimizer.lr")
    expect(page.locator("#compare-chart canvas")).to_have_count(1)
    expect(page.locator("#compare-chart")).to_have_attribute("data-series", "2")
    expect(page.locator("#compare-chart")).to_have_attribute("data-points", "3")
    watched.screenshot("compare")
    watched.assert_clean()


def test_the_api_docs_render_with_the_network_blocked(api: ApiServer, watched: Watched):
    page = watched.page
    page.goto(f"{api.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/runs/{run_id}/cancel")).to_be_visible()
    watched.screenshot("docs", full_page=False)
    page.goto(f"{api.url}/redoc")
    expect(page.locator("h1", has_text="fitserve")).to_be_visible()
    watched.screenshot("redoc", full_page=False)
    watched.assert_clean()
