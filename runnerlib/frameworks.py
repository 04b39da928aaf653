"""What the pre-built framework runners (``runnerlib.pytorch``, ``.sklearn``, ``.picklable_model``)
share: saving into the store, the Runnable class of a saved model, and the Runner around it.

The Runnable of a saved model must be importable by a worker process by ``module:qualname``,
and its methods (one per signature, with its own ``batchable``/``batch_dim``) must be real
``Runnable.method`` attributes of that class, because methods are discovered per class.
A class built on the fly in the client cannot be imported by name, so each framework module
holds a ``RunnableFactory`` named ``runnables``: any attribute of it is a class, built once per
process and cached, whose name spells out everything the class depends on::

    runnerlib.pytorch:runnables.demo_mnist:k1p4c0h8a3v2c1d0,predict=b0:0

i.e. the model tag, then ``method=<b|n><batch_dim_in>:<batch_dim_out>`` per signature ('b' for
batchable; '.' in a tag is written '%2E', since qualnames are split on dots), then, for a model
given options with ``Model.with_options``, ``~<options>`` (the options pickled, in base32), so
that workers see the same options. The worker's
``getattr`` walk over the qualname lands in ``RunnableFactory.__getattr__``, which rebuilds the
identical class, so the client, the server and every worker agree on it (and pickle finds it
the same way). Building the class loads nothing; the instance loads the model in ``__init__``
(from the store named by the ``store`` init parameter, default ``$RUNNERLIB_HOME``), after the
worker's environment (threads, ``CUDA_VISIBLE_DEVICES``) is in place.

``FrameworkRunner`` is a ``Runner`` whose methods convert arguments before they are sent and
results after they arrive (PyTorch: tensors travel as numpy arrays and arrive as tensors).
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import pickle
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from runnerlib.errors import ConfigError
from runnerlib.models import (
    FrameworkMismatch,
    Model,
    ModelStore,
    Tag,
    _pickle_by_value,
    normalize_signatures,
)
from runnerlib.runnable import Runnable, RunnableMethod
from runnerlib.runner import Runner, RunnerMethod

__all__ = [
    "Framework",
    "FrameworkRunnable",
    "FrameworkRunner",
    "RunnableFactory",
    "thread_count",
    "package_version",
]

_THREAD_VARS = ("BENTOML_NUM_THREAD", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS")
_OPTIONS_MAX = 16 << 10  # bytes of pickled options a Runnable's name may carry


def thread_count() -> int | None:
    """The thread count the scheduling strategy gave this worker (None when not set)."""
    for var in _THREAD_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def gpu_assigned() -> bool | None:
    """True if ``CUDA_VISIBLE_DEVICES`` names a GPU, False if it hides them all, None if unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    value = value.strip()
    return bool(value) and not value.startswith("-")


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------- Runnable


