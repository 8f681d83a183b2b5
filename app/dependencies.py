"""FastAPI dependencies: settings, sessions and the model cache from the app's state.

The cheap ones are `async def` so FastAPI calls them inline instead of in its thread pool.
"""

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.serving.cache import ModelCache, NameCache
from app.serving.service import Serving


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session for one request; the router commits what it changes."""
    with request.app.state.sessions() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session for reads, which on SQLite never waits behind writers."""
    with request.app.state.read_sessions() as session:
        yield session


async def get_model_cache(request: Request) -> ModelCache:
    """The process's model cache."""
    return request.app.state.serving.models


async def get_name_cache(request: Request) -> NameCache:
    """The process's cache of resolved model names."""
    return request.app.state.serving.names


def serving_state(request: Request) -> Serving:
    """Caches, read sessions and settings of the predict path."""
    # Called directly rather than through `Depends`: resolving a dependency costs about as
    # much as the forward pass of a small model.
    return request.app.state.serving


async def get_wakeup(request: Request) -> Callable[[], None]:
    """Wakes a local idle worker after a run is queued (a no-op without a local pool)."""
    return request.app.state.wakeup


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
NameCacheDep = Annotated[NameCache, Depends(get_name_cache)]
WakeupDep = Annotated[Callable[[], None], Depends(get_wakeup)]
