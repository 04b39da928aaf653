"""Train the service's model and save it to the store ($RUNNERLIB_HOME, default ~/.runnerlib).

    python train.py
"""

from __future__ import annotations

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import runnerlib


def main() -> None:
    iris = load_iris()
    clf = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    model = runnerlib.sklearn.save_model(
        "iris_clf",
        clf,
        signatures={"predict": {"batchable": True, "batch_dim": 0}},
        metadata={"classes": list(iris.target_names)},
    )
    print(f"saved {model.tag}")


if __name__ == "__main__":
    main()
