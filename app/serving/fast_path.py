"""Warm JSON predictions answered at the ASGI layer, before routing; the rest goes to the app.

A small JSON predict for a model already in the caches is answered here without the
framework's routing, request object and exception layers, which on a 20-feature model cost
more than the forward pass. Whatever this path cannot answer from memory (a cold model, a
body that does not validate, a wrong row width, CSV, a streamed or large body) is handed to
the application unchanged, body included, so every error is the app's own answer.
"""

import re

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.registry.service import Resolution, parse_model_ref
from app.serving.cache import LoadedModel
from app.serving.schemas import PredictInputs, PredictRequest
from app.serving.service import InputShapeError, Rows, Serving, answer_json, predict

_RUN_PREDICT = re.compile(r"^/runs/(\d+)/predict$")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictFastPath:
    """ASGI middleware that answers warm predictions from the caches."""

    def __init__(self, app: ASGIApp, *, serving: Serving) -> None:
        self.app = app
        self.serving = serving
        settings = serving.settings
        # A body over the service's limit goes on to the app, whose body limit refuses it:
        # this path answers first, so it must not answer what the app would refuse.
        self._max_bytes = min(settings.predict_inline_max_bytes, settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self._small_json(scope):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        run_match = _RUN_PREDICT.match(path)
        if path != "/predict" and run_match is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return
        answer = self._answer(body, int(run_match[1]) if run_match is not None else None)
        if answer is None:
            await self.app(scope, _replaying(body, receive), send)
            return
        headers = [*_JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    def _small_json(self, scope: Scope) -> bool:
        declared = content_type = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding":
                return False
        return (
            content_type is not None
            and content_type.startswith(b"application/json")
            and declared is not None
            and declared.isdigit()
            and int(declared) <= self._max_bytes
        )

    def _answer(self, body: bytes, run_id: int | None) -> bytes | None:
        """The answer from memory, or None for the app to give."""
        resolution: Resolution | None = None
        try:
            if run_id is None:
                request = PredictRequest.model_validate_json(body)
                if request.model is not None:
                    resolution = self.serving.names.get(parse_model_ref(text=request.model))
                    if resolution is None:
                        return None
                rows = Rows.of(request)
            else:
                rows = Rows.of(PredictInputs.model_validate_json(body))
        except (ValidationError, ValueError):
            return None
        model = self._model(resolution, run_id if run_id is not None else request.run_id)
        if model is None:
            return None
        try:
            prediction = predict(
                model=model, rows=rows, max_rows=self.serving.settings.limits.max_predict_rows
            )
        except InputShapeError:
            return None
        return answer_json(model=model, resolution=resolution, prediction=prediction)

    def _model(self, resolution: Resolution | None, run_id: int | None) -> LoadedModel | None:
        if resolution is not None:
            return self.serving.models.get(resolution.run_id, resolution.weights_sha256)
        return self.serving.models.get(run_id) if run_id is not None else None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None when the client went away before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
