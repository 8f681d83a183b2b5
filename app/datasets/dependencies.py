"""Dependencies of the datasets endpoints."""

from typing import Annotated

from fastapi import Depends, Request

from app.datasets.service import DatasetUsers


async def get_dataset_users(request: Request) -> DatasetUsers:
    """How to find the runs on a dataset, wired by the app factory."""
    return request.app.state.dataset_users


DatasetUsersDep = Annotated[DatasetUsers, Depends(get_dataset_users)]
