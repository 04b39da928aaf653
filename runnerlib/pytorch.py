"""Pre-built runner for PyTorch modules (``pip install 'runnerlib[torch]'``).

    runnerlib.pytorch.save_model("demo_mnist", model,
                                 signatures={"predict": {"batchable": True, "batch_dim": 0}})
    runner = runnerlib.pytorch.get("demo_mnist:latest").to_runner()
    runner.init_local()            # or init_client() / a Server
    runner.predict.run(torch.rand(4, 1, 28, 28))   # -> torch.Tensor

The module is saved whole with ``torch.save`` (with cloudpickle when installed, as BentoML
does; ``external_modules=[mod]`` embeds the classes of ``mod`` so loading needs no import of
it). Signatures default to ``{"__call__": {"batchable": False}}``; any other name is a method
of the module.

The Runnable behaves as BentoML's ``PytorchModelRunnable``:

- ``self.model`` is the module, in eval mode; ``self.device_id`` is ``"cuda"`` when the
  scheduling strategy gave the worker a GPU (``CUDA_VISIBLE_DEVICES`` names one and CUDA is
  available), else ``"cpu"`` (where ``torch.set_num_threads`` follows the worker's thread
  count).
- each signature method converts its arguments as BentoML does: a numpy array or a pandas
  DataFrame becomes a tensor of torch's default float dtype (float32) on ``device_id``, a
  tensor keeps its dtype and moves to ``device_id``, anything else is passed as it is; then
  it calls the module under ``torch.inference_mode()`` (with the ``partial_kwargs`` of
  ``Model.with_options``) and returns what the module returns: tensors.
- a Runnable of your own can subclass it (``bentoml_model.to_runnable()``), call
  ``super().__init__()`` and the built-in methods (``super().__call__(x)``), and gets
  tensors back from them.

Across processes, tensors stay tensors: the runner of ``to_runner()`` sends each CPU tensor as
a numpy view of its memory (no copy; a GPU tensor is copied to the host first) and marks where
it was, so the worker hands the method a tensor again (without a copy); the shared-memory
transport carries them without pickle and batching joins them like any array, and the
runner returns every array of a result as a ``torch.Tensor`` viewing the received memory.
Through any other Runner (``runnerlib.Runner(MyRunnable)`` of a subclass), the tensors a
method returns are returned as tensors too (they travel pickled, their data out of band);
the arrays it returns stay arrays. Tensors of dtypes numpy lacks (``bfloat16``, ...) travel
pickled.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
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
from runnerlib.runnable import RunnableMethod

__all__ = [
    "save_model",
    "load_model",
    "get",
    "get_runnable",
    "PyTorchRunnable",
    "PytorchModelRunnable",
    "TorchRunner",
    "TensorArray",
    "tensors_to_numpy",
    "numpy_to_tensors",
    "FRAMEWORK",
    "runnables",
]

MODEL_FILE = "saved_model.pt"
TENSORS_KWARG = "__runnerlib_tensors__"
"""Keyword a TorchRunner adds to each call: where its tensors were (they travel as arrays)."""


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


def _paths_of_tensors(value: Any, path: tuple[Any, ...], out: list[tuple[Any, ...]]) -> Any:
    """``value`` with every CPU-convertible tensor as a numpy view; their paths in ``out``."""
    torch = _torch()
    if isinstance(value, torch.Tensor):
        array = _tensor_to_numpy(value)
        if isinstance(array, np.ndarray):
            out.append(path)
        return array
    if isinstance(value, tuple):
        return tuple(_paths_of_tensors(v, (*path, i), out) for i, v in enumerate(value))
    if isinstance(value, list):
        return [_paths_of_tensors(v, (*path, i), out) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _paths_of_tensors(v, (*path, k), out) for k, v in value.items()}
    return value


def _to_wire_call(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    paths: list[tuple[Any, ...]] = []
    args = tuple(_paths_of_tensors(a, (i,), paths) for i, a in enumerate(args))
    kwargs = {k: _paths_of_tensors(v, (k,), paths) for k, v in kwargs.items()}
    kwargs[TENSORS_KWARG] = tuple(paths)
    return args, kwargs


def _replace_at(value: Any, path: Sequence[Any], leaf: Callable[[Any], Any]) -> Any:
    if not path:
        return leaf(value)
    head, rest = path[0], path[1:]
    if isinstance(value, tuple):
        items = list(value)
        items[head] = _replace_at(items[head], rest, leaf)
        return tuple(items)
    if isinstance(value, (list, dict)):
        copy = value.copy()
        copy[head] = _replace_at(copy[head], rest, leaf)
        return copy
    raise ValueError(f"no value at {path!r}")


def _from_wire_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], paths: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Undo ``_to_wire_call`` in the Runnable: the arrays at ``paths`` become tensors again."""
    if not isinstance(paths, (tuple, list)):
        raise TypeError(f"{TENSORS_KWARG}: expected a tuple of paths, got {type(paths).__name__}")
    items = list(args)
    for path in paths:
        if not isinstance(path, (tuple, list)) or not path:
            raise TypeError(f"{TENSORS_KWARG}: bad path {path!r}")
        head = path[0]
        if isinstance(head, int) and 0 <= head < len(items):
            items[head] = _replace_at(items[head], path[1:], _numpy_to_tensor)
        elif isinstance(head, str) and head in kwargs:
            kwargs[head] = _replace_at(kwargs[head], path[1:], _numpy_to_tensor)
        else:
            raise TypeError(f"{TENSORS_KWARG}: no argument at {path!r}")
    return tuple(items), kwargs


