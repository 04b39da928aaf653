"""Pre-built runner for scikit-learn estimators (``pip install 'runnerlib[sklearn]'``).

    runnerlib.sklearn.save_model("iris_clf", clf, signatures={"predict": {"batchable": True}})
    runner = runnerlib.sklearn.get("iris_clf:latest").to_runner()

The estimator is saved with joblib. Signatures default to ``{"predict": {"batchable": False}}``.
Workers limit the native thread pools (OpenMP, BLAS) to the thread count the scheduling
strategy gives them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from runnerlib.frameworks import Framework, FrameworkRunnable, package_version, thread_count
from runnerlib.models import Model, ModelStore, Tag

__all__ = [
    "save_model", "load_model", "get", "get_runnable", "SklearnRunnable", "FRAMEWORK", "runnables",
]

MODEL_FILE = "saved_model.joblib"


def _joblib() -> Any:
    try:
        import joblib
    except ImportError as exc:  # joblib comes with scikit-learn
        raise ImportError(
            "runnerlib.sklearn needs scikit-learn: pip install 'runnerlib[sklearn]'"
        ) from exc
    return joblib


class SklearnRunnable(FrameworkRunnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = True

    def _rl_load(self, model: Model) -> Any:
        threads = thread_count()
        if threads is not None:
            try:
                from threadpoolctl import threadpool_limits

                self._rl_limits = threadpool_limits(limits=threads)
            except ImportError:
                pass
        return FRAMEWORK.load(model)


class _Sklearn(Framework):
    name = "sklearn"
    module = __name__
    runnable_base = SklearnRunnable
    default_signatures = {"predict": {"batchable": False}}

    def versions(self) -> dict[str, str]:
        return {
            "scikit-learn": package_version("scikit-learn"),
            "joblib": package_version("joblib"),
        }

    def write(self, obj: Any, directory: Path, options: dict[str, Any]) -> None:
        _joblib().dump(obj, directory / MODEL_FILE)

    def load(self, model: Model, **kwargs: Any) -> Any:
        return _joblib().load(model.path / MODEL_FILE)


FRAMEWORK = _Sklearn()
runnables = FRAMEWORK.runnables
"""Where worker processes find the generated Runnable classes (see ``runnerlib.frameworks``)."""


def save_model(
    name: str | Tag,
    model: Any,
    *,
    signatures: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    external_modules: Sequence[ModuleType] | None = None,
    metadata: Mapping[str, Any] | None = None,
    store: ModelStore | None = None,
) -> Model:
    """Save a fitted estimator as a new version of ``name``; returns the saved ``Model``."""
    return FRAMEWORK.save_model(
        name, model, signatures=signatures, metadata=metadata, labels=labels, store=store,
        custom_objects=custom_objects, external_modules=external_modules,
    )


def get(tag: str | Tag | Model, *, store: ModelStore | None = None) -> Model:
    """The saved model of ``tag`` (``name``, ``name:latest`` or ``name:version``)."""
    return FRAMEWORK.get(tag, store)


def load_model(tag: str | Tag | Model) -> Any:
    """The estimator itself, loaded in this process."""
    return FRAMEWORK.load_model(tag)


def get_runnable(model: Model) -> type[SklearnRunnable]:
    """BentoML's ``get_runnable``: the Runnable class of ``model``, as ``model.to_runnable()``
    returns it."""
    return FRAMEWORK.get_runnable(model)  # type: ignore[return-value]
