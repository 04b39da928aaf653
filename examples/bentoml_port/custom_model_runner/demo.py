# Calls the service through Starlette's test client (the HTTP app in this process, the
# runner's workers in their own processes), with concurrent requests that the runner batches.
import asyncio
import io
import warnings

import httpx
import numpy as np
import PIL.Image
import synthetic
from service import app, mnist_runner

warnings.filterwarnings("ignore", message=".*httpx.*")


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    PIL.Image.fromarray((image * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


async def main() -> None:
    digits = [int(d) for d in np.random.default_rng(3).integers(0, 10, size=24)]
    images = synthetic.digit_images(np.array(digits), seed=7)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            replies = await asyncio.gather(
                *(client.post("/predict", content=png(image)) for image in images)
            )
        answers = [r.json() for r in replies]
        right = sum(a == [d] for a, d in zip(answers, digits, strict=True))
        print(f"{len(answers)} concurrent requests, {right} digits right: {answers[:6]} ...")
        assert right >= 20, (answers, digits)
        print("runner:", mnist_runner.name, "-", mnist_runner.scheduled_worker_count, "worker(s)")
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
