"""Dependencies of the runs endpoints."""

from typing import Annotated

from fastapi import Depends, Request

from app.runs.flows import RunHooks


async def get_run_hooks(request: Request) -> RunHooks:
    """The reactions to runs that the app factory wired."""
    return request.app.state.run_hooks


RunHooksDep = Annotated[RunHooks, Depends(get_run_hooks)]
