"""Dependencies of the registry endpoints."""

from typing import Annotated

from fastapi import Depends, Request

from app.registry.flows import RegistryEvents


async def get_registry_events(request: Request) -> RegistryEvents:
    """The reactions to registry changes that the app factory wired."""
    return request.app.state.registry_events


RegistryEventsDep = Annotated[RegistryEvents, Depends(get_registry_events)]