class FrameworkRunnable(Runnable):
    """Base of the generated Runnables: loads the model of ``MODEL_TAG`` when built and calls
    ``getattr(model, signature)`` for each method. Frameworks override ``_rl_load`` and
    ``_rl_call`` (names chosen not to collide with signature names).

    As in BentoML, the loaded model is the instance's ``model`` attribute, and ``__init__``
    takes no required argument, so a Runnable of your own can subclass the class
    ``Model.to_runnable()`` returns and call ``super().__init__()``. ``partial_kwargs`` (a
    ``Model.with_options`` option) are keyword arguments each method is called with unless
    the call gives them.
    """

    MODEL_TAG: ClassVar[str] = ""
    MODEL_OPTIONS: ClassVar[dict[str, Any]] = {}
    FRAMEWORK: ClassVar[Framework]

    def __init__(self, store: str | None = None) -> None:
        saved = ModelStore(store).get(self.MODEL_TAG)
        if self.MODEL_OPTIONS:
            saved = saved.with_options(**self.MODEL_OPTIONS)
        self._rl_saved = saved
        self._rl_partial: dict[str, dict[str, Any]] = dict(
            saved.options.get("partial_kwargs") or {}
        )
        loaded = self._rl_load(saved)
        self.__dict__["_rl_loaded"] = loaded
        if not isinstance(getattr(type(self), "model", None), RunnableMethod):
            self.model = loaded  # BentoML's attribute (unless a signature is named "model")

    @property
    def _rl_model(self) -> Any:
        return self.__dict__["_rl_loaded"]

    @property
    def bento_model(self) -> Model:
        """The saved ``Model`` this Runnable serves."""
        return self._rl_saved

    def _rl_load(self, model: Model) -> Any:
        return self.FRAMEWORK.load(model)

    def _rl_kwargs(self, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        partial = self._rl_partial.get(method)
        return {**partial, **kwargs} if partial else kwargs

    def _rl_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return getattr(self._rl_model, method)(*args, **self._rl_kwargs(method, kwargs))


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace(".", "%2E")


def _unescape(text: str) -> str:
    return text.replace("%2E", ".").replace("%25", "%")


def _encode_options(options: Mapping[str, Any]) -> str:
    try:
        data = pickle.dumps(dict(options), protocol=5)
    except Exception as exc:
        raise TypeError(f"model options must be picklable to reach the workers: {exc}") from exc
    if len(data) > _OPTIONS_MAX:
        raise ConfigError(
            f"model options pickle to {len(data)} bytes, more than the {_OPTIONS_MAX} a "
            "Runnable's name can carry to its workers; pass large objects as custom_objects "
            "when saving the model instead"
        )
    return "~" + base64.b32encode(data).decode().rstrip("=").lower()


def _decode_options(part: str) -> dict[str, Any]:
    text = part[1:].upper()
    options = pickle.loads(base64.b32decode(text + "=" * (-len(text) % 8)))
    if not isinstance(options, dict):
        raise ValueError("options are not a mapping")
    return options


def encode_key(tag: str, signatures: Mapping[str, Mapping[str, Any]],
               options: Mapping[str, Any] | None = None) -> str:
    parts = [_escape(tag)]
    for method, sig in signatures.items():
        din, dout = sig.get("batch_dim", (0, 0))
        parts.append(f"{method}={'b' if sig.get('batchable') else 'n'}{int(din)}:{int(dout)}")
    if options:
        parts.append(_encode_options(options))
    return ",".join(parts)


def decode_key(key: str) -> tuple[str, dict[str, dict[str, Any]], dict[str, Any]]:
    tag, *methods = key.split(",")
    Tag.from_taglike(_unescape(tag))  # validates
    sigs: dict[str, dict[str, Any]] = {}
    options: dict[str, Any] = {}
    if methods and methods[-1].startswith("~"):
        try:
            options = _decode_options(methods.pop())
        except Exception as exc:
            raise ValueError(f"bad options: {exc}") from None
    for part in methods:
        method, _, flag = part.partition("=")
        din, sep, dout = flag[1:].partition(":")
        if not method.isidentifier() or flag[:1] not in ("b", "n") or not sep:
            raise ValueError(f"bad signature {part!r}")
        sigs[method] = {"batchable": flag[0] == "b", "batch_dim": (int(din), int(dout))}
    if not sigs:
        raise ValueError("no signature")
    return _unescape(tag), sigs, options


def _signature_method(name: str) -> Callable[..., Any]:
    def method(self: FrameworkRunnable, *args: Any, **kwargs: Any) -> Any:
        return self._rl_call(name, args, kwargs)

    method.__name__ = name
    return method


class RunnableFactory:
    """``factory.<key>`` is the Runnable class of that key (see the module docstring)."""

    def __init__(
        self, framework: Framework, base: type[FrameworkRunnable], module: str,
        attr: str = "runnables",
    ) -> None:
        self._framework = framework
        self._base = base
        self._module = module
        self._attr = attr
        self._cache: dict[str, type[FrameworkRunnable]] = {}

    def __getattr__(self, key: str) -> type[FrameworkRunnable]:
        if key.startswith("_"):
            raise AttributeError(key)
        cls = self.__dict__["_cache"].get(key)
        if cls is None:
            try:
                tag, sigs, options = decode_key(key)
            except ValueError as exc:
                raise AttributeError(f"{self._module}.{self._attr} has no Runnable {key!r}: "
                                     f"{exc}") from None
            cls = self._build(key, tag, sigs, options)
        return cls

    def _build(
        self, key: str, tag: str, sigs: dict[str, dict[str, Any]],
        options: dict[str, Any] | None = None,
    ) -> type[FrameworkRunnable]:
        namespace: dict[str, Any] = {
            "__module__": self._module,
            "__qualname__": f"{self._attr}.{key}",
            "MODEL_TAG": tag,
            "MODEL_OPTIONS": dict(options or {}),
            "FRAMEWORK": self._framework,
        }
        for method, sig in sigs.items():
            namespace[method] = Runnable.method(
                _signature_method(method), batchable=sig["batchable"], batch_dim=sig["batch_dim"]
            )
        cls = type(self._base.__name__, (self._base,), namespace)
        self._cache[key] = cls
        return cls

    def for_model(self, model: Model) -> type[FrameworkRunnable]:
        key = encode_key(str(model.tag), model.signatures, model._options)
        cls: type[FrameworkRunnable] = getattr(self, key)
        return cls

    def __repr__(self) -> str:
        return f"<RunnableFactory {self._module}.{self._attr}>"


# ----------------------------------------------------------------------------------- Runner


class _ConvertingMethod(RunnerMethod):
    """A RunnerMethod that passes arguments and results through its runner's converters."""

    runner: FrameworkRunner

    def run(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self.runner._rl_to_wire(args, kwargs)
        return self.runner._rl_from_wire(super().run(*args, **kwargs))

    async def async_run(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self.runner._rl_to_wire(args, kwargs)
        return self.runner._rl_from_wire(await super().async_run(*args, **kwargs))

    def async_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        args, kwargs = self.runner._rl_to_wire(args, kwargs)
        stream = super().async_stream(*args, **kwargs)
        convert = self.runner._rl_from_wire

        async def converted() -> AsyncIterator[Any]:
            async for chunk in stream:
                yield convert(chunk)

        return converted()


class FrameworkRunner(Runner):
    """A Runner of a saved model. Subclasses override ``_rl_to_wire``/``_rl_from_wire``."""

    def __init__(self, runnable_class: type[Runnable], **kwargs: Any) -> None:
        super().__init__(runnable_class, **kwargs)
        for name, method in list(self.methods.items()):
            conv = _ConvertingMethod.__new__(_ConvertingMethod)
            conv.__dict__.update(method.__dict__)
            self.methods[name] = conv
            if self.__dict__.get(name) is method:
                self.__dict__[name] = conv
        if self._default is not None:
            self._default = self.methods[self._default.name]

    def _rl_to_wire(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    def _rl_from_wire(self, value: Any) -> Any:
        return value


# -------------------------------------------------------------------------------- Framework


class Framework:
    """One framework's save/load/runner behaviour; framework modules make one ``FRAMEWORK``."""

    name: str = ""
    module: str = ""
    runnable_base: type[FrameworkRunnable] = FrameworkRunnable
    runner_class: type[FrameworkRunner] = FrameworkRunner
    default_signatures: Mapping[str, Mapping[str, Any]] = {"__call__": {"batchable": False}}
    option_names: tuple[str, ...] = ("partial_kwargs",)
    """What ``Model.with_options`` takes for this framework's models."""

    def __init__(self) -> None:
        self.runnables = RunnableFactory(self, self.runnable_base, self.module)

    # to override
    def write(self, obj: Any, directory: Path, options: dict[str, Any]) -> None:
        raise NotImplementedError

    def load(self, model: Model, **kwargs: Any) -> Any:
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        return {}

    def check(self, obj: Any) -> None:
        """Raise TypeError if ``obj`` cannot be saved by this framework."""

    # shared
    def save_model(
        self,
        name: str | Tag,
        obj: Any,
        *,
        signatures: Mapping[str, Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        store: ModelStore | None = None,
        custom_objects: Mapping[str, Any] | None = None,
        external_modules: Sequence[ModuleType] | None = None,
    ) -> Model:
        self.check(obj)
        sigs = normalize_signatures(signatures, self.default_signatures)
        for method in sigs:
            if not callable(getattr(obj, method, None)):
                raise ValueError(
                    f"signature {method!r}: {type(obj).__qualname__} has no method {method!r}"
                )
        opts = dict(options or {})
        return (store or ModelStore()).save(
            name.name if isinstance(name, Tag) else name,
            lambda d: self.write(obj, d, opts),
            module=self.module,
            framework=self.name,
            signatures=sigs,
            options=opts,
            metadata=metadata,
            labels=labels,
            framework_versions=self.versions(),
            custom_objects=custom_objects,
            external_modules=external_modules,
        )

    def get(self, tag: str | Tag | Model, store: ModelStore | None = None) -> Model:
        model = tag if isinstance(tag, Model) else (store or ModelStore()).get(tag)
        if model.info.module != self.module:
            raise FrameworkMismatch(
                f"model {model.tag} was saved by {model.info.module} ({model.info.framework}), "
                f"not by {self.module}; use {model.info.module}.get or runnerlib.models.get"
            )
        return model

    def load_model(self, tag: str | Tag | Model, **kwargs: Any) -> Any:
        return self.load(self.get(tag), **kwargs)

    def runnable_class(self, model: Model) -> type[FrameworkRunnable]:
        return self.runnables.for_model(self.get(model))

    get_runnable = runnable_class
    """BentoML's ``<framework>.get_runnable(model)``."""

    def pickle_module(self) -> Any:
        """What to pickle model objects with: cloudpickle when installed (as BentoML does, so
        ``external_modules`` are embedded by value), else pickle."""
        with _pickle_by_value(None) as pickler:
            return pickler

    def to_runner(self, model: Model, *, name: str, **kwargs: Any) -> Runner:
        model = self.get(model)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.setdefault("runnable_init_params", {"store": str(model.store.root)})
        kwargs.setdefault("models", [model])
        return self.runner_class(self.runnable_class(model), name=name, **kwargs)
