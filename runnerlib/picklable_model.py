"""Pre-built runner for any picklable Python object (a model with ``predict``, a callable, ...).

    model = runnerlib.picklable_model.save_model("echo", obj, signatures={"predict": {}})
    runner = runnerlib.picklable_model.get("echo:latest").to_runner()

The object is saved with cloudpickle when it is installed (as BentoML does), else with
``pickle`` (protocol 5). cloudpickle saves lambdas and classes of a script's ``__main__`` by
value, and those of ``external_modules=[...]``; any other class must be importable wherever
the model is loaded. Signatures default to ``{"__call__": {"batchable": False}}``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from runnerlib.frameworks import Framework, FrameworkRunnable
from runnerlib.models import Model, ModelStore, Tag

__all__ = [
    "save_model", "load_model", "get", "get_runnable", "PicklableModelRunnable", "FRAMEWORK",
    "runnables",
]

MODEL_FILE = "saved_model.pkl"


class PicklableModelRunnable(FrameworkRunnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False


class _Picklable(Framework):
    name = "picklable_model"
    module = __name__
    runnable_base = PicklableModelRunnable

    def check(self, obj: Any) -> None:
        try:
            self.pickle_module().dumps(obj, protocol=5)
        except Exception as exc:
            raise TypeError(
                f"{type(obj).__qualname__} cannot be pickled ({exc}); define its class in an "
                "importable module"
            ) from exc

    def write(self, obj: Any, directory: Path, options: dict[str, Any]) -> None:
        with open(directory / MODEL_FILE, "wb") as f:
            self.pickle_module().dump(obj, f, protocol=5)

    def load(self, model: Model, **kwargs: Any) -> Any:
        with open(model.path / MODEL_FILE, "rb") as f:
            return pickle.load(f)


FRAMEWORK = _Picklable()
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
    """Save ``model`` as a new version of ``name``; returns the saved ``Model``."""
    return FRAMEWORK.save_model(
        name, model, signatures=signatures, metadata=metadata, labels=labels, store=store,
        custom_objects=custom_objects, external_modules=external_modules,
    )


def get(tag: str | Tag | Model, *, store: ModelStore | None = None) -> Model:
    """The saved model of ``tag`` (``name``, ``name:latest`` or ``name:version``)."""
    return FRAMEWORK.get(tag, store)


def load_model(tag: str | Tag | Model) -> Any:
    """The saved object itself, unpickled in this process."""
    return FRAMEWORK.load_model(tag)


def get_runnable(model: Model) -> type[PicklableModelRunnable]:
    """BentoML's ``get_runnable``: the Runnable class of ``model``, as ``model.to_runnable()``
    returns it."""
    return FRAMEWORK.get_runnable(model)  # type: ignore[return-value]
