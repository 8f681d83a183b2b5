"""FastAPI dependencies shared by every domain: settings, the database and read sessions.

The cheap ones are `async def` so FastAPI calls them inline instead of in its thread pool.
Each domain's own dependencies (its events, the serving caches) live in its package.
"""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.database import Database


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    """The app's database; flows open their own unit of work on it."""
    return request.app.state.database


def get_read_session(request: Request) -> Iterator[Session]:
    """A session for reads, which on SQLite never waits behind writers."""
    with request.app.state.database.read_sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
