"""Warm JSON predictions answered at the ASGI layer, before routing; the rest goes to the app.

A small JSON predict for a model already in the caches is answered here without the
framework's routing, request object and exception layers, which on a 20-feature model cost
more than the forward pass. Whatever this path cannot answer from memory (a cold model, a
body that does not validate, a wrong row width, CSV, a streamed or large body) is handed to
the application unchanged, body included, so every error is the app's own answer.

Every predict answer, from here or from the app, is timed and told to the observer.
"""

import re
from time import perf_counter
from typing import Protocol

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access import Authenticates
from app.registry.service import Resolution, parse_model_ref
from app.serving.cache import LoadedModel
from app.serving.schemas import PredictInputs, PredictRequest
from app.serving.service import InputShapeError, Rows, Serving, answer_json, predict

# Every predict route, so that the app's answers are timed too; only /predict and
# /runs/{id}/predict (group 1) are answered here, /models/{name}/predict always by the app.
_PREDICT = re.compile(r"/(?:predict|runs/(\d+)/predict|models/[^/]+/predict)")
_JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictObserver(Protocol):
    """Told of every predict answer: which handler gave it, its status and its latency."""

    def observe(self, handler: str, status: int, seconds: float) -> None:
        """Count one answer of `fast_path` or `app`."""
        ...


class PredictFastPath:
    """ASGI middleware that answers warm predictions from the caches."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        serving: Serving,
        authenticator: Authenticates,
        observer: PredictObserver | None = None,
    ) -> None:
        self.app = app
        self.serving = serving
        self.authenticator = authenticator
        self.observer = observer
        settings = serving.settings
        # A body over the service's limit goes on to the app, whose body limit refuses it:
        # this path answers first, so it must not answer what the app would refuse.
        self._max_bytes = min(settings.predict_inline_max_bytes, settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        predict_match = _PREDICT.fullmatch(path)
        if predict_match is None:
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        if path.startswith("/models/"):
            await self._handed_on(scope, receive, send, started)
            return
        small_json, authorization, host, origin = self._read_headers(scope)
        if not small_json:
            await self._handed_on(scope, receive, send, started)
            return
        # A request the cache cannot authenticate gets the app's answer (401, 403).
        principal = self.authenticator.cached(authorization, host=host, origin=origin)
        if principal is None:
            await self._handed_on(scope, receive, send, started)
            return
        body = await _read_body(receive)
        if body is None:
            return
        run_id = int(predict_match[1]) if predict_match[1] is not None else None
        answer = self._answer(body, run_id, principal.project)
        if answer is None:
            await self._handed_on(scope, _replaying(body, receive), send, started)
            return
        headers = [*_JSON_HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})
        if self.observer is not None:
            self.observer.observe("fast_path", 200, perf_counter() - started)

    async def _handed_on(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        """The app answers a predict request; its status and latency go to the observer."""
        observer = self.observer
        if observer is None:
            await self.app(scope, receive, send)
            return
        # What the server answers when the app raises before starting a response.
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            observer.observe("app", status, perf_counter() - started)

    def _read_headers(self, scope: Scope) -> tuple[bool, str | None, str | None, str | None]:
        """Whether the body is small JSON of a declared length; Authorization, Host, Origin."""
        declared = content_type = authorization = host = origin = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"transfer-encoding":
                return False, None, None, None
        small_json = (
            content_type is not None
            and content_type.startswith(b"application/json")
            and declared is not None
            and declared.isdigit()
            and int(declared) <= self._max_bytes
        )
        return small_json, authorization, host, origin

    def _answer(self, body: bytes, run_id: int | None, project: str) -> bytes | None:
        """The answer from memory, or None for the app to give."""
        resolution: Resolution | None = None
        try:
            if run_id is None:
                request = PredictRequest.model_validate_json(body)
                if request.model is not None:
                    ref = parse_model_ref(text=request.model, project=project)
                    resolution = self.serving.names.get(ref)
                    if resolution is None:
                        return None
                rows = Rows.of(request)
            else:
                rows = Rows.of(PredictInputs.model_validate_json(body))
        except (ValidationError, ValueError):
            return None
        model = self._model(resolution, run_id if run_id is not None else request.run_id)
        if model is None or model.project != project:
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
