"""The seed documents' journey: save a trained model, get it back by tag, run it.

    python examples/pytorch_from_store.py

The model store is at $RUNNERLIB_HOME (default ~/.runnerlib).
"""

from __future__ import annotations

import asyncio

import torch
from models_def import train_tiny_classifier

import runnerlib


def main() -> None:
    trained_model = train_tiny_classifier()

    runnerlib.pytorch.save_model(
        "demo_tiny",  # model name in the local model store
        trained_model,  # model instance being saved
        signatures={  # model signatures become runnable methods
            "predict": {"batchable": True, "batch_dim": 0},
        },
        metadata={"accuracy": "synthetic"},
    )
    saved = runnerlib.pytorch.get("demo_tiny:latest")
    print(f"saved {saved.tag} at {saved.path}")

    # 1. in this process, for testing and debugging
    runner = saved.to_runner()
    runner.init_local(quiet=True)
    x = torch.randn(4, 8)
    local = runner.predict.run(x)
    print("init_local:", local)
    runner.destroy()

    # 2. in pinned worker processes, with adaptive batching across concurrent callers
    runner = saved.to_runner(max_batch_size=32, max_latency_ms=20)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        remote = runner.predict.run(x)
        assert isinstance(remote, torch.Tensor) and torch.equal(remote, local)

        async def many() -> list[torch.Tensor]:
            inputs = [torch.randn(2, 8) for _ in range(64)]
            return await asyncio.gather(*(runner.predict.async_run(t) for t in inputs))

        results = asyncio.run(many())
        print(f"64 concurrent calls -> {len(results)} results, e.g. {results[0]}")
        runner.destroy()
    print("ok")


if __name__ == "__main__":
    main()
