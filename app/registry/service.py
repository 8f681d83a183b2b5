"""Registry logic: register runs as numbered versions of a name, move aliases, resolve names.

Every change that alters what a name or a run id answers bumps the registry generation in
the same transaction, so API processes polling it drop what they cached.
"""

import re
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.database import rows_matched
from app.errors import InvalidInputError, NotFoundError
from app.registry.models import ModelAlias, ModelVersion, RegisteredModel, RegistryState
from app.registry.schemas import NAME_PATTERN, ModelRead, ModelSummary, VersionDetail
from app.runs.models import Run, RunStatus, Weights
from app.runs.service import RunNotFoundError, RunStateError

_MODEL_REF = re.compile(rf"^(?P<name>{NAME_PATTERN})(@(?P<alias>.+)|:(?P<version>\d+))?$")
# A bare name already means the latest version; an alias of that name would be ambiguous.
RESERVED_ALIASES = frozenset({"latest"})


class RegistryNotFoundError(NotFoundError):
    """No model, version or alias by that name."""


class ModelNotFoundError(RegistryNotFoundError):
    """No registered model has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} not found")


class VersionNotFoundError(RegistryNotFoundError):
    """The model has no such version."""

    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"model {name!r} has no version {version}")


class AliasNotFoundError(RegistryNotFoundError):
    """The model has no such alias."""

    def __init__(self, name: str, alias: str) -> None:
        super().__init__(f"model {name!r} has no alias {alias!r}")


class ReservedAliasError(InvalidInputError):
    """The alias is a word with a meaning of its own in model references."""

    type = "reserved"

    def __init__(self, alias: str) -> None:
        super().__init__(
            f"{alias!r} is reserved: a bare model name already means the latest",
            loc=("path", "alias"),
        )


class RunRegisteredError(RunStateError):
    """The run is a registered model version and cannot be deleted."""


@dataclass(frozen=True)
class ModelRef:
    """A project's model name with a version, an alias, or neither (the latest version)."""

    project: str
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}:{self.version}"


def parse_model_ref(*, text: str, project: str) -> ModelRef:
    """`name`, `name@alias` or `name:3` of the project as a ModelRef (text already validated)."""
    match = _MODEL_REF.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not name, name@alias or name:version")
    version = match["version"]
    return ModelRef(project, match["name"], int(version) if version else None, match["alias"])


@dataclass(frozen=True)
class Resolution:
    """The version a model reference names, and the run and weights that answer for it."""

    name: str
    version: int
    run_id: int
    weights_sha256: str


def current_generation(*, session: Session) -> int:
    """The registry generation now."""
    return session.scalars(select(RegistryState.generation).where(RegistryState.id == 1)).one()


def bump_generation(*, session: Session) -> None:
    """Tell every API process, at commit, that names or runs may now answer differently."""
    session.execute(
        update(RegistryState)
        .where(RegistryState.id == 1)
        .values(generation=RegistryState.generation + 1)
        .execution_options(synchronize_session=False)
    )


def _model(session: Session, project: str, name: str, *, lock: bool = False) -> RegisteredModel:
    query = select(RegisteredModel).where(
        RegisteredModel.project == project, RegisteredModel.name == name
    )
    model = session.scalars(query.with_for_update() if lock else query).one_or_none()
    if model is None:
        raise ModelNotFoundError(name)
    return model


def _locked_or_new_model(session: Session, project: str, name: str) -> RegisteredModel:
    try:
        return _model(session, project, name, lock=True)
    except ModelNotFoundError:
        pass
    model = RegisteredModel(project=project, name=name)
    try:
        with session.begin_nested():
            session.add(model)
    except IntegrityError:
        # A concurrent registration created the name first; queue behind it.
        return _model(session, project, name, lock=True)
    return model


def register_version(*, session: Session, project: str, name: str, run_id: int) -> ModelVersion:
    """Register the project's succeeded run as the next version of `name` (created if new)."""
    row = session.execute(
        select(Run.status, Weights.sha256)
        .outerjoin(Weights, Weights.run_id == Run.id)
        .where(Run.id == run_id, Run.project == project)
    ).one_or_none()
    if row is None:
        raise RunNotFoundError(run_id)
    if row.status != RunStatus.SUCCEEDED or row.sha256 is None:
        raise RunStateError(f"run {run_id} is {row.status}; only succeeded runs can be registered")
    model = _locked_or_new_model(session, project, name)
    latest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    version = ModelVersion(
        model_id=model.id, version=(latest or 0) + 1, run_id=run_id, weights_sha256=row.sha256
    )
    session.add(version)
    session.flush()
    bump_generation(session=session)
    return version


