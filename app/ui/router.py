"""The dashboard: pages read through the services, actions go through the same flows as the API.

Every page needs the role its API endpoints need, scoped to the caller's project. A page that
cannot authenticate the caller sends the browser to the login form; other refusals render as
an error page with the API's status and message.
"""

import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.access import (
    SESSION_COOKIE,
    AdminAccess,
    PredictAccess,
    TrainAccess,
    authenticate,
    authenticator,
    same_origin,
)
from app.artifacts.dependencies import ArtifactStoreDep
from app.datasets import service as datasets_service
from app.dependencies import DatabaseDep, ReadSessionDep, SettingsDep
from app.errors import FitserveError, ForbiddenError, InvalidInputError, UnauthorizedError
from app.events import service as events_service
from app.ids import MAX_ID, Id
from app.principal import Principal
from app.registry import flows as registry_flows
from app.registry import service as registry_service
from app.registry.dependencies import RegistryHooksDep
from app.registry.schemas import ALIAS_PATTERN, AliasRequest, RegisterRequest
from app.runs import flows as runs_flows
from app.runs import service as runs_service
from app.runs.dependencies import RunHooksDep
from app.runs.lifecycle import CANCEL, RESUMABLE
from app.runs.models import FINAL_STATUSES, Run, RunStatus
from app.runs.schemas import EpochRead
from app.ui.charts import SVG_HEIGHT, SVG_WIDTH, histograms
from app.worker.models import WorkerRecord

HERE = Path(__file__).parent
STATIC_PATH = "/ui/static"
LIST_LIMIT = 100
# Rows a dataset page draws its histograms from, evenly spaced over the table.
HISTOGRAM_SAMPLE_ROWS = 100_000
SORTS = {
    "-created_at": "newest first",
    "created_at": "oldest first",
    "name": "name",
    "metrics.val_loss": "lowest val_loss",
    "metrics.train_loss": "lowest train_loss",
    "-metrics.val_accuracy": "highest val_accuracy",
    "-metrics.train_accuracy": "highest train_accuracy",
}
static_files = StaticFiles(directory=HERE / "static")
templates = Jinja2Templates(directory=HERE / "templates")


def _number(value: object) -> str:
    """A metric as a short string: four significant digits, or as it is when not a number."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _when(value: datetime | None) -> str:
    """A UTC time to the second, as the tables show it."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["number"] = _number
templates.env.filters["when"] = _when
templates.env.globals.update(
    static=STATIC_PATH,
    final_statuses=[str(status) for status in FINAL_STATUSES],
    svg_width=SVG_WIDTH,
    svg_height=SVG_HEIGHT,
)


