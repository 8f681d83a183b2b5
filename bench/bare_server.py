"""FastAPI's ceiling: FastAPI + uvicorn running the same preloaded module and nothing else.

Usage: python bench/bare_server.py WEIGHTS.safetensors PORT

bench/raw_asgi_server.py is the same endpoint without FastAPI, the ceiling for uvicorn itself.
"""

import json
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from app.training.serialization import import_weights


class Rows(BaseModel):
    """The same body shape fitserve takes."""

    inputs: list[list[float]]


def create_app(weights: bytes) -> FastAPI:
    """One endpoint: parse, forward in inference mode, serialise."""
    module = import_weights(weights)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        rows = Rows.model_validate_json(await request.body())
        with torch.inference_mode():
            outputs = module(torch.tensor(rows.inputs, dtype=torch.float32)).tolist()
        return Response(json.dumps({"predictions": outputs}), media_type="application/json")

    return app


if __name__ == "__main__":
    app = create_app(Path(sys.argv[1]).read_bytes())
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