def _tensor_from_wire(array: np.ndarray) -> Any:
    return _numpy_to_tensor(array)


class TensorArray(np.ndarray):
    """A CPU tensor's memory as a numpy array, on its way out of a worker to a caller that
    expects tensors: batching splits and joins it like any array, and it travels pickled
    (its data out of band) to arrive as a ``torch.Tensor``. Nothing outside the worker sees
    one."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_tensor_from_wire, (self.view(np.ndarray),))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        result = super().__array_function__(func, types, args, kwargs)
        if type(result) is np.ndarray:  # np.concatenate of the chunks of a split call
            return result.view(TensorArray)
        return result


def _tensor_to_wire(value: Any) -> Any:
    array = _tensor_to_numpy(value)
    return array.view(TensorArray) if isinstance(array, np.ndarray) else array


def _in_worker() -> bool:
    """Is this process a runnerlib worker (where results leave through the transport)?"""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    return name.startswith("runnerlib.") and name.rsplit(".", 1)[-1] == "worker"


_inside = contextvars.ContextVar("runnerlib_pytorch_inside", default=False)
"""True while a method or ``__init__`` of a PyTorch Runnable runs: a call made from there is
a plain Python call (tensors in and out), not a call from the runner."""


def _outgoing(result: Any, marked: bool) -> Any:
    if marked:  # a TorchRunner sent the call and turns arrays into tensors itself
        return tensors_to_numpy(result)
    if _in_worker():
        return _walk(result, lambda v: _tensor_to_wire(v) if _is_tensor(v) else v)
    return result


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _entry_point(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a method of a PyTorch Runnable: called from the runner (worker or init_local),
    undo the TorchRunner's wire form of the arguments and put the result in the form its
    caller reads; called from another method, run it as it is."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def call_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            paths = kwargs.pop(TENSORS_KWARG, None)
            if _inside.get():
                return await func(self, *args, **kwargs)
            if paths is not None:
                args, kwargs = _from_wire_call(args, kwargs, paths)
            token = _inside.set(True)
            try:
                result = await func(self, *args, **kwargs)
            finally:
                _inside.reset(token)
            return _outgoing(result, paths is not None)

        call_async._rl_entry = True  # type: ignore[attr-defined]
        return call_async

    @functools.wraps(func)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        paths = kwargs.pop(TENSORS_KWARG, None)
        if _inside.get():
            return func(self, *args, **kwargs)
        if paths is not None:
            args, kwargs = _from_wire_call(args, kwargs, paths)
        token = _inside.set(True)
        try:
            result = func(self, *args, **kwargs)
        finally:
            _inside.reset(token)
        return _outgoing(result, paths is not None)

    call._rl_entry = True  # type: ignore[attr-defined]
    return call


def _inside_init(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        token = _inside.set(True)
        try:
            init(self, *args, **kwargs)
        finally:
            _inside.reset(token)

    wrapped._rl_entry = True  # type: ignore[attr-defined]
    return wrapped


def _device() -> str:
    torch = _torch()
    if gpu_assigned() is False:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


class PyTorchRunnable(FrameworkRunnable):
    """BentoML's ``PytorchModelRunnable`` (see the module docstring)."""

    SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")
    SUPPORTS_CPU_MULTI_THREADING = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if not isinstance(value, RunnableMethod) or getattr(value.func, "_rl_entry", False):
                continue
            if inspect.isgeneratorfunction(value.func) or inspect.isasyncgenfunction(value.func):
                continue  # chunks travel as they are
            wrapped = RunnableMethod(_entry_point(value.func), value.config)
            wrapped.name = value.name
            setattr(cls, name, wrapped)
        init = vars(cls).get("__init__")
        if init is not None and not getattr(init, "_rl_entry", False):
            cls.__init__ = _inside_init(init)  # type: ignore[method-assign]

    def _rl_load(self, model: Model) -> Any:
        torch = _torch()
        threads = thread_count()
        if threads is not None:
            torch.set_num_threads(threads)
        self.device_id = _device()
        return FRAMEWORK.load(model, device=self.device_id)

    @property
    def _rl_device(self) -> str:
        return self.device_id

    def _rl_input(self, value: Any) -> Any:
        """BentoML's conversion of one argument (top level only)."""
        torch = _torch()
        if isinstance(value, torch.Tensor):
            return value.to(self.device_id)
        if isinstance(value, np.ndarray) or _is_dataframe(value):
            array = value.to_numpy() if _is_dataframe(value) else value
            with warnings.catch_warnings():
                # a received array is a read-only view of this call's shared memory
                warnings.simplefilter("ignore", UserWarning)
                return torch.as_tensor(array, dtype=torch.get_default_dtype(),
                                       device=self.device_id)
        return value

    def _rl_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        torch = _torch()
        args = tuple(self._rl_input(a) for a in args)
        kwargs = {k: self._rl_input(v) for k, v in self._rl_kwargs(method, kwargs).items()}
        fn = self._rl_model if method == "__call__" else getattr(self._rl_model, method)
        with torch.inference_mode():
            return fn(*args, **kwargs)


