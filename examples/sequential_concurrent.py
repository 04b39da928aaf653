"""Several runners in one request: sequential runs, and concurrent ones with asyncio.gather.
A custom preprocessing runner feeds two models from the store: a scikit-learn classifier and
a PyTorch module.

    python examples/sequential_concurrent.py
"""

from __future__ import annotations

import asyncio

import numpy as np

import runnerlib


class PreprocessRunnable(runnerlib.Runnable):
    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - raw.mean(axis=1, keepdims=True)) / 2.0).astype(np.float32)


def save_models() -> None:
    # imported here: worker processes re-import this script to find PreprocessRunnable,
    # and need neither library for it
    from models_def import train_tiny_classifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) > 0).astype(int)
    runnerlib.sklearn.save_model(
        "model_a", LogisticRegression().fit(x, y),
        signatures={"predict": {"batchable": True, "batch_dim": 0}},
    )
    runnerlib.pytorch.save_model(
        "model_b", train_tiny_classifier(steps=20),
        signatures={"predict": {"batchable": True, "batch_dim": 0}},
    )


def post_process(a: np.ndarray, b) -> list[str]:
    return [f"a={int(i)} b={int(j)}" for i, j in zip(a, b.tolist(), strict=True)]


def main() -> None:
    save_models()
    preprocess_runner = runnerlib.Runner(PreprocessRunnable, name="preprocess")
    model_a_runner = runnerlib.sklearn.get("model_a:latest").to_runner()
    model_b_runner = runnerlib.pytorch.get("model_b:latest").to_runner()
    runners = [preprocess_runner, model_a_runner, model_b_runner]

    def classify(raw: np.ndarray) -> list[str]:  # sequential runs
        model_input = preprocess_runner.run(raw)
        return post_process(model_a_runner.predict.run(model_input),
                            model_b_runner.predict.run(model_input))

    async def classify_async(raw: np.ndarray) -> list[str]:  # concurrent runs
        model_input = await preprocess_runner.async_run(raw)
        results = await asyncio.gather(
            model_a_runner.predict.async_run(model_input),
            model_b_runner.predict.async_run(model_input),
        )
        return post_process(results[0], results[1])

    with runnerlib.Server(runners):
        for r in runners:
            r.init_client(spawn=False)
        raw = np.random.default_rng(1).normal(size=(4, 8))
        sequential = classify(raw)
        concurrent = asyncio.run(classify_async(raw))
        print("sequential:", sequential)
        print("concurrent:", concurrent)
        assert sequential == concurrent
        for r in runners:
            r.destroy()
    print("ok")


if __name__ == "__main__":
    main()
