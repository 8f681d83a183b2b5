"""The server's ceiling: a bare ASGI callable under uvicorn running the same preloaded module.

Usage: python bench/raw_asgi_server.py WEIGHTS.safetensors PORT

No FastAPI and no Starlette: one `async def app(scope, receive, send)` that answers
POST /predict. It parses the body with the same pydantic model as bench/bare_server.py and
answers the same JSON, so the gap between the two is the framework's routing, request and
response objects, and nothing else.
"""

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import torch
import uvicorn
from pydantic import BaseModel, ValidationError

from app.training.serialization import import_weights

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]


class Rows(BaseModel):
    """The same body shape fitserve takes."""

    inputs: list[list[float]]


async def respond(send: Send, status: int, body: bytes) -> None:
    """Send one complete JSON response."""
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    """The whole request body, however many messages uvicorn splits it into."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(weights: bytes) -> ASGIApp:
    """One route: parse, forward in inference mode, serialise."""
    module = import_weights(weights)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn runs with lifespan="off", so only HTTP scopes arrive here.
        if scope["path"] != "/predict":
            await respond(send, 404, b'{"detail":"Not Found"}')
            return
        if scope["method"] != "POST":
            await respond(send, 405, b'{"detail":"Method Not Allowed"}')
            return
        try:
            rows = Rows.model_validate_json(await read_body(receive))
        except ValidationError as error:
            await respond(send, 422, error.json().encode())
            return
        with torch.inference_mode():
            outputs = module(torch.tensor(rows.inputs, dtype=torch.float32)).tolist()
        await respond(send, 200, json.dumps({"predictions": outputs}).encode())

    return app


if __name__ == "__main__":
    app = create_app(Path(sys.argv[1]).read_bytes())
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[2]),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
