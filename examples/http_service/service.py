"""An HTTP service in front of the runners: a Starlette app served by uvicorn with several worker
processes; each process attaches to the runner server started by ``python -m runnerlib serve``.

    python train.py
    python -m runnerlib serve runners:runners &
    python -m uvicorn service:app --workers 4 --host 127.0.0.1 --port 8000
    curl -X POST 127.0.0.1:8000/classify -d '{"features": [[5.1, 3.5, 1.4, 0.2]]}'

Calls from every HTTP worker go to the same runner workers over shared memory, where adaptive
batching joins the rows of concurrent requests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from runners import iris_model, iris_runner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CLASSES = iris_model.metadata.get("classes", [])


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # spawn=False: the runner server is started separately; failing here beats a service that
    # silently starts its own runner workers in every HTTP process
    iris_runner.init_client(spawn=False, timeout=30)
    try:
        yield
    finally:
        iris_runner.destroy()


async def classify(request: Request) -> JSONResponse:
    body = await request.json()
    try:
        features = np.asarray(body["features"], dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != 4:
            raise ValueError(f"expected rows of 4 features, got shape {features.shape}")
    except (KeyError, TypeError, ValueError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    predicted = await iris_runner.predict.async_run(features)
    labels = [CLASSES[i] if i < len(CLASSES) else int(i) for i in predicted.tolist()]
    return JSONResponse({"classes": labels, "pid": os.getpid()})


async def healthz(request: Request) -> JSONResponse:
    ready = await iris_runner.runner_handle_is_ready(timeout=1.0)
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


app = Starlette(
    routes=[Route("/classify", classify, methods=["POST"]), Route("/healthz", healthz)],
    lifespan=lifespan,
)
