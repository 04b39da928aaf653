# BentoML's quickstart service, ported: the runner part is BentoML's with the import changed;
# bentoml.Service and @svc.api (BentoML's HTTP layer) become a Starlette app (see README.md).
from contextlib import asynccontextmanager

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import runnerlib as bentoml  # was: import bentoml

iris_clf_runner = bentoml.sklearn.get("iris_clf:latest").to_runner()

runners = [iris_clf_runner]  # for `python -m runnerlib serve service:runners`


# was: svc = bentoml.Service("iris_classifier", runners=[iris_clf_runner])
#      @svc.api(input=NumpyNdarray.from_sample(...), output=NumpyNdarray.from_sample(...))
async def classify(input_series: np.ndarray) -> np.ndarray:
    return await iris_clf_runner.predict.async_run(input_series)


# ---- the HTTP layer (what bentoml.Service did) ---------------------------------------------


async def classify_endpoint(request: Request) -> JSONResponse:
    input_series = np.asarray(await request.json(), dtype=np.double)  # NumpyNdarray input
    return JSONResponse((await classify(input_series)).tolist())


@asynccontextmanager
async def lifespan(app):
    iris_clf_runner.init_client()  # attaches to `runnerlib serve`, or starts the workers
    yield
    iris_clf_runner.destroy()


app = Starlette(routes=[Route("/classify", classify_endpoint, methods=["POST"])],
                lifespan=lifespan)
