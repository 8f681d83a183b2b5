"""Predict endpoints: by run in the path or in the body."""

from fastapi import APIRouter
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.dependencies import ModelCacheDep, ReadSessionFactoryDep, SettingsDep
from app.serving import service
from app.serving.cache import LoadedModel, ModelCache
from app.serving.schemas import PredictInputs, PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])


async def _predict(
    *,
    run_id: int,
    body: PredictInputs,
    cache: ModelCache,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> PredictResponse:
    model = cache.get(run_id)
    if model is None:
        # Only a cache miss touches the database, off the event loop.
        def load() -> LoadedModel:
            with sessions() as session:
                return service.cached_model(
                    cache=cache, session=session, run_id=run_id, device=settings.predict_device
                )

        model = await run_in_threadpool(load)
    result = service.predict(
        model=model,
        inputs=body.inputs,
        records=body.records,
        max_rows=settings.limits.max_predict_rows,
    )
    return PredictResponse(run_id=run_id, weights_sha256=model.sha256, **result)


@router.post("/runs/{run_id}/predict")
async def predict_run(
    run_id: int,
    body: PredictInputs,
    cache: ModelCacheDep,
    sessions: ReadSessionFactoryDep,
    settings: SettingsDep,
) -> PredictResponse:
    """Predict with a run's weights."""
    return await _predict(
        run_id=run_id, body=body, cache=cache, sessions=sessions, settings=settings
    )


@router.post("/predict")
async def predict(
    body: PredictRequest,
    cache: ModelCacheDep,
    sessions: ReadSessionFactoryDep,
    settings: SettingsDep,
) -> PredictResponse:
    """Predict with the weights of the run named in the body."""
    return await _predict(
        run_id=body.run_id, body=body, cache=cache, sessions=sessions, settings=settings
    )
