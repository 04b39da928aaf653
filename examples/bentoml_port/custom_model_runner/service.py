# BentoML's custom_model_runner service, ported: everything but the HTTP layer is BentoML's
# with the import changed; bentoml.Service, @svc.api and bentoml.io become a Starlette app
# below (see ../README.md).
from __future__ import annotations

import io
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import PIL.Image

import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from utils import exponential_buckets

import runnerlib as bentoml  # was: import bentoml

mnist_model = bentoml.pytorch.get("mnist_cnn:latest")
_BuiltinRunnable = mnist_model.to_runnable()

inference_duration = bentoml.metrics.Histogram(
    name="inference_duration",
    documentation="Duration of inference",
    labelnames=["torch_version", "device_id"],
    buckets=exponential_buckets(0.001, 1.5, 10.0),
)


class CustomMnistRunnable(_BuiltinRunnable):
    def __init__(self):
        super().__init__()
        import torch

        print("Running on device:", self.device_id)
        self.torch_version = torch.__version__
        print("Running on torch version:", self.torch_version)

    @bentoml.Runnable.method(batchable=True, batch_dim=0)
    def __call__(self, input_data: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        output = super().__call__(input_data)
        inference_duration.labels(
            torch_version=self.torch_version, device_id=self.device_id
        ).observe(time.perf_counter() - start)
        return output.argmax(dim=1)


mnist_runner = bentoml.Runner(
    CustomMnistRunnable,
    method_configs={"__call__": {"max_batch_size": 50, "max_latency_ms": 600}},
)

runners = [mnist_runner]  # for `python -m runnerlib serve service:runners`


# was: svc = bentoml.Service(
#          "pytorch_mnist_demo", runners=[mnist_runner], models=[mnist_model]
#      )
#      @svc.api(input=bentoml.io.Image(), output=bentoml.io.NumpyNdarray())
async def predict(image: PIL.Image.Image) -> np.ndarray:
    arr = np.array(image).reshape([-1, 1, 28, 28])
    res = await mnist_runner.async_run(arr)
    return res.numpy()


# ---- the HTTP layer (what bentoml.Service and bentoml.io did) ------------------------------


async def predict_endpoint(request: Request) -> JSONResponse:
    from PIL import Image

    image = Image.open(io.BytesIO(await request.body()))
    return JSONResponse((await predict(image)).tolist())


@asynccontextmanager
async def lifespan(app):
    mnist_runner.init_client()  # attaches to `runnerlib serve`, or starts the workers
    yield
    mnist_runner.destroy()


app = Starlette(routes=[Route("/predict", predict_endpoint, methods=["POST"])],
                lifespan=lifespan)
