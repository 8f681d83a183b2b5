"""The predict path's state, read without FastAPI's dependency machinery."""

from fastapi import Request

from app.serving.service import Serving


def serving_state(request: Request) -> Serving:
    """Caches, read sessions and settings of the predict path."""
    # Called directly rather than through `Depends`: resolving a dependency costs about as
    # much as the forward pass of a small model.
    return request.app.state.serving
