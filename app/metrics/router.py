"""`GET /metrics` in Prometheus text format, for operators."""

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from app.access import AdminAccess
from app.error_handlers import ERROR_RESPONSES

router = APIRouter(tags=["system"], responses=ERROR_RESPONSES)

# Only the success is text: errors keep the JSON body every other route answers with.
_TEXT_FORMAT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


@router.get("/metrics", response_class=Response, responses=_TEXT_FORMAT)
def metrics(request: Request, _principal: AdminAccess) -> Response:
    """Runs, queue, workers and epochs from the database; this process's predictions."""
    # A plain `def`: the database collector's queries run in the thread pool, off the loop.
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
