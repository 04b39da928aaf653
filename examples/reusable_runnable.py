"""One Runnable class, two runners: ``runnable_init_params`` picks the model file of each.

    python examples/reusable_runnable.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from models_def import TinyClassifier, train_tiny_classifier

import runnerlib


class MyModelRunnable(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")
    SUPPORTS_CPU_MULTI_THREADING = True

    def __init__(self, model_file: str) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = TinyClassifier()
        self.model.load_state_dict(torch.load(model_file, map_location=self.device))
        self.model.to(self.device).eval()

    @runnerlib.Runnable.method(batchable=True, batch_dim=0)
    def predict(self, input_array):
        with torch.inference_mode():
            x = torch.as_tensor(input_array).to(self.device)
            return self.model(x).cpu().numpy()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for seed in (1, 2):
            path = Path(tmp) / f"saved_model_{seed}.pt"
            torch.save(train_tiny_classifier(seed=seed, steps=20).state_dict(), path)
            files.append(str(path))

        my_runner_1 = runnerlib.Runner(
            MyModelRunnable, name="my_runner_1", runnable_init_params={"model_file": files[0]}
        )
        my_runner_2 = runnerlib.Runner(
            MyModelRunnable, name="my_runner_2", runnable_init_params={"model_file": files[1]}
        )
        with runnerlib.Server([my_runner_1, my_runner_2]):
            for r in (my_runner_1, my_runner_2):
                r.init_client(spawn=False)
            x = torch.randn(3, 8).numpy()
            a, b = my_runner_1.predict.run(x), my_runner_2.predict.run(x)
            print("runner 1:", a.round(3).tolist())
            print("runner 2:", b.round(3).tolist())
            assert a.shape == b.shape == (3, 3) and not (a == b).all()
            for r in (my_runner_1, my_runner_2):
                r.destroy()
    print("ok")


if __name__ == "__main__":
    main()
