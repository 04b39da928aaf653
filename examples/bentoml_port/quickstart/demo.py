# Calls the service through Starlette's test client (the HTTP app in this process, the
# runner's workers in their own processes), so that it runs without a server to start first.
# Against `uvicorn service:app`, post the same JSON to http://127.0.0.1:8000/classify.
import warnings

import numpy as np

warnings.filterwarnings("ignore", message=".*httpx.*")  # starlette's notice about its client
from service import app  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

if __name__ == "__main__":
    with TestClient(app) as client:
        result = client.post("/classify", json=[[5.9, 3.0, 5.1, 1.8]])
        print("classify([[5.9, 3.0, 5.1, 1.8]]) ->", result.json())
        assert result.json() == [2]
        many = client.post("/classify", json=np.tile([4.9, 3.0, 1.4, 0.2], (50, 1)).tolist())
        assert many.json() == [0] * 50
    print("ok")
