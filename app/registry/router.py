"""HTTP endpoints of the model registry: register versions, read models, move aliases."""

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.access import PredictAccess, TrainAccess
from app.dependencies import DatabaseDep, ReadSessionDep
from app.error_handlers import ERROR_RESPONSES
from app.registry import flows, service
from app.registry.dependencies import RegistryHooksDep
from app.registry.schemas import (
    ALIAS_PATTERN,
    AliasRead,
    AliasRequest,
    ModelRead,
    ModelSummary,
    RegisterRequest,
    VersionRead,
)

router = APIRouter(prefix="/models", tags=["registry"], responses=ERROR_RESPONSES)

AliasPath = Annotated[
    str, Path(pattern=f"^{ALIAS_PATTERN}$", description="e.g. production; not `latest`.")
]


@router.post("", status_code=status.HTTP_201_CREATED)
def register(
    request: RegisterRequest,
    response: Response,
    database: DatabaseDep,
    hooks: RegistryHooksDep,
    principal: TrainAccess,
) -> VersionRead:
    """Register a succeeded run as the next version of a model (created on first use)."""
    version = flows.register_version(
        database=database,
        name=request.name,
        run_id=request.run_id,
        hooks=hooks,
        principal=principal,
    )
    response.headers["Location"] = f"/models/{request.name}"
    return VersionRead(
        name=request.name,
        version=version.version,
        run_id=version.run_id,
        weights_sha256=version.weights_sha256,
        created_at=version.created_at,
    )


@router.get("")
def list_models(session: ReadSessionDep, principal: PredictAccess) -> list[ModelSummary]:
    """Every model by name, with its latest version and aliases."""
    return service.list_models(session=session, project=principal.project)


@router.get("/{name}")
def get_model(name: str, session: ReadSessionDep, principal: PredictAccess) -> ModelRead:
    """A model's versions with their source runs and metrics, and its aliases."""
    return service.describe_model(session=session, project=principal.project, name=name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(
    name: str, database: DatabaseDep, hooks: RegistryHooksDep, principal: TrainAccess
) -> None:
    """Forget a model with its versions and aliases; its runs stay (and become deletable)."""
    flows.delete_model(database=database, name=name, hooks=hooks, principal=principal)


@router.put("/{name}/aliases/{alias}")
def set_alias(
    name: str,
    alias: AliasPath,
    request: AliasRequest,
    database: DatabaseDep,
    hooks: RegistryHooksDep,
    principal: TrainAccess,
) -> AliasRead:
    """Point an alias at a version: create it or move it."""
    version = flows.set_alias(
        database=database,
        name=name,
        alias=alias,
        version=request.version,
        hooks=hooks,
        principal=principal,
    )
    return AliasRead(name=name, alias=alias, version=version.version, run_id=version.run_id)


@router.delete("/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT)
def delete_alias(
    name: str,
    alias: AliasPath,
    database: DatabaseDep,
    hooks: RegistryHooksDep,
    principal: TrainAccess,
) -> None:
    """Drop an alias; predictions by it answer 404 from then on."""
    flows.delete_alias(database=database, name=name, alias=alias, hooks=hooks, principal=principal)
