"""Dependencies of the runs endpoints."""

from typing import Annotated

from fastapi import Depends, Request

from app.runs.flows import RunEvents


async def get_run_events(request: Request) -> RunEvents:
    """The reactions to runs that the app factory wired."""
    return request.app.state.run_events


RunEventsDep = Annotated[RunEvents, Depends(get_run_events)]