def _versions(session: Session, model: RegisteredModel) -> list[VersionDetail]:
    aliases: dict[int, list[str]] = {}
    for alias, version_id in session.execute(
        select(ModelAlias.alias, ModelAlias.version_id)
        .where(ModelAlias.model_id == model.id)
        .order_by(ModelAlias.alias)
    ):
        aliases.setdefault(version_id, []).append(alias)
    rows = session.execute(
        select(ModelVersion, Run.task, Run.metrics)
        .join(Run, Run.id == ModelVersion.run_id)
        .where(ModelVersion.model_id == model.id)
        .order_by(ModelVersion.version)
    )
    return [
        VersionDetail(
            version=version.version,
            run_id=version.run_id,
            weights_sha256=version.weights_sha256,
            created_at=version.created_at,
            task=task,
            metrics=metrics,
            aliases=aliases.get(version.id, []),
        )
        for version, task, metrics in rows
    ]


def describe_model(*, session: Session, project: str, name: str) -> ModelRead:
    """A model with every version, its source run's metrics, and its aliases."""
    model = _model(session, project, name)
    versions = _versions(session, model)
    return ModelRead(
        name=model.name,
        created_at=model.created_at,
        latest_version=versions[-1].version if versions else None,
        aliases={alias: info.version for info in versions for alias in info.aliases},
        versions=versions,
    )


def list_models(*, session: Session, project: str) -> list[ModelSummary]:
    """The project's models by name, with latest version and aliases (versions left out)."""
    models = session.scalars(
        select(RegisteredModel)
        .where(RegisteredModel.project == project)
        .order_by(RegisteredModel.name)
    ).all()
    in_project = select(RegisteredModel.id).where(RegisteredModel.project == project)
    latest: dict[int, int] = {
        model_id: version
        for model_id, version in session.execute(
            select(ModelVersion.model_id, func.max(ModelVersion.version))
            .where(ModelVersion.model_id.in_(in_project))
            .group_by(ModelVersion.model_id)
        )
    }
    aliases: dict[int, dict[str, int]] = {}
    for model_id, alias, version in session.execute(
        select(ModelAlias.model_id, ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.model_id.in_(in_project))
        .order_by(ModelAlias.alias)
    ):
        aliases.setdefault(model_id, {})[alias] = version
    return [
        ModelSummary(
            name=model.name,
            created_at=model.created_at,
            latest_version=latest.get(model.id),
            aliases=aliases.get(model.id, {}),
        )
        for model in models
    ]


def set_alias(
    *, session: Session, project: str, name: str, alias: str, version: int
) -> ModelVersion:
    """Point the alias at a version of the model, creating or moving it."""
    if alias in RESERVED_ALIASES:
        raise ReservedAliasError(alias)
    model = _model(session, project, name, lock=True)
    target = session.scalars(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == version
        )
    ).one_or_none()
    if target is None:
        raise VersionNotFoundError(name, version)
    existing = session.get(ModelAlias, (model.id, alias))
    if existing is None:
        session.add(ModelAlias(model_id=model.id, alias=alias, version_id=target.id))
    else:
        existing.version_id = target.id
    session.flush()
    bump_generation(session=session)
    return target


def delete_alias(*, session: Session, project: str, name: str, alias: str) -> None:
    """Drop the alias; calls by it answer 404 from then on."""
    model = _model(session, project, name, lock=True)
    result = session.execute(
        delete(ModelAlias)
        .where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
        .execution_options(synchronize_session=False)
    )
    if rows_matched(result) == 0:
        raise AliasNotFoundError(name, alias)
    bump_generation(session=session)


def delete_model(*, session: Session, project: str, name: str) -> None:
    """Forget the model, its versions and aliases; the runs stay."""
    model = _model(session, project, name, lock=True)
    session.delete(model)
    session.flush()
    bump_generation(session=session)


def resolve(*, session: Session, ref: ModelRef) -> Resolution:
    """The version, run and weights digest a model reference names now."""
    query = (
        select(ModelVersion.version, ModelVersion.run_id, ModelVersion.weights_sha256)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(RegisteredModel.project == ref.project, RegisteredModel.name == ref.name)
    )
    if ref.alias is not None:
        query = query.join(ModelAlias, ModelAlias.version_id == ModelVersion.id).where(
            ModelAlias.alias == ref.alias
        )
    elif ref.version is not None:
        query = query.where(ModelVersion.version == ref.version)
    else:
        query = query.order_by(ModelVersion.version.desc()).limit(1)
    row = session.execute(query).one_or_none()
    if row is None:
        _model(session, ref.project, ref.name)
        if ref.alias is not None:
            raise AliasNotFoundError(ref.name, ref.alias)
        raise VersionNotFoundError(ref.name, ref.version or 0)
    return Resolution(
        name=ref.name, version=row.version, run_id=row.run_id, weights_sha256=row.weights_sha256
    )


def release_run(*, session: Session, run_id: int) -> None:
    """Refuse to delete a run that is a registered version; else bump the generation, so
    every API process drops the run's cached model.

    Wired as the runs' deletion check, inside the deleting transaction.
    """
    registered = session.execute(
        select(RegisteredModel.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.model_id == RegisteredModel.id)
        .where(ModelVersion.run_id == run_id)
        .order_by(RegisteredModel.name, ModelVersion.version)
    ).all()
    if registered:
        names = ", ".join(f"{name}:{version}" for name, version in registered)
        raise RunRegisteredError(
            f"run {run_id} is registered as {names}; delete the model before the run"
        )
    bump_generation(session=session)
