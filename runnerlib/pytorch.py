"""Pre-built runner for PyTorch modules (``pip install 'runnerlib[torch]'``).

    runnerlib.pytorch.save_model("demo_mnist", model,
                                 signatures={"predict": {"batchable": True, "batch_dim": 0}})
    runner = runnerlib.pytorch.get("demo_mnist:latest").to_runner()
    runner.init_local()            # or init_client() / a Server
    runner.predict.run(torch.rand(4, 1, 28, 28))   # -> torch.Tensor

The module is saved whole with ``torch.save`` (so its class must be importable where it is
loaded: a module of torch itself, like ``nn.Sequential``, or one of yours, not a script's
``__main__``). Signatures default to ``{"__call__": {"batchable": False}}``; any other name is a
method of the module.

In a worker, the module runs in eval mode under ``torch.inference_mode()``, on ``cuda`` when
the scheduling strategy gave the worker a GPU (``CUDA_VISIBLE_DEVICES`` names one and CUDA is
available), else on the CPU with ``torch.set_num_threads`` set from the worker's thread count.

Tensors cross processes as tensors: the runner sends each CPU tensor as a numpy view of its
memory (no copy; a GPU tensor is copied to the host first), so the shared-memory transport
carries it without pickle and batching joins it like any array; the worker turns the arrays it
receives back into tensors (again without a copy) and the module's tensors back into arrays,
and the runner hands every array of a result to the caller as a ``torch.Tensor`` viewing the
received memory. Tensors of dtypes numpy lacks (``bfloat16``, ...) travel pickled.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runnerlib.frameworks import (
    Framework,
    FrameworkRunnable,
    FrameworkRunner,
    gpu_assigned,
    package_version,
    thread_count,
)
from runnerlib.models import Model, ModelStore, Tag

__all__ = [
    "save_model",
    "load_model",
    "get",
    "PyTorchRunnable",
    "TorchRunner",
    "tensors_to_numpy",
    "numpy_to_tensors",
    "FRAMEWORK",
    "runnables",
]

MODEL_FILE = "saved_model.pt"


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError("runnerlib.pytorch needs torch: pip install 'runnerlib[torch]'") from exc
    return torch


def _walk(value: Any, leaf: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_walk(v, leaf) for v in value)
    if isinstance(value, list):
        return [_walk(v, leaf) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, leaf) for k, v in value.items()}
    return leaf(value)


def _tensor_to_numpy(value: Any) -> Any:
    torch = _torch()
    if not isinstance(value, torch.Tensor):
        return value
    t = value.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    try:
        return t.resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError):
        return t  # a dtype numpy lacks: travels pickled


def _numpy_to_tensor(value: Any, device: Any = None) -> Any:
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return value if device is None else value.to(device)
    if not isinstance(value, np.ndarray):
        return value
    try:
        with warnings.catch_warnings():
            # received arrays are read-only views of shared memory (a private slot of this
            # call, kept alive by the tensor); torch has no read-only tensors
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(value)
    except (TypeError, ValueError):
        try:
            t = torch.from_numpy(np.ascontiguousarray(value).astype(value.dtype.newbyteorder("=")))
        except (TypeError, ValueError):
            return value  # no torch dtype (e.g. a string array): leave it
    return t if device is None else t.to(device)


def tensors_to_numpy(value: Any) -> Any:
    """Every tensor in ``value`` (nested in tuples, lists, dicts) as a numpy array (no copy for
    CPU tensors)."""
    return _walk(value, _tensor_to_numpy)


def numpy_to_tensors(value: Any, device: Any = None) -> Any:
    """Every numpy array in ``value`` as a tensor (no copy on the CPU), moved to ``device``."""
    return _walk(value, lambda v: _numpy_to_tensor(v, device))


def _device() -> str:
    torch = _torch()
    if gpu_assigned() is False:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class PyTorchRunnable(FrameworkRunnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")
    SUPPORTS_CPU_MULTI_THREADING = True

    def _rl_load(self, model: Model) -> Any:
        torch = _torch()
        threads = thread_count()
        if threads is not None:
            torch.set_num_threads(threads)
        self._rl_device = _device()
        return FRAMEWORK.load(model, device=self._rl_device)

    def _rl_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        torch = _torch()
        args = numpy_to_tensors(args, self._rl_device)
        kwargs = numpy_to_tensors(kwargs, self._rl_device)
        fn = self._rl_model if method == "__call__" else getattr(self._rl_model, method)
        with torch.inference_mode():
            result = fn(*args, **kwargs)
        return tensors_to_numpy(result)


class TorchRunner(FrameworkRunner):
    """Runner of a saved PyTorch module: tensors in, tensors out (see the module docstring)."""

    def _rl_to_wire(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tensors_to_numpy(args), tensors_to_numpy(kwargs)

    def _rl_from_wire(self, value: Any) -> Any:
        return numpy_to_tensors(value)


class _PyTorch(Framework):
    name = "pytorch"
    module = __name__
    runnable_base = PyTorchRunnable
    runner_class = TorchRunner

    def check(self, obj: Any) -> None:
        torch = _torch()
        if not isinstance(obj, torch.nn.Module):
            raise TypeError(f"runnerlib.pytorch saves torch.nn.Module objects, got "
                            f"{type(obj).__qualname__}")

    def versions(self) -> dict[str, str]:
        return {"torch": package_version("torch")}

    def write(self, obj: Any, directory: Path, options: dict[str, Any]) -> None:
        _torch().save(obj, directory / MODEL_FILE)

    def load(self, model: Model, **kwargs: Any) -> Any:
        torch = _torch()
        device = kwargs.get("device") or "cpu"
        # the whole module is pickled (torch.save of the object): weights_only cannot load it
        module = torch.load(model.path / MODEL_FILE, map_location=device, weights_only=False)
        module.eval()
        return module


FRAMEWORK = _PyTorch()
runnables = FRAMEWORK.runnables
"""Where worker processes find the generated Runnable classes (see ``runnerlib.frameworks``)."""


def save_model(
    name: str,
    model: Any,
    *,
    signatures: Mapping[str, Mapping[str, Any]] | None = None,
    metadata: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    store: ModelStore | None = None,
) -> Model:
    """Save an ``nn.Module`` as a new version of ``name``; returns the saved ``Model``."""
    return FRAMEWORK.save_model(
        name, model, signatures=signatures, metadata=metadata, labels=labels, store=store
    )


def get(tag: str | Tag | Model, *, store: ModelStore | None = None) -> Model:
    """The saved model of ``tag`` (``name``, ``name:latest`` or ``name:version``)."""
    return FRAMEWORK.get(tag, store)


def load_model(tag: str | Tag | Model, device: str = "cpu") -> Any:
    """The module itself, loaded in this process onto ``device``, in eval mode."""
    return FRAMEWORK.load_model(tag, device=device)