def _page(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """A template rendered with what every page shows: the caller and the session."""
    return templates.TemplateResponse(
        request,
        name,
        {"signed_in": SESSION_COOKIE in request.cookies, **context},
        status_code=status_code,
    )


def _login_redirect(request: Request) -> Response:
    """Send the browser to the login form, and back here once it has logged in."""
    target = request.url.path if request.method == "GET" else "/ui/"
    if request.url.query and request.method == "GET":
        target += f"?{request.url.query}"
    location = f"/ui/login?{urlencode({'next': target})}"
    if request.headers.get("hx-request"):
        # htmx follows a redirect inside its own request; this makes it load the whole page.
        return Response(status_code=204, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return _page(request, "error.html", {"status": status, "message": message}, status)


class PageRoute(APIRoute):
    """A route whose refusals are pages: the login form for a 401, an error page otherwise."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, with its errors rendered for a browser."""
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except UnauthorizedError:
                return _login_redirect(request)
            except FitserveError as error:
                return _error_page(request, error.status, error.message)
            except RequestValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
                    for item in error.errors()
                )
                return _error_page(request, 422, problems)

        return page


async def _from_this_site(request: Request) -> None:
    """Refuse a form posted from another site, whatever authenticates it."""
    if not same_origin(request):
        raise ForbiddenError("this form must be sent from this server's pages")


router = APIRouter(route_class=PageRoute, include_in_schema=False)
FromThisSite = Depends(_from_this_site)
Model = TypeVar("Model", RegisterRequest, AliasRequest)


def _validated(model: type[Model], **values: Any) -> Model:
    """Form input checked by the API's own request model; a 422 page names what is wrong."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        item = error.errors()[0]
        raise InvalidInputError(f"{'.'.join(map(str, item['loc']))}: {item['msg']}") from None


# --- login --------------------------------------------------------------------------------


@router.get("/")
def root() -> RedirectResponse:
    """The dashboard is the home page."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def ui_root() -> RedirectResponse:
    """The dashboard's canonical address ends with a slash."""
    return RedirectResponse("/ui/", status_code=307)


def _next_page(target: str | None) -> str:
    """Where to go after logging in: a dashboard page, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("/ui//"):
        return target
    return "/ui/"


@router.get("/ui/login")
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    """The login form, or who the browser acts as already."""
    try:
        principal: Principal | None = await authenticate(request)
    except UnauthorizedError:
        principal = None
    return _page(
        request,
        "login.html",
        {"principal": principal, "next": _next_page(next), "error": None},
    )


@router.post("/ui/login", dependencies=[FromThisSite])
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=512)],
    next: Annotated[str, Form()] = "/ui/",
) -> Response:
    """Check the key and keep it in an HttpOnly session cookie."""
    auth = authenticator(request)
    where = {"host": request.headers.get("host"), "origin": request.headers.get("origin")}
    try:
        await run_in_threadpool(lambda: auth.authenticate(f"Bearer {key.strip()}", **where))
    except UnauthorizedError as error:
        context = {"principal": None, "next": _next_page(next), "error": error.message}
        return _page(request, "login.html", context, status_code=401)
    response = RedirectResponse(_next_page(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        key.strip(),
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout", dependencies=[FromThisSite])
def logout(request: Request) -> RedirectResponse:
    """Forget the session cookie."""
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


# --- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunListFilters:
    """What the runs list is filtered and sorted by, as its form sends it."""

    name: str | None
    tag: str | None
    # The form sends an empty status for "any status".
    status: RunStatus | Literal[""] | None
    sort: str


def _run_list_filters(
    name: Annotated[str | None, Query(max_length=200)] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[RunStatus | Literal[""] | None, Query()] = None,
    sort: Annotated[str, Query(max_length=80)] = "-created_at",
) -> RunListFilters:
    return RunListFilters(name=name, tag=tag, status=status, sort=sort)


RunListFiltersDep = Annotated[RunListFilters, Depends(_run_list_filters)]


def _run_rows(
    session: ReadSessionDep,
    principal: Principal,
    filters: RunListFilters,
    *,
    cursor: int | None,
) -> dict[str, Any]:
    runs, next_cursor = runs_service.list_runs(
        session=session,
        project=principal.project,
        status=filters.status or None,
        name=filters.name or None,
        tags=[filters.tag] if filters.tag else (),
        sort=filters.sort if filters.sort in SORTS else runs_service.RunSort.NEWEST,
        limit=LIST_LIMIT,
        cursor=cursor,
    )
    shown = {
        "name": filters.name or "",
        "tag": filters.tag or "",
        "status": filters.status or "",
        "sort": filters.sort,
    }
    more = None
    if next_cursor is not None:
        more = "/ui/?" + urlencode({**shown, "cursor": next_cursor})
    return {"runs": runs, "filters": shown, "more": more}


@router.get("/ui/")
def runs_page(
    request: Request,
    session: ReadSessionDep,
    principal: TrainAccess,
    filters: RunListFiltersDep,
    cursor: Annotated[Id | None, Query()] = None,
) -> HTMLResponse:
    """The project's runs: status, progress and final metrics, live; filter by name and tag."""
    # Read before the rows: the page's stream starts after it, so nothing that happens
    # between rendering and the stream's connection is missed.
    newest = events_service.newest_event_id(session=session, project=principal.project)
    rows = _run_rows(session, principal, filters, cursor=cursor)
    return _page(
        request,
        "runs.html",
        {
            "principal": principal,
            "sorts": SORTS,
            "statuses": list(RunStatus),
            "events_after": newest,
            **rows,
        },
    )


@router.get("/ui/runs/table")
def runs_table(
    request: Request, session: ReadSessionDep, principal: TrainAccess, filters: RunListFiltersDep
) -> HTMLResponse:
    """The runs table alone, for the filters and the live list to swap in."""
    return _page(request, "_runs_table.html", _run_rows(session, principal, filters, cursor=None))


def _epoch_data(epochs: list[EpochRead]) -> list[dict[str, Any]]:
    return [epoch.model_dump() for epoch in epochs]


def _run_context(session: ReadSessionDep, principal: Principal, run_id: int) -> dict[str, Any]:
    run = runs_service.get_run(session=session, run_id=run_id, project=principal.project)
    epochs = [
        EpochRead.model_validate(epoch)
        for epoch in runs_service.list_epochs(
            session=session, run_id=run_id, project=principal.project
        )
    ]
    return {
        "principal": principal,
        "run": run,
        "epochs": epochs,
        "metric_names": sorted({name for epoch in epochs for name in epoch.metrics}),
        "can_cancel": run.status in CANCEL,
        "can_resume": run.status in RESUMABLE,
        "can_register": run.status == RunStatus.SUCCEEDED,
        "spec_json": json.dumps(runs_service.listing_spec(spec=run.spec), indent=2),
        "run_data": {
            "id": run.id,
            "status": run.status,
            "final": run.status in FINAL_STATUSES,
            "epochs": _epoch_data(epochs),
        },
    }


@router.get("/ui/runs/{run_id}")
def run_page(
    request: Request, run_id: Id, session: ReadSessionDep, principal: TrainAccess
) -> HTMLResponse:
    """One run: spec, live curves and status, epoch table, estimation error, actions."""
    return _page(request, "run.html", _run_context(session, principal, run_id))


@router.get("/ui/runs/{run_id}/summary")
def run_summary(
    request: Request, run_id: Id, session: ReadSessionDep, principal: TrainAccess
) -> HTMLResponse:
    """The run's facts and actions alone, swapped in when its status changes."""
    return _page(request, "_run_summary.html", _run_context(session, principal, run_id))


def _back_to(run: Run) -> RedirectResponse:
    return RedirectResponse(f"/ui/runs/{run.id}", status_code=303)


@router.post("/ui/runs/{run_id}/cancel", dependencies=[FromThisSite])
def cancel(run_id: Id, database: DatabaseDep, principal: TrainAccess) -> RedirectResponse:
    """Cancel the run, as `POST /runs/{id}/cancel` does."""
    return _back_to(runs_flows.cancel_run(database=database, run_id=run_id, principal=principal))


@router.post("/ui/runs/{run_id}/resume", dependencies=[FromThisSite])
def resume(
    run_id: Id,
    database: DatabaseDep,
    settings: SettingsDep,
    hooks: RunHooksDep,
    principal: TrainAccess,
    epochs: Annotated[str, Form(max_length=10)] = "",
) -> RedirectResponse:
    """Resume the run from its checkpoint, optionally with a new total of epochs."""
    total = None
    if epochs.strip():
        if not epochs.strip().isdigit() or not 1 <= int(epochs) <= MAX_ID:
            raise InvalidInputError("epochs: a whole number of at least 1, or empty")
        total = int(epochs)
    run = runs_flows.resume_run(
        database=database,
        run_id=run_id,
        epochs=total,
        settings=settings,
        hooks=hooks,
        principal=principal,
    )
    return _back_to(run)


@router.post("/ui/runs/{run_id}/register", dependencies=[FromThisSite])
def register(
    run_id: Id,
    database: DatabaseDep,
    hooks: RegistryHooksDep,
    principal: TrainAccess,
    name: Annotated[str, Form(max_length=200)],
) -> RedirectResponse:
    """Register the run as the next version of a model, as `POST /models` does."""
    request = _validated(RegisterRequest, name=name.strip(), run_id=run_id)
    registry_flows.register_version(
        database=database,
        name=request.name,
        run_id=request.run_id,
        hooks=hooks,
        principal=principal,
    )
    return RedirectResponse(f"/ui/models/{quote(request.name)}", status_code=303)


def _compare_ids(ids: list[str]) -> list[int]:
    parts = [part.strip() for item in ids for part in item.split(",") if part.strip()]
    if not all(part.isdigit() and 0 < int(part) <= MAX_ID for part in parts):
        raise InvalidInputError("ids: run ids, comma-separated or repeated")
    run_ids = list(dict.fromkeys(int(part) for part in parts))
    if not 2 <= len(run_ids) <= 5:
        raise InvalidInputError("pick 2 to 5 distinct runs to compare")
    return run_ids


@router.get("/ui/compare")
def compare_page(
    request: Request,
    session: ReadSessionDep,
    principal: TrainAccess,
    ids: Annotated[list[str], Query(max_length=5)],
) -> HTMLResponse:
    """2 to 5 runs side by side: curves overlaid, the spec fields that differ, final metrics."""
    run_ids = _compare_ids(ids)
    comparison = runs_service.compare_runs(
        session=session, run_ids=run_ids, project=principal.project
    )
    curves = [
        {
            "id": run.id,
            "label": f"#{run.id} {run.name}" if run.name else f"#{run.id}",
            "epochs": _epoch_data(
                [
                    EpochRead.model_validate(epoch)
                    for epoch in runs_service.list_epochs(
                        session=session, run_id=run.id, project=principal.project
                    )
                ]
            ),
        }
        for run in comparison.runs
    ]
    return _page(
        request,
        "compare.html",
        {"principal": principal, "comparison": comparison, "curves": curves},
    )


# --- datasets ------------------------------------------------------------------------------


@router.get("/ui/datasets")
def datasets_page(
    request: Request,
    session: ReadSessionDep,
    principal: TrainAccess,
    cursor: Annotated[Id | None, Query()] = None,
) -> HTMLResponse:
    """The project's datasets, newest first."""
    datasets, next_id = datasets_service.list_datasets(
        session=session, project=principal.project, limit=LIST_LIMIT, before_id=cursor
    )
    more = f"/ui/datasets?cursor={next_id}" if next_id is not None else None
    return _page(
        request, "datasets.html", {"principal": principal, "datasets": datasets, "more": more}
    )


@router.get("/ui/datasets/{dataset_id}")
def dataset_page(
    request: Request,
    dataset_id: Id,
    session: ReadSessionDep,
    store: ArtifactStoreDep,
    principal: TrainAccess,
) -> HTMLResponse:
    """A dataset's schema, statistics, first rows and a histogram per column."""
    dataset = datasets_service.get_dataset(
        session=session, dataset_id=dataset_id, project=principal.project
    )
    # A sample keeps the page quick on a table of millions of rows.
    sample = datasets_service.sample_table(store=store, dataset=dataset, rows=HISTOGRAM_SAMPLE_ROWS)
    return _page(
        request,
        "dataset.html",
        {
            "principal": principal,
            "dataset": dataset,
            "preview_columns": [*dataset.features, dataset.target],
            "preview": dataset.preview,
            "histograms": histograms(sample),
            "sampled_rows": sample.num_rows,
        },
    )


# --- models --------------------------------------------------------------------------------


@router.get("/ui/models")
def models_page(
    request: Request, session: ReadSessionDep, principal: PredictAccess
) -> HTMLResponse:
    """The project's models with their latest version and aliases."""
    models = registry_service.list_models(session=session, project=principal.project)
    return _page(request, "models.html", {"principal": principal, "models": models})


@router.get("/ui/models/{name}")
def model_page(
    request: Request, name: str, session: ReadSessionDep, principal: PredictAccess
) -> HTMLResponse:
    """A model's versions, their source runs and metrics, and a form to move an alias."""
    model = registry_service.describe_model(session=session, project=principal.project, name=name)
    return _page(request, "model.html", {"principal": principal, "model": model})


@router.post("/ui/models/{name}/aliases", dependencies=[FromThisSite])
def move_alias(
    name: str,
    database: DatabaseDep,
    hooks: RegistryHooksDep,
    principal: TrainAccess,
    alias: Annotated[str, Form(max_length=64)],
    version: Annotated[str, Form(max_length=10)],
) -> RedirectResponse:
    """Point an alias at a version, as `PUT /models/{name}/aliases/{alias}` does."""
    if not version.strip().isdigit():
        raise InvalidInputError("version: a version number")
    request = _validated(AliasRequest, version=int(version))
    alias = alias.strip()
    if re.fullmatch(ALIAS_PATTERN, alias) is None:
        raise InvalidInputError(f"alias {alias!r}: letters, digits, _ and -, a letter first")
    registry_flows.set_alias(
        database=database,
        name=name,
        alias=alias,
        version=request.version,
        hooks=hooks,
        principal=principal,
    )
    return RedirectResponse(f"/ui/models/{quote(name)}", status_code=303)


# --- workers -------------------------------------------------------------------------------


@router.get("/ui/workers")
def workers_page(request: Request, session: ReadSessionDep, principal: AdminAccess) -> HTMLResponse:
    """Workers that have not stopped: device, current run, last heartbeat."""
    workers = session.scalars(
        select(WorkerRecord).where(WorkerRecord.stopped_at.is_(None)).order_by(WorkerRecord.id)
    ).all()
    return _page(
        request,
        "workers.html",
        {"principal": principal, "workers": workers, "now": datetime.now(UTC)},
    )
