"""The dashboard and the offline API docs over plain HTTP: pages, actions, login, CSRF."""

import html
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import (
    D2L_SPEC,
    ApiServer,
    LocalWorkers,
    long_spec,
    post_run,
    wait_for,
    wait_until,
)

COLUMNS = {"x": [1.0, 2.0, 3.0, 4.0, 2.5], "y": ["a", "b", "a", "b", "a"]}


@pytest.fixture
def browser(secured: ApiServer) -> Iterator[httpx.Client]:
    """A client of the secured API that keeps cookies and sends this server's Origin."""
    with httpx.Client(base_url=secured.url, timeout=30, headers={"Origin": secured.url}) as client:
        yield client


def _same_site(client: httpx.Client) -> dict[str, str]:
    return {"Origin": str(client.base_url).rstrip("/")}


def _log_in(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/ui/login", data={"key": key, "next": "/ui/"})


def test_pages_show_runs_datasets_models_and_workers(client: httpx.Client, workers: LocalWorkers):
    workers.start()
    home = client.get("/", follow_redirects=False)
    assert (home.status_code, home.headers["location"]) == (307, "/ui/")
    first = post_run(client, {**D2L_SPEC, "name": "d2l-slow", "tags": ["d2l", "sgd"]})
    second = post_run(
        client,
        {**D2L_SPEC, "name": "d2l-fast", "tags": ["d2l"], "optimizer": {"type": "sgd", "lr": 0.1}},
    )
    for run in (first, second):
        assert wait_for(client, run["id"])["status"] == "succeeded"

    page = client.get("/ui/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert f'id="run-{first["id"]}"' in page.text and f'id="run-{second["id"]}"' in page.text
    assert "d2l-slow" in page.text and "succeeded" in page.text
    # Scripts and styles come from this server only, never inline.
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["referrer-policy"] == "same-origin"
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert src.startswith("/"), src
        if src.startswith("/ui/static/"):
            assert client.get(src).status_code == 200, src

    by_name = client.get("/ui/runs/table", params={"name": "SLOW"}).text
    assert f'id="run-{first["id"]}"' in by_name and f'id="run-{second["id"]}"' not in by_name
    by_tag = client.get("/ui/", params={"tag": "sgd"}).text
    assert f'id="run-{first["id"]}"' in by_tag and f'id="run-{second["id"]}"' not in by_tag

    run_page = client.get(f"/ui/runs/{first['id']}")
    assert run_page.status_code == 200
    assert 'id="run-status" class="badge big status-succeeded"' in run_page.text
    assert run_page.text.count("<tr data-epoch=") == 3
    assert "Estimation error" in run_page.text and "learned" in run_page.text
    assert '"optimizer"' in html.unescape(run_page.text) and 'id="register-run"' in run_page.text
    assert client.get(f"/ui/runs/{first['id'] + 100}").status_code == 404

    compared = client.get("/ui/compare", params={"ids": f"{first['id']},{second['id']}"})
    assert compared.status_code == 200
    assert "<code>optimizer.lr</code>" in compared.text and "<code>0.1</code>" in compared.text
    repeated = client.get("/ui/compare", params=[("ids", first["id"]), ("ids", second["id"])])
    assert repeated.status_code == 200
    assert client.get("/ui/compare", params={"ids": str(first["id"])}).status_code == 422

    dataset = client.post("/datasets", json={"columns": COLUMNS, "target": "y", "name": "tiny"})
    assert dataset.status_code == 201, dataset.text
    listing = client.get("/ui/datasets")
    assert "tiny" in listing.text and f"/ui/datasets/{dataset.json()['id']}" in listing.text
    detail = client.get(f"/ui/datasets/{dataset.json()['id']}").text
    assert detail.count('<svg class="histogram"') == 2
    assert 'data-column="x"' in detail and 'data-column="y"' in detail
    assert detail.count("<rect ") >= 3  # bars for x, and the two labels of y
    preview = detail.split('id="dataset-preview"')[1]
    assert preview.count("<tr>") == 1 + len(COLUMNS["x"])  # the header and every row

    # Both runs are done: this worker's row says it is idle, once it has refreshed it.
    worker_id = workers.handles[0].worker_id

    def worker_row() -> str:
        page = client.get("/ui/workers").text
        _before, found, after = page.partition(f"<code>{worker_id}</code>")
        return after.split("</tr>")[0] if found else ""

    wait_until(lambda: "<td>idle</td>" in worker_row(), message="the worker listed as idle")
    assert "/ui/runs/" not in worker_row()


def test_actions_cancel_resume_register_and_move_an_alias(
    client: httpx.Client, workers: LocalWorkers
):
    same_site = _same_site(client)
    slow = post_run(client, long_spec(epochs=50))
    # Without this server's Origin a form post is refused, whoever sends it.
    refused = client.post(f"/ui/runs/{slow['id']}/cancel", follow_redirects=False)
    assert refused.status_code == 403
    cancelled = client.post(
        f"/ui/runs/{slow['id']}/cancel", headers=same_site, follow_redirects=False
    )
    assert (cancelled.status_code, cancelled.headers["location"]) == (303, f"/ui/runs/{slow['id']}")
    assert wait_for(client, slow["id"])["status"] == "cancelled"
    page = client.get(f"/ui/runs/{slow['id']}").text
    assert 'id="resume-run"' in page and 'id="cancel-run"' not in page
    resumed = client.post(
        f"/ui/runs/{slow['id']}/resume",
        data={"epochs": "1"},
        headers=same_site,
        follow_redirects=True,
    )
    assert resumed.status_code == 200
    assert client.get(f"/runs/{slow['id']}").json()["progress"]["epochs"] == 1

    workers.start()
    assert wait_for(client, slow["id"])["status"] == "succeeded"
    other = post_run(client, D2L_SPEC)
    assert wait_for(client, other["id"])["status"] == "succeeded"
    for run_id in (slow["id"], other["id"]):
        registered = client.post(
            f"/ui/runs/{run_id}/register",
            data={"name": "prices"},
            headers=same_site,
            follow_redirects=False,
        )
        assert registered.status_code == 303, registered.text
        assert registered.headers["location"] == "/ui/models/prices"
    bad_name = client.post(
        f"/ui/runs/{other['id']}/register", data={"name": "no spaces"}, headers=same_site
    )
    assert bad_name.status_code == 422 and "name" in bad_name.text

    moved = client.post(
        "/ui/models/prices/aliases",
        data={"alias": "production", "version": "1"},
        headers=same_site,
        follow_redirects=True,
    )
    assert moved.status_code == 200 and "production" in moved.text
    assert client.get("/models/prices").json()["aliases"] == {"production": 1}
    client.post(
        "/ui/models/prices/aliases", data={"alias": "production", "version": "2"}, headers=same_site
    )
    assert client.get("/models/prices").json()["aliases"] == {"production": 2}
    models = client.get("/ui/models").text
    assert "prices" in models and "production → 2" in models
    missing = client.post(
        "/ui/models/prices/aliases", data={"alias": "production", "version": "9"}, headers=same_site
    )
    assert missing.status_code == 404


def test_login_sets_an_http_only_cookie_and_a_wrong_key_is_refused(browser: httpx.Client, make_key):
    key = make_key("team", "train")
    redirected = browser.get("/ui/runs/1", follow_redirects=False)
    assert redirected.status_code == 303
    assert redirected.headers["location"] == "/ui/login?next=%2Fui%2Fruns%2F1"
    assert browser.get("/ui/login").status_code == 200

    wrong = _log_in(browser, "fsk_nonsense_key")
    assert wrong.status_code == 401
    assert "unknown or revoked" in wrong.text
    assert "fitserve_session" not in browser.cookies

    logged_in = browser.post(
        "/ui/login", data={"key": key, "next": "https://evil.example/"}, follow_redirects=False
    )
    assert (logged_in.status_code, logged_in.headers["location"]) == (303, "/ui/")
    cookie = logged_in.headers["set-cookie"]
    assert cookie.startswith("fitserve_session=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # plain http here; https gets Secure

    page = browser.get("/ui/")
    assert page.status_code == 200 and "team" in page.text
    # The cookie authenticates the JSON API and its event streams too.
    assert browser.get("/runs").status_code == 200
    created = browser.post("/runs", json=D2L_SPEC)
    assert created.status_code == 201, created.text

    logged_out = browser.post("/ui/logout", follow_redirects=False)
    assert logged_out.status_code == 303
    assert "fitserve_session" not in browser.cookies
    assert browser.get("/ui/", follow_redirects=False).status_code == 303


def test_a_cookie_write_without_this_sites_origin_is_refused(browser: httpx.Client, make_key):
    assert _log_in(browser, make_key("team", "train")).status_code == 303
    session = browser.cookies["fitserve_session"]
    origin = str(browser.base_url).rstrip("/")
    with httpx.Client(base_url=browser.base_url, timeout=30) as bare:
        bare.cookies.set("fitserve_session", session)
        assert bare.get("/runs").status_code == 200  # reads need no Origin
        for headers in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
            refused = bare.post("/runs", json=D2L_SPEC, headers=headers)
            assert refused.status_code == 403, headers
            assert "Origin" in refused.json()["detail"]
        by_referer = bare.post("/runs", json=D2L_SPEC, headers={"Referer": f"{origin}/ui/"})
        assert by_referer.status_code == 201
        # A login form posted from another site is refused as well.
        assert (
            bare.post(
                "/ui/login", data={"key": session}, headers={"Origin": "https://evil.example"}
            ).status_code
            == 403
        )


def test_another_projects_run_page_is_not_found_and_roles_hold(
    secured: ApiServer, browser: httpx.Client, make_key
):
    with httpx.Client(
        base_url=secured.url, headers={"Authorization": f"Bearer {make_key('owner', 'train')}"}
    ) as owner:
        run = post_run(owner, D2L_SPEC)
    assert _log_in(browser, make_key("other", "train")).status_code == 303
    assert browser.get(f"/ui/runs/{run['id']}").status_code == 404
    assert browser.get(f"/ui/runs/{run['id']}/summary").status_code == 404
    assert f'id="run-{run["id"]}"' not in browser.get("/ui/").text
    assert browser.post(f"/ui/runs/{run['id']}/cancel").status_code == 404
    assert browser.get("/ui/workers").status_code == 403

    assert _log_in(browser, make_key("other", "predict")).status_code == 303
    refused = browser.get("/ui/")
    assert refused.status_code == 403 and "train role" in refused.text
    assert browser.get("/ui/models").status_code == 200


def test_a_stale_cookie_does_not_lock_out_an_open_service(client: httpx.Client):
    client.cookies.set("fitserve_session", "fsk_gone_key")
    assert client.get("/ui/").status_code == 200
    assert client.get("/runs").status_code == 200


def _local_assets(client: httpx.Client, path: str) -> list[str]:
    html = client.get(path)
    assert html.status_code == 200
    urls = re.findall(r'(?:src|href|spec-url)="([^"]+)"|url: \'([^\']+)\'', html.text)
    flat = [url for pair in urls for url in pair if url]
    assert "http://" not in html.text and "https://" not in html.text, html.text
    for url in flat:
        assert urlsplit(url).netloc == "" and url.startswith("/"), url
    return flat


def test_api_docs_reference_only_assets_this_server_serves(client: httpx.Client):
    swagger = _local_assets(client, "/docs")
    assert {
        "/docs-static/swagger-ui-5.35.0/swagger-ui-bundle.js",
        "/docs-static/swagger-ui-5.35.0/swagger-ui.css",
        "/openapi.json",
    } <= set(swagger)
    redoc = _local_assets(client, "/redoc")
    assert "/docs-static/redoc-2.5.4/redoc.standalone.js" in redoc
    for url in swagger + redoc:
        served = client.get(url)
        assert served.status_code == 200, url
        assert served.content, url
    script = client.get("/docs-static/redoc-2.5.4/redoc.standalone.js")
    assert "javascript" in script.headers["content-type"]
    assert (
        "text/css"
        in client.get("/docs-static/swagger-ui-5.35.0/swagger-ui.css").headers["content-type"]
    )
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/ui", "/docs", "/redoc"))]
