# Calls the service through Starlette's test client (the HTTP app in this process, the
# runner's workers in their own processes), as BentoML's example tests call its endpoints.
import io
import warnings

import numpy as np
import PIL.Image
import synthetic

warnings.filterwarnings("ignore", message=".*httpx.*")  # starlette's notice about its client
from service import app  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

if __name__ == "__main__":
    digits = [3, 7, 0, 9]
    images = synthetic.digit_images(np.array(digits), seed=5)
    with TestClient(app) as client:
        for digit, image in zip(digits, images, strict=True):
            answer = client.post("/predict_ndarray", json=image.tolist()).json()
            png = io.BytesIO()
            PIL.Image.fromarray((image * 255).astype(np.uint8)).save(png, format="PNG")
            from_image = client.post("/predict_image", content=png.getvalue()).json()
            print(f"digit {digit}: predict_ndarray -> {answer}, predict_image -> {from_image}")
            assert answer == from_image == [digit]
    print("ok")
