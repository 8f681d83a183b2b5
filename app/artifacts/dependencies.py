"""The artifact store as a FastAPI dependency."""

from typing import Annotated

from fastapi import Depends, Request

from app.artifacts.store import ArtifactStore


async def get_artifact_store(request: Request) -> ArtifactStore:
    """The store the app was created with."""
    return request.app.state.artifacts


ArtifactStoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]
