# BentoML's pytorch_mnist service, ported: the runner part and the API functions are
# BentoML's with the import changed; bentoml.Service, @svc.api and bentoml.io (BentoML's HTTP
# layer) become a Starlette app below (see ../README.md).
from __future__ import annotations

import io
import typing as t
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
from PIL.Image import Image as PILImage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import runnerlib as bentoml  # was: import bentoml

if TYPE_CHECKING:
    from numpy.typing import NDArray

mnist_runner = bentoml.pytorch.get("pytorch_mnist").to_runner()

runners = [mnist_runner]  # for `python -m runnerlib serve service:runners`


def to_numpy(tensor):
    return tensor.detach().cpu().numpy()


# was: @svc.api(input=NumpyNdarray(dtype="float32", enforce_dtype=True),
#               output=NumpyNdarray(dtype="int64"))
async def predict_ndarray(inp: NDArray[t.Any]) -> NDArray[t.Any]:
    assert inp.shape == (28, 28)
    # We are using greyscale image and our PyTorch model expect one
    # extra channel dimension. Then we will also add one batch
    # dimension
    inp = np.expand_dims(inp, (0, 1))
    output_tensor = await mnist_runner.async_run(inp)
    return to_numpy(output_tensor)


# was: @svc.api(input=Image(), output=NumpyNdarray(dtype="int64"))
async def predict_image(f: PILImage) -> NDArray[t.Any]:
    assert isinstance(f, PILImage)
    arr = np.array(f) / 255.0
    assert arr.shape == (28, 28)

    # We are using greyscale image and our PyTorch model expect one
    # extra channel dimension. Then we will also add one batch
    # dimension
    arr = np.expand_dims(arr, (0, 1)).astype("float32")
    output_tensor = await mnist_runner.async_run(arr)
    return to_numpy(output_tensor)


# ---- the HTTP layer (what bentoml.Service and bentoml.io did) ------------------------------


async def ndarray_endpoint(request: Request) -> JSONResponse:
    inp = np.asarray(await request.json(), dtype="float32")
    return JSONResponse((await predict_ndarray(inp)).tolist())


async def image_endpoint(request: Request) -> JSONResponse:
    image = PIL.Image.open(io.BytesIO(await request.body()))
    return JSONResponse((await predict_image(image)).tolist())


@asynccontextmanager
async def lifespan(app):
    mnist_runner.init_client()  # attaches to `runnerlib serve`, or starts the workers
    yield
    mnist_runner.destroy()


app = Starlette(
    routes=[
        Route("/predict_ndarray", ndarray_endpoint, methods=["POST"]),
        Route("/predict_image", image_endpoint, methods=["POST"]),
    ],
    lifespan=lifespan,
)
