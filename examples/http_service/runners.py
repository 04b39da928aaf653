"""The runners of the service, imported both by the runner server
(``python -m runnerlib serve runners:runners``) and by every HTTP worker (``service.py``).

Both resolve ``iris_clf:latest`` when they import this module; if a newer version was saved in
between, attaching fails with a clear error (the runner's Runnable class names the version).
"""

from __future__ import annotations

import runnerlib

iris_model = runnerlib.sklearn.get("iris_clf:latest")
iris_runner = iris_model.to_runner(max_batch_size=64, max_latency_ms=10)

runners = [iris_runner]
