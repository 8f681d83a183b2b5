"""Registry use cases: each changes names in one unit of work, audited, then announces the
generation it committed."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.database import Database, unit_of_work
from app.principal import Principal
from app.registry import service
from app.registry.models import ModelVersion


def _ignore(_generation: int) -> None:
    """Nobody in this process caches names."""


@dataclass(frozen=True)
class RegistryHooks:
    """How the rest of the service reacts to registry changes, wired by the app factory.

    `changed` gets the generation a change committed, so this process's serving caches
    forget older resolutions at once instead of at the watcher's next poll.
    """

    changed: Callable[[int], None] = _ignore


@contextmanager
def _change(
    database: Database,
    hooks: RegistryHooks,
    principal: Principal,
    action: str,
    name: str,
    **detail: Any,
) -> Iterator[Session]:
    """One audited unit of work that changes names; announces the generation it committed."""
    with unit_of_work(database.sessions) as session:
        yield session
        audit.record(session=session, principal=principal, action=action, object_id=name, **detail)
        generation = service.current_generation(session=session)
    hooks.changed(generation)


def register_version(
    *, database: Database, name: str, run_id: int, hooks: RegistryHooks, principal: Principal
) -> ModelVersion:
    """Register a succeeded run as the next version of a model."""
    with _change(database, hooks, principal, "model.register", name, run_id=run_id) as session:
        return service.register_version(
            session=session, project=principal.project, name=name, run_id=run_id
        )


def set_alias(
    *,
    database: Database,
    name: str,
    alias: str,
    version: int,
    hooks: RegistryHooks,
    principal: Principal,
) -> ModelVersion:
    """Point an alias at a version of a model."""
    with _change(
        database, hooks, principal, "model.alias.set", name, alias=alias, version=version
    ) as session:
        return service.set_alias(
            session=session, project=principal.project, name=name, alias=alias, version=version
        )


def delete_alias(
    *, database: Database, name: str, alias: str, hooks: RegistryHooks, principal: Principal
) -> None:
    """Drop an alias."""
    with _change(database, hooks, principal, "model.alias.delete", name, alias=alias) as session:
        service.delete_alias(session=session, project=principal.project, name=name, alias=alias)


def delete_model(
    *, database: Database, name: str, hooks: RegistryHooks, principal: Principal
) -> None:
    """Forget a model with its versions and aliases."""
    with _change(database, hooks, principal, "model.delete", name) as session:
        service.delete_model(session=session, project=principal.project, name=name)
