"""HTTP endpoints of the model registry: register versions, read models, move aliases."""

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from sqlalchemy.orm import Session

from app.dependencies import NameCacheDep, ReadSessionDep, SessionDep
from app.registry import service
from app.registry.schemas import (
    ALIAS_PATTERN,
    AliasRead,
    AliasRequest,
    ModelRead,
    ModelSummary,
    RegisterRequest,
    VersionRead,
)
from app.serving.cache import NameCache

router = APIRouter(prefix="/models", tags=["registry"])

AliasPath = Annotated[
    str, Path(pattern=f"^{ALIAS_PATTERN}$", description="e.g. production; not `latest`.")
]


def _commit(session: Session, names: NameCache) -> None:
    """Commit, then make this process forget resolutions older than the change at once."""
    generation = service.current_generation(session=session)
    session.commit()
    names.advance(generation)


@router.post("", status_code=status.HTTP_201_CREATED)
def register(
    request: RegisterRequest, response: Response, session: SessionDep, names: NameCacheDep
) -> VersionRead:
    """Register a succeeded run as the next version of a model (created on first use)."""
    version = service.register_version(session=session, name=request.name, run_id=request.run_id)
    _commit(session, names)
    response.headers["Location"] = f"/models/{request.name}"
    return VersionRead(
        name=request.name,
        version=version.version,
        run_id=version.run_id,
        weights_sha256=version.weights_sha256,
        created_at=version.created_at,
    )


@router.get("")
def list_models(session: ReadSessionDep) -> list[ModelSummary]:
    """Every model by name, with its latest version and aliases."""
    return service.list_models(session=session)


@router.get("/{name}")
def get_model(name: str, session: ReadSessionDep) -> ModelRead:
    """A model's versions with their source runs and metrics, and its aliases."""
    return service.describe_model(session=session, name=name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(name: str, session: SessionDep, names: NameCacheDep) -> None:
    """Forget a model with its versions and aliases; its runs stay (and become deletable)."""
    service.delete_model(session=session, name=name)
    _commit(session, names)


@router.put("/{name}/aliases/{alias}")
def set_alias(
    name: str,
    alias: AliasPath,
    request: AliasRequest,
    session: SessionDep,
    names: NameCacheDep,
) -> AliasRead:
    """Point an alias at a version: create it or move it."""
    version = service.set_alias(session=session, name=name, alias=alias, version=request.version)
    _commit(session, names)
    return AliasRead(name=name, alias=alias, version=version.version, run_id=version.run_id)


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(name: str, alias: AliasPath, session: SessionDep, names: NameCacheDep) -> None:
    """Drop an alias; predictions by it answer 404 from then on."""
    service.delete_alias(session=session, name=name, alias=alias)
    _commit(session, names)
