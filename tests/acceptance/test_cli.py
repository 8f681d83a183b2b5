"""The `fitserve` user commands as a user runs them: the real entry point in a subprocess,
talking to a live server over HTTP, checked by exit status and output."""

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings
from app.main import create_app
from fitserve_client import Client
from tests.helpers import D2L_SPEC, ApiServer, LocalWorkers, storage_env

# The commands are HTTP clients of the API: what they do does not depend on its database.
pytestmark = pytest.mark.once
FITSERVE = Path(sys.executable).with_name("fitserve")
IRIS = Path(str(resources.files("app.datasets").joinpath("builtin", "iris.csv")))


def fitserve(
    api: ApiServer, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `fitserve ARGS` against the test server; its status, stdout and stderr."""
    base = {name: value for name, value in os.environ.items() if name != "FITSERVE_KEY"}
    env = {**base, "FITSERVE_URL": api.url, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [str(FITSERVE), *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )


def spec_file(tmp_path: Path, spec: dict[str, Any], name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec) if name.endswith(".yaml") else json.dumps(spec))
    return path


def test_runs_create_follow_exits_0_when_the_run_succeeds(
    api: ApiServer, workers: LocalWorkers, tmp_path: Path
):
    workers.start()
    done = fitserve(api, "runs", "create", spec_file(tmp_path, D2L_SPEC, "d2l.json"), "--follow")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    run_id = int(done.stdout.split()[1])

    shown = fitserve(api, "runs", "show", str(run_id), "--json")
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert run["status"] == "succeeded"
    assert [epoch["epoch"] for epoch in run["epochs"]] == [1, 2, 3]
    table = fitserve(api, "runs", "show", str(run_id))
    assert table.returncode == 0 and "train_loss" in table.stdout


def test_a_run_that_fails_exits_1(api: ApiServer, workers: LocalWorkers, tmp_path: Path):
    workers.start()
    diverging = {**D2L_SPEC, "optimizer": {"type": "sgd", "lr": 1e6}}
    done = fitserve(api, "runs", "create", spec_file(tmp_path, diverging, "bad.yaml"), "--follow")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed" in done.stdout and "diverged" in done.stdout

    as_json = fitserve(api, "runs", "create", spec_file(tmp_path, diverging), "-f", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["failure_kind"] == "diverged"


def test_json_output_parses_and_runs_commands_act(api: ApiServer, tmp_path: Path):
    spec = spec_file(tmp_path, D2L_SPEC)
    created = fitserve(api, "runs", "create", spec, "--json")
    assert created.returncode == 0, created.stderr
    run = json.loads(created.stdout)
    assert run["status"] == "queued"  # no worker: it stays queued

    listed = fitserve(api, "runs", "list", "--json")
    assert [item["id"] for item in json.loads(listed.stdout)] == [run["id"]]
    assert str(run["id"]) in fitserve(api, "runs", "list", "--status", "queued").stdout

    cancelled = fitserve(api, "runs", "cancel", str(run["id"]), "--json")
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    other = json.loads(fitserve(api, "runs", "create", spec, "--json").stdout)
    compared = fitserve(api, "runs", "compare", str(run["id"]), str(other["id"]), "--json")
    assert compared.returncode == 0, compared.stderr
    assert [item["id"] for item in json.loads(compared.stdout)["runs"]] == [run["id"], other["id"]]

    resumed = fitserve(api, "runs", "resume", str(run["id"]), "--epochs", "5", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "queued"
    for run_id in (run["id"], other["id"]):
        assert fitserve(api, "runs", "cancel", str(run_id)).returncode == 0
        deleted = fitserve(api, "runs", "delete", str(run_id))
        assert deleted.returncode == 0 and "deleted" in deleted.stdout
    assert json.loads(fitserve(api, "runs", "list", "--json").stdout) == []


def test_api_errors_exit_1_with_the_detail_and_usage_errors_exit_2(api: ApiServer, tmp_path: Path):
    missing = fitserve(api, "runs", "show", "999999")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: run 999999 not found"

    invalid = fitserve(api, "runs", "create", spec_file(tmp_path, {**D2L_SPEC, "epochs": 0}))
    assert invalid.returncode == 1
    assert invalid.stderr.startswith("error: body.epochs:")

    assert fitserve(api, "runs", "create").returncode == 2
    assert fitserve(api, "runs", "create", tmp_path / "absent.json").returncode == 2
    assert fitserve(api, "runs", "show", "not-a-number").returncode == 2
    assert fitserve(api, "nonsense").returncode == 2
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    assert fitserve(api, "runs", "create", not_json).returncode == 2

    unreachable = subprocess.run(
        [str(FITSERVE), "--url", "http://127.0.0.1:9", "runs", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: cannot reach http://127.0.0.1:9/runs")


def test_datasets_upload_list_show_and_delete(api: ApiServer):
    uploaded = fitserve(api, "datasets", "upload", IRIS, "--target", "species", "--json")
    assert uploaded.returncode == 0, uploaded.stderr
    dataset = json.loads(uploaded.stdout)
    assert dataset["n_rows"] == 150 and dataset["name"] == "iris.csv"

    two = ("--features", "petal_length,sepal_length", "--name", "flowers")
    again = fitserve(api, "datasets", "upload", IRIS, "--target", "species", *two)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"dataset {dataset['id'] + 1} 'flowers': 150 rows")
    assert "from 2 features" in again.stdout
    assert "3.7/3.7 kB" in again.stderr  # the upload's progress bar, at its end

    listed = json.loads(fitserve(api, "datasets", "list", "--json").stdout)
    assert len(listed) == 2
    shown = fitserve(api, "datasets", "show", str(dataset["id"]))
    assert shown.returncode == 0 and "petal_length" in shown.stdout
    assert fitserve(api, "datasets", "delete", str(dataset["id"])).returncode == 0
    assert fitserve(api, "datasets", "show", str(dataset["id"])).returncode == 1

    refused = fitserve(api, "datasets", "upload", IRIS, "--target", "nope")
    assert refused.returncode == 1 and "nope" in refused.stderr
    assert fitserve(api, "datasets", "upload", IRIS).returncode == 2  # --target is required


def test_models_and_predict_from_a_csv(api: ApiServer, workers: LocalWorkers, tmp_path: Path):
    workers.start()
    with Client(api.url) as client:
        run = client.runs.wait(client.runs.create(D2L_SPEC).id, timeout=60)
    assert run.status == "succeeded"

    registered = fitserve(api, "models", "register", "prices", str(run.id))
    assert registered.returncode == 0, registered.stderr
    assert "version 1" in registered.stdout
    aliased = fitserve(api, "models", "alias", "prices", "production", "1", "--json")
    assert json.loads(aliased.stdout) == {
        "name": "prices",
        "alias": "production",
        "version": 1,
        "run_id": run.id,
    }
    listed = json.loads(fitserve(api, "models", "list", "--json").stdout)
    assert [(model["name"], model["aliases"]) for model in listed] == [
        ("prices", {"production": 1})
    ]
    assert "production" in fitserve(api, "models", "show", "prices").stdout

    rows = tmp_path / "rows.csv"
    rows.write_text("x0,x1\n1,1\n2,0.5\n")
    predicted = fitserve(api, "predict", "--model", "prices@production", "--csv", rows, "--json")
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout)
    assert answer["version"] == 1 and len(answer["predictions"]) == 2
    assert answer["predictions"][0] == pytest.approx(2.8, abs=0.02)
    table = fitserve(api, "predict", "--run", str(run.id), "--csv", rows)
    assert table.returncode == 0 and "2.79" in table.stdout

    assert fitserve(api, "predict", "--model", "prices@staging", "--csv", rows).returncode == 1
    assert fitserve(api, "predict", "--csv", rows).returncode == 2


def test_user_commands_do_not_import_the_server_stack(api: ApiServer):
    code = (
        "import sys\n"
        "from app.cli import main\n"
        f"status = main(['--url', {api.url!r}, 'runs', 'list', '--json'])\n"
        "heavy = {'torch', 'sqlalchemy', 'fastapi', 'numpy', 'pyarrow'}\n"
        "print(status, sorted(name for name in sys.modules if name.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines()[-1] == "0 []"


def test_keys_from_the_environment_or_the_option(settings: Settings):
    app = create_app(settings.model_copy(update={"auth": "required"}))
    env = {**storage_env(settings), "PATH": "/usr/bin:/bin"}
    made = subprocess.run(
        [str(FITSERVE), "keys", "create", "--project", "cli", "--role", "predict"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = made.stdout.splitlines()[-1]
    with ApiServer(app) as secured:
        refused = fitserve(secured, "models", "list", "--json")
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: this endpoint needs an API key")
        by_option = fitserve(secured, "--key", key, "models", "list", "--json")
        assert by_option.returncode == 0, by_option.stderr
        assert json.loads(by_option.stdout) == []
        by_env = fitserve(secured, "runs", "list", env={"FITSERVE_KEY": key})
        assert by_env.returncode == 1
        assert by_env.stderr.strip() == "error: this needs the train role; the key has predict"


def test_sweeps_create_wait_exits_0_and_shows_the_trials(
    api: ApiServer, workers: LocalWorkers, tmp_path: Path
):
    workers.start()
    sweep = {
        "base": {"dataset": {"type": "synthetic_linear", "n_samples": 200}, "epochs": 2},
        "space": {"optimizer.lr": [0.003, 0.03]},
        "strategy": {"type": "grid"},
        "objective": {"metric": "train_loss"},
    }
    done = fitserve(api, "sweeps", "create", spec_file(tmp_path, sweep, "sweep.yaml"), "--wait")
    assert done.returncode == 0, done.stderr
    assert "succeeded: best run" in done.stdout
    sweep_id = done.stdout.split("sweep ")[-1].split()[0]
    shown = fitserve(api, "sweeps", "show", sweep_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [trial["status"] for trial in json.loads(shown.stdout)["trials"]] == ["succeeded"] * 2
    listed = fitserve(api, "sweeps", "list")
    assert listed.returncode == 0 and sweep_id in listed.stdout
    again = fitserve(api, "sweeps", "cancel", sweep_id)
    assert again.returncode == 1
    assert "is succeeded" in again.stderr