PytorchModelRunnable = PyTorchRunnable
"""BentoML's name of the class."""


def _is_dataframe(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.DataFrame)


class TorchRunner(FrameworkRunner):
    """Runner of a saved PyTorch module: tensors in, tensors out (see the module docstring)."""

    def _rl_to_wire(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return _to_wire_call(args, kwargs)

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
        _torch().save(obj, directory / MODEL_FILE, pickle_module=self.pickle_module())

    def load(self, model: Model, **kwargs: Any) -> Any:
        torch = _torch()
        device = kwargs.get("device") or kwargs.get("device_id") or "cpu"
        # the whole module is pickled (torch.save of the object): weights_only cannot load it
        module = torch.load(model.path / MODEL_FILE, map_location=device, weights_only=False)
        module.eval()
        return module


FRAMEWORK = _PyTorch()
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
    """Save an ``nn.Module`` as a new version of ``name``; returns the saved ``Model``.

    ``custom_objects`` are pickled beside it (``Model.custom_objects``); the classes of
    ``external_modules`` are saved by value (with cloudpickle), as in BentoML.
    """
    return FRAMEWORK.save_model(
        name, model, signatures=signatures, metadata=metadata, labels=labels, store=store,
        custom_objects=custom_objects, external_modules=external_modules,
    )


def get(tag: str | Tag | Model, *, store: ModelStore | None = None) -> Model:
    """The saved model of ``tag`` (``name``, ``name:latest`` or ``name:version``)."""
    return FRAMEWORK.get(tag, store)


def load_model(tag: str | Tag | Model, device_id: str | None = "cpu", *,
               device: str | None = None) -> Any:
    """The module itself, loaded in this process onto ``device_id`` (BentoML's name;
    ``device`` is accepted too), in eval mode."""
    return FRAMEWORK.load_model(tag, device=device or device_id or "cpu")


def get_runnable(model: Model) -> type[PyTorchRunnable]:
    """BentoML's ``bentoml.pytorch.get_runnable``: the Runnable class of ``model``, as
    ``model.to_runnable()`` returns it."""
    return FRAMEWORK.get_runnable(model)  # type: ignore[return-value]
