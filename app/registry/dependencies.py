"""Dependencies of the registry endpoints."""

from typing import Annotated

from fastapi import Depends, Request

from app.registry.flows import RegistryHooks


async def get_registry_hooks(request: Request) -> RegistryHooks:
    """The reactions to registry changes that the app factory wired."""
    return request.app.state.registry_hooks


RegistryHooksDep = Annotated[RegistryHooks, Depends(get_registry_hooks)]
